//! Durable named positions in the event log, for relays and other log readers.
//!
//! In Nexus a *checkpoint* is always such a position: how far a reader (a relay, a projection,
//! the snapshot manager) got. SQLite's write-ahead-log checkpoints are another thing, kept
//! apart as `wal::WalCheckpointer`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::event::LogPosition;
use crate::store::BoxError;

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store failed")]
pub struct CheckpointError(#[source] pub BoxError);

/// Named log positions, written durably.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The position saved under `name`, if any.
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, CheckpointError>;
    /// Saves `position` under `name`.
    async fn save(&self, name: &str, position: LogPosition) -> Result<(), CheckpointError>;
}

/// Checkpoints in their own SQLite file.
#[derive(Clone)]
pub struct EmbeddedCheckpoints {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCheckpoints")
            .finish_non_exhaustive()
    }
}

fn failed(err: impl std::error::Error + Send + Sync + 'static) -> CheckpointError {
    CheckpointError(Box::new(err))
}

impl EmbeddedCheckpoints {
    /// Opens (creating if needed) the checkpoint file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let conn = Connection::open(path).map_err(failed)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(failed)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(failed)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, commit_key INTEGER NOT NULL, position INTEGER NOT NULL)",
        )
        .map_err(failed)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

#[async_trait]
impl CheckpointStore for EmbeddedCheckpoints {
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, CheckpointError> {
        let conn = Arc::clone(&self.conn);
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            conn.lock()
                .expect("checkpoint connection lock poisoned")
                .query_row(
                    "SELECT commit_key, position FROM checkpoints WHERE name = ?1",
                    [name],
                    |row| {
                        Ok(LogPosition {
                            commit: row.get::<_, i64>(0)? as u64,
                            position: row.get::<_, i64>(1)? as u64,
                        })
                    },
                )
                .optional()
                .map_err(failed)
        })
        .await
        .map_err(failed)?
    }

    async fn save(&self, name: &str, position: LogPosition) -> Result<(), CheckpointError> {
        let conn = Arc::clone(&self.conn);
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            conn.lock()
                .expect("checkpoint connection lock poisoned")
                .execute(
                    "INSERT INTO checkpoints (name, commit_key, position) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET commit_key = excluded.commit_key, position = excluded.position",
                    params![name, position.commit as i64, position.position as i64],
                )
                .map(drop)
                .map_err(failed)
        })
        .await
        .map_err(failed)?
    }
}
