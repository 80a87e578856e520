//! Change-data-capture over any `EventStore`: reads the log in order and waits for commits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{EventStore, ReadError};
use crate::event::{LogPosition, RecordedEvent};

/// Longest wait between two reads when nothing signals a change (a safety net for lost wake-ups).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// First re-read delay after a wake-up that found nothing visible yet (a transaction still in flight).
const FIRST_RETRY: Duration = Duration::from_millis(1);
/// Events fetched per read.
const BATCH: usize = 512;

/// A cursor over the global log that yields every committed event once, in log order.
///
/// It is woken by the store's change signal (in-process commits, PostgreSQL `NOTIFY`) and
/// also polls, so a lost signal delays delivery but never stops it.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    after: LogPosition,
    buffer: VecDeque<RecordedEvent>,
    changes: watch::Receiver<u64>,
    retry: Duration,
}

impl Subscription {
    pub(crate) fn new(store: Arc<dyn EventStore>, after: LogPosition) -> Self {
        let changes = store.changes();
        Self {
            store,
            after,
            buffer: VecDeque::new(),
            changes,
            retry: IDLE_POLL,
        }
    }

    /// The position of the last event handed out (where a restart would resume).
    pub fn position(&self) -> LogPosition {
        self.after
    }

    /// Waits for and returns the next committed event.
    ///
    /// An error leaves the cursor where it was: calling `next` again retries the read.
    pub async fn next(&mut self) -> Result<RecordedEvent, ReadError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = event.log_position();
                return Ok(event);
            }
            self.changes.borrow_and_update();
            let batch = self.store.read_all(self.after, BATCH).await?;
            if !batch.is_empty() {
                self.retry = FIRST_RETRY;
                self.buffer.extend(batch);
                continue;
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // The store is gone; fall back to polling until the caller drops us.
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                    self.retry = FIRST_RETRY;
                }
                () = tokio::time::sleep(self.retry) => {
                    self.retry = (self.retry * 2).min(IDLE_POLL);
                }
            }
        }
    }

    /// Returns the events that are readable now without waiting (at most `max`).
    pub async fn poll_ready(&mut self, max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        if self.buffer.is_empty() {
            let batch = self.store.read_all(self.after, max.min(BATCH)).await?;
            self.buffer.extend(batch);
        }
        let take = self.buffer.len().min(max);
        let events: Vec<_> = self.buffer.drain(..take).collect();
        if let Some(last) = events.last() {
            self.after = last.log_position();
        }
        Ok(events)
    }
}
