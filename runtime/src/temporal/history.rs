//! The read-only history seam: what a temporal query may ask of a store, and nothing more.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{RecordedEvent, StreamId};
use crate::store::{ReadError, StoredPayload};

/// The log position a query pinned on its first page: later pages see nothing committed after it.
///
/// Opaque to callers: the embedded store pins its last position; PostgreSQL pins a stream's
/// last committed version for one aggregate (versions of a stream commit in order), and the
/// oldest transaction still running for reads across aggregates (every row of an older
/// transaction has committed or never will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pin(pub u64);

/// What a query reads: one aggregate's stream, every aggregate of a type, or the whole log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One aggregate; keys are its stream versions.
    Stream(StreamId),
    /// Every aggregate of one type; keys are global positions.
    AggregateType(String),
    /// The whole log (narrow it with event types); keys are global positions.
    All,
}

impl Scope {
    /// A stable text for fingerprints and audit records.
    pub fn describe(&self) -> String {
        match self {
            Self::Stream(stream) => format!(
                "stream:{}/{}",
                stream.aggregate_type(),
                stream.aggregate_id()
            ),
            Self::AggregateType(kind) => format!("type:{kind}"),
            Self::All => "all".to_owned(),
        }
    }
}

/// The keys (versions or positions) of the first and last event of a scope recorded in a time
/// range, at a pinned log position: every matching event lies in `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWindow {
    /// The smallest key.
    pub first: u64,
    /// The largest key.
    pub last: u64,
}

/// A read-only view of the event log for temporal queries.
///
/// There is deliberately no append operation here, and the implementations do not implement
/// [`crate::EventStore`]; their connections are read-only as well.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Pins the log as of now for reads of `scope`.
    async fn pin(&self, scope: &Scope) -> Result<Pin, ReadError>;

    /// The key window of the events of `scope` recorded in `[from, to)` and visible at `pin`,
    /// or `None` when there are none.
    async fn window(
        &self,
        scope: &Scope,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        pin: Pin,
    ) -> Result<Option<KeyWindow>, ReadError>;

    /// Up to `limit` events of `scope` with keys in `(after, last]`, visible at `pin`, in key
    /// order; whatever their time, the caller filters.
    async fn scan(
        &self,
        scope: &Scope,
        after: u64,
        last: u64,
        pin: Pin,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The version of the last event of `stream` recorded before `before` (all of them when
    /// `None`), visible at `pin`; `None` when there is none.
    async fn version_at(
        &self,
        stream: &StreamId,
        before: Option<DateTime<Utc>>,
        pin: Pin,
    ) -> Result<Option<u64>, ReadError>;

    /// The type and payload of events `(after, last]` of `stream`, in version order, at most `limit`.
    async fn payloads(
        &self,
        stream: &StreamId,
        after: u64,
        last: u64,
        limit: usize,
    ) -> Result<Vec<StoredPayload>, ReadError>;
}
