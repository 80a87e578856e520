//! The PostgreSQL event store: hash-partitioned by aggregate id, immutable by trigger,
//! tailed without skipping through the transaction-id visibility horizon.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

use super::embedded::same_json;
use super::{
    AppendError, AppendResult, BoxError, EventStore, ExpectedVersion, OpenError, PayloadRef,
    ReadError, StoreLimits, StoredPayload, validate_append,
};
use crate::event::{EventId, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::pg::is_connection_error;

mod group;

/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u16 = 16;

const MIGRATIONS: &[crate::pg::Migration] = &[
    (
        1,
        "events",
        include_str!("../../migrations/postgres/0001_events.sql"),
    ),
    (
        2,
        "snapshots",
        include_str!("../../migrations/postgres/0002_snapshots.sql"),
    ),
    (
        3,
        "temporal",
        include_str!("../../migrations/postgres/0003_temporal.sql"),
    ),
];

const COLUMNS: &str = "global_position, tx_id::text::int8, partition, event_id, aggregate_type, \
     aggregate_id, version, event_type, schema_version, payload, metadata, recorded_at";

/// Options of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema holding Nexus's tables (created if missing).
    pub schema: String,
    /// Number of partitions (fixed when the schema is created).
    pub partitions: u16,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Limits on appends.
    pub limits: StoreLimits,
    /// Groups of appends committed concurrently (group commit); each holds one connection
    /// while it commits. At least 1.
    pub committers: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "nexus".into(),
            partitions: DEFAULT_PARTITIONS,
            pool_size: 16,
            limits: StoreLimits::default(),
            committers: 2,
        }
    }
}

/// The PostgreSQL event store.
///
/// Appends go through group commit (see `group`): concurrent appends share a transaction.
pub struct PostgresStore {
    writer: Arc<Writer>,
    appends: mpsc::Sender<group::Pending>,
    changes: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

/// What appending needs, shared by the store and its committer tasks.
struct Writer {
    pool: Pool,
    options: PostgresOptions,
    sql: Sql,
    changes_tx: watch::Sender<u64>,
    notify_others: Arc<Notify>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.writer.options.schema)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Sql {
    /// The append statement of each partition, by partition number.
    append: Vec<String>,
    version: String,
    by_ids: String,
    read_stream: String,
    /// The payload read of each partition, by partition number (as `append`).
    read_payloads: Vec<String>,
    find_events: String,
    read_between: String,
    read_all: String,
    head: String,
    channel: String,
}

impl Sql {
    fn new(schema: &str, partitions: u16) -> Self {
        Self {
            append: (0..partitions).map(|p| append_sql(schema, p)).collect(),
            version: format!(
                "SELECT COALESCE(MAX(version), 0) FROM {schema}.events \
                 WHERE partition = $1 AND aggregate_type = $2 AND aggregate_id = $3"
            ),
            by_ids: format!(
                "SELECT event_id, aggregate_type, aggregate_id, version, global_position, event_type, payload \
                 FROM {schema}.events WHERE partition = $1 AND event_id = ANY($2)"
            ),
            read_stream: format!(
                "SELECT {COLUMNS} FROM {schema}.events WHERE partition = $1 AND aggregate_type = $2 \
                 AND aggregate_id = $3 AND version >= $4 AND version <= $5 ORDER BY version"
            ),
            // Per partition, as appends: the partition is a literal, so even the cached generic
            // plan is pruned to one partition, while privileges stay those of the parent table.
            read_payloads: (0..partitions)
                .map(|p| {
                    format!(
                        "SELECT version, event_type, payload::text, schema_version FROM {schema}.events \
                         WHERE partition = {p} AND aggregate_type = $1 AND aggregate_id = $2 \
                         AND version >= $3 ORDER BY version"
                    )
                })
                .collect(),
            find_events: format!(
                "SELECT {COLUMNS} FROM {schema}.events WHERE partition = $1 AND event_id = ANY($2) \
                 AND aggregate_type = $3 AND aggregate_id = $4 ORDER BY version"
            ),
            read_between: format!(
                "SELECT {COLUMNS} FROM {schema}.events WHERE partition = $1 AND aggregate_type = $2 \
                 AND aggregate_id = $3 AND recorded_at >= $4 AND recorded_at < $5 ORDER BY version LIMIT $6"
            ),
            // `ORDER BY events.tx_id`, qualified: a bare `tx_id` names the output column
            // `tx_id::text::int8`, whose order no index serves, so every read sorted all the
            // events after its position and every `head` all the events of the store.
            read_all: format!(
                "SELECT {COLUMNS} FROM {schema}.events \
                 WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
                 AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY events.tx_id, events.global_position LIMIT $3"
            ),
            head: format!(
                "SELECT tx_id::text::int8, global_position FROM {schema}.events \
                 WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY events.tx_id DESC, events.global_position DESC LIMIT 1"
            ),
            channel: format!("nexus_events_{schema}"),
        }
    }
}

/// The append statement of one partition: the partition number is a literal, so even a cached
/// generic plan is pruned to that partition at planning time, and the event-id check probes
/// only the batch's first id. (With the partition as a parameter, a generic plan made while the
/// table was new and unanalysed checked the event ids by scanning the whole partition.) It goes
/// through the parent table, so a service role needs privileges on `events` only
/// (`postgres::the_store_runs_under_a_role_that_may_only_insert_and_select_events`).
///
/// It inserts the batch only if the stream is at the expected version and the batch's first
/// event id is not stored. A batch is stored all or nothing, so the first id tells a retry of a
/// stored batch; any other stored id fails the statement on the unique key.
fn append_sql(schema: &str, partition: u16) -> String {
    format!(
        "WITH cur AS (SELECT COALESCE(MAX(version), 0) AS v FROM {schema}.events \
         WHERE partition = {partition} AND aggregate_type = $1 AND aggregate_id = $2) \
         INSERT INTO {schema}.events (partition, event_id, aggregate_type, aggregate_id, \
         version, event_type, schema_version, payload, metadata) \
         SELECT {partition}, e.id, $1, $2, cur.v + e.ord, e.typ, e.sv, e.payload, e.meta \
         FROM cur, unnest($4::uuid[], $5::text[], $6::int4[], $7::jsonb[], $8::jsonb[]) \
         WITH ORDINALITY AS e(id, typ, sv, payload, meta, ord) \
         WHERE ($3::int8 IS NULL OR cur.v = $3) AND NOT EXISTS (SELECT 1 FROM {schema}.events \
         WHERE partition = {partition} AND event_id = ($4::uuid[])[1]) \
         RETURNING global_position, version"
    )
}

fn append_err(err: tokio_postgres::Error) -> AppendError {
    if is_connection_error(&err) {
        AppendError::Unavailable(Box::new(err))
    } else {
        AppendError::Backend(Box::new(err))
    }
}

/// The `schema_version` column (an `integer`) at `index`.
pub(crate) fn schema_version(row: &Row, index: usize) -> Result<u32, ReadError> {
    Ok(row.try_get::<_, i32>(index).map_err(read_err)? as u32)
}

fn read_err(err: tokio_postgres::Error) -> ReadError {
    if is_connection_error(&err) {
        ReadError::Unavailable(Box::new(err))
    } else {
        ReadError::Backend(Box::new(err))
    }
}

/// Builds a connection pool for `url`.
pub(crate) fn pool(url: &str, size: usize) -> Result<Pool, OpenError> {
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        OpenError::Config(format!("invalid PostgreSQL URL: {e}"))
    })?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| OpenError::Config(e.to_string()))
}

/// Checks that a schema name is a plain SQL identifier (it is spliced into statements).
pub(crate) fn check_schema_name(schema: &str) -> Result<(), OpenError> {
    let valid = !schema.is_empty()
        && schema.len() <= 48
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(OpenError::Config(format!(
            "schema name `{schema}` must be a lowercase SQL identifier"
        )))
    }
}

/// Applies pending migrations to `schema`, serialised across processes by an advisory lock.
pub(crate) async fn migrate(pool: &Pool, schema: &str, partitions: u16) -> Result<(), OpenError> {
    let migration = |e: tokio_postgres::Error| {
        if is_connection_error(&e) {
            OpenError::Unavailable(Box::new(e))
        } else {
            OpenError::Migration(Box::new(e))
        }
    };
    let mut client = pool
        .get()
        .await
        .map_err(|e| OpenError::Unavailable(Box::new(e)))?;
    let tx = client.transaction().await.map_err(migration)?;
    crate::pg::migrate(&tx, schema, "schema_migrations", MIGRATIONS)
        .await
        .map_err(migration)?;
    let stored: Option<String> = tx
        .query_opt(
            &format!("SELECT value FROM {schema}.store_meta WHERE key = 'partitions'"),
            &[],
        )
        .await
        .map_err(migration)?
        .map(|row| row.get(0));
    match stored {
        Some(stored) => {
            let stored: u16 = stored
                .parse()
                .map_err(|e| OpenError::Migration(Box::new(e)))?;
            if stored != partitions {
                return Err(OpenError::PartitionMismatch {
                    stored,
                    configured: partitions,
                });
            }
        }
        None => {
            for partition in 0..partitions {
                tx.batch_execute(&format!(
                    "CREATE TABLE {schema}.events_p{partition} PARTITION OF {schema}.events \
                     FOR VALUES IN ({partition}); \
                     CREATE TRIGGER events_immutable_truncate BEFORE TRUNCATE ON {schema}.events_p{partition} \
                     FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reject_event_mutation();"
                ))
                .await
                .map_err(migration)?;
            }
            tx.execute(
                &format!("INSERT INTO {schema}.store_meta (key, value) VALUES ('partitions', $1)"),
                &[&partitions.to_string()],
            )
            .await
            .map_err(migration)?;
        }
    }
    tx.commit().await.map_err(migration)
}

enum Replay {
    NoneStored,
    Stored(AppendResult),
    Mismatch(EventId, StreamId),
}

/// One append's statement parameters, borrowed from its events.
struct Bound<'a> {
    partition: i16,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    required: Option<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<Json<&'a RawValue>>,
    metadata: Vec<Json<&'a Metadata>>,
}

impl<'a> Bound<'a> {
    fn new(
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
        partitions: u16,
    ) -> Self {
        Self {
            partition: stream.partition(partitions) as i16,
            aggregate_type: stream.aggregate_type(),
            aggregate_id: stream.aggregate_id(),
            required: expected.required().map(|v| v as i64),
            ids: events.iter().map(|e| e.id.0).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            versions: events.iter().map(|e| e.schema_version as i32).collect(),
            payloads: events.iter().map(|e| Json(&*e.payload)).collect(),
            metadata: events.iter().map(|e| Json(&e.metadata)).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.aggregate_type,
            &self.aggregate_id,
            &self.required,
            &self.ids,
            &self.types,
            &self.versions,
            &self.payloads,
            &self.metadata,
        ]
    }
}

/// The result of an append whose rows the insert returned as (global_position, version).
fn inserted(rows: &[Row], events: &[NewEvent]) -> AppendResult {
    let mut stored: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(1) as u64, r.get::<_, i64>(0) as u64))
        .collect();
    stored.sort_unstable();
    AppendResult {
        version: stored.last().map_or(0, |s| s.0),
        event_ids: events.iter().map(|e| e.id).collect(),
        first_position: stored.first().map_or(0, |s| s.1),
        last_position: stored.last().map_or(0, |s| s.1),
        idempotent_replay: false,
    }
}

/// A pooled connection that leaves the pool for good if dropped before `release`: a group
/// cancelled mid-pipeline must not hand an open transaction to the next user.
struct Held(Option<deadpool_postgres::Object>);

impl Held {
    fn client(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("held until released")
    }

    fn release(mut self, broken: bool) {
        if let Some(client) = self.0.take()
            && broken
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

type RowsFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

impl PostgresStore {
    /// Connects to `url`, applies migrations, and starts listening for commits.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, OpenError> {
        check_schema_name(&options.schema)?;
        if options.partitions == 0 {
            return Err(OpenError::Config(
                "partition count must be at least 1".into(),
            ));
        }
        if options.committers == 0 {
            return Err(OpenError::Config("committers must be at least 1".into()));
        }
        let pool = pool(url, options.pool_size)?;
        migrate(&pool, &options.schema, options.partitions).await?;
        let sql = Sql::new(&options.schema, options.partitions);
        let (changes_tx, changes) = watch::channel(0);
        let notify_others = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            url.to_owned(),
            sql.channel.clone(),
            changes_tx.clone(),
        ));
        let notifier = tokio::spawn(notify_loop(
            pool.clone(),
            sql.channel.clone(),
            Arc::clone(&notify_others),
        ));
        let committers = options.committers;
        let writer = Arc::new(Writer {
            pool,
            options,
            sql,
            changes_tx,
            notify_others,
        });
        let (appends, rx) = mpsc::channel(group::QUEUE_CAPACITY);
        let queue = Arc::new(Mutex::new(group::Queue::new(rx)));
        let mut tasks = vec![listener, notifier];
        for _ in 0..committers {
            tasks.push(tokio::spawn(group::committer(
                Arc::clone(&writer),
                Arc::clone(&queue),
            )));
        }
        Ok(Self {
            writer,
            appends,
            changes,
            tasks,
        })
    }

    /// The connection pool (shared with the snapshot store when they live in one database).
    pub fn pool(&self) -> &Pool {
        &self.writer.pool
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.writer.options.schema
    }

    /// Runs a read statement; a connection that died since it was pooled is replaced once,
    /// since reads are safe to repeat.
    async fn query_read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ReadError> {
        crate::pg::read(&self.writer.pool, sql, params)
            .await
            .map_err(|failure| match failure {
                crate::pg::ReadFailure::Pool(err) => ReadError::Unavailable(Box::new(err)),
                crate::pg::ReadFailure::Query(err) => read_err(err),
            })
    }
}

impl Writer {
    async fn client(&self) -> Result<deadpool_postgres::Object, BoxError> {
        self.pool.get().await.map_err(|e| Box::new(e) as BoxError)
    }

    /// The append statement of `partition`, prepared once per connection.
    async fn append_statement(
        &self,
        client: &deadpool_postgres::Object,
        partition: i16,
    ) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        client
            .prepare_cached(&self.sql.append[partition as usize])
            .await
    }

    /// Commits a group of appends as one transaction and answers each caller.
    async fn commit_group(&self, mut group: Vec<group::Pending>) {
        if group.len() == 1 {
            let pending = group.pop().expect("one append");
            let result = self
                .append_alone(&pending.stream, pending.expected, &pending.events)
                .await;
            let _ = pending.reply.send(result);
            return;
        }
        // Stable: appends to one stream keep their queue order, and concurrent groups insert
        // into streams in one order, so they never wait on each other in a cycle.
        group.sort_by(|a, b| {
            (a.stream.aggregate_type(), a.stream.aggregate_id())
                .cmp(&(b.stream.aggregate_type(), b.stream.aggregate_id()))
        });
        let client = match self.client().await {
            Ok(client) => Held(Some(client)),
            Err(_) => return self.one_by_one(group).await,
        };
        match self.run_group(client.client(), &group).await {
            Ok(steps) => {
                client.release(false);
                self.committed();
                let mut declined = Vec::new();
                for (pending, step) in group.into_iter().zip(steps) {
                    match step {
                        group::Step::Inserted(rows) => {
                            let _ = pending.reply.send(Ok(inserted(&rows, &pending.events)));
                        }
                        group::Step::Declined => declined.push(pending),
                    }
                }
                // A replay or a conflict: resolved on its own, as a lone append would be.
                self.one_by_one(declined).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, appends = group.len(), "group commit failed; appending one by one");
                client.release(is_connection_error(&err));
                self.one_by_one(group).await;
            }
        }
    }

    async fn one_by_one(&self, group: Vec<group::Pending>) {
        for pending in group {
            let result = self
                .append_alone(&pending.stream, pending.expected, &pending.events)
                .await;
            let _ = pending.reply.send(result);
        }
    }

    /// Sends `BEGIN`, each append's conditional insert and `COMMIT` as one pipeline. An error
    /// of any statement means the transaction rolled back and nothing of the group is stored.
    async fn run_group(
        &self,
        client: &deadpool_postgres::Object,
        group: &[group::Pending],
    ) -> Result<Vec<group::Step>, tokio_postgres::Error> {
        let partitions = self.options.partitions;
        let bound: Vec<Bound<'_>> = group
            .iter()
            .map(|p| Bound::new(&p.stream, p.expected, &p.events, partitions))
            .collect();
        let mut statements = Vec::with_capacity(bound.len());
        for b in &bound {
            statements.push(self.append_statement(client, b.partition).await?);
        }
        let params: Vec<[&(dyn ToSql + Sync); 8]> = bound.iter().map(Bound::params).collect();
        let mut futures: Vec<RowsFuture<'_>> = Vec::with_capacity(group.len() + 2);
        futures.push(Box::pin(async {
            client.batch_execute("BEGIN").await.map(|()| Vec::new())
        }));
        for (statement, params) in statements.iter().zip(&params) {
            futures.push(Box::pin(client.query(statement, params)));
        }
        futures.push(Box::pin(async {
            client.batch_execute("COMMIT").await.map(|()| Vec::new())
        }));
        let mut outputs = group::pipelined(futures).await;
        let commit = outputs.pop().expect("the COMMIT output");
        let mut outputs = outputs.into_iter();
        outputs.next().expect("the BEGIN output")?;
        let mut steps = Vec::with_capacity(group.len());
        for output in outputs {
            steps.push(match output? {
                rows if rows.is_empty() => group::Step::Declined,
                rows => group::Step::Inserted(rows),
            });
        }
        // After a failed statement PostgreSQL answers COMMIT with a rollback, not an error;
        // the `?` above has returned by then.
        commit?;
        Ok(steps)
    }

    /// Appends on a connection of its own; a connection that dies mid-append leaves it unknown
    /// whether the append committed, so it is sent once more with the same event ids and a
    /// committed one is recognised, not repeated.
    async fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, AppendError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.client().await.map_err(AppendError::Unavailable)?;
            match self.append_on(&client, stream, expected, events).await {
                Err(AppendError::Unavailable(_)) if attempt < 2 => {
                    drop(deadpool_postgres::Object::take(client));
                }
                other => return other,
            }
        }
    }

    async fn replay(
        &self,
        client: &deadpool_postgres::Object,
        stream: &StreamId,
        partition: i16,
        events: &[NewEvent],
    ) -> Result<Replay, AppendError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.id.0).collect();
        let rows = client
            .query(&self.sql.by_ids, &[&partition, &ids])
            .await
            .map_err(append_err)?;
        if rows.is_empty() {
            return Ok(Replay::NoneStored);
        }
        let mut stored = Vec::with_capacity(events.len());
        for event in events {
            let Some(row) = rows.iter().find(|r| r.get::<_, Uuid>(0) == event.id.0) else {
                // Some ids of the batch are stored, not all: name one that is, and its stream.
                let stored = &rows[0];
                return Ok(Replay::Mismatch(
                    EventId(stored.get(0)),
                    StreamId::new(stored.get::<_, &str>(1), stored.get::<_, &str>(2)),
                ));
            };
            let owner = StreamId::new(row.get::<_, &str>(1), row.get::<_, &str>(2));
            let Json(payload): Json<Box<RawValue>> = row.get(6);
            if &owner != stream
                || row.get::<_, &str>(5) != event.event_type
                || !same_json(payload.get(), event.payload.get())
            {
                return Ok(Replay::Mismatch(event.id, owner));
            }
            stored.push((row.get::<_, i64>(3) as u64, row.get::<_, i64>(4) as u64));
        }
        Ok(Replay::Stored(AppendResult {
            version: stored.last().map_or(0, |s| s.0),
            event_ids: events.iter().map(|e| e.id).collect(),
            first_position: stored.first().map_or(0, |s| s.1),
            last_position: stored.last().map_or(0, |s| s.1),
            idempotent_replay: true,
        }))
    }

    async fn append_on(
        &self,
        client: &deadpool_postgres::Object,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, AppendError> {
        let partition = stream.partition(self.options.partitions) as i16;
        let statement = self
            .append_statement(client, partition)
            .await
            .map_err(append_err)?;
        let bound = Bound::new(stream, expected, events, self.options.partitions);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.query(&statement, &bound.params()).await {
                Ok(rows) if !rows.is_empty() => {
                    self.committed();
                    return Ok(inserted(&rows, events));
                }
                Ok(_) => {}
                Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(err) => return Err(append_err(err)),
            }
            // Nothing was inserted: a retry of stored events, a lost race, or a stale expectation.
            match self.replay(client, stream, partition, events).await? {
                Replay::Stored(result) => return Ok(result),
                Replay::Mismatch(id, owner) => {
                    return Err(AppendError::DuplicateEventId { id, stream: owner });
                }
                Replay::NoneStored => {}
            }
            let actual = client
                .query_one(
                    &self.sql.version,
                    &[&partition, &stream.aggregate_type(), &stream.aggregate_id()],
                )
                .await
                .map_err(append_err)?
                .get::<_, i64>(0) as u64;
            match expected.required() {
                Some(required) if required != actual => {
                    return Err(AppendError::Conflict {
                        stream: stream.clone(),
                        expected,
                        actual,
                    });
                }
                // Another writer committed between the insert and the version read: try again.
                _ if attempts < 20 => continue,
                _ => {
                    return Err(AppendError::DuplicateEventId {
                        id: events[0].id,
                        stream: stream.clone(),
                    });
                }
            }
        }
    }

    fn committed(&self) {
        self.changes_tx.send_modify(|n| *n = n.wrapping_add(1));
        self.notify_others.notify_one();
    }
}

/// Decodes one row; `known` is the stream when the query was for one stream (saves allocations).
fn decode_row(row: &Row, known: Option<&StreamId>) -> Result<RecordedEvent, ReadError> {
    let position = row.get::<_, i64>(0) as u64;
    let corrupt = |e: BoxError| ReadError::Corrupt {
        position,
        source: e,
    };
    let payload: Json<Box<RawValue>> = row.try_get(9).map_err(|e| corrupt(Box::new(e)))?;
    let metadata: Json<Metadata> = row.try_get(10).map_err(|e| corrupt(Box::new(e)))?;
    Ok(RecordedEvent {
        id: EventId(row.get(3)),
        stream: known
            .cloned()
            .unwrap_or_else(|| StreamId::new(row.get::<_, &str>(4), row.get::<_, &str>(5))),
        version: row.get::<_, i64>(6) as u64,
        position,
        commit: row.get::<_, i64>(1) as u64,
        partition: row.get::<_, i16>(2) as u16,
        event_type: row.get(7),
        schema_version: row.get::<_, i32>(8) as u32,
        payload: payload.0,
        metadata: metadata.0,
        recorded_at: row.get(11),
    })
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        validate_append(stream, &events, &self.writer.options.limits)?;
        let stopped = || AppendError::Unavailable("the store's committers have stopped".into());
        let (reply, response) = oneshot::channel();
        self.appends
            .send(group::Pending {
                stream: stream.clone(),
                expected,
                events,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        response.await.map_err(|_| stopped())?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let to = to.unwrap_or(i64::MAX as u64);
        if from > to {
            return Err(ReadError::InvalidRange(format!(
                "from version {from} is after to version {to}"
            )));
        }
        let partition = stream.partition(self.writer.options.partitions) as i16;
        let rows = self
            .query_read(
                &self.writer.sql.read_stream,
                &[
                    &partition,
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &(from.min(i64::MAX as u64) as i64),
                    &(to.min(i64::MAX as u64) as i64),
                ],
            )
            .await?;
        if rows.is_empty() && self.stream_version(stream).await?.is_none() {
            return Err(ReadError::StreamNotFound(stream.clone()));
        }
        rows.iter()
            .map(|row| decode_row(row, Some(stream)))
            .collect()
    }

    async fn find_events(
        &self,
        stream: &StreamId,
        ids: &[EventId],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let partition = stream.partition(self.writer.options.partitions) as i16;
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let rows = self
            .query_read(
                &self.writer.sql.find_events,
                &[
                    &partition,
                    &ids,
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| decode_row(row, Some(stream)))
            .collect()
    }

    async fn read_payloads(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> Result<Vec<StoredPayload>, ReadError> {
        let partition = stream.partition(self.writer.options.partitions) as i16;
        let rows = self
            .query_read(
                &self.writer.sql.read_payloads[partition as usize],
                &[
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &(from.min(i64::MAX as u64) as i64),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredPayload {
                    version: row.try_get::<_, i64>(0).map_err(read_err)? as u64,
                    event_type: row.try_get(1).map_err(read_err)?,
                    payload: row.try_get(2).map_err(read_err)?,
                    schema_version: schema_version(row, 3)?,
                })
            })
            .collect()
    }

    async fn visit_payloads(
        &self,
        stream: &StreamId,
        from: u64,
        visit: &mut (dyn for<'row> FnMut(PayloadRef<'row>) -> ControlFlow<()> + Send),
    ) -> Result<(), ReadError> {
        let partition = stream.partition(self.writer.options.partitions) as i16;
        let from = from.min(i64::MAX as u64) as i64;
        let sql = &self.writer.sql.read_payloads[partition as usize];
        let params: [&(dyn ToSql + Sync); 3] =
            [&stream.aggregate_type(), &stream.aggregate_id(), &from];
        // As `crate::pg::read`: a dead pooled connection is replaced, but only before the
        // first row, so no event is handed over twice.
        let attempts = self.writer.pool.status().max_size + 1;
        let mut attempt = 0;
        let (_client, rows) = loop {
            attempt += 1;
            let client = self
                .writer
                .pool
                .get()
                .await
                .map_err(|e| ReadError::Unavailable(Box::new(e)))?;
            let started = match client.prepare_cached(sql).await {
                Ok(statement) => client.query_raw(&statement, params).await,
                Err(err) => Err(err),
            };
            match started {
                Ok(rows) => break (client, rows),
                Err(err) if attempt < attempts && is_connection_error(&err) => {
                    drop(deadpool_postgres::Object::take(client));
                }
                Err(err) => return Err(read_err(err)),
            }
        };
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(read_err)?;
            let payload = PayloadRef {
                version: row.try_get::<_, i64>(0).map_err(read_err)? as u64,
                event_type: row.try_get(1).map_err(read_err)?,
                payload: row.try_get(2).map_err(read_err)?,
                schema_version: schema_version(&row, 3)?,
            };
            if visit(payload).is_break() {
                break;
            }
        }
        Ok(())
    }

    async fn read_stream_between(
        &self,
        stream: &StreamId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        if from > to {
            return Err(ReadError::InvalidRange(format!(
                "from {from} is after to {to}"
            )));
        }
        let partition = stream.partition(self.writer.options.partitions) as i16;
        let rows = self
            .query_read(
                &self.writer.sql.read_between,
                &[
                    &partition,
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &from,
                    &to,
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await?;
        if rows.is_empty() && self.stream_version(stream).await?.is_none() {
            return Err(ReadError::StreamNotFound(stream.clone()));
        }
        rows.iter()
            .map(|row| decode_row(row, Some(stream)))
            .collect()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, ReadError> {
        let partition = stream.partition(self.writer.options.partitions) as i16;
        let rows = self
            .query_read(
                &self.writer.sql.version,
                &[&partition, &stream.aggregate_type(), &stream.aggregate_id()],
            )
            .await?;
        let version = rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64);
        Ok((version > 0).then_some(version))
    }

    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let rows = self
            .query_read(
                &self.writer.sql.read_all,
                &[
                    &after.commit.to_string(),
                    &(after.position as i64),
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await?;
        rows.iter().map(|row| decode_row(row, None)).collect()
    }

    async fn head(&self) -> Result<LogPosition, ReadError> {
        let rows = self.query_read(&self.writer.sql.head, &[]).await?;
        Ok(rows.first().map_or(LogPosition::START, |row| LogPosition {
            commit: row.get::<_, i64>(0) as u64,
            position: row.get::<_, i64>(1) as u64,
        }))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn partition_count(&self) -> u16 {
        self.writer.options.partitions
    }
}

/// Keeps a `LISTEN` connection open and turns notifications into change signals; reconnects
/// with backoff when the server goes away (subscribers keep polling meanwhile).
async fn listen(url: String, channel: String, changes: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listen_sql = format!("LISTEN {channel}");
                let listen = client.batch_execute(&listen_sql);
                let mut listen = std::pin::pin!(listen);
                let mut listening = false;
                backoff = Duration::from_millis(100);
                loop {
                    tokio::select! {
                        done = &mut listen, if !listening => {
                            if done.is_err() { break; }
                            listening = true;
                            // Anything committed while we were not listening is picked up now.
                            changes.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(_))) => {
                                changes.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        }
                    }
                }
                tracing::warn!("lost the PostgreSQL LISTEN connection; reconnecting");
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot open the PostgreSQL LISTEN connection")
            }
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Sends `NOTIFY` after local commits so other processes wake. Bursts coalesce into one, and
/// at most one goes out per `NOTIFY_EVERY`, so a busy writer does not double its statements.
async fn notify_loop(pool: Pool, channel: String, wake: Arc<Notify>) {
    const NOTIFY_EVERY: Duration = Duration::from_millis(2);
    let statement = format!("NOTIFY {channel}");
    loop {
        wake.notified().await;
        if let Ok(client) = pool.get().await
            && let Err(err) = client.batch_execute(&statement).await
        {
            tracing::debug!(error = %err, "NOTIFY failed; subscribers fall back to polling");
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

#[cfg(test)]
mod plan_tests {
    //! The log reads every projection and subscriber runs must be served by the log-order
    //! index: a `Sort` in their plans means each read sorts every event after its position
    //! (as `ORDER BY tx_id`, which names the cast output column, once did).

    use serde_json::Value;

    use super::*;
    use crate::{ExpectedVersion, Metadata, NewEvent, StreamId};

    /// The node types in a JSON plan, depth first.
    fn node_types(plan: &Value, into: &mut Vec<String>) {
        if let Some(kind) = plan.get("Node Type").and_then(Value::as_str) {
            into.push(kind.to_owned());
        }
        for child in plan
            .get("Plans")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            node_types(child, into);
        }
    }

    async fn plan(
        client: &tokio_postgres::Client,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Vec<String> {
        let row = client
            .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), params)
            .await
            .unwrap_or_else(|e| panic!("explain {sql}: {e}"));
        let Json(plans) = row.get::<_, Json<Value>>(0);
        let mut nodes = Vec::new();
        node_types(&plans[0]["Plan"], &mut nodes);
        nodes
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_reads_and_head_are_index_scans_without_a_sort() {
        let Some(db) = nexus_test_support::TestDb::create().await else {
            return;
        };
        let store = PostgresStore::connect_with(db.url(), PostgresOptions::default())
            .await
            .expect("open the store");
        for stream in 0..200 {
            let events = (0..100)
                .map(|n| {
                    NewEvent::from_json(
                        "Happened",
                        1,
                        format!(r#"{{"n":{n}}}"#),
                        Metadata::default(),
                    )
                    .unwrap()
                })
                .collect();
            store
                .append(
                    &StreamId::new("thing", format!("t-{stream}")),
                    ExpectedVersion::NoStream,
                    events,
                )
                .await
                .expect("append");
        }
        let client = db.client().await;
        let schema = &store.writer.options.schema;
        client
            .batch_execute(&format!("ANALYZE {schema}.events"))
            .await
            .unwrap();
        let sql = &store.writer.sql;
        // Both the custom plan of a first execution and the generic plan a pooled connection
        // caches after a few.
        for mode in ["force_custom_plan", "force_generic_plan"] {
            client
                .batch_execute(&format!("SET plan_cache_mode = {mode}"))
                .await
                .unwrap();
            let read = store.read_all(LogPosition::START, 10_000).await.unwrap();
            let last = read.last().expect("events");
            let middle = LogPosition {
                commit: last.commit,
                position: last.position,
            };
            for (after, label) in [
                (LogPosition::START, "from the start"),
                (middle, "from the middle"),
            ] {
                let nodes = plan(
                    &client,
                    &sql.read_all,
                    &[
                        &after.commit.to_string(),
                        &(after.position as i64),
                        &500_i64,
                    ],
                )
                .await;
                assert!(
                    nodes.iter().all(|n| !n.contains("Sort")),
                    "read_all {label} ({mode}) sorts: {nodes:?}"
                );
                assert!(
                    nodes.iter().any(|n| n.contains("Index")),
                    "read_all {label} ({mode}) uses no index: {nodes:?}"
                );
            }
            let nodes = plan(&client, &sql.head, &[]).await;
            assert!(
                nodes.iter().all(|n| !n.contains("Sort"))
                    && nodes.iter().any(|n| n.contains("Index")),
                "head ({mode}) is not an index scan: {nodes:?}"
            );
        }
    }
}
