//! Events as the store sees them: stream ids, envelopes, metadata, and the `DomainEvent` trait.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A typed domain event: a serde value with a stable type name and schema version.
///
/// The type name and version are what the schema registry and `nexus check` key on,
/// so they must not change when the Rust type is renamed.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name of this event's type, e.g. `OrderPlaced`.
    fn event_type(&self) -> &'static str;
    /// The schema version of this event's payload (the major version of its schema).
    fn event_version(&self) -> u32 {
        1
    }
}

/// The identity of one event stream: one aggregate instance.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    aggregate_type: Arc<str>,
    aggregate_id: Arc<str>,
}

impl StreamId {
    /// The stream of aggregate `aggregate_id` of type `aggregate_type`.
    pub fn new(aggregate_type: impl AsRef<str>, aggregate_id: impl AsRef<str>) -> Self {
        Self {
            aggregate_type: Arc::from(aggregate_type.as_ref()),
            aggregate_id: Arc::from(aggregate_id.as_ref()),
        }
    }

    /// The aggregate type, e.g. `order`.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The aggregate id within its type.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// The partition this stream belongs to among `count` partitions.
    ///
    /// Derived from the aggregate id alone with a stable hash (FNV-1a), so every
    /// process, the store and the bus agree on it.
    pub fn partition(&self, count: u16) -> u16 {
        partition_of(&self.aggregate_id, count)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.aggregate_type, self.aggregate_id)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

/// The partition of an aggregate id among `count` partitions (FNV-1a 32, stable across releases).
pub fn partition_of(aggregate_id: &str, count: u16) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in aggregate_id.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let count = u32::from(count.max(1));
    u16::try_from(hash % count).expect("a remainder of a u16 divisor fits in u16")
}

/// The unique id of one event: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

/// What travels with every event besides its payload: who, why, and the trace it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id shared by everything one request caused, end to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message (command or event) that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The W3C `traceparent` of the span that appended this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Who caused the event (a user or service id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Anything else the application wants to keep with the event.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    /// Metadata with a correlation id.
    pub fn correlated(correlation_id: impl Into<String>) -> Self {
        Self {
            correlation_id: Some(correlation_id.into()),
            ..Self::default()
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its id; appending the same id again is idempotent.
    pub id: EventId,
    /// Its type name.
    pub event_type: String,
    /// Its payload schema version.
    pub schema_version: u32,
    /// Its payload, always valid JSON.
    pub payload: Box<RawValue>,
    /// Its metadata.
    pub metadata: Metadata,
}

/// A payload that is not JSON, or an event that cannot be serialised.
#[derive(Debug, thiserror::Error)]
#[error("event payload is not valid JSON")]
pub struct PayloadError(#[source] pub serde_json::Error);

impl NewEvent {
    /// An event from a typed domain event.
    pub fn from_domain<E: DomainEvent>(
        event: &E,
        metadata: Metadata,
    ) -> Result<Self, PayloadError> {
        // Serialised straight into a raw value: serde_json's own output needs no second parse.
        let payload = serde_json::value::to_raw_value(event).map_err(PayloadError)?;
        Ok(Self {
            id: EventId::new(),
            event_type: event.event_type().to_owned(),
            schema_version: event.event_version(),
            payload,
            metadata,
        })
    }

    /// An event from raw JSON text, checked to be valid JSON.
    pub fn from_json(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: impl Into<String>,
        metadata: Metadata,
    ) -> Result<Self, PayloadError> {
        Ok(Self {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version,
            payload: RawValue::from_string(payload.into()).map_err(PayloadError)?,
            metadata,
        })
    }

    /// The same event with a caller-chosen id (for idempotent retries).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }
}

/// Where an event sits in the global log, in delivery order.
///
/// `commit` orders transactions (the PostgreSQL transaction id, or the position itself on
/// the embedded store) and `position` orders events inside one; together they give a total
/// order that a change-data-capture reader can resume from without skipping anything.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// The commit order key.
    pub commit: u64,
    /// The global position of the event.
    pub position: u64,
}

impl LogPosition {
    /// Before the first event.
    pub const START: Self = Self {
        commit: 0,
        position: 0,
    };
}

/// An event as stored: payload, metadata and where it sits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The event id.
    pub id: EventId,
    /// The stream (aggregate) it belongs to.
    pub stream: StreamId,
    /// Its version within the stream, starting at 1.
    pub version: u64,
    /// Its position in the global log.
    pub position: u64,
    /// The commit order key (see [`LogPosition`]).
    pub commit: u64,
    /// The partition of its stream.
    pub partition: u16,
    /// Its type name.
    pub event_type: String,
    /// Its payload schema version.
    pub schema_version: u32,
    /// Its payload.
    pub payload: Box<RawValue>,
    /// Its metadata.
    pub metadata: Metadata,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Where this event sits in the global log.
    pub fn log_position(&self) -> LogPosition {
        LogPosition {
            commit: self.commit,
            position: self.position,
        }
    }

    /// Decodes the payload into a typed event.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }
}

/// A typed event together with what the store recorded about it.
#[derive(Debug, Clone)]
pub struct EventEnvelope<E> {
    /// The typed event.
    pub event: E,
    /// The event id.
    pub id: EventId,
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its version within the stream.
    pub version: u64,
    /// Its position in the global log.
    pub position: u64,
    /// Its metadata.
    pub metadata: Metadata,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
}

impl<E: DeserializeOwned> EventEnvelope<E> {
    /// Decodes a recorded event into a typed envelope.
    pub fn decode(recorded: &RecordedEvent) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event: recorded.decode()?,
            id: recorded.id,
            stream: recorded.stream.clone(),
            version: recorded.version,
            position: recorded.position,
            metadata: recorded.metadata.clone(),
            recorded_at: recorded.recorded_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("order-1", 16), partition_of("order-1", 16));
        for id in ["a", "b", "42", "some-long-id-0123456789"] {
            assert!(partition_of(id, 7) < 7);
        }
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
    }

    #[test]
    fn from_json_rejects_malformed_payload() {
        let err = NewEvent::from_json("X", 1, "{not json", Metadata::default()).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"));
    }
}
