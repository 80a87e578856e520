//! Projections: independent read-side handlers, each with its own read model, checkpoint,
//! retries and dead-letter queue.
//!
//! A projection turns events into documents. The runner feeds it from the bus, commits the
//! documents it wrote together with its checkpoint (so a redelivered event is recognised and
//! not applied twice), retries a failing event with exponential backoff while other keys keep
//! flowing, and moves an event that keeps failing to the projection's dead-letter queue.

pub(crate) mod cache;
mod changes;
pub mod health;
mod runner;
pub mod store;

use async_trait::async_trait;

use crate::event::RecordedEvent;
use crate::store::BoxError;

pub use cache::CacheStats;
pub use changes::Changes;
pub(crate) use changes::{DocumentCache, Writes};
pub use health::{HealthRegistry, ProjectionHealth, ProjectionStatus};
pub use runner::{
    DeadLetterMode, ProjectionHandle, ProjectionRunner, RetrySchedule, RunnerOptions,
};
pub(crate) use store::NotifyCommit;
pub use store::audit::{
    AuditBreak, AuditCause, AuditEntry, AuditKind, AuditPage, AuditReport, AuditRetention,
    PruneReport, Retention,
};
pub use store::{
    DeadLetter, DeadLetterStatus, ReadModelError, ReadModelStore, ReadModels, RedriveFilter,
};

/// Why a projection could not apply an event. The runner retries it, then dead-letters it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProjectionError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl ProjectionError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and its cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<serde_json::Error> for ProjectionError {
    fn from(err: serde_json::Error) -> Self {
        Self::with_source("event payload does not decode", err)
    }
}

impl From<ReadModelError> for ProjectionError {
    fn from(err: ReadModelError) -> Self {
        Self::with_source("read model access failed", err)
    }
}

/// A read-side handler that maintains one read model.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its stable name: the key of its read model, checkpoint, consumer and dead letters.
    fn name(&self) -> &str;

    /// Whether it cares about `event`; events it skips still advance its checkpoint.
    fn handles(&self, event: &RecordedEvent) -> bool {
        let _ = event;
        true
    }

    /// Which collections are searchable, and how (default: none, every collection filter-only).
    ///
    /// With feature `search`, the runner keeps a full-text index of each declared collection
    /// beside a SQLite read model, and the query dashboard serves
    /// `/read-models/{name}/{collection}/search`.
    fn search(&self) -> crate::search::SearchSchema {
        crate::search::SearchSchema::new()
    }

    /// Applies one event by writing documents through `changes`.
    ///
    /// The writes are committed only if this returns `Ok`, together with the checkpoint.
    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError>;
}
