//! The sink seam: where routed events are delivered, and the message headers every sink uses.

use async_trait::async_trait;

use crate::event::RecordedEvent;
use crate::store::BoxError;

/// Names of the message headers that describe an event, shared by every sink.
///
/// The message body is the whole [`RecordedEvent`] as JSON; the headers repeat what a
/// consumer usually filters on, so it need not parse the body to decide.
pub mod headers {
    /// The event's type name, e.g. `OrderPlaced`.
    pub const EVENT_TYPE: &str = "nexus-event-type";
    /// The event's payload schema version.
    pub const SCHEMA_VERSION: &str = "nexus-schema-version";
    /// The stream, as `aggregate_type-aggregate_id`.
    pub const STREAM: &str = "nexus-stream";
    /// The aggregate type of the stream.
    pub const AGGREGATE_TYPE: &str = "nexus-aggregate-type";
    /// The aggregate id of the stream.
    pub const AGGREGATE_ID: &str = "nexus-aggregate-id";
    /// The event's version within its stream.
    pub const VERSION: &str = "nexus-version";
    /// The event's position in the global log.
    pub const POSITION: &str = "nexus-position";
    /// The correlation id of the request that caused the event (absent when it has none).
    pub const CORRELATION_ID: &str = "nexus-correlation-id";
}

/// One event together with where it goes.
#[derive(Debug, Clone)]
pub struct RoutedEvent {
    /// The exchange it is published to.
    pub exchange: String,
    /// The routing key it is published with.
    pub routing_key: String,
    /// The event.
    pub event: RecordedEvent,
}

/// Why a sink did not confirm a batch. Any part of the batch may have been delivered anyway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The destination could not be reached or the connection was lost.
    #[error("integration sink `{sink}` is unavailable")]
    Unavailable {
        /// The sink's name.
        sink: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The destination refused an event (for RabbitMQ: the broker nacked it).
    #[error(
        "integration sink `{sink}` rejected event {event_id} for exchange `{exchange}`: {reason}"
    )]
    Rejected {
        /// The sink's name.
        sink: String,
        /// The refused event's id.
        event_id: String,
        /// The exchange it was published to.
        exchange: String,
        /// What the destination said.
        reason: String,
    },
    /// The destination's topology (exchanges, queues, bindings) could not be declared.
    #[error("integration sink `{sink}` could not declare {what}")]
    Topology {
        /// The sink's name.
        sink: String,
        /// What was being declared, e.g. ``queue `billing` ``.
        what: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The destination did not confirm in time.
    #[error("integration sink `{sink}` did not confirm within {timeout_ms} ms")]
    Timeout {
        /// The sink's name.
        sink: String,
        /// The limit that passed.
        timeout_ms: u64,
    },
    /// The sink failed in another way.
    #[error("integration sink `{sink}` failed")]
    Backend {
        /// The sink's name.
        sink: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

/// A destination for routed events, delivering at least once.
///
/// `deliver` returns `Ok` only once every event of the batch is durably accepted by the
/// destination. On `Err` the relay delivers the whole batch again, so a destination sees an
/// event more than once after a failure; consumers de-duplicate by event id (the message id).
#[async_trait]
pub trait IntegrationSink: Send + Sync + 'static {
    /// A short name for logs and metric labels, e.g. `rabbitmq`.
    fn name(&self) -> &str;

    /// Delivers `batch`, in order, and returns once the destination confirmed all of it.
    async fn deliver(&self, batch: &[RoutedEvent]) -> Result<(), SinkError>;
}
