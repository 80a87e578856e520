//! Group commit for the PostgreSQL store: concurrent appends share one transaction and one
//! round trip, and each caller still gets its own result.
//!
//! Appends queue up (a bounded queue: a full one makes callers wait) and a few committer tasks
//! take whatever has queued as one group. A group is sent as one pipeline — `BEGIN`, one
//! conditional insert per append, `COMMIT` — so it costs one round trip and one commit. Each
//! insert checks its own expected version and that none of its event ids is stored, so an
//! append whose condition fails inserts nothing and cannot fail the others; it is resolved
//! after the commit (idempotent replay or conflict with the actual version). Appends to one
//! stream run in queue order inside the transaction, each seeing the ones before it. Only a
//! statement error (a race with another process on the unique keys, a lost connection)
//! aborts the group; then every append of it is retried on its own.

use std::sync::Arc;

use futures::future::{MaybeDone, maybe_done};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::Writer;
use crate::event::{NewEvent, StreamId};
use crate::store::{AppendError, AppendResult, ExpectedVersion};

/// Appends waiting for a committer at most; a caller beyond it waits for room (backpressure).
pub(crate) const QUEUE_CAPACITY: usize = 1024;
/// Most appends in one group.
pub(crate) const MAX_GROUP_APPENDS: usize = 128;
/// Most events in one group (a single larger append still goes alone).
pub(crate) const MAX_GROUP_EVENTS: usize = 4096;

/// One append waiting for its group.
pub(crate) struct Pending {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

/// The receiving end shared by the committers, with the append that did not fit the last group.
pub(crate) struct Queue {
    rx: mpsc::Receiver<Pending>,
    carry: Option<Pending>,
}

impl Queue {
    pub(crate) fn new(rx: mpsc::Receiver<Pending>) -> Self {
        Self { rx, carry: None }
    }

    /// Waits for one append, then takes every append already queued, within the group bounds.
    /// `None` when the store is gone.
    async fn next_group(&mut self) -> Option<Vec<Pending>> {
        let first = match self.carry.take() {
            Some(pending) => pending,
            None => self.rx.recv().await?,
        };
        let mut events = first.events.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_APPENDS {
            let Ok(next) = self.rx.try_recv() else { break };
            if events + next.events.len() > MAX_GROUP_EVENTS {
                self.carry = Some(next);
                break;
            }
            events += next.events.len();
            group.push(next);
        }
        Some(group)
    }
}

/// One committer: takes groups off the shared queue and commits them until the store is dropped.
pub(crate) async fn committer(writer: Arc<Writer>, queue: Arc<Mutex<Queue>>) {
    loop {
        let group = queue.lock().await.next_group().await;
        let Some(group) = group else { return };
        writer.commit_group(group).await;
    }
}

/// What became of one append of a group's pipeline.
pub(crate) enum Step {
    /// Inserted; the rows the insert returned.
    Inserted(Vec<tokio_postgres::Row>),
    /// Its condition failed: nothing inserted, resolve on its own after the commit.
    Declined,
}

/// Runs `futures` concurrently on one connection, in order: each is polled once, in the order
/// given, before any is awaited, so tokio-postgres sends their messages as one pipeline in
/// exactly that order.
pub(crate) async fn pipelined<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<MaybeDone<F>>>> = futures
        .into_iter()
        .map(|f| Box::pin(maybe_done(f)))
        .collect();
    for future in &mut pending {
        let _ = futures::poll!(future.as_mut());
    }
    let mut outputs = Vec::with_capacity(pending.len());
    for mut future in pending {
        future.as_mut().await;
        outputs.push(
            future
                .as_mut()
                .take_output()
                .expect("a finished future has its output"),
        );
    }
    outputs
}
