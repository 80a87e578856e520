//! Rebuilds a projection's read model as it stood at a time, into a separate read model, with
//! the projection's own code and through the read-only history: nothing live is touched.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::history::{History, Pin, Scope};
use crate::event::LogPosition;
use crate::projection::store::Batch;
use crate::projection::{
    Changes, DocumentCache, Projection, ProjectionError, ReadModelError, ReadModelStore,
};
use crate::store::ReadError;

/// Events read and committed per batch.
const BATCH: usize = 500;
/// Documents the rebuild keeps in memory between batches.
const CACHE_DOCUMENTS: usize = 10_000;

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    /// The projection.
    pub projection: String,
    /// Events recorded before this instant were applied.
    pub until: DateTime<Utc>,
    /// Events read from the log.
    pub scanned: u64,
    /// Events the projection handled.
    pub applied: u64,
    /// The log position the rebuild was pinned at.
    pub as_of: Pin,
    /// The read model's checkpoint: the last event applied.
    pub checkpoint: Option<u64>,
}

/// Why a rebuild failed; what was committed before stays in the target read model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The target read model already holds a checkpoint: rebuild into an empty one.
    #[error("the target read model is not empty (its checkpoint is at position {0})")]
    TargetNotEmpty(u64),
    /// Reading the history failed.
    #[error("failed to read history")]
    Read(#[from] ReadError),
    /// The target read model failed.
    #[error("failed to write the target read model")]
    ReadModel(#[from] ReadModelError),
    /// The projection failed on an event.
    #[error("the projection failed on event {position} ({event_type})")]
    Projection {
        /// The event's log position.
        position: u64,
        /// Its type.
        event_type: String,
        /// The cause.
        #[source]
        source: ProjectionError,
    },
}

/// Applies every event recorded before `until` (and visible when the rebuild starts), in log
/// order, to `projection`, writing into `target`, which must be empty (a fresh read model).
pub async fn replay_projection(
    history: &dyn History,
    projection: &dyn Projection,
    until: DateTime<Utc>,
    target: &ReadModelStore,
) -> Result<ReplaySummary, ReplayError> {
    if let Some(checkpoint) = target.checkpoint().await? {
        return Err(ReplayError::TargetNotEmpty(checkpoint.position));
    }
    let pin = history.pin(&Scope::All).await?;
    let start = DateTime::<Utc>::UNIX_EPOCH;
    let mut summary = ReplaySummary {
        projection: projection.name().to_owned(),
        until,
        scanned: 0,
        applied: 0,
        as_of: pin,
        checkpoint: None,
    };
    let Some(window) = history.window(&Scope::All, start, until, pin).await? else {
        return Ok(summary);
    };
    let cache = DocumentCache::new(CACHE_DOCUMENTS);
    let mut after = window.first.saturating_sub(1);
    while after < window.last {
        let events = history
            .scan(&Scope::All, after, window.last, pin, BATCH)
            .await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        summary.scanned += events.len() as u64;
        let mut batch = Batch::default();
        for event in events.iter().filter(|e| e.recorded_at < until) {
            if !projection.handles(event) {
                continue;
            }
            let mut changes = Changes::new(&batch.writes, &cache, target);
            projection
                .apply(event, &mut changes)
                .await
                .map_err(|source| ReplayError::Projection {
                    position: event.position,
                    event_type: event.event_type.clone(),
                    source,
                })?;
            batch.writes.extend(changes.into_writes());
            batch.versions.insert(event.stream.clone(), event.version);
            batch.checkpoint = Some(LogPosition {
                commit: event.commit,
                position: event.position,
            });
            summary.applied += 1;
            summary.checkpoint = Some(event.position);
        }
        if !batch.is_empty() {
            let committed = target.commit(batch).await?;
            for ((collection, id), document) in committed.writes {
                cache.insert(&collection, &id, document);
            }
        }
    }
    tracing::info!(
        projection = %summary.projection,
        until = %until,
        applied = summary.applied,
        scanned = summary.scanned,
        "rebuilt a projection as of a time"
    );
    Ok(summary)
}
