//! The integration relay: tails the store from a checkpoint, routes, delivers, then checkpoints.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use super::routing::RoutingTable;
use super::sink::{IntegrationSink, RoutedEvent, SinkError};
use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::event::{LogPosition, RecordedEvent};
use crate::store::{self, EventStore};

/// How a relay batches and retries.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The relay's name: a label in logs; its checkpoint is kept under `integration:<name>`.
    pub name: String,
    /// Most events handed to the sink in one delivery.
    pub batch_size: usize,
    /// Wait before the first retry of a failed delivery; doubled on each further failure.
    pub initial_backoff: Duration,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            name: "integration".into(),
            batch_size: 256,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RelayOptions {
    /// The wait before retry number `attempt` (1 for the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What a relay is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Delivering, or waiting for new events with nothing pending.
    Running,
    /// A read, delivery or checkpoint save failed and is being retried.
    Retrying,
    /// Stopped through its handle.
    Stopped,
}

/// A relay's progress and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// What it is doing.
    pub state: RelayState,
    /// The last position the sink confirmed and the checkpoint holds.
    pub checkpoint: LogPosition,
    /// Events the sink confirmed since the relay started (redeliveries count again).
    pub published: u64,
    /// Events no routing rule matched since the relay started.
    pub skipped: u64,
    /// Failed reads, deliveries and checkpoint saves since the relay started.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Events in the log after the checkpoint, as of the last look.
    pub lag_events: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Why a relay could not start, or did not get where it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The checkpoint could not be loaded.
    #[error("relay `{relay}` could not load its checkpoint")]
    Checkpoint {
        /// The relay's name.
        relay: String,
        /// The cause.
        #[source]
        source: CheckpointError,
    },
    /// The checkpoint did not reach the awaited position in time.
    #[error("relay `{relay}` reached {reached:?}, not {target:?}, within {waited_ms} ms")]
    Timeout {
        /// The relay's name.
        relay: String,
        /// The position awaited.
        target: LogPosition,
        /// The checkpoint when the wait ended.
        reached: LogPosition,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The relay task ended (stopped or panicked) before the awaited position.
    #[error("relay `{relay}` is no longer running")]
    NotRunning {
        /// The relay's name.
        relay: String,
    },
    /// The relay task panicked.
    #[error("relay `{relay}` panicked")]
    Panicked {
        /// The relay's name.
        relay: String,
        /// The panic.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Relays committed events to an [`IntegrationSink`], at least once, in log order.
///
/// The checkpoint advances only after the sink confirmed every routed event up to it, so a
/// crash or stop at any moment leads to redelivery from the checkpoint, never to loss.
pub struct IntegrationRelay {
    store: Arc<dyn EventStore>,
    sink: Arc<dyn IntegrationSink>,
    checkpoint: Arc<dyn CheckpointStore>,
    routing: RoutingTable,
    options: RelayOptions,
}

impl std::fmt::Debug for IntegrationRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationRelay")
            .field("sink", &self.sink.name())
            .field("routing", &self.routing)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl IntegrationRelay {
    /// A relay from `store` to `sink`, routing with `routing`, keeping its position in `checkpoint`.
    pub fn new(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn IntegrationSink>,
        checkpoint: Arc<dyn CheckpointStore>,
        routing: RoutingTable,
    ) -> Self {
        Self {
            store,
            sink,
            checkpoint,
            routing,
            options: RelayOptions::default(),
        }
    }

    /// The same relay with other options.
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// Loads the checkpoint and starts relaying on a background task.
    pub async fn start(self) -> Result<IntegrationRelayHandle, RelayError> {
        let name = self.options.name.clone();
        let from = self
            .checkpoint
            .load(&checkpoint_key(&name))
            .await
            .map_err(|source| RelayError::Checkpoint {
                relay: name.clone(),
                source,
            })?
            .unwrap_or(LogPosition::START);
        info!(relay = %name, sink = self.sink.name(), ?from, "integration relay starting");
        let (stop_tx, stop_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(RelayStatus {
            state: RelayState::Running,
            checkpoint: from,
            published: 0,
            skipped: 0,
            failures: 0,
            consecutive_failures: 0,
            lag_events: 0,
            last_error: None,
        });
        let span = tracing::info_span!("integration_relay", relay = %name, sink = self.sink.name());
        let worker = Worker {
            relay: self,
            stop: stop_rx,
            status: status_tx,
        };
        let task = tokio::spawn(worker.run(from).instrument(span));
        Ok(IntegrationRelayHandle {
            name,
            stop: stop_tx,
            status: status_rx,
            task,
        })
    }
}

/// Controls a running relay: its status, waiting for progress, and a clean stop.
///
/// Dropping the handle stops the relay too, without waiting for it to finish.
#[derive(Debug)]
pub struct IntegrationRelayHandle {
    name: String,
    stop: watch::Sender<bool>,
    status: watch::Receiver<RelayStatus>,
    task: JoinHandle<()>,
}

impl IntegrationRelayHandle {
    /// The relay's current status.
    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// Waits until the checkpoint is at or after `target`.
    pub async fn wait_for(
        &self,
        target: LogPosition,
        timeout: Duration,
    ) -> Result<RelayStatus, RelayError> {
        let mut status = self.status.clone();
        let reached = tokio::time::timeout(timeout, async {
            status
                .wait_for(|s| s.checkpoint >= target || s.state == RelayState::Stopped)
                .await
                .map(|s| s.clone())
        })
        .await;
        match reached {
            Ok(Ok(s)) if s.checkpoint >= target => Ok(s),
            Ok(_) => Err(RelayError::NotRunning {
                relay: self.name.clone(),
            }),
            Err(_) => Err(RelayError::Timeout {
                relay: self.name.clone(),
                target,
                reached: self.status.borrow().checkpoint,
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Stops the relay and waits for it to finish; an unconfirmed delivery is abandoned and
    /// will be redelivered from the checkpoint by the next start.
    pub async fn stop(self) -> Result<RelayStatus, RelayError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|source| RelayError::Panicked {
            relay: self.name.clone(),
            source,
        })?;
        Ok(self.status.borrow().clone())
    }
}

/// Where a failure happened, as a metric label.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Read,
    Deliver,
    Checkpoint,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Deliver => "deliver",
            Self::Checkpoint => "checkpoint",
        }
    }
}

struct Worker {
    relay: IntegrationRelay,
    stop: watch::Receiver<bool>,
    status: watch::Sender<RelayStatus>,
}

impl Worker {
    fn sink_name(&self) -> String {
        self.relay.sink.name().to_owned()
    }

    async fn run(mut self, from: LogPosition) {
        let mut subscription = store::subscribe(Arc::clone(&self.relay.store), from);
        self.update_lag(from).await;
        while let Some(batch) = self.next_batch(&mut subscription).await {
            let last = batch
                .last()
                .expect("a batch holds at least one event")
                .log_position();
            let mut routed = Vec::with_capacity(batch.len());
            for event in &batch {
                match self.relay.routing.resolve(event) {
                    Some(event) => routed.push(event),
                    None => {
                        debug!(event_type = %event.event_type, position = event.position, "no route, skipped")
                    }
                }
            }
            let skipped = (batch.len() - routed.len()) as u64;
            if skipped > 0 {
                metrics::counter!("nexus_integration_skipped_total", "sink" => self.sink_name())
                    .increment(skipped);
            }
            if !routed.is_empty() && !self.deliver(&routed).await {
                break;
            }
            if !self.save(last).await {
                break;
            }
            let lag = self.lag(last).await;
            self.status.send_modify(|s| {
                s.checkpoint = last;
                s.published += routed.len() as u64;
                s.skipped += skipped;
                s.lag_events = lag.unwrap_or(s.lag_events);
            });
        }
        self.status.send_modify(|s| s.state = RelayState::Stopped);
        info!("integration relay stopped");
    }

    /// The next batch of events, or `None` once stopped.
    async fn next_batch(
        &mut self,
        subscription: &mut store::Subscription,
    ) -> Option<Vec<RecordedEvent>> {
        let mut attempt = 0;
        let first = loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => return None,
                next = subscription.next() => next,
            };
            match next {
                Ok(event) => break event,
                Err(err) => {
                    attempt += 1;
                    self.failed(Stage::Read, attempt, &err);
                    if !self.sleep(self.relay.options.backoff(attempt)).await {
                        return None;
                    }
                }
            }
        };
        let mut batch = vec![first];
        let more = self.relay.options.batch_size.saturating_sub(1);
        if more > 0 {
            match subscription.poll_ready(more).await {
                Ok(events) => batch.extend(events),
                // The events already in hand are delivered; the next read retries.
                Err(err) => debug!(error = %err, "reading ahead failed"),
            }
        }
        Some(batch)
    }

    /// Delivers `routed` until the sink confirms it; false if stopped first. A panicking sink
    /// counts as a failed delivery, so the relay task survives it.
    async fn deliver(&mut self, routed: &[RoutedEvent]) -> bool {
        let mut attempt = 0;
        loop {
            let sink = Arc::clone(&self.relay.sink);
            let result = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => return false,
                result = AssertUnwindSafe(sink.deliver(routed)).catch_unwind() => {
                    result.unwrap_or_else(|panic| Err(SinkError::Backend {
                        sink: sink.name().to_owned(),
                        source: format!("the sink panicked: {}", panic_message(panic.as_ref())).into(),
                    }))
                }
            };
            match result {
                Ok(()) => {
                    let sink_name = self.sink_name();
                    let mut start = 0;
                    // Count per exchange; consecutive events usually share one.
                    while start < routed.len() {
                        let exchange = &routed[start].exchange;
                        let run = routed[start..]
                            .iter()
                            .take_while(|r| &r.exchange == exchange)
                            .count();
                        metrics::counter!(
                            "nexus_integration_published_total",
                            "sink" => sink_name.clone(),
                            "exchange" => exchange.clone()
                        )
                        .increment(run as u64);
                        start += run;
                    }
                    self.succeeded();
                    return true;
                }
                Err(err) => {
                    attempt += 1;
                    self.failed(Stage::Deliver, attempt, &err);
                    let checkpoint = self.status.borrow().checkpoint;
                    self.update_lag(checkpoint).await;
                    if !self.sleep(self.relay.options.backoff(attempt)).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Saves the checkpoint until it sticks; false if stopped first.
    async fn save(&mut self, position: LogPosition) -> bool {
        let mut attempt = 0;
        loop {
            match self
                .relay
                .checkpoint
                .save(&checkpoint_key(&self.relay.options.name), position)
                .await
            {
                Ok(()) => {
                    if attempt > 0 {
                        self.succeeded();
                    }
                    return true;
                }
                Err(err) => {
                    attempt += 1;
                    self.failed(Stage::Checkpoint, attempt, &err);
                    if !self.sleep(self.relay.options.backoff(attempt)).await {
                        return false;
                    }
                }
            }
        }
    }

    fn failed(&self, stage: Stage, attempt: u32, err: &(dyn std::error::Error + 'static)) {
        let message = crate::redact::error_chain(err);
        warn!(stage = stage.as_str(), attempt, error = %message, "integration relay step failed, retrying");
        metrics::counter!(
            "nexus_integration_failures_total",
            "sink" => self.sink_name(),
            "stage" => stage.as_str()
        )
        .increment(1);
        self.status.send_modify(|s| {
            s.state = RelayState::Retrying;
            s.failures += 1;
            s.consecutive_failures = attempt;
            s.last_error = Some(message);
        });
    }

    fn succeeded(&self) {
        self.status.send_modify(|s| {
            s.state = RelayState::Running;
            s.consecutive_failures = 0;
        });
    }

    async fn update_lag(&self, checkpoint: LogPosition) {
        if let Some(lag) = self.lag(checkpoint).await {
            self.status.send_modify(|s| s.lag_events = lag);
        }
    }

    /// The events in the log after `checkpoint`, also recorded in the lag gauge.
    async fn lag(&self, checkpoint: LogPosition) -> Option<u64> {
        match self.relay.store.head().await {
            Ok(head) => {
                let lag = head.position.saturating_sub(checkpoint.position);
                metrics::gauge!("nexus_integration_lag_events", "sink" => self.sink_name())
                    .set(lag as f64);
                Some(lag)
            }
            Err(err) => {
                debug!(error = %err, "could not read the log head for the lag gauge");
                None
            }
        }
    }

    /// Sleeps for `duration`; false if stopped meanwhile.
    async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            biased;
            () = stopped(&mut self.stop) => false,
            () = tokio::time::sleep(duration) => true,
        }
    }
}

/// The checkpoint key of relay `name`, apart from other log readers' keys.
fn checkpoint_key(name: &str) -> String {
    format!("integration:{name}")
}

/// Resolves once the stop flag is raised or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The text of a panic payload, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let options = RelayOptions {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(70),
            ..RelayOptions::default()
        };
        let waits: Vec<u128> = (1..=6).map(|a| options.backoff(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 70, 70, 70]);
        assert_eq!(options.backoff(200), Duration::from_millis(70));
    }
}
