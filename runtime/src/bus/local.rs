//! The in-process bus: consumers tail the store's change-data-capture stream, sharing one
//! read of the log's end.
//!
//! There is no copy of the log to lose: a consumer's durable position is its own checkpoint,
//! and delivery order is the store's log order (so per-key order holds trivially).
//!
//! Consumers at the head of the log share a [`Tail`]: when a commit wakes them, one of them
//! reads the new events from the store and keeps them in a bounded window in memory, and the
//! others copy them from there, so K consumers cost one read of the store, not K. A consumer
//! behind the window (a new projection catching up, or one that fell far behind) reads the
//! store on its own until it reaches the window.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{BusConsumer, BusError, Delivery, EventBus};
use crate::event::{LogPosition, RecordedEvent};
use crate::store::{EventStore, ReadError};

/// Longest wait between two reads when nothing signals a change (a safety net for lost wake-ups).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// First re-read delay after a wake-up that found nothing visible yet (a transaction still in flight).
const FIRST_RETRY: Duration = Duration::from_millis(1);
/// Events fetched per read of the store, and copied from the window at once.
const BATCH: usize = 512;
/// Events the shared window keeps.
const WINDOW: usize = 4096;

/// The default bus: consumers read the store's change-data-capture stream.
#[derive(Clone)]
pub struct InProcessBus {
    tail: Arc<Tail>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

impl InProcessBus {
    /// A bus over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        crate::telemetry::ensure_recorder();
        let (grown, _) = watch::channel(0);
        Self {
            tail: Arc::new(Tail {
                store,
                window: Mutex::new(Window::default()),
                reading: tokio::sync::Mutex::new(()),
                grown,
            }),
        }
    }
}

/// The end of the log as the consumers at its head last read it.
struct Tail {
    store: Arc<dyn EventStore>,
    window: Mutex<Window>,
    /// Held by the consumer reading the store for everyone, so one commit is read once.
    reading: tokio::sync::Mutex<()>,
    /// Changes whenever the window grows.
    grown: watch::Sender<u64>,
}

/// A contiguous stretch of the log: every event after `base`, up to the last one held.
#[derive(Default)]
struct Window {
    /// The position just before the first event held; `None` until the first read.
    base: Option<LogPosition>,
    events: VecDeque<RecordedEvent>,
}

/// Where a consumer stands against the window.
enum Place {
    /// Events after it were copied into its buffer.
    Copied,
    /// It is before the window: it must read the store itself.
    Behind,
    /// It has everything the window holds (or is past it): the store must be read.
    AtHead,
}

impl Window {
    fn end(&self) -> Option<LogPosition> {
        self.events
            .back()
            .map(RecordedEvent::log_position)
            .or(self.base)
    }

    fn place(&self, after: LogPosition, out: &mut VecDeque<RecordedEvent>) -> Place {
        let (Some(base), Some(end)) = (self.base, self.end()) else {
            return Place::AtHead;
        };
        if after < base {
            return Place::Behind;
        }
        if after >= end {
            return Place::AtHead;
        }
        // The window holds every event in (base, end], in log order.
        let first = self.events.partition_point(|e| e.log_position() <= after);
        out.extend(self.events.range(first..).take(BATCH).cloned());
        Place::Copied
    }

    /// Adds the events read from the store after `from`; restarts the window at `from` when
    /// they do not continue it.
    fn extend(&mut self, from: LogPosition, events: &[RecordedEvent]) {
        if self.end() != Some(from) {
            self.base = Some(from);
            self.events.clear();
        }
        self.events.extend(events.iter().cloned());
        while self.events.len() > WINDOW {
            if let Some(dropped) = self.events.pop_front() {
                self.base = Some(dropped.log_position());
            }
        }
    }
}

impl Tail {
    fn place(&self, after: LogPosition, out: &mut VecDeque<RecordedEvent>) -> Place {
        self.window
            .lock()
            .expect("tail window lock poisoned")
            .place(after, out)
    }
}

/// One consumer's cursor over the log.
struct LocalConsumer {
    tail: Arc<Tail>,
    after: LogPosition,
    buffer: VecDeque<RecordedEvent>,
    changes: watch::Receiver<u64>,
    retry: Duration,
    delivered: metrics::Counter,
}

impl LocalConsumer {
    /// Waits for and returns the next committed event.
    ///
    /// An error leaves the cursor where it was: calling it again retries the read.
    async fn next_event(&mut self) -> Result<RecordedEvent, ReadError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = event.log_position();
                return Ok(event);
            }
            // Whatever commits or is shared from here on wakes the wait below.
            self.changes.borrow_and_update();
            let mut grown = self.tail.grown.subscribe();
            match self.tail.place(self.after, &mut self.buffer) {
                Place::Copied => continue,
                Place::Behind => {
                    let batch = self.tail.store.read_all(self.after, BATCH).await?;
                    if !batch.is_empty() {
                        self.buffer.extend(batch);
                        continue;
                    }
                }
                Place::AtHead => {
                    let reading = self.tail.reading.lock().await;
                    // Another consumer may have read while this one waited for the lock.
                    if !matches!(self.tail.place(self.after, &mut self.buffer), Place::AtHead) {
                        continue;
                    }
                    let batch = self.tail.store.read_all(self.after, BATCH).await?;
                    if !batch.is_empty() {
                        self.tail
                            .window
                            .lock()
                            .expect("tail window lock poisoned")
                            .extend(self.after, &batch);
                        drop(reading);
                        self.tail.grown.send_modify(|n| *n = n.wrapping_add(1));
                        self.retry = FIRST_RETRY;
                        self.buffer.extend(batch);
                        continue;
                    }
                }
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // The store is gone; fall back to polling until the caller drops us.
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                    self.retry = FIRST_RETRY;
                }
                _ = grown.changed() => {}
                () = tokio::time::sleep(self.retry) => {
                    self.retry = (self.retry * 2).min(IDLE_POLL);
                }
            }
        }
    }
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
        let event = self.next_event().await.map_err(bus_error)?;
        self.delivered.increment(1);
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
        consumer: &str,
        from: LogPosition,
    ) -> Result<Box<dyn BusConsumer>, BusError> {
        let delivered = metrics::counter!("nexus_bus_delivered_total", "bus" => "inprocess", "consumer" => consumer.to_owned());
        delivered.increment(0);
        Ok(Box::new(LocalConsumer {
            delivered,
            changes: self.tail.store.changes(),
            tail: Arc::clone(&self.tail),
            after: from,
            buffer: VecDeque::new(),
            retry: IDLE_POLL,
        }))
    }
}
