//! The relay: publishes committed events from the store's change-data-capture stream to the
//! JetStream bus, after persistence and never as a second write of the command path.
//!
//! At-least-once from store to bus: the checkpoint moves only after JetStream stored a batch,
//! and a batch published again after a crash is dropped by JetStream's duplicate window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::BusError;
use super::nats::JetStreamBus;
use crate::checkpoint::CheckpointStore;
use crate::event::LogPosition;
use crate::store::{EventStore, subscribe};
use crate::telemetry::trace;
use tracing::Instrument;

/// Events published per JetStream round.
const BATCH: usize = 512;

/// Publishes the store's log to the bus.
pub struct Relay {
    name: String,
    store: Arc<dyn EventStore>,
    bus: JetStreamBus,
    checkpoints: Arc<dyn CheckpointStore>,
}

impl Relay {
    /// A relay named `name` (its checkpoint key) from `store` to `bus`.
    pub fn new(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        bus: JetStreamBus,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        crate::telemetry::ensure_recorder();
        Self {
            name: name.into(),
            store,
            bus,
            checkpoints,
        }
    }

    /// Starts relaying in a background task.
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run(stopped));
        RelayHandle {
            stop: Some(stop),
            task,
        }
    }

    /// Where to publish from: the checkpoint, unless the stream holds less than it claims
    /// (deleted, purged, or writes lost by a server that had not synced them): then from the
    /// last event the stream holds, since the store is the source of truth and `Nats-Msg-Id`
    /// drops what is still there.
    async fn start_position(
        &self,
    ) -> Result<LogPosition, Box<dyn std::error::Error + Send + Sync>> {
        let checkpoint = self
            .checkpoints
            .load(&self.name)
            .await?
            .unwrap_or(LogPosition::START);
        if checkpoint == LogPosition::START {
            return Ok(checkpoint);
        }
        let stored = match self.bus.last_stored().await {
            Ok(stored) => stored.unwrap_or(LogPosition::START),
            Err(BusError::Malformed { sequence, .. }) => {
                tracing::warn!(relay = %self.name, sequence, "the stream's last message is not a Nexus event; trusting the checkpoint");
                return Ok(checkpoint);
            }
            Err(err) => return Err(Box::new(err)),
        };
        if stored < checkpoint {
            tracing::warn!(
                relay = %self.name, checkpoint = checkpoint.position, stored = stored.position,
                "the stream holds less than the relay published; publishing again from the store"
            );
            metrics::counter!("nexus_relay_republished_total", "relay" => self.name.clone())
                .increment(1);
            return Ok(stored);
        }
        Ok(checkpoint)
    }

    async fn run(self, mut stopped: oneshot::Receiver<()>) {
        let mut backoff = Duration::from_millis(50);
        let start = loop {
            match self.start_position().await {
                Ok(position) => break position,
                Err(err) => {
                    tracing::warn!(error = %crate::redact::error_chain(err.as_ref()), relay = %self.name, "cannot read the relay checkpoint or the stream; retrying");
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let published =
            metrics::counter!("nexus_relay_published_total", "relay" => self.name.clone());
        published.increment(0);
        let failures =
            metrics::counter!("nexus_relay_failures_total", "relay" => self.name.clone());
        failures.increment(0);
        metrics::counter!("nexus_relay_republished_total", "relay" => self.name.clone())
            .increment(0);
        let publish_seconds =
            metrics::histogram!("nexus_relay_publish_seconds", "relay" => self.name.clone());
        let lag = metrics::gauge!("nexus_relay_lag_seconds", "relay" => self.name.clone());
        lag.set(0.0);
        let mut subscription = subscribe(Arc::clone(&self.store), start);
        let mut pending = Vec::new();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    _ = &mut stopped => return,
                    next = subscription.next() => match next {
                        Ok(event) => pending.push(event),
                        Err(err) => {
                            tracing::warn!(error = %crate::redact::error_chain(&err), relay = %self.name, "cannot read the log; retrying");
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                    },
                }
                match subscription.poll_ready(BATCH - 1).await {
                    Ok(more) => pending.extend(more),
                    Err(err) => {
                        tracing::debug!(error = %crate::redact::error_chain(&err), "read-ahead failed; publishing what we have")
                    }
                }
            }
            // Lag is the age of the oldest event not yet published: the head of this batch
            // while it is (re)tried, 0 once the relay has published everything it has read.
            if let Some(oldest) = pending.first() {
                let age = (chrono::Utc::now() - oldest.recorded_at)
                    .num_milliseconds()
                    .max(0);
                lag.set(age as f64 / 1000.0);
            }
            let started = Instant::now();
            match self
                .bus
                .publish(&pending)
                .instrument(publish_span(&self.name, &pending))
                .await
            {
                Ok(()) => {
                    let last = pending
                        .last()
                        .expect("a batch is never empty")
                        .log_position();
                    published.increment(pending.len() as u64);
                    publish_seconds.record(started.elapsed().as_secs_f64());
                    lag.set(0.0);
                    pending.clear();
                    backoff = Duration::from_millis(50);
                    if let Err(err) = self.checkpoints.save(&self.name, last).await {
                        // Republishing after a restart is harmless: JetStream drops duplicates.
                        tracing::warn!(error = %crate::redact::error_chain(&err), relay = %self.name, "cannot save the relay checkpoint");
                    }
                }
                Err(err) => {
                    failures.increment(1);
                    tracing::warn!(error = %crate::redact::error_chain(&err), relay = %self.name, events = pending.len(), "publish failed; retrying");
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The span of one publish (an OpenTelemetry producer `send` span): a trace of its own, linked
/// to the context each event was appended under (at most 128 links), since one publish carries
/// the events of many requests.
fn publish_span(relay: &str, events: &[crate::event::RecordedEvent]) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = "send nexus",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.batch.message_count = events.len(),
        nexus.relay = relay,
    );
    for traceparent in events
        .iter()
        .filter_map(|e| e.metadata.traceparent.as_deref())
        .take(128)
    {
        trace::add_link(&span, traceparent);
    }
    span
}

/// Controls a running relay.
pub struct RelayHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay; events not yet confirmed by JetStream are published again on restart.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}
