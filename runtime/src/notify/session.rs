//! One client's side of the hub: its subscriptions, a bounded mailbox that coalesces per
//! document, and the throttle that paces what leaves it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::filter::Scope;
use super::hub::{Entry, NotificationHub, Sub};
use super::notification::{Coalesced, Notification, ServerMessage, Since};

/// Bounds of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most notifications delivered in any one-second window (default 100, at least 2).
    pub per_second: u32,
    /// Most notifications waiting in the mailbox (default 4 096; a document has at most two
    /// waiting, see [`Session::next`]); one more closes the client as `slow`, and it resumes
    /// from its last position.
    pub max_pending: usize,
    /// Most subscriptions of one client (default 64).
    pub max_subscriptions: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            per_second: 100,
            max_pending: 4_096,
            max_subscriptions: 64,
        }
    }
}

/// Why the server closed a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It could not keep up: its mailbox overflowed, or a write timed out.
    Slow,
}

impl CloseReason {
    /// The WebSocket close code (4000–4499: reconnect and resume).
    pub fn code(self) -> u16 {
        match self {
            Self::Slow => 4008,
        }
    }

    /// A short reason for the close frame and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slow => "slow: reconnect and resume from your last position",
        }
    }
}

/// A subscription refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The client has as many subscriptions as it may.
    #[error("at most {limit} subscriptions per connection")]
    TooManySubscriptions {
        /// The limit.
        limit: usize,
    },
    /// Another subscription of the client follows the projection: one per projection keeps
    /// its positions a single, gap-free sequence to resume from (widen the scope instead, or
    /// replace the subscription by subscribing again under its name).
    #[error(
        "another subscription already follows `{projection}`; replace it (same `sub`) or widen its scope"
    )]
    AlreadyFollowing {
        /// The projection.
        projection: String,
    },
}

/// What a subscription got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The projection's epoch.
    pub epoch: String,
    /// Its newest position when the subscription started.
    pub position: u64,
    /// Notifications replayed from history, delivered next.
    pub replayed: u64,
}

/// What the transport sends next.
#[derive(Debug)]
pub enum Next {
    /// A JSON text frame; `committed` is set for notifications (commit-to-send latency).
    Frame {
        /// The frame.
        text: Arc<str>,
        /// When the projection committed the notification it carries.
        committed: Option<Instant>,
    },
    /// The client is closed.
    Closed(CloseReason),
}

enum Pending {
    Note {
        entry: Arc<Entry>,
        coalesced: Option<Coalesced>,
        /// The key the document got when it started waiting: its turn comes once everything
        /// queued before that key has left.
        since: u64,
    },
    Control(Box<ServerMessage>),
}

#[derive(Default)]
struct MailboxState {
    /// In arrival order; a coalesced document moves to the back, so each projection's
    /// notifications leave in position order. It moves only until its turn has come (what
    /// was queued before it started waiting has left): from then on it keeps its place and a
    /// newer change waits behind it as a notification of its own, so a document that keeps
    /// changing is never pushed back for ever (at most two per document wait at once).
    queue: BTreeMap<u64, Pending>,
    next: u64,
    /// Document hash → its notification's key in `queue`.
    by_document: HashMap<u64, u64>,
    closed: Option<CloseReason>,
}

/// The hub's handle on a client: publishers offer, the session takes.
pub(crate) struct Mailbox {
    pub(crate) id: u64,
    state: Mutex<MailboxState>,
    wake: Notify,
    max_pending: usize,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        self.state.lock().expect("mailbox lock poisoned")
    }

    /// Queues `entry`, replacing a notification of the same document that is still waiting
    /// for its turn (see [`MailboxState::queue`]). Never blocks; a full mailbox closes the
    /// client as slow.
    pub(crate) fn offer(&self, entry: &Arc<Entry>) {
        let mut state = self.lock();
        if state.closed.is_some() {
            return;
        }
        let turn = state.queue.first_key_value().map(|(key, _)| *key);
        let mut coalesced = None;
        let mut since = state.next;
        if let Some(key) = state.by_document.get(&entry.doc_hash).copied()
            && let Some(Pending::Note {
                entry: old,
                coalesced: before,
                since: waiting,
            }) = state.queue.get(&key)
            && old.same_document(entry)
            && turn.is_some_and(|first| first < *waiting)
        {
            coalesced = Some(Coalesced::merge(
                before.or(old.note.coalesced),
                old.note.aggregate_version,
                &old.note.aggregate_id,
                entry.note.coalesced,
                &entry.note.aggregate_id,
                entry.note.aggregate_version,
            ));
            since = *waiting;
            state.queue.remove(&key);
            metrics::counter!("nexus_notify_coalesced_total").increment(1);
        } else if state.queue.len() >= self.max_pending {
            state.closed = Some(CloseReason::Slow);
            state.queue.clear();
            state.by_document.clear();
            drop(state);
            self.wake.notify_one();
            return;
        }
        let key = state.next;
        state.next += 1;
        state.queue.insert(
            key,
            Pending::Note {
                entry: Arc::clone(entry),
                coalesced,
                since,
            },
        );
        state.by_document.insert(entry.doc_hash, key);
        drop(state);
        self.wake.notify_one();
    }

    /// Drops what is waiting of the reset's projection and queues the reset.
    pub(crate) fn reset(&self, reset: ServerMessage) {
        let mut state = self.lock();
        if state.closed.is_some() {
            return;
        }
        if let ServerMessage::Reset { projection, .. } = &reset {
            let MailboxState {
                queue, by_document, ..
            } = &mut *state;
            queue.retain(|_, pending| match pending {
                Pending::Note { entry, .. } if entry.note.projection == *projection => {
                    by_document.remove(&entry.doc_hash);
                    false
                }
                _ => true,
            });
        }
        let key = state.next;
        state.next += 1;
        state.queue.insert(key, Pending::Control(Box::new(reset)));
        drop(state);
        self.wake.notify_one();
    }

    fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.closed.get_or_insert(reason);
        state.queue.clear();
        state.by_document.clear();
    }
}

/// A token bucket sized so that no sliding second passes more than the limit: a burst of a
/// tenth of it, refilled at 90 % of the limit less the burst, so a sliding second carries at
/// most 90 % of the limit (burst + rate); the rest is room for the network and the client's
/// scheduler bunching arrivals that left the server spaced.
#[derive(Debug)]
struct Throttle {
    burst: f64,
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Throttle {
    fn new(per_second: u32) -> Self {
        let limit = f64::from(per_second.max(2));
        let burst = (limit / 10.0).floor().max(1.0);
        // Below 10 a tenth of headroom is less than one notification: refill just under the
        // limit instead, so arrivals stay more than 1/limit s apart and a second holds `limit`.
        let rate = if limit < 10.0 {
            limit - burst + 0.5
        } else {
            (limit * 0.9 - burst).max(1.0)
        };
        Self {
            burst,
            rate,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// One connected client: its subscriptions and what is waiting for it. Dropping it ends its
/// subscriptions.
pub struct Session {
    hub: NotificationHub,
    mailbox: Arc<Mailbox>,
    subs: HashMap<String, (String, Arc<Scope>, u64)>,
    limits: SessionLimits,
    throttle: Throttle,
    throttled: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.mailbox.id)
            .field("subscriptions", &self.subs.len())
            .finish_non_exhaustive()
    }
}

impl NotificationHub {
    /// A new client with these limits.
    pub fn connect(&self, limits: SessionLimits) -> Session {
        metrics::gauge!("nexus_notify_connections").increment(1.0);
        Session {
            hub: self.clone(),
            mailbox: Arc::new(Mailbox {
                id: self.next_id(),
                state: Mutex::new(MailboxState::default()),
                wake: Notify::new(),
                max_pending: limits.max_pending.max(1),
            }),
            subs: HashMap::new(),
            limits,
            throttle: Throttle::new(limits.per_second),
            throttled: false,
        }
    }
}

impl Session {
    /// The client's id (for logs).
    pub fn id(&self) -> u64 {
        self.mailbox.id
    }

    /// Its limits.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Subscriptions it has.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Starts subscription `sub` (replacing one of the same name) on `scope` of `projection`,
    /// replaying what it missed after `since` (or queueing a `reset`), then live notifications.
    pub async fn subscribe(
        &mut self,
        sub: &str,
        projection: &str,
        scope: Scope,
        since: Option<&Since>,
    ) -> Result<Subscribed, SubscribeError> {
        self.unsubscribe(sub);
        if self.subs.len() >= self.limits.max_subscriptions {
            return Err(SubscribeError::TooManySubscriptions {
                limit: self.limits.max_subscriptions,
            });
        }
        if self.subs.values().any(|(p, _, _)| p == projection) {
            return Err(SubscribeError::AlreadyFollowing {
                projection: projection.to_owned(),
            });
        }
        let scope = Arc::new(scope);
        let key = self.hub.next_id();
        let started = self
            .hub
            .subscribe(
                projection,
                Sub {
                    key,
                    mailbox: Arc::clone(&self.mailbox),
                    scope: Arc::clone(&scope),
                },
                since,
                self.limits.max_pending / 2,
            )
            .await;
        self.subs
            .insert(sub.to_owned(), (projection.to_owned(), scope, key));
        metrics::gauge!("nexus_notify_subscriptions").increment(1.0);
        Ok(Subscribed {
            epoch: started.epoch,
            position: started.position,
            replayed: started.replayed,
        })
    }

    /// Ends subscription `sub`; `false` if there was none.
    pub fn unsubscribe(&mut self, sub: &str) -> bool {
        match self.subs.remove(sub) {
            Some((projection, scope, key)) => {
                self.hub.unsubscribe(&projection, &scope, key);
                metrics::gauge!("nexus_notify_subscriptions").decrement(1.0);
                true
            }
            None => false,
        }
    }

    /// Closes the client (a write timed out, say): nothing more is queued for it.
    pub fn close(&self, reason: CloseReason) {
        self.mailbox.close(reason);
    }

    /// The next frame to send, waiting for one and for the throttle; cancel-safe (a frame is
    /// taken only when this returns it).
    ///
    /// Notifications leave in the order they arrived (so each projection's positions rise). A
    /// newer change of a waiting document replaces it (latest wins, `coalesced` counts both)
    /// and takes the newer one's place at the back, but only until the document's turn has
    /// come; after that it keeps its place and the newer change waits behind it on its own.
    /// So a document that never stops changing still leaves: a change is sent, or folded into
    /// one that is sent, within the notifications waiting when it arrived plus `max_pending`.
    pub async fn next(&mut self) -> Next {
        loop {
            let wait = {
                let mut state = self.mailbox.lock();
                if let Some(reason) = state.closed {
                    return Next::Closed(reason);
                }
                match state.queue.first_entry() {
                    None => {
                        self.throttled = false;
                        None
                    }
                    Some(first) if matches!(first.get(), Pending::Control(_)) => {
                        let Pending::Control(message) = first.remove() else {
                            unreachable!("matched above")
                        };
                        return Next::Frame {
                            text: encode(&message),
                            committed: None,
                        };
                    }
                    Some(first) => match self.throttle.take(Instant::now()) {
                        Ok(()) => {
                            let key = *first.key();
                            let Pending::Note {
                                entry, coalesced, ..
                            } = first.remove()
                            else {
                                unreachable!("matched above")
                            };
                            if state.by_document.get(&entry.doc_hash) == Some(&key) {
                                state.by_document.remove(&entry.doc_hash);
                            }
                            let text = match coalesced {
                                None => Arc::clone(&entry.frame),
                                Some(coalesced) => {
                                    encode(&ServerMessage::Notification(Notification {
                                        coalesced: Some(coalesced),
                                        ..entry.note.clone()
                                    }))
                                }
                            };
                            return Next::Frame {
                                text,
                                committed: Some(entry.committed),
                            };
                        }
                        Err(wait) => {
                            if !self.throttled {
                                self.throttled = true;
                                let pending = state.queue.len();
                                return Next::Frame {
                                    text: encode(&ServerMessage::Throttled {
                                        limit: self.limits.per_second,
                                        pending,
                                    }),
                                    committed: None,
                                };
                            }
                            Some(wait)
                        }
                    },
                }
            };
            match wait {
                None => self.mailbox.wake.notified().await,
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.mailbox.wake.notified() => {}
                    }
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let subs: Vec<String> = self.subs.keys().cloned().collect();
        for sub in subs {
            self.unsubscribe(&sub);
        }
        self.mailbox.close(CloseReason::Slow);
        metrics::gauge!("nexus_notify_connections").decrement(1.0);
    }
}

fn encode(message: &ServerMessage) -> Arc<str> {
    serde_json::to_string(message)
        .unwrap_or_else(|_| "{}".to_owned())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, version: u64) -> super::super::hub::Change {
        super::super::hub::Change {
            collection: "docs".into(),
            id: id.into(),
            document: Some(serde_json::json!({ "v": version })),
            aggregate_type: "doc".into(),
            aggregate_id: id.into(),
            aggregate_version: version,
            event_id: crate::event::EventId::new(),
            log_position: 1,
            recorded_at: chrono::Utc::now(),
            correlation_id: None,
            coalesced: None,
            previous: None,
        }
    }

    async fn take(session: &mut Session) -> Notification {
        let next = tokio::time::timeout(Duration::from_secs(10), session.next());
        match next.await.expect("a frame is waiting") {
            Next::Frame { text, .. } => match serde_json::from_str(&text).unwrap() {
                ServerMessage::Notification(note) => note,
                other => panic!("expected a notification, got {other:?}"),
            },
            Next::Closed(reason) => panic!("closed: {reason:?}"),
        }
    }

    /// A throttled client takes fewer frames than arrive, so its mailbox holds a backlog that
    /// other documents keep flowing through. A hot document changing on every send used to
    /// move to the back each time and never be sent; its changes must each leave (or be
    /// folded into one that leaves) within a bounded number of sends, in position order, with
    /// `coalesced` counting every change once.
    #[tokio::test]
    async fn a_hot_document_is_delivered_within_a_bounded_number_of_sends_under_a_steady_stream() {
        let max_pending = 64;
        let hub = NotificationHub::default();
        let mut session = hub.connect(SessionLimits {
            // The pace is the test's: one frame taken per two changes published.
            per_second: 1_000_000,
            max_pending,
            ..SessionLimits::default()
        });
        session
            .subscribe("s", "p", Scope::Projection, None)
            .await
            .unwrap();
        let mut cold = 0u64;
        let mut publish_cold = |hub: &NotificationHub| {
            hub.publish("p", vec![change(&format!("cold-{cold}"), 1)]);
            cold += 1;
        };
        for _ in 0..max_pending / 2 {
            publish_cold(&hub);
        }
        // Hot version → the send count when it was published.
        let mut published_at = vec![0usize];
        let (mut delivered, mut last_position, mut hot_deliveries) = (0u64, 0u64, 0);
        let (mut changes, mut longest_wait) = (0u64, 0usize);
        let bound = 2 * max_pending;
        let steps = 400;
        for sent in 0..steps + 2 * max_pending {
            if sent < steps {
                published_at.push(sent);
                hub.publish("p", vec![change("hot", published_at.len() as u64 - 1)]);
                publish_cold(&hub);
            }
            let note = take(&mut session).await;
            assert!(note.position > last_position, "positions increase");
            last_position = note.position;
            if note.id != "hot" {
                continue;
            }
            hot_deliveries += 1;
            let count = note.coalesced.map_or(1, |c| c.count);
            let from = note
                .coalesced
                .map_or(note.aggregate_version, |c| c.from_version);
            assert_eq!(
                from,
                delivered + 1,
                "the range starts after the last delivered"
            );
            assert_eq!(count, note.aggregate_version - delivered);
            for version in from..=note.aggregate_version {
                longest_wait = longest_wait.max(sent - published_at[version as usize]);
            }
            changes += count;
            delivered = note.aggregate_version;
            if delivered == steps as u64 {
                break;
            }
        }
        assert_eq!(
            delivered, steps as u64,
            "the hot document's last change arrives"
        );
        assert_eq!(
            changes, steps as u64,
            "every change delivered or folded once"
        );
        assert!(
            longest_wait <= bound,
            "a hot change waited {longest_wait} sends (bound {bound})"
        );
        assert!(
            hot_deliveries > 2 && hot_deliveries < steps / 4,
            "the hot document is both delivered and coalesced: {hot_deliveries} frames"
        );
    }

    #[test]
    fn the_throttle_never_passes_more_than_the_limit_in_any_sliding_second() {
        for limit in [2u32, 10, 100, 1000] {
            let mut throttle = Throttle::new(limit);
            let start = Instant::now();
            let mut sent = Vec::new();
            // Ask every millisecond for five simulated seconds.
            for ms in 0..5_000u64 {
                let now = start + Duration::from_millis(ms);
                while throttle.take(now).is_ok() {
                    sent.push(now);
                }
            }
            let mut max = 0;
            for (i, at) in sent.iter().enumerate() {
                let within = sent[i..]
                    .iter()
                    .take_while(|t| **t < *at + Duration::from_secs(1))
                    .count();
                max = max.max(within);
            }
            assert!(max <= limit as usize, "limit {limit}: {max} in one second");
            assert!(
                max as f64 >= f64::from(limit) * 0.75,
                "limit {limit}: only {max} in one second"
            );
        }
    }
}
