//! A projection's read model: documents, the checkpoint and the dead-letter queue in one
//! SQLite file, so that a batch of document writes and the checkpoint commit together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::changes::Writes;
use crate::event::{LogPosition, RecordedEvent, StreamId};

/// Why the read model failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// The SQLite file failed.
    #[error("read model `{path}` failed")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored document or dead letter does not decode.
    #[error("read model `{path}` holds a corrupt record")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A filter field is not a plain field name.
    #[error("invalid filter field `{0}`: use letters, digits, `_` and `.` for nesting")]
    InvalidField(String),
    /// No dead letter has this id.
    #[error("no dead letter with id {0}")]
    NoSuchDeadLetter(i64),
}

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE TABLE IF NOT EXISTS stream_versions (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE TABLE IF NOT EXISTS checkpoint (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    commit_key INTEGER NOT NULL,
    position   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    envelope        TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL,
    last_failed_at  INTEGER NOT NULL,
    status          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_status ON dead_letters (status, position);
";

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Failed every attempt; its key moved on.
    Dead,
    /// Held back behind an earlier dead letter of its key (park mode), never attempted.
    Parked,
    /// Asked to be processed again; the runner picks it up.
    Redrive,
}

impl DeadLetterStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::Parked => "parked",
            Self::Redrive => "redrive",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "parked" => Self::Parked,
            "redrive" => Self::Redrive,
            _ => Self::Dead,
        }
    }
}

/// An event a projection could not apply, with everything needed to understand and redrive it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its id in this dead-letter queue.
    pub id: i64,
    /// The full event, payload and metadata included.
    pub event: RecordedEvent,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the last attempt failed.
    pub last_failed_at: DateTime<Utc>,
    /// Where it stands.
    pub status: DeadLetterStatus,
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveFilter {
    /// One dead letter.
    Id(i64),
    /// Every dead letter of one stream (partition key), in order.
    Stream(StreamId),
    /// Every dead letter.
    All,
}

/// A dead letter about to be written.
#[derive(Debug, Clone)]
pub(crate) struct NewDeadLetter {
    pub(crate) event: RecordedEvent,
    pub(crate) error: String,
    pub(crate) attempts: u32,
    pub(crate) first_failed_at: DateTime<Utc>,
    pub(crate) status: DeadLetterStatus,
    /// Set when the event came from the queue itself (a failed redrive): update that row.
    pub(crate) existing: Option<i64>,
}

/// Everything one batch commits at once.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) writes: Writes,
    pub(crate) positions: HashMap<(String, String), i64>,
    pub(crate) versions: HashMap<StreamId, u64>,
    pub(crate) dead_letters: Vec<NewDeadLetter>,
    pub(crate) redriven: Vec<i64>,
    pub(crate) checkpoint: Option<LogPosition>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.versions.is_empty()
            && self.dead_letters.is_empty()
            && self.redriven.is_empty()
            && self.checkpoint.is_none()
    }
}

/// The SQLite file of one projection's read model.
#[derive(Clone)]
pub struct ReadModelStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for ReadModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReadModelStore {
    /// Opens (creating if needed) the read model at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReadModelError> {
        let path = path.as_ref().to_path_buf();
        let sqlite = |source| ReadModelError::Sqlite {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        // NORMAL, not FULL: in WAL mode a power loss may drop the last commits, but documents
        // and checkpoint drop together, and the events they came from are still in the store,
        // so they are applied again. The event store itself stays FULL.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, source: rusqlite::Error) -> ReadModelError {
        ReadModelError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, source: serde_json::Error) -> ReadModelError {
        ReadModelError::Corrupt {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .expect("read model connection lock poisoned")
    }

    /// Document `id` of `collection`.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, ReadModelError> {
        let conn = self.lock();
        let body: Option<String> = conn
            .prepare_cached("SELECT body FROM documents WHERE collection = ?1 AND id = ?2")
            .and_then(|mut s| {
                s.query_row(params![collection, id], |row| row.get(0))
                    .optional()
            })
            .map_err(|e| self.sqlite(e))?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| self.corrupt(e)))
            .transpose()
    }

    /// Documents of `collection` whose fields equal the given values, ordered by id.
    ///
    /// Field names may use `.` for nested fields (`customer.name`).
    pub fn list(
        &self,
        collection: &str,
        filters: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<Vec<(String, Value)>, ReadModelError> {
        let mut sql = String::from("SELECT id, body FROM documents WHERE collection = ?1");
        let mut values: Vec<rusqlite::types::Value> = vec![collection.to_owned().into()];
        for (field, value) in filters {
            let valid = !field.is_empty()
                && field.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !valid {
                return Err(ReadModelError::InvalidField(field.clone()));
            }
            values.push(format!("$.{field}").into());
            let index = values.len();
            values.push(match value {
                Value::String(s) => s.clone().into(),
                Value::Bool(b) => i64::from(*b).into(),
                Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default().into(),
                Value::Number(n) => n.as_f64().unwrap_or_default().into(),
                Value::Null => rusqlite::types::Value::Null,
                other => other.to_string().into(),
            });
            sql.push_str(&format!(
                " AND json_extract(body, ?{index}) IS ?{}",
                index + 1
            ));
        }
        sql.push_str(&format!(
            " ORDER BY id LIMIT {} OFFSET {}",
            limit.min(10_000),
            offset
        ));
        let conn = self.lock();
        let mut stmt = conn.prepare(&sql).map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.sqlite(e))?;
        let mut documents = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(|e| self.sqlite(e))?;
            documents.push((
                id,
                serde_json::from_str(&body).map_err(|e| self.corrupt(e))?,
            ));
        }
        Ok(documents)
    }

    /// The version of `stream` this read model has applied.
    pub fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadModelError> {
        let conn = self.lock();
        conn.prepare_cached(
            "SELECT version FROM stream_versions WHERE aggregate_type = ?1 AND aggregate_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(
                params![stream.aggregate_type(), stream.aggregate_id()],
                |row| row.get::<_, i64>(0),
            )
            .optional()
        })
        .map(|v| v.unwrap_or(0) as u64)
        .map_err(|e| self.sqlite(e))
    }

    /// The log position up to which every event has been applied or dead-lettered.
    pub fn checkpoint(&self) -> Result<Option<LogPosition>, ReadModelError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT commit_key, position FROM checkpoint WHERE singleton = 1",
            [],
            |row| {
                Ok(LogPosition {
                    commit: row.get::<_, i64>(0)? as u64,
                    position: row.get::<_, i64>(1)? as u64,
                })
            },
        )
        .optional()
        .map_err(|e| self.sqlite(e))
    }

    /// Commits a batch in one transaction (and one fsync).
    pub(crate) fn commit(&self, batch: &Batch) -> Result<(), ReadModelError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let now = Utc::now().timestamp_micros();
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO documents (collection, id, body, position, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body, \
                     position = excluded.position, updated_at = excluded.updated_at",
                )
                .map_err(|e| self.sqlite(e))?;
            let mut delete = tx
                .prepare_cached("DELETE FROM documents WHERE collection = ?1 AND id = ?2")
                .map_err(|e| self.sqlite(e))?;
            for ((collection, id), document) in &batch.writes {
                match document {
                    Some(document) => {
                        let position = batch
                            .positions
                            .get(&(collection.clone(), id.clone()))
                            .copied()
                            .unwrap_or(0);
                        put.execute(params![collection, id, document.to_string(), position, now])
                            .map_err(|e| self.sqlite(e))?;
                    }
                    None => {
                        delete
                            .execute(params![collection, id])
                            .map_err(|e| self.sqlite(e))?;
                    }
                }
            }
            let mut version = tx
                .prepare_cached(
                    "INSERT INTO stream_versions (aggregate_type, aggregate_id, version) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = MAX(version, excluded.version)",
                )
                .map_err(|e| self.sqlite(e))?;
            for (stream, v) in &batch.versions {
                version
                    .execute(params![
                        stream.aggregate_type(),
                        stream.aggregate_id(),
                        *v as i64
                    ])
                    .map_err(|e| self.sqlite(e))?;
            }
            for letter in &batch.dead_letters {
                let envelope = serde_json::to_string(&letter.event).map_err(|e| self.corrupt(e))?;
                match letter.existing {
                    Some(id) => tx.execute(
                        "UPDATE dead_letters SET error = ?2, attempts = attempts + ?3, last_failed_at = ?4, status = ?5 WHERE id = ?1",
                        params![id, letter.error, letter.attempts, now, letter.status.as_str()],
                    ),
                    None => tx.execute(
                        "INSERT INTO dead_letters (event_id, aggregate_type, aggregate_id, version, position, event_type, \
                         envelope, error, attempts, first_failed_at, last_failed_at, status) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        params![
                            letter.event.id.to_string(),
                            letter.event.stream.aggregate_type(),
                            letter.event.stream.aggregate_id(),
                            letter.event.version as i64,
                            letter.event.position as i64,
                            letter.event.event_type,
                            envelope,
                            letter.error,
                            letter.attempts,
                            letter.first_failed_at.timestamp_micros(),
                            now,
                            letter.status.as_str(),
                        ],
                    ),
                }
                .map_err(|e| self.sqlite(e))?;
            }
            for id in &batch.redriven {
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])
                    .map_err(|e| self.sqlite(e))?;
            }
            if let Some(checkpoint) = batch.checkpoint {
                tx.execute(
                    "INSERT INTO checkpoint (singleton, commit_key, position) VALUES (1, ?1, ?2) \
                     ON CONFLICT (singleton) DO UPDATE SET commit_key = excluded.commit_key, position = excluded.position",
                    params![checkpoint.commit as i64, checkpoint.position as i64],
                )
                .map_err(|e| self.sqlite(e))?;
            }
        }
        tx.commit().map_err(|e| self.sqlite(e))
    }

    fn row_to_dead_letter(
        &self,
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<Result<DeadLetter, ReadModelError>> {
        let envelope: String = row.get(1)?;
        let micros = |v: i64| DateTime::<Utc>::from_timestamp_micros(v).unwrap_or_default();
        let status: String = row.get(6)?;
        let id: i64 = row.get(0)?;
        let error: String = row.get(2)?;
        let attempts: u32 = row.get(3)?;
        let first_failed_at = micros(row.get(4)?);
        let last_failed_at = micros(row.get(5)?);
        Ok(serde_json::from_str::<RecordedEvent>(&envelope)
            .map_err(|e| self.corrupt(e))
            .map(|event| DeadLetter {
                id,
                event,
                error,
                attempts,
                first_failed_at,
                last_failed_at,
                status: DeadLetterStatus::parse(&status),
            }))
    }

    fn query_dead_letters(
        &self,
        where_sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, envelope, error, attempts, first_failed_at, last_failed_at, status \
                 FROM dead_letters {where_sql} ORDER BY position, id"
            ))
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params, |row| self.row_to_dead_letter(row))
            .map_err(|e| self.sqlite(e))?;
        let mut letters = Vec::new();
        for row in rows {
            letters.push(row.map_err(|e| self.sqlite(e))??);
        }
        Ok(letters)
    }

    /// Every dead letter, in log order.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, ReadModelError> {
        self.query_dead_letters("", [])
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: i64) -> Result<DeadLetter, ReadModelError> {
        self.query_dead_letters("WHERE id = ?1", [id])?
            .pop()
            .ok_or(ReadModelError::NoSuchDeadLetter(id))
    }

    /// Dead letters waiting to be processed again, in log order.
    pub(crate) fn redrive_requests(&self) -> Result<Vec<DeadLetter>, ReadModelError> {
        self.query_dead_letters("WHERE status = 'redrive'", [])
    }

    /// Asks the running projection to process dead letters again; returns how many were marked.
    ///
    /// Works from another process too: the runner polls its queue for redrive requests.
    pub fn request_redrive(&self, filter: &RedriveFilter) -> Result<usize, ReadModelError> {
        let conn = self.lock();
        let changed = match filter {
            RedriveFilter::Id(id) => {
                let n = conn
                    .execute("UPDATE dead_letters SET status = 'redrive' WHERE id = ?1", [id])
                    .map_err(|e| self.sqlite(e))?;
                if n == 0 {
                    return Err(ReadModelError::NoSuchDeadLetter(*id));
                }
                n
            }
            RedriveFilter::Stream(stream) => conn
                .execute(
                    "UPDATE dead_letters SET status = 'redrive' WHERE aggregate_type = ?1 AND aggregate_id = ?2",
                    params![stream.aggregate_type(), stream.aggregate_id()],
                )
                .map_err(|e| self.sqlite(e))?,
            RedriveFilter::All => conn
                .execute("UPDATE dead_letters SET status = 'redrive'", [])
                .map_err(|e| self.sqlite(e))?,
        };
        Ok(changed)
    }
}
