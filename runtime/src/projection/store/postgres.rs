//! The PostgreSQL backend of read models: one schema (default `nexus_read_models`) whose
//! tables (`documents`, `stream_versions`, `checkpoints`, `dead_letters`) hold every
//! projection's rows, keyed by projection name.
//!
//! One set of tables rather than tables per projection: the schema is migrated once at start,
//! a new projection needs no DDL while others run, and a projection's name never becomes an
//! SQL identifier. Every statement is fixed text with parameters; only the (validated) schema
//! name is spliced in.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::audit::{self, AuditKind, AuditPage, AuditReport, PruneReport, Retention, Tail};
use super::{Batch, DeadLetter, DeadLetterStatus, ReadModelError, RedriveFilter};
use crate::event::{LogPosition, RecordedEvent, StreamId};
use crate::pg::is_connection_error;
use crate::search::SearchSchema;
use crate::search::columns::Columns;

/// Connections in a pool the read models create for themselves.
pub(super) const POOL_SIZE: usize = 8;

const MIGRATIONS: &[crate::pg::Migration] = &[
    (
        1,
        "read_models",
        include_str!("../../../migrations/postgres-read-models/0001_read_models.sql"),
    ),
    (
        2,
        "read_model_audit",
        include_str!("../../../migrations/postgres-read-models/0002_read_model_audit.sql"),
    ),
    (
        3,
        "notifications",
        include_str!("../../../migrations/postgres-read-models/0003_notifications.sql"),
    ),
    (
        4,
        "search",
        include_str!("../../../migrations/postgres-read-models/0004_search.sql"),
    ),
    (
        5,
        "search_indexes",
        include_str!("../../../migrations/postgres-read-models/0005_search_indexes.sql"),
    ),
];

const AUDIT_COLUMNS: &str = "seq, projection, kind, collection, id, before, after, event_id, \
     event_type, aggregate_type, aggregate_id, version, position, correlation_id, at, detail, hash";

const DEAD_LETTER_COLUMNS: &str =
    "id, envelope, error, attempts, first_failed_at, last_failed_at, status";

/// Applies pending migrations to `schema`, serialised across processes by an advisory lock.
async fn migrate(pool: &Pool, schema: &str) -> Result<(), ReadModelError> {
    let migration = |e: tokio_postgres::Error| {
        if is_connection_error(&e) {
            ReadModelError::Unavailable {
                read_model: schema.to_owned(),
                source: Box::new(e),
            }
        } else {
            ReadModelError::Migration(Box::new(e))
        }
    };
    let mut client = pool.get().await.map_err(|e| ReadModelError::Unavailable {
        read_model: schema.to_owned(),
        source: Box::new(e),
    })?;
    let tx = client.transaction().await.map_err(migration)?;
    // The event store takes the same lock for its own migrations of a schema.
    crate::pg::migrate(&tx, schema, "read_model_migrations", MIGRATIONS)
        .await
        .map_err(migration)?;
    tx.commit().await.map_err(migration)
}

/// Filtered list statements with at most this many filters stay prepared per connection
/// (1 + 2 + 4 = 7 shapes, null or not per filter); more filters are prepared for each request.
pub(crate) const CACHED_FILTERS: usize = 2;

/// The statements, with the schema spliced in once.
struct Sql {
    get: String,
    list: String,
    stream_version: String,
    stream_versions: String,
    checkpoint: String,
    put: String,
    delete: String,
    versions: String,
    dead_letter_insert: String,
    dead_letter_update: String,
    redriven: String,
    save_checkpoint: String,
    dead_letters: String,
    dead_letters_with_status: String,
    dead_letter: String,
    redrive_one: String,
    redrive_stream: String,
    redrive_all: String,
    release: String,
    dead_letter_count: String,
    letter_heads: String,
    redrive_requests: String,
    dead_letter_page: String,
    collections: String,
    audit: AuditSql,
    notify: NotifySql,
    search: SearchSql,
}

/// The statements that keep the full-text columns of searchable collections (all but `put`
/// are run by `search::postgres`, with feature `search`).
#[cfg_attr(not(feature = "search"), allow(dead_code))]
struct SearchSql {
    /// Writes documents of searchable collections with their `fields` and `search` columns.
    put: String,
    fingerprints: String,
    declare: String,
    undeclare: String,
    page: String,
    update: String,
}

/// The `search` vector of the text slots `d.c1, d.t1` to `d.c4, d.t4`, each weighted by its slot.
const SEARCH_VECTOR: &str = "setweight(to_tsvector(d.c1::regconfig, d.t1), 'A') \
     || setweight(to_tsvector(d.c2::regconfig, d.t2), 'B') \
     || setweight(to_tsvector(d.c3::regconfig, d.t3), 'C') \
     || setweight(to_tsvector(d.c4::regconfig, d.t4), 'D')";

/// The columns of the search slots' `unnest`, from parameter `$first` on.
fn search_slots(first: usize) -> String {
    (first..first + 8)
        .map(|n| format!("${n}::text[]"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SearchSql {
    fn new(s: &str) -> Self {
        Self {
            put: format!(
                "INSERT INTO {s}.documents (projection, collection, id, body, position, updated_at, fields, search) \
                 SELECT $1, d.collection, d.id, d.body, d.position, now(), d.fields, {SEARCH_VECTOR} \
                 FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::int8[], $6::jsonb[], {}) \
                 AS d(collection, id, body, position, fields, c1, t1, c2, t2, c3, t3, c4, t4) \
                 ON CONFLICT (projection, collection, id) DO UPDATE SET body = excluded.body, \
                 position = excluded.position, updated_at = excluded.updated_at, \
                 fields = excluded.fields, search = excluded.search",
                search_slots(7)
            ),
            fingerprints: format!(
                "SELECT collection, fingerprint FROM {s}.search_declarations WHERE projection = $1"
            ),
            declare: format!(
                "INSERT INTO {s}.search_declarations (projection, collection, fingerprint) \
                 VALUES ($1, $2, $3) ON CONFLICT (projection, collection) \
                 DO UPDATE SET fingerprint = excluded.fingerprint"
            ),
            undeclare: format!(
                "DELETE FROM {s}.search_declarations WHERE projection = $1 AND collection = $2"
            ),
            page: format!(
                "SELECT id, body FROM {s}.documents WHERE projection = $1 AND collection = $2 \
                 AND id > $3 ORDER BY id LIMIT $4"
            ),
            update: format!(
                "UPDATE {s}.documents AS x SET fields = d.fields, search = {SEARCH_VECTOR} \
                 FROM unnest($3::text[], $4::jsonb[], {}) \
                 AS d(id, fields, c1, t1, c2, t2, c3, t3, c4, t4) \
                 WHERE x.projection = $1 AND x.collection = $2 AND x.id = d.id",
                search_slots(5)
            ),
        }
    }
}

/// The statements of the audit log.
struct AuditSql {
    lock: String,
    tail: String,
    committed: String,
    append: String,
    head: String,
    head_set: String,
    history: String,
    newest_prune: String,
    page: String,
    first: String,
    max_at: String,
    anchor: String,
    permit: String,
    prune: String,
    unpermit: String,
}

/// The statements of the notification log.
struct NotifySql {
    state: String,
    save: String,
    clear: String,
    insert: String,
    prune: String,
    after: String,
}

impl AuditSql {
    fn new(s: &str) -> Self {
        Self {
            // Serialises the writers of one projection's chain (its key names the schema and
            // projection), held to the end of the transaction.
            lock: "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))".to_owned(),
            tail: format!(
                "SELECT seq, hash FROM {s}.audit_log WHERE projection = $1 ORDER BY seq DESC LIMIT 1"
            ),
            committed: format!(
                "SELECT d.collection, d.id, d.body FROM {s}.documents d \
                 JOIN unnest($2::text[], $3::text[]) AS x(collection, id) \
                 ON d.collection = x.collection AND d.id = x.id WHERE d.projection = $1"
            ),
            // Every entry in one statement, and the checkpoint the log saw (when given).
            append: format!(
                "WITH appended AS (INSERT INTO {s}.audit_log ({AUDIT_COLUMNS}) \
                 SELECT r.seq, $1, r.kind, r.collection, r.id, r.before, r.after, r.event_id, \
                 r.event_type, r.aggregate_type, r.aggregate_id, r.version, r.position, \
                 r.correlation_id, r.at, r.detail, r.hash \
                 FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[], $13::int8[], \
                 $14::text[], $15::int8[], $16::text[], $17::bytea[]) \
                 AS r(seq, kind, collection, id, before, after, event_id, event_type, aggregate_type, \
                 aggregate_id, version, position, correlation_id, at, detail, hash)) \
                 INSERT INTO {s}.audit_heads (projection, checkpoint) \
                 SELECT $1, $18::int8 WHERE $18::int8 IS NOT NULL \
                 ON CONFLICT (projection) DO UPDATE \
                 SET checkpoint = GREATEST({s}.audit_heads.checkpoint, excluded.checkpoint)"
            ),
            head: format!("SELECT checkpoint FROM {s}.audit_heads WHERE projection = $1"),
            head_set: format!("UPDATE {s}.audit_heads SET checkpoint = $2 WHERE projection = $1"),
            history: format!(
                "SELECT {AUDIT_COLUMNS} FROM {s}.audit_log WHERE projection = $1 AND kind = 'change' \
                 AND collection = $2 AND id = $3 AND seq > $4 \
                 UNION ALL \
                 SELECT {AUDIT_COLUMNS} FROM {s}.audit_log WHERE projection = $1 AND kind <> 'change' \
                 AND seq > $4 AND seq > (SELECT min(seq) FROM {s}.audit_log WHERE projection = $1 \
                 AND kind = 'change' AND collection = $2 AND id = $3) \
                 ORDER BY seq LIMIT $5"
            ),
            newest_prune: format!(
                "SELECT {AUDIT_COLUMNS} FROM {s}.audit_log WHERE projection = $1 AND kind = 'prune' \
                 ORDER BY seq DESC LIMIT 1"
            ),
            page: format!(
                "SELECT {AUDIT_COLUMNS} FROM {s}.audit_log WHERE projection = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            ),
            first: format!("SELECT min(seq) FROM {s}.audit_log WHERE projection = $1"),
            max_at: format!(
                "SELECT max(at) FROM {s}.audit_log WHERE projection = $1 AND seq BETWEEN $2 AND $3"
            ),
            anchor: format!(
                "SELECT seq, hash FROM {s}.audit_log WHERE projection = $1 AND seq <= $2 \
                 ORDER BY seq DESC LIMIT 1"
            ),
            permit: format!(
                "INSERT INTO {s}.audit_prune_permits (projection, upto) VALUES ($1, $2)"
            ),
            prune: format!("DELETE FROM {s}.audit_log WHERE projection = $1 AND seq <= $2"),
            unpermit: format!("DELETE FROM {s}.audit_prune_permits WHERE projection = $1"),
        }
    }
}

impl NotifySql {
    fn new(s: &str) -> Self {
        Self {
            state: format!(
                "SELECT epoch, position, checkpoint, \
                 COALESCE((SELECT position FROM {s}.checkpoints WHERE projection = $1), 0) \
                 FROM (SELECT 1) AS one LEFT JOIN {s}.notify_states ON projection = $1"
            ),
            save: format!(
                "INSERT INTO {s}.notify_states (projection, epoch, position, checkpoint) \
                 VALUES ($1, $2, $3, COALESCE((SELECT position FROM {s}.checkpoints WHERE projection = $1), 0)) \
                 ON CONFLICT (projection) DO UPDATE SET epoch = excluded.epoch, \
                 position = excluded.position, checkpoint = excluded.checkpoint"
            ),
            clear: format!("DELETE FROM {s}.notifications WHERE projection = $1"),
            insert: format!(
                "INSERT INTO {s}.notifications (projection, position, note, document) \
                 SELECT $1, n.position, n.note, n.document \
                 FROM unnest($2::int8[], $3::text[], $4::text[]) AS n(position, note, document) \
                 ON CONFLICT (projection, position) DO UPDATE SET note = excluded.note, \
                 document = excluded.document"
            ),
            prune: format!(
                "DELETE FROM {s}.notifications WHERE projection = $1 AND position <= $2"
            ),
            after: format!(
                "SELECT n.position, n.note, n.document FROM {s}.notifications n \
                 JOIN {s}.notify_states s ON s.projection = n.projection AND s.epoch = $2 \
                 WHERE n.projection = $1 AND n.position > $3 ORDER BY n.position LIMIT $4"
            ),
        }
    }
}

impl Sql {
    fn new(s: &str) -> Self {
        Self {
            get: format!(
                "SELECT body FROM {s}.documents WHERE projection = $1 AND collection = $2 AND id = $3"
            ),
            list: format!(
                "SELECT id, body FROM {s}.documents WHERE projection = $1 AND collection = $2"
            ),
            stream_version: format!(
                "SELECT version FROM {s}.stream_versions \
                 WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3"
            ),
            stream_versions: format!(
                "SELECT v.aggregate_type, v.aggregate_id, v.version FROM {s}.stream_versions v \
                 JOIN unnest($2::text[], $3::text[]) AS x(aggregate_type, aggregate_id) \
                 ON v.aggregate_type = x.aggregate_type AND v.aggregate_id = x.aggregate_id \
                 WHERE v.projection = $1"
            ),
            checkpoint: format!(
                "SELECT commit_key, position FROM {s}.checkpoints WHERE projection = $1"
            ),
            put: format!(
                "INSERT INTO {s}.documents (projection, collection, id, body, position, updated_at) \
                 SELECT $1, d.collection, d.id, d.body, d.position, now() \
                 FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::int8[]) AS d(collection, id, body, position) \
                 ON CONFLICT (projection, collection, id) DO UPDATE SET body = excluded.body, \
                 position = excluded.position, updated_at = excluded.updated_at"
            ),
            delete: format!(
                "DELETE FROM {s}.documents d USING unnest($2::text[], $3::text[]) AS x(collection, id) \
                 WHERE d.projection = $1 AND d.collection = x.collection AND d.id = x.id"
            ),
            versions: format!(
                "INSERT INTO {s}.stream_versions (projection, aggregate_type, aggregate_id, version) \
                 SELECT $1, v.aggregate_type, v.aggregate_id, v.version \
                 FROM unnest($2::text[], $3::text[], $4::int8[]) AS v(aggregate_type, aggregate_id, version) \
                 ON CONFLICT (projection, aggregate_type, aggregate_id) \
                 DO UPDATE SET version = GREATEST({s}.stream_versions.version, excluded.version)"
            ),
            dead_letter_insert: format!(
                "INSERT INTO {s}.dead_letters (projection, event_id, aggregate_type, aggregate_id, version, \
                 position, event_type, envelope, error, attempts, first_failed_at, last_failed_at, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), $12)"
            ),
            dead_letter_update: format!(
                "UPDATE {s}.dead_letters SET error = $3, attempts = attempts + $4, \
                 last_failed_at = now(), status = $5 WHERE projection = $1 AND id = $2"
            ),
            redriven: format!(
                "DELETE FROM {s}.dead_letters WHERE projection = $1 AND id = ANY($2)"
            ),
            save_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (projection, commit_key, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (projection) DO UPDATE SET commit_key = excluded.commit_key, \
                 position = excluded.position"
            ),
            dead_letters: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.dead_letters WHERE projection = $1 \
                 ORDER BY position, id"
            ),
            dead_letters_with_status: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.dead_letters WHERE projection = $1 \
                 AND status = $2 ORDER BY position, id"
            ),
            dead_letter: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.dead_letters WHERE projection = $1 AND id = $2"
            ),
            redrive_one: format!(
                "UPDATE {s}.dead_letters SET status = 'redrive' WHERE projection = $1 AND id = $2"
            ),
            redrive_stream: format!(
                "UPDATE {s}.dead_letters SET status = 'redrive' \
                 WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3"
            ),
            redrive_all: format!(
                "UPDATE {s}.dead_letters SET status = 'redrive' WHERE projection = $1"
            ),
            release: format!(
                "UPDATE {s}.dead_letters SET status = 'redrive' WHERE projection = $1 \
                 AND aggregate_type = $2 AND aggregate_id = $3 AND status = 'parked'"
            ),
            dead_letter_count: format!(
                "SELECT count(*) FROM {s}.dead_letters WHERE projection = $1"
            ),
            letter_heads: format!(
                "SELECT d.aggregate_type, d.aggregate_id, min(d.version) FROM {s}.dead_letters d \
                 JOIN unnest($2::text[], $3::text[]) AS x(aggregate_type, aggregate_id) \
                 ON d.aggregate_type = x.aggregate_type AND d.aggregate_id = x.aggregate_id \
                 WHERE d.projection = $1 GROUP BY d.aggregate_type, d.aggregate_id"
            ),
            redrive_requests: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.dead_letters WHERE projection = $1 \
                 AND status = 'redrive' AND id > $2 ORDER BY id LIMIT $3"
            ),
            dead_letter_page: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.dead_letters WHERE projection = $1 \
                 AND id > $2 ORDER BY id LIMIT $3"
            ),
            // One primary-key lookup per name (a skip-scan), however many documents there are.
            collections: format!(
                "WITH RECURSIVE c(name) AS (\
                   SELECT min(collection) FROM {s}.documents WHERE projection = $1 \
                   UNION ALL \
                   SELECT (SELECT min(collection) FROM {s}.documents \
                           WHERE projection = $1 AND collection > c.name) \
                   FROM c WHERE c.name IS NOT NULL) \
                 SELECT name FROM c WHERE name IS NOT NULL LIMIT $2"
            ),
            audit: AuditSql::new(s),
            notify: NotifySql::new(s),
            search: SearchSql::new(s),
        }
    }
}

/// The migrated tables of one schema, shared by every projection's read model.
#[derive(Clone)]
pub(super) struct Tables {
    pool: Pool,
    schema: Arc<str>,
    sql: Arc<Sql>,
}

impl Tables {
    /// Checks the schema name and applies pending migrations.
    pub(super) async fn open(pool: Pool, schema: &str) -> Result<Self, ReadModelError> {
        crate::store::postgres::check_schema_name(schema).map_err(|_| {
            ReadModelError::Config(format!(
                "schema name `{schema}` must be a lowercase SQL identifier"
            ))
        })?;
        migrate(&pool, schema).await?;
        Ok(Self {
            pool,
            schema: schema.into(),
            sql: Arc::new(Sql::new(schema)),
        })
    }

    pub(super) fn schema(&self) -> &str {
        &self.schema
    }

    /// The read model of projection `name`.
    pub(super) fn projection(&self, name: &str) -> PostgresReadModel {
        PostgresReadModel {
            tables: self.clone(),
            projection: name.to_owned(),
            search: std::sync::OnceLock::new(),
        }
    }
}

/// One projection's rows in the shared tables.
pub(crate) struct PostgresReadModel {
    tables: Tables,
    projection: String,
    /// The projection's search declaration, once its runner declared one: commits then keep
    /// the `search` and `fields` columns of searchable collections.
    search: std::sync::OnceLock<SearchSchema>,
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// The version of how search columns are computed from a declaration (`search::columns`).
#[cfg(feature = "search")]
const SEARCH_COLUMNS_VERSION: u32 = 2;

/// Documents a search backfill reads per round trip.
#[cfg(feature = "search")]
const SEARCH_PAGE: i64 = 500;

/// Documents about to be put, as the arrays of one `unnest` insert.
#[derive(Default)]
struct DocumentRows<'a> {
    collections: Vec<&'a str>,
    ids: Vec<&'a str>,
    bodies: Vec<&'a Value>,
    positions: Vec<i64>,
    columns: Vec<Columns>,
}

/// The search columns of some documents, as the arrays of one `unnest`.
struct SearchSlots {
    fields: Vec<Value>,
    /// Per text slot, the configuration and the text of every document.
    slots: Vec<(Vec<&'static str>, Vec<String>)>,
}

impl SearchSlots {
    fn of(columns: &[Columns]) -> Self {
        let mut slots: Vec<(Vec<&'static str>, Vec<String>)> = (0
            ..crate::search::columns::MAX_TEXT_FIELDS)
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        for column in columns {
            for (slot, (config, text)) in slots.iter_mut().zip(&column.texts) {
                slot.0.push(config);
                slot.1.push(text.clone());
            }
        }
        Self {
            fields: columns.iter().map(|c| c.fields.clone()).collect(),
            slots,
        }
    }

    fn push_params<'a>(&'a self, params: &mut Params<'a>) {
        for (configs, texts) in &self.slots {
            params.push(configs);
            params.push(texts);
        }
    }
}

impl PostgresReadModel {
    pub(crate) fn schema(&self) -> &str {
        &self.tables.schema
    }

    pub(crate) fn projection(&self) -> &str {
        &self.projection
    }

    /// The connection pool (searches run their own read-only transactions on it).
    #[cfg(feature = "search")]
    pub(crate) fn pool(&self) -> &Pool {
        &self.tables.pool
    }

    fn sql(&self) -> &Sql {
        &self.tables.sql
    }

    fn error(&self, err: tokio_postgres::Error) -> ReadModelError {
        if is_connection_error(&err) {
            ReadModelError::Unavailable {
                read_model: self.projection.clone(),
                source: Box::new(err),
            }
        } else {
            ReadModelError::Postgres {
                projection: self.projection.clone(),
                source: Box::new(err),
            }
        }
    }

    fn corrupt(&self, source: serde_json::Error) -> ReadModelError {
        ReadModelError::Corrupt {
            read_model: format!("{}/{}", self.tables.schema, self.projection),
            source,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ReadModelError> {
        self.tables
            .pool
            .get()
            .await
            .map_err(|e| ReadModelError::Unavailable {
                read_model: self.projection.clone(),
                source: Box::new(e),
            })
    }

    /// Runs a read statement; a connection that died since it was pooled is replaced once,
    /// since reads are safe to repeat.
    async fn read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ReadModelError> {
        self.read_with(sql, params, true).await
    }

    /// [`Self::read`], with the statement cached per connection only when `cache`.
    async fn read_with(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        cache: bool,
    ) -> Result<Vec<Row>, ReadModelError> {
        crate::pg::read_with(&self.tables.pool, sql, params, cache)
            .await
            .map_err(|failure| match failure {
                crate::pg::ReadFailure::Pool(err) => ReadModelError::Unavailable {
                    read_model: self.projection.clone(),
                    source: Box::new(err),
                },
                crate::pg::ReadFailure::Query(err) => self.error(err),
            })
    }

    /// Runs a write statement outside a transaction (a redrive request).
    async fn write(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ReadModelError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.error(e))?;
        client
            .execute(&statement, params)
            .await
            .map_err(|e| self.error(e))
    }

    pub(super) async fn get(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Value>, ReadModelError> {
        let rows = self
            .read(&self.sql().get, &[&self.projection, &collection, &id])
            .await?;
        Ok(rows.first().map(|row| row.get::<_, Value>(0)))
    }

    pub(super) async fn list(
        &self,
        collection: &str,
        filters: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<Vec<(String, Value)>, ReadModelError> {
        // Field names are checked by the caller; they still travel as parameters (text[]
        // paths), never as SQL text.
        let paths: Vec<Vec<&str>> = filters
            .iter()
            .map(|(field, _)| field.split('.').collect())
            .collect();
        let (limit, offset) = (limit as i64, offset as i64);
        let mut sql = self.sql().list.clone();
        let mut params: Params<'_> = vec![&self.projection, &collection];
        for (path, (_, value)) in paths.iter().zip(filters) {
            params.push(path);
            let at = params.len();
            if value.is_null() {
                // A missing field or a JSON null, as `json_extract(..) IS NULL` in SQLite.
                sql.push_str(&format!(
                    " AND ((body #> ${at}) IS NULL OR (body #> ${at}) = 'null'::jsonb)"
                ));
            } else {
                params.push(value);
                sql.push_str(&format!(" AND (body #> ${at}) = ${}", at + 1));
            }
        }
        params.push(&limit);
        params.push(&offset);
        sql.push_str(&format!(
            " ORDER BY id LIMIT ${} OFFSET ${}",
            params.len() - 1,
            params.len()
        ));
        // Each filter shape is its own statement text: only the few shapes of up to
        // `CACHED_FILTERS` filters are kept prepared, so a client cannot grow the cache.
        let cache = filters.len() <= CACHED_FILTERS;
        let rows = self.read_with(&sql, &params, cache).await?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, Value>(1)))
            .collect())
    }

    pub(super) async fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadModelError> {
        let rows = self
            .read(
                &self.sql().stream_version,
                &[
                    &self.projection,
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                ],
            )
            .await?;
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64))
    }

    pub(super) async fn stream_versions(
        &self,
        streams: Vec<StreamId>,
    ) -> Result<HashMap<StreamId, u64>, ReadModelError> {
        let types: Vec<&str> = streams.iter().map(StreamId::aggregate_type).collect();
        let ids: Vec<&str> = streams.iter().map(StreamId::aggregate_id).collect();
        let rows = self
            .read(
                &self.sql().stream_versions,
                &[&self.projection, &types, &ids],
            )
            .await?;
        let mut versions: HashMap<StreamId, u64> =
            streams.iter().map(|stream| (stream.clone(), 0)).collect();
        for row in rows {
            let stream = StreamId::new(row.get::<_, &str>(0), row.get::<_, &str>(1));
            versions.insert(stream, row.get::<_, i64>(2) as u64);
        }
        Ok(versions)
    }

    pub(super) async fn checkpoint(&self) -> Result<Option<LogPosition>, ReadModelError> {
        let rows = self
            .read(&self.sql().checkpoint, &[&self.projection])
            .await?;
        Ok(rows.first().map(|row| LogPosition {
            commit: row.get::<_, i64>(0) as u64,
            position: row.get::<_, i64>(1) as u64,
        }))
    }

    /// Writes the batch's documents: puts (those of searchable collections with their search
    /// columns) and deletions.
    async fn write_documents(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        batch: &Batch,
    ) -> Result<(), ReadModelError> {
        let sql = self.sql();
        let mut plain = DocumentRows::default();
        let mut searchable = DocumentRows::default();
        let (mut delete_collections, mut delete_ids) = (Vec::new(), Vec::new());
        for ((collection, id), document) in &batch.writes {
            let Some(document) = document else {
                delete_collections.push(collection.as_str());
                delete_ids.push(id.as_str());
                continue;
            };
            let position = batch
                .positions
                .get(&(collection.clone(), id.clone()))
                .copied()
                .unwrap_or(0);
            let declaration = self.search.get().and_then(|s| s.get(collection));
            let rows = if declaration.is_some() {
                &mut searchable
            } else {
                &mut plain
            };
            rows.collections.push(collection.as_str());
            rows.ids.push(id.as_str());
            rows.bodies.push(document);
            rows.positions.push(position);
            if let Some(declaration) = declaration {
                rows.columns.push(Columns::of(declaration, document));
            }
        }
        if !plain.ids.is_empty() {
            tx.execute(
                &sql.put,
                &[
                    &self.projection,
                    &plain.collections,
                    &plain.ids,
                    &plain.bodies,
                    &plain.positions,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        if !searchable.ids.is_empty() {
            let slots = SearchSlots::of(&searchable.columns);
            let mut params: Params<'_> = vec![
                &self.projection,
                &searchable.collections,
                &searchable.ids,
                &searchable.bodies,
                &searchable.positions,
                &slots.fields,
            ];
            slots.push_params(&mut params);
            tx.execute(&sql.search.put, &params)
                .await
                .map_err(|e| self.error(e))?;
        }
        if !delete_ids.is_empty() {
            tx.execute(
                &sql.delete,
                &[&self.projection, &delete_collections, &delete_ids],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Sets the projection's search declaration (once), then recomputes the search columns of
    /// every document of each collection whose declaration changed since they were computed,
    /// page by page; returns how many documents it recomputed.
    #[cfg(feature = "search")]
    pub(crate) async fn declare_search(
        &self,
        schema: &SearchSchema,
    ) -> Result<usize, ReadModelError> {
        let _ = self.search.set(schema.clone());
        let rows = self
            .read(&self.sql().search.fingerprints, &[&self.projection])
            .await?;
        let known: HashMap<String, String> = rows
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
            .collect();
        for collection in known.keys() {
            if schema.get(collection).is_none() {
                self.write(
                    &self.sql().search.undeclare,
                    &[&self.projection, collection],
                )
                .await?;
            }
        }
        let mut recomputed = 0;
        for (collection, declaration) in schema.collections() {
            // Versioned with the way the columns are computed, so a change to it recomputes them.
            let fingerprint = format!(
                "{SEARCH_COLUMNS_VERSION}:{}",
                serde_json::to_string(declaration).unwrap_or_default()
            );
            if known.get(collection) == Some(&fingerprint) {
                continue;
            }
            recomputed += self.recompute_search(collection, declaration).await?;
            self.write(
                &self.sql().search.declare,
                &[&self.projection, &collection, &fingerprint],
            )
            .await?;
        }
        Ok(recomputed)
    }

    #[cfg(feature = "search")]
    async fn recompute_search(
        &self,
        collection: &str,
        declaration: &crate::search::CollectionSchema,
    ) -> Result<usize, ReadModelError> {
        let mut after = String::new();
        let mut recomputed = 0;
        loop {
            let rows = self
                .read(
                    &self.sql().search.page,
                    &[&self.projection, &collection, &after, &SEARCH_PAGE],
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(recomputed);
            };
            after = last.get::<_, String>(0);
            let ids: Vec<String> = rows.iter().map(|row| row.get::<_, String>(0)).collect();
            let columns: Vec<Columns> = rows
                .iter()
                .map(|row| Columns::of(declaration, &row.get::<_, Value>(1)))
                .collect();
            let slots = SearchSlots::of(&columns);
            let mut params: Params<'_> = vec![&self.projection, &collection, &ids, &slots.fields];
            slots.push_params(&mut params);
            self.write(&self.sql().search.update, &params).await?;
            recomputed += rows.len();
        }
    }

    /// Commits a batch in one transaction. A connection lost before `COMMIT` is answered
    /// leaves the outcome unknown to us, but never half-applied: on restart the runner reads
    /// the checkpoint and stream versions back, so whichever way it went nothing applies twice.
    pub(super) async fn commit(&self, batch: &Batch) -> Result<(), ReadModelError> {
        let sql = self.sql();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        // Before the documents change: the audit reads what they were.
        let audited = if batch.audit.is_empty() {
            0
        } else {
            self.append_changes(&tx, batch).await?
        };
        self.write_documents(&tx, batch).await?;
        if !batch.versions.is_empty() {
            let (mut types, mut ids, mut versions) = (Vec::new(), Vec::new(), Vec::new());
            for (stream, version) in &batch.versions {
                types.push(stream.aggregate_type());
                ids.push(stream.aggregate_id());
                versions.push(*version as i64);
            }
            tx.execute(&sql.versions, &[&self.projection, &types, &ids, &versions])
                .await
                .map_err(|e| self.error(e))?;
        }
        for letter in &batch.dead_letters {
            let attempts = i32::try_from(letter.attempts).unwrap_or(i32::MAX);
            let status = letter.status.as_str();
            match letter.existing {
                Some(id) => {
                    tx.execute(
                        &sql.dead_letter_update,
                        &[&self.projection, &id, &letter.error, &attempts, &status],
                    )
                    .await
                }
                None => {
                    let envelope =
                        serde_json::to_string(&letter.event).map_err(|e| self.corrupt(e))?;
                    let event = &letter.event;
                    let (event_id, version, position) = (
                        event.id.to_string(),
                        event.version as i64,
                        event.position as i64,
                    );
                    tx.execute(
                        &sql.dead_letter_insert,
                        &[
                            &self.projection,
                            &event_id,
                            &event.stream.aggregate_type(),
                            &event.stream.aggregate_id(),
                            &version,
                            &position,
                            &event.event_type,
                            &envelope,
                            &letter.error,
                            &attempts,
                            &letter.first_failed_at,
                            &status,
                        ],
                    )
                    .await
                }
            }
            .map_err(|e| self.error(e))?;
        }
        if !batch.redriven.is_empty() {
            tx.execute(&sql.redriven, &[&self.projection, &batch.redriven])
                .await
                .map_err(|e| self.error(e))?;
        }
        for stream in &batch.release {
            tx.execute(
                &sql.release,
                &[
                    &self.projection,
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        if let Some(checkpoint) = batch.checkpoint {
            tx.execute(
                &sql.save_checkpoint,
                &[
                    &self.projection,
                    &(checkpoint.commit as i64),
                    &(checkpoint.position as i64),
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        if let Some(notify) = &batch.notify {
            self.log_notifications(&tx, notify).await?;
        }
        tx.commit().await.map_err(|e| self.error(e))?;
        audit::count_appended(&self.projection, audited);
        Ok(())
    }

    /// The notification log's epoch and newest position; a new epoch and an empty log unless
    /// the log was written up to the checkpoint.
    pub(super) async fn notify_start(
        &self,
        new_epoch: String,
    ) -> Result<(String, u64, bool), ReadModelError> {
        let sql = self.sql();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        let row = tx
            .query_one(&sql.notify.state, &[&self.projection])
            .await
            .map_err(|e| self.error(e))?;
        let (epoch, position, at, checkpoint): (Option<String>, Option<i64>, Option<i64>, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let started = match (epoch, position, at) {
            (Some(epoch), Some(position), Some(at)) if at == checkpoint => {
                (epoch, position as u64, false)
            }
            _ => {
                tx.execute(&sql.notify.clear, &[&self.projection])
                    .await
                    .map_err(|e| self.error(e))?;
                tx.execute(&sql.notify.save, &[&self.projection, &new_epoch, &0i64])
                    .await
                    .map_err(|e| self.error(e))?;
                (new_epoch, 0, true)
            }
        };
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(started)
    }

    pub(super) async fn notifications_after(
        &self,
        epoch: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<super::LoggedNotification>, ReadModelError> {
        let rows = self
            .read(
                &self.sql().notify.after,
                &[&self.projection, &epoch, &after, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, i64>(0) as u64, row.get(1), row.get(2)))
            .collect())
    }

    /// Appends a commit's notifications to the log (emptying a log of another epoch first),
    /// drops what is beyond the bound, and records the log as written up to the checkpoint.
    async fn log_notifications(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        notify: &super::NotifyCommit,
    ) -> Result<(), ReadModelError> {
        let sql = self.sql();
        let row = tx
            .query_one(&sql.notify.state, &[&self.projection])
            .await
            .map_err(|e| self.error(e))?;
        let (epoch, position): (Option<String>, Option<i64>) = (row.get(0), row.get(1));
        let mut last = match (epoch, position) {
            (Some(epoch), Some(position)) if epoch == notify.epoch => position,
            _ => {
                tx.execute(&sql.notify.clear, &[&self.projection])
                    .await
                    .map_err(|e| self.error(e))?;
                0
            }
        };
        if !notify.rows.is_empty() {
            let positions: Vec<i64> = notify.rows.iter().map(|r| r.0 as i64).collect();
            let notes: Vec<&str> = notify.rows.iter().map(|r| r.1.as_str()).collect();
            let documents: Vec<Option<&str>> = notify.rows.iter().map(|r| r.2.as_deref()).collect();
            tx.execute(
                &sql.notify.insert,
                &[&self.projection, &positions, &notes, &documents],
            )
            .await
            .map_err(|e| self.error(e))?;
            last = positions.iter().copied().fold(last, i64::max);
            tx.execute(
                &sql.notify.prune,
                &[&self.projection, &(last - notify.keep as i64)],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        tx.execute(&sql.notify.save, &[&self.projection, &notify.epoch, &last])
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    fn dead_letter_from(&self, row: &Row) -> Result<DeadLetter, ReadModelError> {
        let envelope: &str = row.get(1);
        let event: RecordedEvent = serde_json::from_str(envelope).map_err(|e| self.corrupt(e))?;
        Ok(DeadLetter {
            id: row.get(0),
            event,
            error: row.get(2),
            attempts: u32::try_from(row.get::<_, i32>(3)).unwrap_or_default(),
            first_failed_at: row.get::<_, DateTime<Utc>>(4),
            last_failed_at: row.get::<_, DateTime<Utc>>(5),
            status: DeadLetterStatus::parse(row.get(6)),
        })
    }

    pub(super) async fn dead_letters(
        &self,
        status: Option<DeadLetterStatus>,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let rows = match status {
            Some(status) => {
                self.read(
                    &self.sql().dead_letters_with_status,
                    &[&self.projection, &status.as_str()],
                )
                .await?
            }
            None => {
                self.read(&self.sql().dead_letters, &[&self.projection])
                    .await?
            }
        };
        rows.iter().map(|row| self.dead_letter_from(row)).collect()
    }

    pub(super) async fn dead_letter_count(&self) -> Result<u64, ReadModelError> {
        let rows = self
            .read(&self.sql().dead_letter_count, &[&self.projection])
            .await?;
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64))
    }

    pub(super) async fn letter_heads(
        &self,
        streams: Vec<StreamId>,
    ) -> Result<HashMap<StreamId, u64>, ReadModelError> {
        let types: Vec<&str> = streams.iter().map(StreamId::aggregate_type).collect();
        let ids: Vec<&str> = streams.iter().map(StreamId::aggregate_id).collect();
        let rows = self
            .read(&self.sql().letter_heads, &[&self.projection, &types, &ids])
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    StreamId::new(row.get::<_, &str>(0), row.get::<_, &str>(1)),
                    row.get::<_, i64>(2) as u64,
                )
            })
            .collect())
    }

    pub(super) async fn redrive_requests(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let rows = self
            .read(
                &self.sql().redrive_requests,
                &[&self.projection, &after, &limit],
            )
            .await?;
        rows.iter().map(|row| self.dead_letter_from(row)).collect()
    }

    pub(super) async fn dead_letter_page(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let rows = self
            .read(
                &self.sql().dead_letter_page,
                &[&self.projection, &after, &limit],
            )
            .await?;
        rows.iter().map(|row| self.dead_letter_from(row)).collect()
    }

    pub(super) async fn collections(&self, limit: i64) -> Result<Vec<String>, ReadModelError> {
        let rows = self
            .read(&self.sql().collections, &[&self.projection, &limit])
            .await?;
        Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
    }

    pub(super) async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, ReadModelError> {
        let rows = self
            .read(&self.sql().dead_letter, &[&self.projection, &id])
            .await?;
        rows.first()
            .map(|row| self.dead_letter_from(row))
            .transpose()
    }

    pub(super) async fn request_redrive(
        &self,
        filter: &RedriveFilter,
    ) -> Result<usize, ReadModelError> {
        let sql = self.sql();
        let changed = match filter {
            RedriveFilter::Id(id) => {
                self.write(&sql.redrive_one, &[&self.projection, id])
                    .await?
            }
            RedriveFilter::Stream(stream) => {
                self.write(
                    &sql.redrive_stream,
                    &[
                        &self.projection,
                        &stream.aggregate_type(),
                        &stream.aggregate_id(),
                    ],
                )
                .await?
            }
            RedriveFilter::All => self.write(&sql.redrive_all, &[&self.projection]).await?,
        };
        Ok(changed as usize)
    }

    /// The advisory-lock key of this projection's chain.
    fn chain_key(&self) -> String {
        format!(
            "nexus.read_model_audit/{}/{}",
            self.tables.schema, self.projection
        )
    }

    /// Takes the chain's lock and reads its tail, in one round trip.
    async fn lock_chain(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<Tail, ReadModelError> {
        let sql = self.sql();
        let lock = tx
            .prepare_cached(&sql.audit.lock)
            .await
            .map_err(|e| self.error(e))?;
        let tail = tx
            .prepare_cached(&sql.audit.tail)
            .await
            .map_err(|e| self.error(e))?;
        let key = self.chain_key();
        // Sent together; the tail is read after the lock is held (each statement of a READ
        // COMMITTED transaction sees what committed before it started).
        let (lock_params, tail_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&key], [&self.projection]);
        let (_, rows) =
            futures::try_join!(tx.query(&lock, &lock_params), tx.query(&tail, &tail_params))
                .map_err(|e| self.error(e))?;
        Ok(rows.first().map_or_else(Tail::default, |row| Tail {
            seq: row.get::<_, i64>(0) as u64,
            hash: row.get(1),
        }))
    }

    /// Appends the audit entries of `batch`'s document writes, reading the documents as they
    /// were inside the commit's transaction, in one statement.
    async fn append_changes(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &Batch,
    ) -> Result<u64, ReadModelError> {
        let sql = self.sql();
        let documents = audit::written_documents(&batch.audit);
        let collections: Vec<&str> = documents.iter().map(|(c, _)| c.as_str()).collect();
        let ids: Vec<&str> = documents.iter().map(|(_, id)| id.as_str()).collect();
        let committed_sql = tx
            .prepare_cached(&sql.audit.committed)
            .await
            .map_err(|e| self.error(e))?;
        let (tail, committed_rows) = futures::try_join!(self.lock_chain(tx), async {
            tx.query(&committed_sql, &[&self.projection, &collections, &ids])
                .await
                .map_err(|e| self.error(e))
        })?;
        let mut committed: HashMap<(String, String), Option<String>> =
            documents.into_iter().map(|key| (key, None)).collect();
        for row in committed_rows {
            let body: Value = row.get(2);
            committed.insert((row.get(0), row.get(1)), Some(body.to_string()));
        }
        let at = chrono::Utc::now().timestamp_micros();
        let rows = audit::change_rows(&self.projection, &tail, &batch.audit, committed, at);
        if rows.is_empty() {
            return Ok(0);
        }
        self.insert_rows(tx, &rows, batch.checkpoint.map(|c| c.position as i64))
            .await?;
        Ok(rows.len() as u64)
    }

    async fn insert_rows(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        rows: &[audit::Row],
        checkpoint: Option<i64>,
    ) -> Result<(), ReadModelError> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq as i64).collect();
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        let text = |f: fn(&audit::Row) -> &Option<String>| -> Vec<Option<&str>> {
            rows.iter().map(|r| f(r).as_deref()).collect()
        };
        let (collections, ids, befores, afters) = (
            text(|r| &r.collection),
            text(|r| &r.id),
            text(|r| &r.before),
            text(|r| &r.after),
        );
        let (event_ids, event_types, aggregate_types, aggregate_ids) = (
            text(|r| &r.event_id),
            text(|r| &r.event_type),
            text(|r| &r.aggregate_type),
            text(|r| &r.aggregate_id),
        );
        let (correlations, details) = (text(|r| &r.correlation_id), text(|r| &r.detail));
        let versions: Vec<Option<i64>> = rows.iter().map(|r| r.version).collect();
        let positions: Vec<Option<i64>> = rows.iter().map(|r| r.position).collect();
        let ats: Vec<i64> = rows.iter().map(|r| r.at).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| r.hash.as_slice()).collect();
        let append = tx
            .prepare_cached(&self.sql().audit.append)
            .await
            .map_err(|e| self.error(e))?;
        tx.execute(
            &append,
            &[
                &self.projection,
                &seqs,
                &kinds,
                &collections,
                &ids,
                &befores,
                &afters,
                &event_ids,
                &event_types,
                &aggregate_types,
                &aggregate_ids,
                &versions,
                &positions,
                &correlations,
                &ats,
                &details,
                &hashes,
                &checkpoint,
            ],
        )
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub(super) async fn audit_run_started(&self, from: u64) -> Result<Option<u64>, ReadModelError> {
        let sql = self.sql();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        let tail = self.lock_chain(&tx).await?;
        let seen: Option<i64> = tx
            .query_opt(&sql.audit.head, &[&self.projection])
            .await
            .map_err(|e| self.error(e))?
            .map(|row| row.get(0));
        let Some(seen) = seen.filter(|seen| *seen as u64 > from) else {
            return Ok(None);
        };
        let row = audit::rebuild_row(&self.projection, &tail, from, seen as u64);
        self.insert_rows(&tx, std::slice::from_ref(&row), None)
            .await?;
        tx.execute(&sql.audit.head_set, &[&self.projection, &(from as i64)])
            .await
            .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        audit::count_appended(&self.projection, 1);
        Ok(Some(row.seq))
    }

    pub(super) async fn audit_history(
        &self,
        collection: &str,
        id: &str,
        after: u64,
        limit: i64,
    ) -> Result<AuditPage, ReadModelError> {
        let rows = self
            .read(
                &self.sql().audit.history,
                &[
                    &self.projection,
                    &collection,
                    &id,
                    &(after as i64),
                    &(limit + 1),
                ],
            )
            .await?;
        AuditPage::of(rows.iter().map(audit_row).collect(), limit).map_err(|e| self.corrupt(e))
    }

    pub(super) async fn audit_verify(&self) -> Result<AuditReport, ReadModelError> {
        let sql = self.sql();
        let mut client = self.client().await?;
        // One snapshot for the whole walk, so a prune or append meanwhile cannot look like a gap.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.error(e))?;
        let newest_prune = tx
            .query_opt(&sql.audit.newest_prune, &[&self.projection])
            .await
            .map_err(|e| self.error(e))?
            .map(|row| audit_row(&row));
        let mut verifier = audit::Verifier::new(&self.projection, newest_prune.as_ref());
        let page = tx
            .prepare_cached(&sql.audit.page)
            .await
            .map_err(|e| self.error(e))?;
        let mut after = 0i64;
        loop {
            let rows: Vec<audit::Row> = tx
                .query(
                    &page,
                    &[&self.projection, &after, &(audit::VERIFY_PAGE as i64)],
                )
                .await
                .map_err(|e| self.error(e))?
                .iter()
                .map(audit_row)
                .collect();
            let Some(last) = rows.last() else { break };
            after = last.seq as i64;
            if !verifier.feed(&rows) || rows.len() < audit::VERIFY_PAGE {
                break;
            }
        }
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(verifier.finish())
    }

    pub(super) async fn audit_prune(
        &self,
        retention: &Retention,
    ) -> Result<PruneReport, ReadModelError> {
        let sql = self.sql();
        let mut report = PruneReport {
            projection: self.projection.clone(),
            removed: 0,
            range: None,
            entry: None,
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        let tail = self.lock_chain(&tx).await?;
        let first: Option<i64> = tx
            .query_one(&sql.audit.first, &[&self.projection])
            .await
            .map_err(|e| self.error(e))?
            .get(0);
        let Some(first) = first else {
            return Ok(report);
        };
        let max_at = tx
            .prepare_cached(&sql.audit.max_at)
            .await
            .map_err(|e| self.error(e))?;
        let mut plan = audit::PrunePlan::new(first as u64, tail.seq, retention);
        while let Some((from, to)) = plan.next() {
            let newest: Option<i64> = tx
                .query_one(&max_at, &[&self.projection, &(from as i64), &(to as i64)])
                .await
                .map_err(|e| self.error(e))?
                .get(0);
            plan.observe(newest);
        }
        let upto = plan.upto();
        let Some(upto) = upto else {
            return Ok(report);
        };
        let anchor = tx
            .query_one(&sql.audit.anchor, &[&self.projection, &(upto as i64)])
            .await
            .map_err(|e| self.error(e))?;
        let (last, anchor): (i64, Vec<u8>) = (anchor.get(0), anchor.get(1));
        tx.execute(&sql.audit.permit, &[&self.projection, &last])
            .await
            .map_err(|e| self.error(e))?;
        let removed = tx
            .execute(&sql.audit.prune, &[&self.projection, &last])
            .await
            .map_err(|e| self.error(e))?;
        tx.execute(&sql.audit.unpermit, &[&self.projection])
            .await
            .map_err(|e| self.error(e))?;
        let range = (first as u64, last as u64);
        let row = audit::prune_row(
            &self.projection,
            &tail,
            (range.0, range.1, removed),
            &anchor,
            retention,
        );
        self.insert_rows(&tx, std::slice::from_ref(&row), None)
            .await?;
        tx.commit().await.map_err(|e| self.error(e))?;
        audit::count_appended(&self.projection, 1);
        report.removed = removed;
        report.range = Some(range);
        report.entry = Some(row.seq);
        Ok(report)
    }
}

fn audit_row(row: &Row) -> audit::Row {
    audit::Row {
        seq: row.get::<_, i64>(0) as u64,
        projection: row.get(1),
        kind: AuditKind::parse(row.get(2)),
        collection: row.get(3),
        id: row.get(4),
        before: row.get(5),
        after: row.get(6),
        event_id: row.get(7),
        event_type: row.get(8),
        aggregate_type: row.get(9),
        aggregate_id: row.get(10),
        version: row.get(11),
        position: row.get(12),
        correlation_id: row.get(13),
        at: row.get(14),
        detail: row.get(15),
        hash: row.get(16),
    }
}
