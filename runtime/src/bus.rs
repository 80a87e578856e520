//! The event bus seam: how committed events reach read-side consumers.
//!
//! Two implementations: [`local::InProcessBus`], where consumers tail the store's
//! change-data-capture stream directly (the default, nothing to set up), and
//! `nats::JetStreamBus` (feature `nats`), fed by a [`relay`] that publishes from the
//! store's change-data-capture stream after commit. Either way the store stays the source of
//! truth: a consumer can always be rebuilt from a store position.

pub mod local;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "nats")]
pub mod relay;

use async_trait::async_trait;

use crate::event::{LogPosition, RecordedEvent};
use crate::store::BoxError;

/// Why the bus failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus could not be reached or lost the connection.
    #[error("event bus is unavailable")]
    Unavailable(#[source] BoxError),
    /// A message on the bus is not an event Nexus published.
    #[error("message {sequence} on the bus is not a Nexus event")]
    Malformed {
        /// The bus's sequence number of the message.
        sequence: u64,
        /// The decoding error.
        #[source]
        source: BoxError,
    },
    /// The bus failed in another way.
    #[error("event bus failed")]
    Backend(#[source] BoxError),
}

/// One event handed to a consumer, to be acknowledged once it is processed.
pub struct Delivery {
    /// The event.
    pub event: RecordedEvent,
    acker: Option<Box<dyn Acker>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event.id)
            .field("position", &self.event.position)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery that needs no acknowledgement (the consumer keeps its own position).
    pub fn unacknowledged(event: RecordedEvent) -> Self {
        Self { event, acker: None }
    }

    /// A delivery acknowledged through `acker`.
    pub fn with_acker(event: RecordedEvent, acker: Box<dyn Acker>) -> Self {
        Self {
            event,
            acker: Some(acker),
        }
    }

    /// Tells the bus the event is processed and need not be delivered again.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.acker {
            Some(acker) => acker.ack().await,
            None => Ok(()),
        }
    }
}

/// Acknowledges one delivery on the bus it came from.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Acknowledges the delivery.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
}

/// A durable consumer: every event published after its start position, in order per partition key.
#[async_trait]
pub trait BusConsumer: Send {
    /// Waits for and returns the next delivery.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// Carries committed events to durable, independent consumers.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// A short name for logs and metrics (`inprocess`, `nats`).
    fn name(&self) -> &'static str;

    /// Whether [`EventBus::consumer`] delivers every event after `from`, whatever the consumer
    /// acknowledged before. When it does not (JetStream tracks acknowledgements itself), a
    /// projection first reads the store from its checkpoint, so nothing a crashed consumer
    /// held unacknowledged, or a lost read-model commit, waits for the bus to redeliver it.
    fn replays_from_position(&self) -> bool {
        true
    }

    /// Opens the durable consumer `consumer`, resuming where it left off; a new consumer starts
    /// after `from` (a store position the consumer has already processed).
    async fn consumer(
        &self,
        consumer: &str,
        from: LogPosition,
    ) -> Result<Box<dyn BusConsumer>, BusError>;
}
