//! Snapshots: serialised aggregate state kept apart from the event store, and the manager
//! that takes them when a stream passes its thresholds.

pub mod embedded;
mod manager;
#[cfg(feature = "postgres")]
pub mod postgres;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{LogPosition, StreamId};
use crate::store::BoxError;

pub use manager::{SnapshotManager, SnapshotManagerHandle, SnapshotPolicy, TriggerReason};

/// Snapshots kept per stream in the snapshot history (the newest ones; older ones are deleted
/// when a new one is saved), so state-as-of reads can start near any recent point.
pub const SNAPSHOT_HISTORY: usize = 32;

/// The serialised state of one aggregate as of one stream version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The stream version the state includes (all events up to and including it).
    pub version: u64,
    /// The aggregate's `SNAPSHOT_VERSION` when the state was written.
    pub schema_version: u32,
    /// The state as JSON.
    pub state: String,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot store could not be reached.
    #[error("snapshot store is unavailable")]
    Unavailable(#[source] BoxError),
    /// The snapshot store failed in another way.
    #[error("snapshot store backend failed")]
    Backend(#[source] BoxError),
}

/// Durable storage for snapshots, separate from the event store.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of a stream, if any.
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, SnapshotError>;

    /// Stores a snapshot durably; an older version than the stored one is ignored.
    async fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotError>;

    /// The newest snapshot of `stream` at or before `version`, for state-as-of reads.
    ///
    /// Stores that keep a history of snapshots (both built-in ones keep the newest
    /// [`SNAPSHOT_HISTORY`] per stream) search it; the default looks at the latest one only.
    async fn load_at_or_before(
        &self,
        stream: &StreamId,
        version: u64,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        Ok(self.load(stream).await?.filter(|s| s.version <= version))
    }

    /// The log position a named snapshot manager has processed up to.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<LogPosition>, SnapshotError>;

    /// Records the log position a named snapshot manager has processed up to.
    async fn save_checkpoint(&self, name: &str, position: LogPosition)
    -> Result<(), SnapshotError>;
}
