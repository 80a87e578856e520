//! The event store seam: one `EventStore` trait, an embedded SQLite backend and a PostgreSQL one.

pub mod embedded;
#[cfg(feature = "postgres")]
pub mod postgres;
mod subscription;

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{EventId, LogPosition, NewEvent, RecordedEvent, StreamId};

pub use subscription::Subscription;

/// A boxed error from a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the writer believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (0 means "no stream").
    Exact(u64),
}

impl ExpectedVersion {
    /// The version the stream must be at, if any.
    pub fn required(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(version) => Some(version),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// One stored event as [`EventStore::read_payloads`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayload {
    /// The event's version in its stream.
    pub version: u64,
    /// Its payload's schema version (what upcasters start from).
    pub schema_version: u32,
    /// Its type name.
    pub event_type: String,
    /// Its payload, as JSON text.
    pub payload: String,
}

/// One stored event as [`EventStore::visit_payloads`] hands it over, borrowed from the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRef<'a> {
    /// The event's version in its stream.
    pub version: u64,
    /// Its payload's schema version (what upcasters start from).
    pub schema_version: u32,
    /// Its type name.
    pub event_type: &'a str,
    /// Its payload, as JSON text.
    pub payload: &'a str,
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's version after the append: the version of its last event.
    pub version: u64,
    /// The ids of the appended events, in order.
    pub event_ids: Vec<EventId>,
    /// The global position of the first appended event.
    pub first_position: u64,
    /// The global position of the last appended event.
    pub last_position: u64,
    /// True when every event id was already stored: the append was a retry and wrote nothing.
    pub idempotent_replay: bool,
}

/// Bounds on what one append may carry.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Most events in one append.
    pub max_batch_events: usize,
    /// Largest payload of one event, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_batch_events: 10_000,
            max_payload_bytes: 1024 * 1024,
        }
    }
}

/// Why an append failed. Nothing of a failed append is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The optimistic concurrency check failed.
    #[error("stream `{stream}` is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: u64,
    },
    /// An event id is already stored with different content or in another stream.
    #[error("event {id} is already stored in stream `{stream}` with different content")]
    DuplicateEventId {
        /// The event id.
        id: EventId,
        /// The stream holding the stored event.
        stream: StreamId,
    },
    /// The batch is empty or larger than the configured limit.
    #[error("a batch must hold 1 to {max} events, got {len}")]
    BatchSize {
        /// Events in the batch.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// One event of the batch is not acceptable.
    #[error("event {index} of the batch ({event_type:?}) is invalid: {reason}")]
    InvalidEvent {
        /// Its index in the batch.
        index: usize,
        /// Its type name.
        event_type: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream id is not acceptable.
    #[error("invalid stream id `{stream}`: {reason}")]
    InvalidStream {
        /// The stream.
        stream: StreamId,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend could not be reached or lost the connection; the append was not applied.
    #[error("event store is unavailable")]
    Unavailable(#[source] BoxError),
    /// The backend failed in another way; the append was not applied.
    #[error("event store backend failed")]
    Backend(#[source] BoxError),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream has no events.
    #[error("stream `{0}` does not exist")]
    StreamNotFound(StreamId),
    /// The requested range is not valid.
    #[error("invalid read range: {0}")]
    InvalidRange(String),
    /// A stored row could not be decoded.
    #[error("stored event at position {position} is corrupt")]
    Corrupt {
        /// Its global position.
        position: u64,
        /// The decoding error.
        #[source]
        source: BoxError,
    },
    /// The backend could not be reached or lost the connection.
    #[error("event store is unavailable")]
    Unavailable(#[source] BoxError),
    /// The backend failed in another way.
    #[error("event store backend failed")]
    Backend(#[source] BoxError),
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is not valid.
    #[error("invalid event store configuration: {0}")]
    Config(String),
    /// The store was created with another partition count.
    #[error("the store was created with {stored} partitions, but {configured} are configured")]
    PartitionMismatch {
        /// The count the store was created with.
        stored: u16,
        /// The count asked for now.
        configured: u16,
    },
    /// Applying schema migrations failed.
    #[error("failed to migrate the event store schema")]
    Migration(#[source] BoxError),
    /// The backend could not be reached.
    #[error("event store is unavailable")]
    Unavailable(#[source] BoxError),
}

/// The single source of truth: an append-only log of events, partitioned by aggregate id.
///
/// There is no operation that updates or deletes an event.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    ///
    /// Appending events whose ids are all stored already (same content) is a no-op that
    /// reports the stored result, so a retried append never duplicates.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError>;

    /// Reads events `from..=to` (versions) of one stream, in version order.
    ///
    /// An unknown stream is [`ReadError::StreamNotFound`].
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<RecordedEvent>, ReadError>;

    /// Reads the events of one stream recorded in `[from, to)`, in version order, at most `limit`.
    async fn read_stream_between(
        &self,
        stream: &StreamId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The version, type and payload of events `from..` of one stream, in version order: what
    /// rebuilding an aggregate needs, and nothing else.
    ///
    /// Lighter than [`EventStore::read_stream`]: ids, metadata and timestamps are not decoded,
    /// and a stream without events is an empty list, not an error.
    async fn read_payloads(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> Result<Vec<StoredPayload>, ReadError> {
        match self.read_stream(stream, from, None).await {
            Ok(events) => Ok(events
                .into_iter()
                .map(|event| StoredPayload {
                    version: event.version,
                    schema_version: event.schema_version,
                    payload: event.payload.get().to_owned(),
                    event_type: event.event_type,
                })
                .collect()),
            Err(ReadError::StreamNotFound(_)) => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }

    /// Hands the version, type and payload of events `from..` of one stream to `visit`, in
    /// version order, until `visit` breaks: what [`EventStore::read_payloads`] returns, without
    /// keeping a copy of it. A backend that streams rows hands each over as it arrives, so
    /// rebuilding an aggregate decodes while the rest is still being read.
    async fn visit_payloads(
        &self,
        stream: &StreamId,
        from: u64,
        visit: &mut (dyn for<'row> FnMut(PayloadRef<'row>) -> ControlFlow<()> + Send),
    ) -> Result<(), ReadError> {
        for stored in self.read_payloads(stream, from).await? {
            let payload = PayloadRef {
                version: stored.version,
                schema_version: stored.schema_version,
                event_type: &stored.event_type,
                payload: &stored.payload,
            };
            if visit(payload).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The events of `stream` among `ids`, in version order; ids stored elsewhere or not at all
    /// are left out. What a retried command uses to find what its first attempt stored.
    async fn find_events(
        &self,
        stream: &StreamId,
        ids: &[EventId],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        match self.read_stream(stream, 1, None).await {
            Ok(events) => Ok(events.into_iter().filter(|e| ids.contains(&e.id)).collect()),
            Err(ReadError::StreamNotFound(_)) => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }

    /// The current version of a stream, or `None` if it has no events.
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, ReadError>;

    /// Reads up to `limit` committed events after `after` in log order.
    ///
    /// Never returns an event while one before it in log order may still commit, so a
    /// reader that resumes from the last position it saw skips nothing.
    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The position of the last event a reader can see now.
    async fn head(&self) -> Result<LogPosition, ReadError>;

    /// A receiver that changes whenever new events may be readable.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The number of partitions streams are spread over.
    fn partition_count(&self) -> u16;
}

/// Change-data-capture: every committed event after `after`, in log order, as it commits.
pub fn subscribe(store: Arc<dyn EventStore>, after: LogPosition) -> Subscription {
    Subscription::new(store, after)
}

/// Checks a batch against the limits before any backend work.
pub(crate) fn validate_append(
    stream: &StreamId,
    events: &[NewEvent],
    limits: &StoreLimits,
) -> Result<(), AppendError> {
    for (name, value) in [
        ("aggregate type", stream.aggregate_type()),
        ("aggregate id", stream.aggregate_id()),
    ] {
        if let Some(reason) = invalid_name(value) {
            return Err(AppendError::InvalidStream {
                stream: stream.clone(),
                reason: format!("{name} {reason}"),
            });
        }
    }
    if events.is_empty() || events.len() > limits.max_batch_events {
        return Err(AppendError::BatchSize {
            len: events.len(),
            max: limits.max_batch_events,
        });
    }
    for (index, event) in events.iter().enumerate() {
        let invalid = |reason: String| AppendError::InvalidEvent {
            index,
            event_type: event.event_type.clone(),
            reason,
        };
        if let Some(reason) = invalid_name(&event.event_type) {
            return Err(invalid(format!("event type {reason}")));
        }
        let size = event.payload.get().len();
        if size > limits.max_payload_bytes {
            return Err(invalid(format!(
                "payload is {size} bytes, the limit is {}",
                limits.max_payload_bytes
            )));
        }
        // PostgreSQL's jsonb cannot hold NUL characters; refuse them on every backend alike.
        if event.payload.get().contains("\\u0000") {
            return Err(invalid("payload contains a NUL character (\\u0000)".into()));
        }
    }
    Ok(())
}

fn invalid_name(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.len() > 255 {
        Some("is longer than 255 bytes")
    } else if value.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    }
}
