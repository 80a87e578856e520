//! An aggregate's state as of a time or a version, rebuilt with the aggregate's own code from
//! the nearest snapshot at or before that version, through the read-only history.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::history::{History, Pin, Scope};
use super::query::{PartialReason, TemporalLimits};
use crate::aggregate::Aggregate;
use crate::command::decode_snapshot;
use crate::event::StreamId;
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::store::ReadError;

/// Events folded per round trip.
const BATCH: usize = 1000;

/// When to take the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Everything recorded before this instant.
    Time(DateTime<Utc>),
    /// Everything up to and including this stream version.
    Version(u64),
}

/// The state of one aggregate as of a point in its history.
#[derive(Debug, Clone)]
pub struct StateAsOf<A> {
    /// The state.
    pub state: A,
    /// The stream version the state includes.
    pub version: u64,
    /// The version asked for (resolved from the time for [`AsOf::Time`]).
    pub target_version: u64,
    /// The snapshot the rebuild started from, if one was usable.
    pub snapshot_version: Option<u64>,
    /// Events folded on top of the snapshot (or from the start).
    pub events_folded: usize,
    /// The log position the read was pinned at.
    pub as_of: Pin,
    /// Set when the scan or time budget ran out before `target_version`: `state` is then the
    /// true state at `version`, an earlier point than asked for.
    pub partial: Option<PartialReason>,
}

/// Why a state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading the history failed.
    #[error("failed to read history")]
    Read(#[from] ReadError),
    /// Reading the snapshot history failed.
    #[error("failed to read the snapshot history")]
    Snapshot(#[from] SnapshotError),
    /// A stored event does not decode into the aggregate's event type.
    #[error("event {version} of `{stream}` ({event_type}) does not decode")]
    Decode {
        /// The stream.
        stream: StreamId,
        /// The event's version.
        version: u64,
        /// Its type name.
        event_type: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The version asked for is beyond the aggregate's last version.
    #[error("`{stream}` is at version {current}; version {requested} does not exist yet")]
    VersionNotReached {
        /// The stream.
        stream: StreamId,
        /// The version asked for.
        requested: u64,
        /// Its last version.
        current: u64,
    },
}

/// The state of aggregate `id` of type `A` as of `at`, or `None` when it had no events then.
///
/// Starts from the newest snapshot in `snapshots` at or before the target version, then folds
/// the events after it; folds at most `limits.max_scan` events in at most
/// `limits.max_duration`, and says so in `partial` when it stops early.
pub async fn state_as_of<A: Aggregate>(
    history: &dyn History,
    snapshots: Option<&dyn SnapshotStore>,
    limits: &TemporalLimits,
    id: &str,
    at: AsOf,
) -> Result<Option<StateAsOf<A>>, StateError> {
    let started = Instant::now();
    let stream = StreamId::new(A::TYPE, id);
    let pin = history.pin(&Scope::Stream(stream.clone())).await?;
    let current = history.version_at(&stream, None, pin).await?;
    let target = match at {
        AsOf::Time(time) => history.version_at(&stream, Some(time), pin).await?,
        AsOf::Version(0) => None,
        AsOf::Version(requested) => match current {
            Some(current) if requested > current => {
                return Err(StateError::VersionNotReached {
                    stream,
                    requested,
                    current,
                });
            }
            Some(_) => Some(requested),
            None => None,
        },
    };
    let Some(target) = target else {
        return Ok(None);
    };
    let snapshot = match snapshots {
        Some(snapshots) => snapshots.load_at_or_before(&stream, target).await?,
        None => None,
    };
    let mut loaded = snapshot
        .as_ref()
        .and_then(decode_snapshot::<A>)
        .filter(|loaded| loaded.version <= target);
    let snapshot_version = loaded.as_ref().map(|l| l.version);
    let (mut state, mut version) = match loaded.take() {
        Some(loaded) => (loaded.state, loaded.version),
        None => (A::default(), 0),
    };
    let mut folded = 0;
    let partial = loop {
        if version >= target {
            break None;
        }
        if folded >= limits.max_scan {
            break Some(PartialReason::ScanLimit);
        }
        if started.elapsed() >= limits.max_duration {
            break Some(PartialReason::TimeLimit);
        }
        let want = BATCH.min(limits.max_scan - folded);
        let batch = history.payloads(&stream, version, target, want).await?;
        if batch.is_empty() {
            break None;
        }
        for stored in &batch {
            let event: A::Event =
                serde_json::from_str(&stored.payload).map_err(|source| StateError::Decode {
                    stream: stream.clone(),
                    version: stored.version,
                    event_type: stored.event_type.clone(),
                    source,
                })?;
            state.apply(&event);
            version = stored.version;
        }
        folded += batch.len();
    };
    Ok(Some(StateAsOf {
        state,
        version,
        target_version: target,
        snapshot_version,
        events_folded: folded,
        as_of: pin,
        partial,
    }))
}
