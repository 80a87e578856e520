//! The SQLite backend of read models: one file per projection holding its documents,
//! applied stream versions, checkpoint and dead letters. Every method blocks; the
//! `ReadModelStore` handle calls them on Tokio's blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::audit::{self, AuditKind, AuditPage, AuditReport, PruneReport, Retention, Row, Tail};
use super::{Batch, DeadLetter, DeadLetterStatus, ReadModelError, RedriveFilter};
use crate::event::{LogPosition, RecordedEvent, StreamId};
use crate::wal::WalCheckpointer;

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
CREATE TABLE IF NOT EXISTS notify_state (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    epoch      TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    checkpoint INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    position INTEGER PRIMARY KEY,
    note     TEXT    NOT NULL,
    document TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_status ON dead_letters (status, position);
CREATE INDEX IF NOT EXISTS dead_letters_stream ON dead_letters (aggregate_type, aggregate_id, version);
CREATE TABLE IF NOT EXISTS audit_log (
    seq            INTEGER PRIMARY KEY,
    projection     TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('change', 'rebuild', 'prune')),
    collection     TEXT,
    id             TEXT,
    before         TEXT,
    after          TEXT,
    event_id       TEXT,
    event_type     TEXT,
    aggregate_type TEXT,
    aggregate_id   TEXT,
    version        INTEGER,
    position       INTEGER,
    correlation_id TEXT,
    at             INTEGER NOT NULL,
    detail         TEXT,
    hash           BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_document ON audit_log (collection, id, seq) WHERE kind = 'change';
CREATE INDEX IF NOT EXISTS audit_log_marks ON audit_log (kind, seq) WHERE kind <> 'change';
CREATE TABLE IF NOT EXISTS audit_head (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    checkpoint INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_prune_permit (upto INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_log_is_append_only_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'nexus: the read-model audit log is append-only, UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_is_append_only_delete BEFORE DELETE ON audit_log
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_permit WHERE OLD.seq <= upto)
BEGIN SELECT RAISE(ABORT, 'nexus: the read-model audit log is append-only, DELETE is allowed to retention only'); END;
-- INSERT OR REPLACE deletes the row it collides with without firing the DELETE trigger.
CREATE TRIGGER IF NOT EXISTS audit_log_is_append_only_replace BEFORE INSERT ON audit_log
WHEN EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'nexus: the read-model audit log is append-only, REPLACE is not allowed'); END;
";

const AUDIT_COLUMNS: &str = "seq, projection, kind, collection, id, before, after, event_id, event_type, \
     aggregate_type, aggregate_id, version, position, correlation_id, at, detail, hash";

/// Idle read connections kept per read model; a read finding none opens one, and one returned
/// to a full pool is closed.
const MAX_IDLE_READERS: usize = 4;

/// The SQLite file of one projection's read model.
///
/// Commits and the projection's own bookkeeping go through one connection; reads of documents
/// (`get`, `list`: what the query routes serve) take connections of their own, so in WAL mode
/// they read the last commit without waiting for a commit in progress, nor for one another.
pub(super) struct SqliteReadModel {
    path: PathBuf,
    /// The projection (the file's stem), as its audit entries name it.
    projection: String,
    conn: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    wal_checkpointer: Mutex<WalCheckpointer>,
}

impl SqliteReadModel {
    /// Opens (creating if needed) the read model at `path`.
    pub(super) fn open(path: &Path) -> Result<Self, ReadModelError> {
        let path = path.to_path_buf();
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
        // Commits never copy the log back into the database themselves: that copy syncs the
        // file and would stall the projection now and then; a background thread does it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sqlite)?;
        // A commit alone uses about fifteen cached statements (documents, versions, checkpoint,
        // audit, notification log), more than rusqlite's default cache of 16 keeps beside the
        // runner's other statements: a statement evicted is prepared again on its next use.
        conn.set_prepared_statement_cache_capacity(64);
        crate::store::embedded::plan_once(&conn).map_err(sqlite)?;
        let projection = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            wal_checkpointer: Mutex::new(WalCheckpointer::new(&path)),
            projection,
            path,
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `read` on an idle read connection (opening one when none is idle), then keeps the
    /// connection for the next read unless [`MAX_IDLE_READERS`] already wait.
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, ReadModelError>,
    ) -> Result<T, ReadModelError> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path).map_err(|e| self.sqlite(e))?;
                conn.busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(|e| self.sqlite(e))?;
                crate::store::embedded::plan_once(&conn).map_err(|e| self.sqlite(e))?;
                conn
            }
        };
        let result = read(&conn);
        let mut readers = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if readers.len() < MAX_IDLE_READERS {
            readers.push(conn);
        }
        result
    }

    #[cfg(test)]
    fn idle_readers(&self) -> usize {
        self.readers.lock().map(|r| r.len()).unwrap_or_default()
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
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
            read_model: self.path.display().to_string(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .expect("read model connection lock poisoned")
    }

    /// Document `id` of `collection`.
    pub(super) fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, ReadModelError> {
        let body: Option<String> = self.read(|conn| {
            conn.prepare_cached("SELECT body FROM documents WHERE collection = ?1 AND id = ?2")
                .and_then(|mut s| {
                    s.query_row(params![collection, id], |row| row.get(0))
                        .optional()
                })
                .map_err(|e| self.sqlite(e))
        })?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| self.corrupt(e)))
            .transpose()
    }

    /// Documents of `collection` whose fields equal the given values, ordered by id.
    ///
    /// Field names may use `.` for nested fields (`customer.name`).
    pub(super) fn list(
        &self,
        collection: &str,
        filters: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<Vec<(String, Value)>, ReadModelError> {
        let mut sql = String::from("SELECT id, body FROM documents WHERE collection = ?1");
        let mut values: Vec<rusqlite::types::Value> = vec![collection.to_owned().into()];
        for (field, value) in filters {
            super::check_field(field)?;
            values.push(format!("$.{field}").into());
            let index = values.len();
            // `json_extract` turns JSON `true` into 1, so the JSON type is compared too: a
            // boolean matches only a boolean and a number only a number, as `jsonb` equality
            // does on PostgreSQL.
            let (value, types): (rusqlite::types::Value, &str) = match value {
                Value::String(s) => (s.clone().into(), "'text'"),
                Value::Bool(true) => (1.into(), "'true'"),
                Value::Bool(false) => (0.into(), "'false'"),
                Value::Number(n) if n.is_i64() => {
                    (n.as_i64().unwrap_or_default().into(), "'integer', 'real'")
                }
                Value::Number(n) => (n.as_f64().unwrap_or_default().into(), "'integer', 'real'"),
                Value::Null => (rusqlite::types::Value::Null, ""),
                other => (other.to_string().into(), "'text'"),
            };
            if types.is_empty() {
                sql.push_str(&format!(" AND json_extract(body, ?{index}) IS NULL"));
            } else {
                values.push(value);
                sql.push_str(&format!(
                    " AND json_type(body, ?{index}) IN ({types}) AND json_extract(body, ?{index}) = ?{}",
                    index + 1
                ));
            }
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {} OFFSET {}", limit, offset));
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.sqlite(e))?;
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
        })
    }

    /// The version of `stream` this read model has applied.
    pub(super) fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadModelError> {
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

    /// The versions of `streams` this read model has applied (0 for a stream it has not seen).
    pub(super) fn stream_versions(
        &self,
        streams: Vec<StreamId>,
    ) -> Result<HashMap<StreamId, u64>, ReadModelError> {
        let conn = self.lock();
        let mut select = conn
            .prepare_cached(
                "SELECT version FROM stream_versions WHERE aggregate_type = ?1 AND aggregate_id = ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut versions = HashMap::with_capacity(streams.len());
        for stream in streams {
            let version = select
                .query_row(
                    params![stream.aggregate_type(), stream.aggregate_id()],
                    |row| row.get::<_, i64>(0),
                )
                .optional()
                .map_err(|e| self.sqlite(e))?;
            versions.insert(stream, version.unwrap_or(0) as u64);
        }
        Ok(versions)
    }

    /// The log position up to which every event has been applied or dead-lettered.
    pub(super) fn checkpoint(&self) -> Result<Option<LogPosition>, ReadModelError> {
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

    /// Every document id of `collection` with its `updated_at`, in id order.
    #[cfg(feature = "search")]
    pub(super) fn stamps(&self, collection: &str) -> Result<Vec<(String, i64)>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id, updated_at FROM documents WHERE collection = ?1 ORDER BY id")
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([collection], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sqlite(e))
    }

    /// Documents `ids` of `collection` that exist, with their `updated_at`.
    #[cfg(feature = "search")]
    pub(super) fn documents(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Value, i64)>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT body, updated_at FROM documents WHERE collection = ?1 AND id = ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<(String, i64)> = stmt
                .query_row(params![collection, id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(|e| self.sqlite(e))?;
            if let Some((body, stamp)) = row {
                let body = serde_json::from_str(&body).map_err(|e| self.corrupt(e))?;
                out.push((id.clone(), body, stamp));
            }
        }
        Ok(out)
    }

    /// The notification log's epoch and newest position; a new epoch and an empty log unless
    /// the log was written up to the checkpoint.
    pub(super) fn notify_start(
        &self,
        new_epoch: String,
    ) -> Result<(String, u64, bool), ReadModelError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let checkpoint: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT position FROM checkpoint WHERE singleton = 1), 0)",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.sqlite(e))?;
        let state: Option<(String, i64, i64)> = tx
            .query_row(
                "SELECT epoch, position, checkpoint FROM notify_state WHERE singleton = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let started = match state {
            Some((epoch, position, at)) if at == checkpoint => (epoch, position as u64, false),
            _ => {
                tx.execute("DELETE FROM notifications", [])
                    .map_err(|e| self.sqlite(e))?;
                tx.execute(
                    "INSERT OR REPLACE INTO notify_state (singleton, epoch, position, checkpoint) \
                     VALUES (1, ?1, 0, ?2)",
                    params![new_epoch, checkpoint],
                )
                .map_err(|e| self.sqlite(e))?;
                (new_epoch, 0, true)
            }
        };
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(started)
    }

    /// At most `limit` logged notifications of `epoch` after `after`, in position order.
    pub(super) fn notifications_after(
        &self,
        epoch: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<super::LoggedNotification>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT position, note, document FROM notifications \
                 WHERE position > ?2 AND EXISTS (SELECT 1 FROM notify_state WHERE epoch = ?1) \
                 ORDER BY position LIMIT ?3",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![epoch, after, limit], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get(1)?, row.get(2)?))
            })
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sqlite(e))
    }

    /// Commits a batch in one transaction (and one fsync); returns the documents' `updated_at`.
    /// Commits `batch`; returns its `updated_at` stamp and the seq of the last audit entry it
    /// appended, if any.
    pub(super) fn commit(&self, batch: &Batch) -> Result<(i64, Option<u64>), ReadModelError> {
        let mut conn = self.lock();
        // Immediate: the audit chain reads its tail and appends after it, with no other writer
        // (another process on the same file) in between.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sqlite(e))?;
        let now = Utc::now().timestamp_micros();
        let (mut audited, mut last_seq) = (0, None);
        {
            // Before the documents change: the audit reads what they were.
            if !batch.audit.is_empty() {
                (audited, last_seq) = self
                    .append_changes(&tx, batch, now)
                    .map_err(|e| self.sqlite(e))?;
            }
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
            for stream in &batch.release {
                tx.execute(
                    "UPDATE dead_letters SET status = 'redrive' \
                     WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND status = 'parked'",
                    params![stream.aggregate_type(), stream.aggregate_id()],
                )
                .map_err(|e| self.sqlite(e))?;
            }
            self.close_batch(&tx, batch)?;
        }
        tx.commit().map_err(|e| self.sqlite(e))?;
        drop(conn);
        audit::count_appended(&self.projection, audited);
        self.wal_checkpointer
            .lock()
            .expect("read model WAL checkpointer lock poisoned")
            .committed();
        Ok((now, last_seq))
    }

    /// The end of a batch's transaction: its checkpoint and its notifications.
    fn close_batch(
        &self,
        tx: &rusqlite::Transaction<'_>,
        batch: &Batch,
    ) -> Result<(), ReadModelError> {
        if let Some(checkpoint) = batch.checkpoint {
            tx.prepare_cached(
                "INSERT INTO checkpoint (singleton, commit_key, position) VALUES (1, ?1, ?2) \
                 ON CONFLICT (singleton) DO UPDATE SET commit_key = excluded.commit_key, position = excluded.position",
            )
            .and_then(|mut s| s.execute(params![checkpoint.commit as i64, checkpoint.position as i64]))
            .map_err(|e| self.sqlite(e))?;
        }
        if let Some(notify) = &batch.notify {
            self.log_notifications(tx, notify)?;
        }
        Ok(())
    }

    /// Appends a commit's notifications to the log (emptying a log of another epoch first),
    /// drops what is beyond the bound, and records the log as written up to the checkpoint.
    fn log_notifications(
        &self,
        tx: &rusqlite::Transaction<'_>,
        notify: &super::NotifyCommit,
    ) -> Result<(), ReadModelError> {
        let current: Option<(String, i64)> = tx
            .prepare_cached("SELECT epoch, position FROM notify_state WHERE singleton = 1")
            .and_then(|mut s| {
                s.query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.sqlite(e))?;
        let mut last = match current {
            Some((epoch, position)) if epoch == notify.epoch => position,
            _ => {
                tx.execute("DELETE FROM notifications", [])
                    .map_err(|e| self.sqlite(e))?;
                0
            }
        };
        let mut insert = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO notifications (position, note, document) VALUES (?1, ?2, ?3)",
            )
            .map_err(|e| self.sqlite(e))?;
        for (position, note, document) in &notify.rows {
            let position = *position as i64;
            insert
                .execute(params![position, note, document])
                .map_err(|e| self.sqlite(e))?;
            last = last.max(position);
        }
        if !notify.rows.is_empty() {
            tx.prepare_cached("DELETE FROM notifications WHERE position <= ?1")
                .and_then(|mut s| s.execute([last - notify.keep as i64]))
                .map_err(|e| self.sqlite(e))?;
        }
        tx.prepare_cached(
            "INSERT OR REPLACE INTO notify_state (singleton, epoch, position, checkpoint) \
             VALUES (1, ?1, ?2, COALESCE((SELECT position FROM checkpoint WHERE singleton = 1), 0))",
        )
        .and_then(|mut s| s.execute(params![notify.epoch, last]))
        .map_err(|e| self.sqlite(e))?;
        Ok(())
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

    /// Dead letters (with `status`, or all), in log order.
    pub(super) fn dead_letters(
        &self,
        status: Option<DeadLetterStatus>,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        match status {
            Some(status) => self.query_dead_letters("WHERE status = ?1", [status.as_str()]),
            None => self.query_dead_letters("", []),
        }
    }

    /// How many dead letters the queue holds.
    pub(super) fn dead_letter_count(&self) -> Result<u64, ReadModelError> {
        let conn = self.lock();
        conn.query_row("SELECT count(*) FROM dead_letters", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(|e| self.sqlite(e))
    }

    /// The lowest dead-letter version of each of `streams` that has dead letters.
    pub(super) fn letter_heads(
        &self,
        streams: Vec<StreamId>,
    ) -> Result<HashMap<StreamId, u64>, ReadModelError> {
        let conn = self.lock();
        let mut select = conn
            .prepare_cached(
                "SELECT min(version) FROM dead_letters WHERE aggregate_type = ?1 AND aggregate_id = ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut heads = HashMap::new();
        for stream in streams {
            let head = select
                .query_row(
                    params![stream.aggregate_type(), stream.aggregate_id()],
                    |row| row.get::<_, Option<i64>>(0),
                )
                .map_err(|e| self.sqlite(e))?;
            if let Some(head) = head {
                heads.insert(stream, head as u64);
            }
        }
        Ok(heads)
    }

    /// A page of redrive requests: ids above `after`, in id order.
    pub(super) fn redrive_requests(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, envelope, error, attempts, first_failed_at, last_failed_at, status \
                 FROM dead_letters WHERE status = 'redrive' AND id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![after, limit], |row| self.row_to_dead_letter(row))
            .map_err(|e| self.sqlite(e))?;
        let mut letters = Vec::new();
        for row in rows {
            letters.push(row.map_err(|e| self.sqlite(e))??);
        }
        Ok(letters)
    }

    /// A page of the queue: ids above `after`, in id order.
    pub(super) fn dead_letter_page(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, envelope, error, attempts, first_failed_at, last_failed_at, status \
                 FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![after, limit], |row| self.row_to_dead_letter(row))
            .map_err(|e| self.sqlite(e))?;
        let mut letters = Vec::new();
        for row in rows {
            letters.push(row.map_err(|e| self.sqlite(e))??);
        }
        Ok(letters)
    }

    /// Up to `limit` collection names, by skipping along the primary key.
    pub(super) fn collections(&self, limit: i64) -> Result<Vec<String>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "WITH RECURSIVE c(name) AS (\
                   SELECT min(collection) FROM documents \
                   UNION ALL \
                   SELECT (SELECT min(collection) FROM documents WHERE collection > c.name) \
                   FROM c WHERE c.name IS NOT NULL LIMIT ?1) \
                 SELECT name FROM c WHERE name IS NOT NULL",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([limit], |row| row.get::<_, String>(0))
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sqlite(e))
    }

    /// One dead letter.
    pub(super) fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, ReadModelError> {
        Ok(self.query_dead_letters("WHERE id = ?1", [id])?.pop())
    }

    /// Marks dead letters for redrive; returns how many were marked.
    pub(super) fn request_redrive(&self, filter: &RedriveFilter) -> Result<usize, ReadModelError> {
        let conn = self.lock();
        let changed = match filter {
            RedriveFilter::Id(id) => conn
                .execute("UPDATE dead_letters SET status = 'redrive' WHERE id = ?1", [id])
                .map_err(|e| self.sqlite(e))?,
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

    /// Appends the audit entries of `batch`'s document writes, reading the documents as they
    /// were inside the commit's transaction.
    fn append_changes(
        &self,
        tx: &Connection,
        batch: &Batch,
        now: i64,
    ) -> rusqlite::Result<(u64, Option<u64>)> {
        let tail = audit_tail(tx)?;
        let mut committed = HashMap::new();
        {
            let mut body =
                tx.prepare_cached("SELECT body FROM documents WHERE collection = ?1 AND id = ?2")?;
            for key in audit::written_documents(&batch.audit) {
                let before: Option<String> = body
                    .query_row(params![key.0, key.1], |row| row.get(0))
                    .optional()?;
                committed.insert(key, before);
            }
        }
        let rows = audit::change_rows(&self.projection, &tail, &batch.audit, committed, now);
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok((0, None));
        };
        insert_audit_rows(tx, &rows)?;
        if let Some(checkpoint) = batch.checkpoint {
            tx.prepare_cached(
                "INSERT INTO audit_head (singleton, checkpoint) VALUES (1, ?1) \
                 ON CONFLICT (singleton) DO UPDATE SET checkpoint = max(checkpoint, excluded.checkpoint)",
            )?
            .execute([checkpoint.position as i64])?;
        }
        Ok((rows.len() as u64, Some(last)))
    }

    /// The seq of the newest audit entry (0 for an empty log).
    #[cfg(feature = "search")]
    pub(super) fn audit_tail_seq(&self) -> Result<u64, ReadModelError> {
        let conn = self.lock();
        audit_tail(&conn).map(|t| t.seq).map_err(|e| self.sqlite(e))
    }

    /// At most `limit` audit entries after `after`, in seq order: what each is and which
    /// document it changed (what search catch-up replays).
    #[cfg(feature = "search")]
    pub(super) fn audit_marks(
        &self,
        after: u64,
        limit: i64,
    ) -> Result<Vec<audit::AuditMark>, ReadModelError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, kind, collection, id FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![after as i64, limit], |row| {
                Ok(audit::AuditMark {
                    seq: row.get::<_, i64>(0)? as u64,
                    kind: AuditKind::parse(&row.get::<_, String>(1)?),
                    collection: row.get(2)?,
                    id: row.get(3)?,
                })
            })
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sqlite(e))
    }

    /// A run starts from `from`: below the checkpoint the audit log last saw, that is a rebuild,
    /// recorded as such; returns the `rebuild` entry's seq.
    pub(super) fn audit_run_started(&self, from: u64) -> Result<Option<u64>, ReadModelError> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> rusqlite::Result<Option<u64>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seen: Option<i64> = tx
                .query_row(
                    "SELECT checkpoint FROM audit_head WHERE singleton = 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(seen) = seen.filter(|seen| *seen as u64 > from) else {
                return Ok(None);
            };
            let tail = audit_tail(&tx)?;
            let row = audit::rebuild_row(&self.projection, &tail, from, seen as u64);
            insert_audit_rows(&tx, std::slice::from_ref(&row))?;
            tx.execute(
                "UPDATE audit_head SET checkpoint = ?1 WHERE singleton = 1",
                [from as i64],
            )?;
            tx.commit()?;
            audit::count_appended(&self.projection, 1);
            Ok(Some(row.seq))
        };
        run(&mut conn).map_err(|e| self.sqlite(e))
    }

    /// One page of a document's history: its changes after `after`, with the rebuilds and
    /// prunes since its first change.
    pub(super) fn audit_history(
        &self,
        collection: &str,
        id: &str,
        after: u64,
        limit: i64,
    ) -> Result<AuditPage, ReadModelError> {
        // On a read connection: the query route never waits for a commit in progress.
        let rows = self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log \
                 WHERE kind = 'change' AND collection = ?1 AND id = ?2 AND seq > ?3 \
                 UNION ALL \
                 SELECT {AUDIT_COLUMNS} FROM audit_log WHERE kind <> 'change' AND seq > ?3 \
                 AND seq > (SELECT min(seq) FROM audit_log \
                 WHERE kind = 'change' AND collection = ?1 AND id = ?2) \
                 ORDER BY seq LIMIT ?4"
                ))
                .map_err(|e| self.sqlite(e))?;
            stmt.query_map(params![collection, id, after as i64, limit + 1], audit_row)
                .map_err(|e| self.sqlite(e))?
                .collect::<rusqlite::Result<Vec<Row>>>()
                .map_err(|e| self.sqlite(e))
        })?;
        AuditPage::of(rows, limit).map_err(|e| self.corrupt(e))
    }

    /// Verifies the whole chain in one read transaction (a consistent snapshot), page by page.
    pub(super) fn audit_verify(&self) -> Result<AuditReport, ReadModelError> {
        // On a read connection, so commits go on meanwhile (WAL) while the walk reads its snapshot.
        let run = |conn: &Connection| -> rusqlite::Result<AuditReport> {
            let tx = conn.unchecked_transaction()?;
            let newest_prune = tx
                .query_row(
                    &format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE kind = 'prune' \
                         ORDER BY seq DESC LIMIT 1"
                    ),
                    [],
                    audit_row,
                )
                .optional()?;
            let mut verifier = audit::Verifier::new(&self.projection, newest_prune.as_ref());
            let mut page = tx.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let mut after = 0i64;
            loop {
                let rows = page
                    .query_map(params![after, audit::VERIFY_PAGE as i64], audit_row)?
                    .collect::<rusqlite::Result<Vec<Row>>>()?;
                let Some(last) = rows.last() else { break };
                after = last.seq as i64;
                if !verifier.feed(&rows) || rows.len() < audit::VERIFY_PAGE {
                    break;
                }
            }
            drop(page);
            tx.finish()?;
            Ok(verifier.finish())
        };
        self.read(|conn| run(conn).map_err(|e| self.sqlite(e)))
    }

    /// Removes the whole old segments `retention` allows, recording the removal in the chain.
    pub(super) fn audit_prune(&self, retention: &Retention) -> Result<PruneReport, ReadModelError> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> rusqlite::Result<PruneReport> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut report = PruneReport {
                projection: self.projection.clone(),
                removed: 0,
                range: None,
                entry: None,
            };
            let tail = audit_tail(&tx)?;
            let first: Option<i64> =
                tx.query_row("SELECT min(seq) FROM audit_log", [], |row| row.get(0))?;
            let Some(first) = first else {
                return Ok(report);
            };
            let mut plan = audit::PrunePlan::new(first as u64, tail.seq, retention);
            {
                let mut max_at =
                    tx.prepare_cached("SELECT max(at) FROM audit_log WHERE seq BETWEEN ?1 AND ?2")?;
                while let Some((from, to)) = plan.next() {
                    plan.observe(
                        max_at.query_row(params![from as i64, to as i64], |row| row.get(0))?,
                    );
                }
            }
            let upto = plan.upto();
            let Some(upto) = upto else {
                return Ok(report);
            };
            let (last, anchor): (i64, Vec<u8>) = tx.query_row(
                "SELECT seq, hash FROM audit_log WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                [upto as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            tx.execute("INSERT INTO audit_prune_permit (upto) VALUES (?1)", [last])?;
            let removed = tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [last])? as u64;
            tx.execute("DELETE FROM audit_prune_permit", [])?;
            let range = (first as u64, last as u64);
            let row = audit::prune_row(
                &self.projection,
                &tail,
                (range.0, range.1, removed),
                &anchor,
                retention,
            );
            insert_audit_rows(&tx, std::slice::from_ref(&row))?;
            tx.commit()?;
            audit::count_appended(&self.projection, 1);
            report.removed = removed;
            report.range = Some(range);
            report.entry = Some(row.seq);
            Ok(report)
        };
        run(&mut conn).map_err(|e| self.sqlite(e))
    }
}

/// The newest entry of the chain.
fn audit_tail(conn: &Connection) -> rusqlite::Result<Tail> {
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| {
            Ok(Tail {
                seq: row.get::<_, i64>(0)? as u64,
                hash: row.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Rows per multi-row insert of audit entries, largest first: a batch's entries go in as few
/// statements as these sizes allow (one statement per row cost a statement run per entry),
/// and the three statements stay in the connection's statement cache.
const AUDIT_INSERT_ROWS: [usize; 3] = [32, 8, 1];
/// Columns of an audit entry.
const AUDIT_FIELDS: usize = 17;

fn insert_audit_rows(conn: &Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let mut rest = rows;
    for size in AUDIT_INSERT_ROWS {
        if rest.len() < size {
            continue;
        }
        let values = vec![format!("({})", vec!["?"; AUDIT_FIELDS].join(", ")); size].join(", ");
        let mut insert = conn.prepare_cached(&format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES {values}"
        ))?;
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            for (i, row) in chunk.iter().enumerate() {
                bind_audit_row(&mut insert, i * AUDIT_FIELDS, row)?;
            }
            insert.raw_execute()?;
            rest = tail;
        }
    }
    Ok(())
}

/// Binds `row` to the parameters after `offset` of a multi-row insert.
fn bind_audit_row(
    insert: &mut rusqlite::CachedStatement<'_>,
    offset: usize,
    row: &Row,
) -> rusqlite::Result<()> {
    let values: [&dyn rusqlite::ToSql; AUDIT_FIELDS] = [
        &(row.seq as i64),
        &row.projection,
        &row.kind.as_str(),
        &row.collection,
        &row.id,
        &row.before,
        &row.after,
        &row.event_id,
        &row.event_type,
        &row.aggregate_type,
        &row.aggregate_id,
        &row.version,
        &row.position,
        &row.correlation_id,
        &row.at,
        &row.detail,
        &row.hash,
    ];
    for (i, value) in values.into_iter().enumerate() {
        insert.raw_bind_parameter(offset + i + 1, value)?;
    }
    Ok(())
}

fn audit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: row.get::<_, i64>(0)? as u64,
        projection: row.get(1)?,
        kind: AuditKind::parse(&row.get::<_, String>(2)?),
        collection: row.get(3)?,
        id: row.get(4)?,
        before: row.get(5)?,
        after: row.get(6)?,
        event_id: row.get(7)?,
        event_type: row.get(8)?,
        aggregate_type: row.get(9)?,
        aggregate_id: row.get(10)?,
        version: row.get(11)?,
        position: row.get(12)?,
        correlation_id: row.get(13)?,
        at: row.get(14)?,
        detail: row.get(15)?,
        hash: row.get(16)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_wait_for_the_writer_and_keep_a_bounded_number_of_connections() {
        let dir = std::env::temp_dir().join(format!("nexus-rm-readers-{}", uuid::Uuid::now_v7()));
        let db = std::sync::Arc::new(
            SqliteReadModel::open(&dir.join("rm.db")).expect("the read model opens"),
        );
        // The writer's connection is busy (held) while documents are read.
        let held = db.lock();
        assert_eq!(db.get("c", "missing").expect("a read"), None);
        drop(held);
        // Twice the bound at once: each opens its own connection; the bound stay idle.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(MAX_IDLE_READERS * 2));
        let threads: Vec<_> = (0..MAX_IDLE_READERS * 2)
            .map(|_| {
                let (db, barrier) = (std::sync::Arc::clone(&db), std::sync::Arc::clone(&barrier));
                std::thread::spawn(move || {
                    db.read(|_| {
                        barrier.wait();
                        Ok(())
                    })
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a reader").expect("a read");
        }
        assert_eq!(db.idle_readers(), MAX_IDLE_READERS);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Commits one batch writing `n` documents, each audited.
    fn commit_audited(db: &SqliteReadModel, first: usize, n: usize) {
        let cause = std::sync::Arc::new(audit::AuditCause {
            event_id: format!("e{first}"),
            event_type: "Set".into(),
            aggregate_type: "meter".into(),
            aggregate_id: "a".into(),
            version: first as u64 + 1,
            position: first as u64 + 1,
            correlation_id: None,
        });
        let mut batch = Batch::default();
        for i in first..first + n {
            let (key, body) = (
                ("c".to_owned(), format!("d{i}")),
                serde_json::json!({ "n": i }),
            );
            batch.audit.push(audit::AuditWrite {
                collection: key.0.clone(),
                id: key.1.clone(),
                after: Some(body.clone()),
                cause: std::sync::Arc::clone(&cause),
            });
            batch.writes.insert(key, Some(body));
        }
        let (_, last) = db.commit(&batch).expect("a commit");
        assert_eq!(last, Some((first + n) as u64));
    }

    #[test]
    fn audit_entries_chain_across_the_multi_row_insert_sizes() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = SqliteReadModel::open(&dir.path().join("rm.db")).expect("the read model opens");
        // At each statement size, one below, and one above: 32, 31 (8, 8, 8, 1 × 7), 33
        // (32 + 1), 41 (32 + 8 + 1), 40 (32 + 8), 7 (1 × 7).
        let mut total = 0;
        for n in [32, 31, 33, 41, 40, 7, 1, 8] {
            commit_audited(&db, total, n);
            total += n;
        }
        let report = db.audit_verify().expect("verification");
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.entries_checked, total as u64);
        assert_eq!(report.last_seq, Some(total as u64));
        // Each document's one entry is the write that created it, in seq order.
        let page = db.audit_history("c", "d40", 0, 10).expect("a history");
        let entry = &page.entries[0];
        assert_eq!(
            (entry.seq, entry.after.clone()),
            (41, Some(serde_json::json!({ "n": 40 })))
        );
    }

    #[test]
    fn bound_limits_do_not_prepare_statements_again() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = SqliteReadModel::open(&dir.path().join("rm.db")).expect("the read model opens");
        let sql = "SELECT seq FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2";
        let reprepared = |conn: &Connection| {
            let mut stmt = conn.prepare_cached(sql).expect("a statement");
            for limit in [1, 2, 500] {
                stmt.query_map(params![0, limit], |row| row.get::<_, i64>(0))
                    .expect("a query")
                    .for_each(drop);
            }
            stmt.get_status(rusqlite::StatementStatus::RePrepare)
        };
        // The writer's connection (commits, audit pages) and a reader's (document lists).
        assert_eq!(reprepared(&db.lock()), 0);
        assert_eq!(db.read(|conn| Ok(reprepared(conn))).expect("a read"), 0);
    }
}
