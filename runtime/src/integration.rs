//! The secondary path for external integrations: committed events relayed, at least once, to queues.
//!
//! The primary read side (the event bus and projections) is fast and ordered; this path is
//! for non-critical and external consumers that want a queue. An [`IntegrationRelay`] tails
//! the store's change-data-capture stream from a durable checkpoint, routes each event by
//! its type through a [`RoutingTable`] to an exchange and a routing key, hands batches to an
//! [`IntegrationSink`] and advances its checkpoint only once the sink confirmed them.
//!
//! Two sinks exist: [`embedded::EmbeddedQueue`], a durable SQLite-backed queue for the
//! default set-up, and `rabbitmq::RabbitMqSink` (cargo feature `rabbitmq`) for RabbitMQ with
//! publisher confirms, durable queues and per-queue dead-letter exchanges. The checkpoint is
//! any [`CheckpointStore`](crate::checkpoint::CheckpointStore), under the key
//! `integration:<relay name>`.

pub mod embedded;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
mod relay;
mod routing;
mod sink;

pub use relay::{
    IntegrationRelay, IntegrationRelayHandle, RelayError, RelayOptions, RelayState, RelayStatus,
};
pub use routing::{Route, RouteError, RoutingTable};
pub use sink::{IntegrationSink, RoutedEvent, SinkError, headers};
