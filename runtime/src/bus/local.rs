//! The in-process bus: each consumer tails the store's change-data-capture stream itself.
//!
//! There is no copy of the log to lose: a consumer's durable position is its own checkpoint,
//! and delivery order is the store's log order (so per-key order holds trivially).

use std::sync::Arc;

use async_trait::async_trait;

use super::{BusConsumer, BusError, Delivery, EventBus};
use crate::event::LogPosition;
use crate::store::{EventStore, ReadError, Subscription, subscribe};

/// The default bus: consumers read the store's change-data-capture stream.
#[derive(Clone)]
pub struct InProcessBus {
    store: Arc<dyn EventStore>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

impl InProcessBus {
    /// A bus over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store }
    }
}

struct LocalConsumer {
    subscription: Subscription,
}

fn bus_error(err: ReadError) -> BusError {
    match err {
        ReadError::Unavailable(source) => BusError::Unavailable(source),
        other => BusError::Backend(Box::new(other)),
    }
}

#[async_trait]
impl BusConsumer for LocalConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let event = self.subscription.next().await.map_err(bus_error)?;
        Ok(Delivery::unacknowledged(event))
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    fn name(&self) -> &'static str {
        "inprocess"
    }

    async fn consumer(
        &self,
        _consumer: &str,
        from: LogPosition,
    ) -> Result<Box<dyn BusConsumer>, BusError> {
        Ok(Box::new(LocalConsumer {
            subscription: subscribe(Arc::clone(&self.store), from),
        }))
    }
}
