//! The read-only history of an embedded (SQLite) event store: its file opened `mode=ro` with
//! `query_only` on, so neither the handle nor the connection can write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, Row, params};

use super::history::{History, KeyWindow, Pin, Scope};
use crate::event::{RecordedEvent, StreamId};
use crate::store::{OpenError, ReadError, StoredPayload};

/// The embedded store's columns, in the order its row decoder reads them.
const COLUMNS: &str = crate::store::embedded::SELECT_COLUMNS;

/// Connections kept for reuse.
const MAX_IDLE: usize = 8;

/// The read-only history of the embedded store in one SQLite file.
#[derive(Clone)]
pub struct SqliteHistory {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl std::fmt::Debug for SqliteHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHistory")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(err: rusqlite::Error) -> ReadError {
    ReadError::Backend(Box::new(err))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

impl SqliteHistory {
    /// Opens the embedded store's file at `path` read-only; it must exist already.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(OpenError::Config(format!(
                "no event store at {}",
                path.display()
            )));
        }
        let conn = connect(&path).map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(|e| OpenError::Unavailable(Box::new(e)))
        .and_then(|n| {
            if n == 1 {
                Ok(())
            } else {
                Err(OpenError::Config(format!(
                    "{} is not a Nexus event store",
                    path.display()
                )))
            }
        })?;
        Ok(Self {
            path,
            idle: Arc::new(Mutex::new(vec![conn])),
        })
    }

    /// The file this history reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ReadError> + Send + 'static,
    {
        let idle = Arc::clone(&self.idle);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = idle.lock().expect("history pool lock poisoned").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => connect(&path).map_err(|e| ReadError::Unavailable(Box::new(e)))?,
            };
            let result = f(&conn);
            let mut idle = idle.lock().expect("history pool lock poisoned");
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| ReadError::Backend(Box::new(e)))?
    }

    /// Runs one statement through this handle's connection, for tests proving the connection
    /// refuses writes (an `INSERT` must fail with a read-only error).
    #[doc(hidden)]
    pub async fn try_statement(&self, sql: &str) -> Result<(), ReadError> {
        let sql = sql.to_owned();
        self.with(move |conn| conn.execute_batch(&sql).map_err(backend))
            .await
    }
}

/// Decodes one row of [`COLUMNS`] the way the embedded store does.
fn decode(row: &Row<'_>) -> rusqlite::Result<Result<RecordedEvent, ReadError>> {
    crate::store::embedded::row_to_event(row, None)
}

fn to_i64(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

#[async_trait]
impl History for SqliteHistory {
    async fn pin(&self, _scope: &Scope) -> Result<Pin, ReadError> {
        self.with(|conn| {
            conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|p| Pin(p as u64))
            .map_err(backend)
        })
        .await
    }

    async fn window(
        &self,
        scope: &Scope,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        pin: Pin,
    ) -> Result<Option<KeyWindow>, ReadError> {
        let scope = scope.clone();
        let (from, to, pin) = (
            from.timestamp_micros(),
            to.timestamp_micros(),
            to_i64(pin.0),
        );
        self.with(move |conn| {
            let row = |row: &Row<'_>| {
                Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
            };
            let bounds = match &scope {
                Scope::Stream(stream) => conn
                    .prepare_cached(
                        "SELECT MIN(version), MAX(version) FROM events WHERE aggregate_type = ?1 \
                         AND aggregate_id = ?2 AND recorded_at >= ?3 AND recorded_at < ?4 AND position <= ?5",
                    )
                    .and_then(|mut s| {
                        s.query_row(
                            params![stream.aggregate_type(), stream.aggregate_id(), from, to, pin],
                            row,
                        )
                    }),
                Scope::AggregateType(kind) => conn
                    .prepare_cached(
                        "SELECT MIN(position), MAX(position) FROM events \
                         WHERE recorded_at >= ?1 AND recorded_at < ?2 AND position <= ?3 AND aggregate_type = ?4",
                    )
                    .and_then(|mut s| s.query_row(params![from, to, pin, kind], row)),
                Scope::All => conn
                    .prepare_cached(
                        "SELECT MIN(position), MAX(position) FROM events \
                         WHERE recorded_at >= ?1 AND recorded_at < ?2 AND position <= ?3",
                    )
                    .and_then(|mut s| s.query_row(params![from, to, pin], row)),
            }
            .map_err(backend)?;
            Ok(match bounds {
                (Some(first), Some(last)) => Some(KeyWindow {
                    first: first as u64,
                    last: last as u64,
                }),
                _ => None,
            })
        })
        .await
    }

    async fn scan(
        &self,
        scope: &Scope,
        after: u64,
        last: u64,
        pin: Pin,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let scope = scope.clone();
        let (after, last, pin, limit) = (to_i64(after), to_i64(last), to_i64(pin.0), limit as i64);
        self.with(move |conn| {
            let mut stmt;
            let rows = match &scope {
                Scope::Stream(stream) => {
                    stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                             AND version > ?3 AND version <= ?4 AND position <= ?5 ORDER BY version LIMIT ?6"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(
                        params![stream.aggregate_type(), stream.aggregate_id(), after, last, pin, limit],
                        decode,
                    )
                }
                Scope::AggregateType(kind) => {
                    stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM events WHERE aggregate_type = ?1 \
                             AND position > ?2 AND position <= ?3 AND position <= ?4 ORDER BY position LIMIT ?5"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(params![kind, after, last, pin, limit], decode)
                }
                Scope::All => {
                    stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM events \
                             WHERE position > ?1 AND position <= ?2 AND position <= ?3 ORDER BY position LIMIT ?4"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(params![after, last, pin, limit], decode)
                }
            }
            .map_err(backend)?;
            let mut events = Vec::new();
            for row in rows {
                events.push(row.map_err(backend)??);
            }
            Ok(events)
        })
        .await
    }

    async fn version_at(
        &self,
        stream: &StreamId,
        before: Option<DateTime<Utc>>,
        pin: Pin,
    ) -> Result<Option<u64>, ReadError> {
        let stream = stream.clone();
        let before = before.map_or(i64::MAX, |t| t.timestamp_micros());
        let pin = to_i64(pin.0);
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT MAX(version) FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                 AND recorded_at < ?3 AND position <= ?4",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![stream.aggregate_type(), stream.aggregate_id(), before, pin],
                    |row| row.get::<_, Option<i64>>(0),
                )
            })
            .map(|v| v.map(|v| v as u64))
            .map_err(backend)
        })
        .await
    }

    async fn payloads(
        &self,
        stream: &StreamId,
        after: u64,
        last: u64,
        limit: usize,
    ) -> Result<Vec<StoredPayload>, ReadError> {
        let stream = stream.clone();
        let (after, last, limit) = (to_i64(after), to_i64(last), limit as i64);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, event_type, payload, schema_version FROM events WHERE aggregate_type = ?1 \
                     AND aggregate_id = ?2 AND version > ?3 AND version <= ?4 ORDER BY version LIMIT ?5",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![stream.aggregate_type(), stream.aggregate_id(), after, last, limit],
                    |row| {
                        Ok(StoredPayload {
                            version: row.get::<_, i64>(0)? as u64,
                            event_type: row.get(1)?,
                            payload: row.get(2)?,
                            schema_version: row.get(3)?,
                        })
                    },
                )
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }
}
