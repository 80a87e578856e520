//! Snapshots in their own SQLite file, beside (never inside) the event store's file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Snapshot, SnapshotError, SnapshotStore};
use crate::event::{LogPosition, StreamId};

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    taken_at       INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE TABLE IF NOT EXISTS snapshot_history (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    taken_at       INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);
CREATE TABLE IF NOT EXISTS snapshot_checkpoints (
    name     TEXT PRIMARY KEY,
    commit_key INTEGER NOT NULL,
    position INTEGER NOT NULL
);
";

/// The embedded snapshot store: one SQLite file, fsynced on every write.
#[derive(Clone)]
pub struct EmbeddedSnapshotStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSnapshotStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(err: rusqlite::Error) -> SnapshotError {
    SnapshotError::Backend(Box::new(err))
}

impl EmbeddedSnapshotStore {
    /// Opens (creating if needed) the snapshot file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| SnapshotError::Unavailable(Box::new(e)))?;
        }
        let conn = Connection::open(&path).map_err(|e| SnapshotError::Unavailable(Box::new(e)))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The snapshot file that goes with an event store file: `events.db` → `events.snapshots.db`.
    pub fn path_beside(store_path: &Path) -> PathBuf {
        let stem = store_path
            .file_stem()
            .map_or_else(|| "nexus".into(), |s| s.to_string_lossy().into_owned());
        store_path.with_file_name(format!("{stem}.snapshots.db"))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().expect("snapshot connection lock poisoned");
            f(&conn).map_err(backend)
        })
        .await
        .map_err(|e| SnapshotError::Backend(Box::new(e)))?
    }
}

#[async_trait]
impl SnapshotStore for EmbeddedSnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, SnapshotError> {
        let stream = stream.clone();
        self.run(move |conn| {
            conn.prepare_cached(
                "SELECT version, schema_version, state, taken_at FROM snapshots \
                 WHERE aggregate_type = ?1 AND aggregate_id = ?2",
            )?
            .query_row(
                params![stream.aggregate_type(), stream.aggregate_id()],
                |row| {
                    Ok(Snapshot {
                        stream: stream.clone(),
                        version: row.get::<_, i64>(0)? as u64,
                        schema_version: row.get(1)?,
                        state: row.get(2)?,
                        taken_at: DateTime::<Utc>::from_timestamp_micros(row.get(3)?)
                            .unwrap_or_default(),
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let snapshot = snapshot.clone();
        self.run(move |conn| {
            // The latest snapshot and its history entry commit together (one fsync).
            let tx = conn.unchecked_transaction()?;
            tx.prepare_cached(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, version, schema_version, state, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                 version = excluded.version, schema_version = excluded.schema_version, \
                 state = excluded.state, taken_at = excluded.taken_at \
                 WHERE excluded.version >= snapshots.version",
            )?
            .execute(params![
                snapshot.stream.aggregate_type(),
                snapshot.stream.aggregate_id(),
                snapshot.version as i64,
                snapshot.schema_version,
                snapshot.state,
                snapshot.taken_at.timestamp_micros(),
            ])?;
            save_history(&tx, &snapshot)?;
            tx.commit()
        })
        .await
    }

    async fn load_at_or_before(
        &self,
        stream: &StreamId,
        version: u64,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        let stream = stream.clone();
        self.run(move |conn| {
            conn.prepare_cached(
                "SELECT version, schema_version, state, taken_at FROM snapshot_history \
                 WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version <= ?3 \
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(
                params![
                    stream.aggregate_type(),
                    stream.aggregate_id(),
                    version.min(i64::MAX as u64) as i64
                ],
                |row| {
                    Ok(Snapshot {
                        stream: stream.clone(),
                        version: row.get::<_, i64>(0)? as u64,
                        schema_version: row.get(1)?,
                        state: row.get(2)?,
                        taken_at: DateTime::<Utc>::from_timestamp_micros(row.get(3)?)
                            .unwrap_or_default(),
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<LogPosition>, SnapshotError> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.query_row(
                "SELECT commit_key, position FROM snapshot_checkpoints WHERE name = ?1",
                [name],
                |row| {
                    Ok(LogPosition {
                        commit: row.get::<_, i64>(0)? as u64,
                        position: row.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<(), SnapshotError> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO snapshot_checkpoints (name, commit_key, position) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET commit_key = excluded.commit_key, position = excluded.position",
                params![name, position.commit as i64, position.position as i64],
            )
            .map(drop)
        })
        .await
    }
}

/// Adds `snapshot` to its stream's history and deletes all but the newest
/// [`super::SNAPSHOT_HISTORY`] of that stream.
fn save_history(conn: &Connection, snapshot: &Snapshot) -> rusqlite::Result<()> {
    let (kind, id) = (
        snapshot.stream.aggregate_type(),
        snapshot.stream.aggregate_id(),
    );
    conn.prepare_cached(
        "INSERT OR IGNORE INTO snapshot_history \
         (aggregate_type, aggregate_id, version, schema_version, state, taken_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        kind,
        id,
        snapshot.version as i64,
        snapshot.schema_version,
        snapshot.state,
        snapshot.taken_at.timestamp_micros(),
    ])?;
    conn.prepare_cached(
        "DELETE FROM snapshot_history WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
         AND version < (SELECT version FROM snapshot_history WHERE aggregate_type = ?1 \
         AND aggregate_id = ?2 ORDER BY version DESC LIMIT 1 OFFSET ?3)",
    )?
    .execute(params![kind, id, super::SNAPSHOT_HISTORY as i64 - 1])?;
    Ok(())
}
