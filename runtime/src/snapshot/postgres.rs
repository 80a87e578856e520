//! Snapshots in PostgreSQL: their own tables (`snapshots`, `snapshot_checkpoints`), which may
//! live in another database than the events.

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{Snapshot, SnapshotError, SnapshotStore};
use crate::event::{LogPosition, StreamId};
use crate::store::OpenError;
use crate::store::postgres::{DEFAULT_PARTITIONS, check_schema_name, migrate, pool};

/// The PostgreSQL snapshot store.
#[derive(Clone)]
pub struct PostgresSnapshotStore {
    pool: Pool,
    load: String,
    save: String,
    load_checkpoint: String,
    save_checkpoint: String,
    save_history: String,
    prune_history: String,
    load_at_or_before: String,
}

impl std::fmt::Debug for PostgresSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSnapshotStore")
            .finish_non_exhaustive()
    }
}

fn backend(err: tokio_postgres::Error) -> SnapshotError {
    if err.code().is_none() {
        SnapshotError::Unavailable(Box::new(err))
    } else {
        SnapshotError::Backend(Box::new(err))
    }
}

impl PostgresSnapshotStore {
    /// Connects to `url` and applies migrations to `schema`.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, OpenError> {
        check_schema_name(schema)?;
        let pool = pool(url, 4)?;
        migrate(&pool, schema, DEFAULT_PARTITIONS)
            .await
            .or_else(|err| match err {
                // The event store owns the partition count; snapshots do not care about it.
                OpenError::PartitionMismatch { .. } => Ok(()),
                other => Err(other),
            })?;
        Ok(Self::with_pool(pool, schema))
    }

    /// Uses an existing pool whose database already has the migrated `schema`.
    pub fn with_pool(pool: Pool, schema: &str) -> Self {
        Self {
            pool,
            load: format!(
                "SELECT version, schema_version, state, taken_at FROM {schema}.snapshots \
                 WHERE aggregate_type = $1 AND aggregate_id = $2"
            ),
            save: format!(
                "INSERT INTO {schema}.snapshots (aggregate_type, aggregate_id, version, schema_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                 version = excluded.version, schema_version = excluded.schema_version, \
                 state = excluded.state, taken_at = excluded.taken_at \
                 WHERE excluded.version >= {schema}.snapshots.version"
            ),
            load_checkpoint: format!(
                "SELECT commit_key, position FROM {schema}.snapshot_checkpoints WHERE name = $1"
            ),
            save_history: format!(
                "INSERT INTO {schema}.snapshot_history \
                 (aggregate_type, aggregate_id, version, schema_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
            ),
            prune_history: format!(
                "DELETE FROM {schema}.snapshot_history WHERE aggregate_type = $1 AND aggregate_id = $2 \
                 AND version < (SELECT version FROM {schema}.snapshot_history WHERE aggregate_type = $1 \
                 AND aggregate_id = $2 ORDER BY version DESC LIMIT 1 OFFSET $3)"
            ),
            load_at_or_before: format!(
                "SELECT version, schema_version, state, taken_at FROM {schema}.snapshot_history \
                 WHERE aggregate_type = $1 AND aggregate_id = $2 AND version <= $3 \
                 ORDER BY version DESC LIMIT 1"
            ),
            save_checkpoint: format!(
                "INSERT INTO {schema}.snapshot_checkpoints (name, commit_key, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET commit_key = excluded.commit_key, position = excluded.position"
            ),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SnapshotError> {
        self.pool
            .get()
            .await
            .map_err(|e| SnapshotError::Unavailable(Box::new(e)))
    }
}

#[async_trait]
impl SnapshotStore for PostgresSnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, SnapshotError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &self.load,
                &[&stream.aggregate_type(), &stream.aggregate_id()],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|row| Snapshot {
            stream: stream.clone(),
            version: row.get::<_, i64>(0) as u64,
            schema_version: row.get::<_, i32>(1) as u32,
            state: row.get(2),
            taken_at: row.get(3),
        }))
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let mut client = self.client().await?;
        // The latest snapshot and its history entry commit together.
        let tx = client.transaction().await.map_err(backend)?;
        let row: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &snapshot.stream.aggregate_type(),
            &snapshot.stream.aggregate_id(),
            &(snapshot.version as i64),
            &(snapshot.schema_version as i32),
            &snapshot.state,
            &snapshot.taken_at,
        ];
        tx.execute(&self.save, &row).await.map_err(backend)?;
        tx.execute(&self.save_history, &row)
            .await
            .map_err(backend)?;
        tx.execute(
            &self.prune_history,
            &[
                &snapshot.stream.aggregate_type(),
                &snapshot.stream.aggregate_id(),
                &(super::SNAPSHOT_HISTORY as i64 - 1),
            ],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn load_at_or_before(
        &self,
        stream: &StreamId,
        version: u64,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &self.load_at_or_before,
                &[
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &(version.min(i64::MAX as u64) as i64),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|row| Snapshot {
            stream: stream.clone(),
            version: row.get::<_, i64>(0) as u64,
            schema_version: row.get::<_, i32>(1) as u32,
            state: row.get(2),
            taken_at: row.get(3),
        }))
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<LogPosition>, SnapshotError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&self.load_checkpoint, &[&name])
            .await
            .map_err(backend)?;
        Ok(row.map(|row| LogPosition {
            commit: row.get::<_, i64>(0) as u64,
            position: row.get::<_, i64>(1) as u64,
        }))
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        position: LogPosition,
    ) -> Result<(), SnapshotError> {
        let client = self.client().await?;
        client
            .execute(
                &self.save_checkpoint,
                &[
                    &name,
                    &(position.commit as i64),
                    &(position.position as i64),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }
}
