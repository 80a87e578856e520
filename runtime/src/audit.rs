//! The audit log of temporal requests: one append-only record per request (who, roles, what
//! was asked, how much was scanned and returned, how long it took, and the outcome, refusals
//! included), metadata only, never payloads.
//!
//! Records go to an SQLite file or a PostgreSQL table that reject `UPDATE` and `DELETE` by
//! trigger (as the event store does), and to `tracing` (target `nexus::audit`).

#[cfg(feature = "postgres")]
pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::store::BoxError;

/// Most records one page of the audit log returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// How a temporal request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Answered in full.
    Ok,
    /// Answered in part, with a continuation token.
    Partial,
    /// Refused (the reason says why).
    Refused,
    /// Failed on the server's side.
    Failed,
}

impl AuditOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "ok" => Self::Ok,
            "partial" => Self::Partial,
            "refused" => Self::Refused,
            _ => Self::Failed,
        }
    }
}

/// One temporal request, as audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// The client identity limits are keyed by (`token:<sub>`, `key:<id>`, `anonymous`).
    pub client_id: String,
    /// The roles the caller's credential carries.
    pub roles: Vec<String>,
    /// What was asked: `events`, `state`, `audit` or `replay_projection`.
    pub action: String,
    /// The query's parameters (aggregate, types, range; never payloads).
    pub query: serde_json::Value,
    /// Events examined.
    pub scanned: u64,
    /// Events (or records) returned.
    pub returned: u64,
    /// How long the request took.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Why it was partial or refused (`scan_limit`, `rate_limited`, `range_too_long`, …).
    pub reason: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// A stored record with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its position in the audit log, from 1.
    pub id: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log could not be reached.
    #[error("audit log is unavailable")]
    Unavailable(#[source] BoxError),
    /// The log failed in another way.
    #[error("audit log backend failed")]
    Backend(#[source] BoxError),
}

/// An append-only log of temporal requests.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends a record and returns its id. Also emits it as a `tracing` event.
    async fn record(&self, record: &AuditRecord) -> Result<u64, AuditError>;

    /// Up to `limit` (at most [`MAX_AUDIT_PAGE`]) records after id `after`, oldest first.
    async fn page(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError>;
}

/// Emits `record` as a `tracing` event (target `nexus::audit`).
pub fn trace(record: &AuditRecord) {
    tracing::info!(
        target: "nexus::audit",
        client_id = %record.client_id,
        roles = %record.roles.join(","),
        action = %record.action,
        query = %record.query,
        scanned = record.scanned,
        returned = record.returned,
        duration_ms = record.duration_ms,
        outcome = record.outcome.as_str(),
        reason = record.reason.as_deref().unwrap_or(""),
        status = record.status,
        "temporal request"
    );
}

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS audit_temporal (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    client_id   TEXT    NOT NULL,
    roles       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    query       TEXT    NOT NULL,
    scanned     INTEGER NOT NULL,
    returned    INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    reason      TEXT,
    status      INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_update BEFORE UPDATE ON audit_temporal
BEGIN SELECT RAISE(ABORT, 'nexus: the audit log is append-only, UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_delete BEFORE DELETE ON audit_temporal
BEGIN SELECT RAISE(ABORT, 'nexus: the audit log is append-only, DELETE is not allowed'); END;
";

/// The audit log in its own SQLite file.
#[derive(Clone)]
pub struct SqliteAuditLog {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(err: impl std::error::Error + Send + Sync + 'static) -> AuditError {
    AuditError::Backend(Box::new(err))
}

impl SqliteAuditLog {
    /// Opens (creating if needed) the audit log at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| AuditError::Unavailable(Box::new(e)))?;
        }
        let conn = Connection::open(&path).map_err(|e| AuditError::Unavailable(Box::new(e)))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, AuditError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().expect("audit connection lock poisoned");
            f(&conn).map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    /// Runs raw SQL on the log's connection, for tests proving the triggers refuse rewrites.
    #[doc(hidden)]
    pub async fn try_statement(&self, sql: &str) -> Result<(), AuditError> {
        let sql = sql.to_owned();
        self.run(move |conn| conn.execute_batch(&sql)).await
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn record(&self, record: &AuditRecord) -> Result<u64, AuditError> {
        trace(record);
        let record = record.clone();
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO audit_temporal (at, client_id, roles, action, query, scanned, returned, \
                 duration_ms, outcome, reason, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                record.at.timestamp_micros(),
                record.client_id,
                serde_json::to_string(&record.roles).unwrap_or_default(),
                record.action,
                record.query.to_string(),
                record.scanned as i64,
                record.returned as i64,
                record.duration_ms as i64,
                record.outcome.as_str(),
                record.reason,
                record.status,
            ])?;
            Ok(conn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn page(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let limit = limit.clamp(1, MAX_AUDIT_PAGE) as i64;
        let after = after.min(i64::MAX as u64) as i64;
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at, client_id, roles, action, query, scanned, returned, duration_ms, \
                 outcome, reason, status FROM audit_temporal WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |row| {
                Ok(AuditEntry {
                    id: row.get::<_, i64>(0)? as u64,
                    record: AuditRecord {
                        at: DateTime::<Utc>::from_timestamp_micros(row.get(1)?).unwrap_or_default(),
                        client_id: row.get(2)?,
                        roles: serde_json::from_str(&row.get::<_, String>(3)?).unwrap_or_default(),
                        action: row.get(4)?,
                        query: serde_json::from_str(&row.get::<_, String>(5)?).unwrap_or_default(),
                        scanned: row.get::<_, i64>(6)? as u64,
                        returned: row.get::<_, i64>(7)? as u64,
                        duration_ms: row.get::<_, i64>(8)? as u64,
                        outcome: AuditOutcome::parse(&row.get::<_, String>(9)?),
                        reason: row.get(10)?,
                        status: row.get(11)?,
                    },
                })
            })?;
            rows.collect()
        })
        .await
    }
}
