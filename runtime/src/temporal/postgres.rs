//! The read-only history of a PostgreSQL event store: its own pool whose sessions default to
//! read-only transactions, and every read inside an explicit `READ ONLY` transaction with a
//! statement timeout as a backstop to the page's time budget.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::value::RawValue;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{NoTls, Row};

use super::history::{History, KeyWindow, Pin, Scope};
use crate::event::{EventId, Metadata, RecordedEvent, StreamId};
use crate::store::{OpenError, ReadError, StoredPayload};

const COLUMNS: &str = "global_position, tx_id::text::int8, partition, event_id, aggregate_type, \
     aggregate_id, version, event_type, schema_version, payload, metadata, recorded_at";

/// The read-only history of the PostgreSQL event store in one schema.
#[derive(Clone)]
pub struct PostgresHistory {
    pool: Pool,
    schema: String,
    partitions: u16,
    statement_timeout: Duration,
}

impl std::fmt::Debug for PostgresHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresHistory")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn read_err(err: tokio_postgres::Error) -> ReadError {
    if crate::pg::is_connection_error(&err) {
        ReadError::Unavailable(Box::new(err))
    } else {
        ReadError::Backend(Box::new(err))
    }
}

impl PostgresHistory {
    /// Connects to the store in `schema` at `url` read-only (the schema must exist: this
    /// handle never migrates). Sessions default to read-only transactions; a URL naming a
    /// role with only `SELECT` rights adds a third wall.
    pub async fn connect(url: &str, schema: &str, pool_size: usize) -> Result<Self, OpenError> {
        crate::store::postgres::check_schema_name(schema)?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                OpenError::Config(format!("invalid PostgreSQL URL: {e}"))
            })?;
        config.options("-c default_transaction_read_only=on");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| OpenError::Config(e.to_string()))?;
        let client = pool
            .get()
            .await
            .map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        let partitions = client
            .query_opt(
                &format!("SELECT value FROM {schema}.store_meta WHERE key = 'partitions'"),
                &[],
            )
            .await
            .map_err(|e| {
                OpenError::Config(format!("no Nexus event store in schema `{schema}`: {e}"))
            })?
            .and_then(|row| row.get::<_, String>(0).parse::<u16>().ok())
            .ok_or_else(|| {
                OpenError::Config(format!("no Nexus event store in schema `{schema}`"))
            })?;
        drop(client);
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            partitions,
            statement_timeout: Duration::from_secs(31),
        })
    }

    /// The same handle with another statement timeout (default 31 s, just above the default
    /// page time budget).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// A pooled connection inside a new read-only transaction whose first statement (the
    /// statement timeout) already ran, so it can no longer be switched to read-write.
    async fn read_only<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, ReadError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| ReadError::Unavailable(Box::new(e)))?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(read_err)?;
        // A query takes the transaction's snapshot, after which PostgreSQL refuses
        // `SET TRANSACTION READ WRITE`.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}; SELECT 1",
            self.statement_timeout.as_millis()
        ))
        .await
        .map_err(read_err)?;
        let result = work(&tx).await.map_err(read_err)?;
        tx.commit().await.map_err(read_err)?;
        Ok(result)
    }

    /// Runs `sql` in a read-only transaction.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ReadError> {
        self.read_only(async |tx| {
            let statement = tx.prepare_cached(sql).await?;
            tx.query(&statement, params).await
        })
        .await
    }

    /// Runs SQL through this handle's read-only path, for tests proving it refuses writes (an
    /// `INSERT` fails with "cannot execute INSERT in a read-only transaction").
    #[doc(hidden)]
    pub async fn try_statement(&self, sql: &str) -> Result<(), ReadError> {
        self.read_only(async |tx| tx.batch_execute(sql).await).await
    }

    fn partition(&self, stream: &StreamId) -> i16 {
        stream.partition(self.partitions) as i16
    }
}

fn decode(row: &Row) -> Result<RecordedEvent, ReadError> {
    let position = row.get::<_, i64>(0) as u64;
    let corrupt = |e: tokio_postgres::Error| ReadError::Corrupt {
        position,
        source: Box::new(e),
    };
    let payload: Json<Box<RawValue>> = row.try_get(9).map_err(corrupt)?;
    let metadata: Json<Metadata> = row.try_get(10).map_err(corrupt)?;
    Ok(RecordedEvent {
        id: EventId(row.get(3)),
        stream: StreamId::new(row.get::<_, &str>(4), row.get::<_, &str>(5)),
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

fn to_i64(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

fn window_of(rows: &[Row]) -> Option<KeyWindow> {
    let row = rows.first()?;
    match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
        (Some(first), Some(last)) => Some(KeyWindow {
            first: first as u64,
            last: last as u64,
        }),
        _ => None,
    }
}

#[async_trait]
impl History for PostgresHistory {
    async fn pin(&self, scope: &Scope) -> Result<Pin, ReadError> {
        let rows = match scope {
            Scope::Stream(stream) => {
                self.query(
                    &format!(
                        "SELECT COALESCE(MAX(version), 0) FROM {}.events WHERE partition = $1 \
                         AND aggregate_type = $2 AND aggregate_id = $3",
                        self.schema
                    ),
                    &[
                        &self.partition(stream),
                        &stream.aggregate_type(),
                        &stream.aggregate_id(),
                    ],
                )
                .await?
            }
            _ => {
                self.query(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
                    &[],
                )
                .await?
            }
        };
        Ok(Pin(rows
            .first()
            .map_or(0, |row| row.get::<_, i64>(0) as u64)))
    }

    async fn window(
        &self,
        scope: &Scope,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        pin: Pin,
    ) -> Result<Option<KeyWindow>, ReadError> {
        let schema = &self.schema;
        let version_pin = to_i64(pin.0);
        let pin = pin.0.to_string();
        let rows = match scope {
            Scope::Stream(stream) => {
                self.query(
                    &format!(
                        "SELECT MIN(version), MAX(version) FROM {schema}.events WHERE partition = $1 \
                         AND aggregate_type = $2 AND aggregate_id = $3 AND recorded_at >= $4 \
                         AND recorded_at < $5 AND version <= $6"
                    ),
                    &[
                        &self.partition(stream),
                        &stream.aggregate_type(),
                        &stream.aggregate_id(),
                        &from,
                        &to,
                        &version_pin,
                    ],
                )
                .await?
            }
            Scope::AggregateType(kind) => {
                self.query(
                    &format!(
                        "SELECT MIN(global_position), MAX(global_position) FROM {schema}.events \
                         WHERE recorded_at >= $1 AND recorded_at < $2 AND tx_id < $3::text::xid8 \
                         AND aggregate_type = $4"
                    ),
                    &[&from, &to, &pin, kind],
                )
                .await?
            }
            Scope::All => {
                self.query(
                    &format!(
                        "SELECT MIN(global_position), MAX(global_position) FROM {schema}.events \
                         WHERE recorded_at >= $1 AND recorded_at < $2 AND tx_id < $3::text::xid8"
                    ),
                    &[&from, &to, &pin],
                )
                .await?
            }
        };
        Ok(window_of(&rows))
    }

    async fn scan(
        &self,
        scope: &Scope,
        after: u64,
        last: u64,
        pin: Pin,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let schema = &self.schema;
        let version_pin = to_i64(pin.0);
        let pin = pin.0.to_string();
        let (after, last, limit) = (to_i64(after), to_i64(last), limit as i64);
        let rows = match scope {
            Scope::Stream(stream) => {
                self.query(
                    &format!(
                        "SELECT {COLUMNS} FROM {schema}.events WHERE partition = $1 AND aggregate_type = $2 \
                         AND aggregate_id = $3 AND version > $4 AND version <= $5 \
                         AND version <= $6 ORDER BY version LIMIT $7"
                    ),
                    &[
                        &self.partition(stream),
                        &stream.aggregate_type(),
                        &stream.aggregate_id(),
                        &after,
                        &last,
                        &version_pin,
                        &limit,
                    ],
                )
                .await?
            }
            Scope::AggregateType(kind) => {
                self.query(
                    &format!(
                        "SELECT {COLUMNS} FROM {schema}.events WHERE aggregate_type = $1 \
                         AND global_position > $2 AND global_position <= $3 \
                         AND tx_id < $4::text::xid8 ORDER BY global_position LIMIT $5"
                    ),
                    &[kind, &after, &last, &pin, &limit],
                )
                .await?
            }
            Scope::All => {
                self.query(
                    &format!(
                        "SELECT {COLUMNS} FROM {schema}.events WHERE global_position > $1 \
                         AND global_position <= $2 AND tx_id < $3::text::xid8 \
                         ORDER BY global_position LIMIT $4"
                    ),
                    &[&after, &last, &pin, &limit],
                )
                .await?
            }
        };
        rows.iter().map(decode).collect()
    }

    async fn version_at(
        &self,
        stream: &StreamId,
        before: Option<DateTime<Utc>>,
        pin: Pin,
    ) -> Result<Option<u64>, ReadError> {
        let schema = &self.schema;
        let before = before.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let rows = self
            .query(
                &format!(
                    "SELECT MAX(version) FROM {schema}.events WHERE partition = $1 AND aggregate_type = $2 \
                     AND aggregate_id = $3 AND recorded_at < $4 AND version <= $5"
                ),
                &[
                    &self.partition(stream),
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &before,
                    &to_i64(pin.0),
                ],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .map(|v| v as u64))
    }

    async fn payloads(
        &self,
        stream: &StreamId,
        after: u64,
        last: u64,
        limit: usize,
    ) -> Result<Vec<StoredPayload>, ReadError> {
        let schema = &self.schema;
        let rows = self
            .query(
                &format!(
                    "SELECT version, event_type, payload::text, schema_version FROM {schema}.events WHERE partition = $1 \
                     AND aggregate_type = $2 AND aggregate_id = $3 AND version > $4 AND version <= $5 \
                     ORDER BY version LIMIT $6"
                ),
                &[
                    &self.partition(stream),
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &to_i64(after),
                    &to_i64(last),
                    &(limit as i64),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredPayload {
                    version: row.try_get::<_, i64>(0).map_err(read_err)? as u64,
                    event_type: row.try_get(1).map_err(read_err)?,
                    payload: row.try_get(2).map_err(read_err)?,
                    schema_version: crate::store::postgres::schema_version(row, 3)?,
                })
            })
            .collect()
    }
}
