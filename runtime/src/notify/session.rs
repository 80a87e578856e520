//! One client's side of the hub: its subscriptions, a bounded mailbox that coalesces per
//! document, the throttle that paces what leaves it, and the resume mark each notification
//! carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Most notifications waiting in the mailbox (default 4 096; a document has at most one
    /// waiting, see [`Session::next`]); one more closes the client as `slow`, and it resumes
    /// from its last resume mark.
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
        /// The document's newest change (latest wins).
        entry: Arc<Entry>,
        /// The changes it stands for, when more than one arrived while it waited.
        coalesced: Option<Coalesced>,
        /// The position of the oldest change it stands for: until it leaves, the client's
        /// resume mark for the projection stays below it.
        first: u64,
    },
    Control(Box<ServerMessage>),
}

/// Where one projection's resume mark stands for a client.
#[derive(Debug, Default)]
struct Mark {
    /// The newest position offered.
    offered: u64,
    /// The `first` of each of the projection's waiting notifications (unique: positions are,
    /// and a document waits once).
    waiting: BTreeSet<u64>,
}

impl Mark {
    fn at(position: u64) -> Self {
        Self {
            offered: position,
            waiting: BTreeSet::new(),
        }
    }

    /// Every change at or below this was delivered or folded into one delivered: just below
    /// the oldest change still waiting, or everything offered when none waits. It never
    /// decreases: a waiting notification keeps its `first`, and what arrives later is above
    /// everything offered before.
    fn resume(&self) -> u64 {
        self.waiting
            .first()
            .map_or(self.offered, |first| first.saturating_sub(1))
    }
}

#[derive(Default)]
struct MailboxState {
    /// In turn order: a document's turn is fixed when its first unsent change arrives, and a
    /// newer change of a waiting document replaces it in place (latest wins, `coalesced`
    /// widened). So a document that keeps changing still leaves at its turn (never pushed
    /// back), what it carries is its newest change, and at most one notification per document
    /// waits. Positions then leave out of order; `marks` says where the client resumes.
    queue: BTreeMap<u64, Pending>,
    next: u64,
    /// Document hash → its notification's key in `queue`.
    by_document: HashMap<u64, u64>,
    /// Projection → the client's resume mark for it.
    marks: HashMap<String, Mark>,
    closed: Option<CloseReason>,
}

impl MailboxState {
    fn mark(&mut self, projection: &str) -> &mut Mark {
        if !self.marks.contains_key(projection) {
            self.marks.insert(projection.to_owned(), Mark::default());
        }
        self.marks.get_mut(projection).expect("inserted above")
    }

    /// Drops the notifications of `projection` waiting.
    fn drop_waiting(&mut self, projection: &str) {
        let MailboxState {
            queue, by_document, ..
        } = self;
        queue.retain(|_, pending| match pending {
            Pending::Note { entry, .. } if entry.note.projection == projection => {
                by_document.remove(&entry.doc_hash);
                false
            }
            _ => true,
        });
    }

    /// Takes the notification under `key` and frames it with the client's resume mark.
    fn take_note(&mut self, key: u64) -> Next {
        let Some(Pending::Note {
            entry,
            coalesced,
            first,
        }) = self.queue.remove(&key)
        else {
            unreachable!("the caller found a notification under this key")
        };
        if self.by_document.get(&entry.doc_hash) == Some(&key) {
            self.by_document.remove(&entry.doc_hash);
        }
        let resume = match self.marks.get_mut(&entry.note.projection) {
            Some(mark) => {
                mark.waiting.remove(&first);
                mark.resume()
            }
            None => entry.note.position,
        };
        // A client that keeps up shares the frame encoded once for all; one throttled or behind
        // (paced by its throttle) gets its own.
        let text = match coalesced {
            None if resume == entry.note.position => Arc::clone(&entry.frame),
            coalesced => encode(&ServerMessage::Notification(Notification {
                coalesced: coalesced.or(entry.note.coalesced),
                resume: Some(resume),
                ..entry.note.clone()
            })),
        };
        Next::Frame {
            text,
            committed: Some(entry.committed),
        }
    }
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

    /// Queues `entry`, or folds it into its document's waiting notification, which keeps its
    /// turn (see [`MailboxState::queue`]). Never blocks; a full mailbox closes the client as
    /// slow.
    pub(crate) fn offer(&self, entry: &Arc<Entry>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed.is_some() {
            return;
        }
        let position = entry.note.position;
        if let Some(key) = state.by_document.get(&entry.doc_hash).copied()
            && let Some(Pending::Note {
                entry: waiting,
                coalesced,
                ..
            }) = state.queue.get_mut(&key)
            && waiting.same_document(entry)
        {
            *coalesced = Some(Coalesced::merge(
                coalesced.or(waiting.note.coalesced),
                waiting.note.aggregate_version,
                &waiting.note.aggregate_id,
                entry.note.coalesced,
                &entry.note.aggregate_id,
                entry.note.aggregate_version,
            ));
            *waiting = Arc::clone(entry);
            let mark = state.mark(&entry.note.projection);
            mark.offered = mark.offered.max(position);
            metrics::counter!("nexus_notify_coalesced_total").increment(1);
            return;
        }
        if state.queue.len() >= self.max_pending {
            state.closed = Some(CloseReason::Slow);
            state.queue.clear();
            state.by_document.clear();
            drop(guard);
            self.wake.notify_one();
            return;
        }
        let key = state.next;
        state.next += 1;
        state.queue.insert(
            key,
            Pending::Note {
                entry: Arc::clone(entry),
                coalesced: None,
                first: position,
            },
        );
        state.by_document.insert(entry.doc_hash, key);
        let mark = state.mark(&entry.note.projection);
        mark.offered = mark.offered.max(position);
        mark.waiting.insert(position);
        drop(guard);
        self.wake.notify_one();
    }

    /// A subscription of `projection` starts with the client's resume mark at `position`:
    /// what still waits of the projection is dropped (the subscription replays from there).
    pub(crate) fn follow(&self, projection: &str, position: u64) {
        let mut state = self.lock();
        state.drop_waiting(projection);
        state
            .marks
            .insert(projection.to_owned(), Mark::at(position));
    }

    /// The client stopped following `projection`: what waits of it is dropped.
    fn forget(&self, projection: &str) {
        let mut state = self.lock();
        state.drop_waiting(projection);
        state.marks.remove(projection);
    }

    /// Drops what is waiting of the reset's projection and queues the reset; the resume mark
    /// starts over at the reset's position.
    pub(crate) fn reset(&self, reset: ServerMessage) {
        let mut state = self.lock();
        if state.closed.is_some() {
            return;
        }
        if let ServerMessage::Reset {
            projection,
            position,
            ..
        } = &reset
        {
            state.drop_waiting(projection);
            state.marks.insert(projection.clone(), Mark::at(*position));
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
        state.marks.clear();
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
                self.mailbox.forget(&projection);
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
    /// Notifications leave in turn order: a document's turn is when its oldest unsent change
    /// arrived, and a newer change of a waiting document replaces it in place (latest wins,
    /// `coalesced` counts them all, its range starts at the oldest). So what leaves is each
    /// document's newest change, and a change is sent, or folded into one that is sent, within
    /// the notifications waiting when it arrived (at most `max_pending`), however often its
    /// document changes. Positions then leave out of order; each notification carries the
    /// client's `resume` mark for its projection.
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
                    Some(first) => {
                        let key = *first.key();
                        match self.throttle.take(Instant::now()) {
                            Ok(()) => return state.take_note(key),
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
                        }
                    }
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

    /// What a test published and what of it the client has: per document its changes
    /// (version, position, the send count when published), and the positions neither
    /// delivered nor folded into a notification delivered.
    #[derive(Default)]
    struct Ledger {
        changes: HashMap<String, Vec<(u64, u64, usize)>>,
        delivered: HashMap<String, u64>,
        uncovered: BTreeSet<u64>,
        resume: u64,
        longest_wait: usize,
        counted: u64,
        deliveries: HashMap<String, usize>,
    }

    impl Ledger {
        fn publish(&mut self, hub: &NotificationHub, id: &str, sent: usize) {
            let changes = self.changes.entry(id.to_owned()).or_default();
            let version = changes.len() as u64 + 1;
            hub.publish("p", vec![change(id, version)]);
            let position = hub.position("p").1;
            changes.push((version, position, sent));
            self.uncovered.insert(position);
        }

        /// Takes the next notification, the `sent`th, and checks it: the document's latest
        /// version, a range starting right after what was delivered, every change counted
        /// once, and a resume mark that never goes back nor passes a change not yet delivered.
        async fn take(&mut self, session: &mut Session, sent: usize) -> Notification {
            let note = take(session).await;
            let published = &self.changes[&note.id];
            let (version, position, _) = *published.last().expect("published");
            assert_eq!(
                (note.aggregate_version, note.position),
                (version, position),
                "{} carries its latest change",
                note.id
            );
            let before = self.delivered.insert(note.id.clone(), version).unwrap_or(0);
            let (from, count) = note
                .coalesced
                .map_or((version, 1), |c| (c.from_version, c.count));
            assert_eq!(
                from,
                before + 1,
                "the range starts after the last delivered"
            );
            assert_eq!(count, version - before, "every change counted once");
            self.counted += count;
            *self.deliveries.entry(note.id.clone()).or_default() += 1;
            for (_, position, at) in &published[before as usize..] {
                self.longest_wait = self.longest_wait.max(sent - at);
                self.uncovered.remove(position);
            }
            let resume = note.resume.expect("the session sets the resume mark");
            assert!(
                resume >= self.resume,
                "resume went back from {} to {resume}",
                self.resume
            );
            self.resume = resume;
            if let Some(first) = self.uncovered.first() {
                assert!(
                    resume < *first,
                    "resume {resume} passes {first}, not delivered"
                );
            }
            note
        }

        fn published(&self) -> u64 {
            self.changes.values().map(|c| c.len() as u64).sum()
        }
    }

    async fn watcher(hub: &NotificationHub, max_pending: usize) -> Session {
        let mut session = hub.connect(SessionLimits {
            // The pace is the test's: one frame taken per step.
            per_second: 1_000_000,
            max_pending,
            ..SessionLimits::default()
        });
        session
            .subscribe("s", "p", Scope::Projection, None)
            .await
            .unwrap();
        session
    }

    /// A saturated whole-projection watcher: three changes offered per notification taken,
    /// over a hot document and 40 warm ones. Each notification carries its document's newest
    /// change, each change leaves (itself or folded) within one turn of the mailbox, which
    /// never holds more than one notification per document, and `resume` never goes back nor
    /// passes a change not yet delivered.
    #[tokio::test]
    async fn a_saturated_watcher_gets_each_documents_latest_change_within_one_turn() {
        let (warm, steps) = (40usize, 600usize);
        let hub = NotificationHub::default();
        let mut session = watcher(&hub, 64).await;
        let mut ledger = Ledger::default();
        let mut sent = 0;
        for step in 0..steps {
            ledger.publish(&hub, "hot", sent);
            ledger.publish(&hub, &format!("warm-{}", step % warm), sent);
            ledger.publish(&hub, &format!("warm-{}", (step * 7 + 3) % warm), sent);
            ledger.take(&mut session, sent).await;
            sent += 1;
        }
        while !ledger.uncovered.is_empty() {
            ledger.take(&mut session, sent).await;
            sent += 1;
        }
        assert_eq!(ledger.counted, ledger.published(), "every change once");
        assert!(
            ledger.longest_wait <= warm + 1,
            "a change waited {} sends; one turn is {} documents",
            ledger.longest_wait,
            warm + 1
        );
        assert!(
            sent < steps + warm + 2,
            "{sent} notifications: at most one per document waited"
        );
        assert_eq!(
            ledger.resume,
            hub.position("p").1,
            "all delivered: resume is the newest"
        );
    }

    /// A throttled client takes fewer frames than arrive, so its mailbox holds a backlog that
    /// other documents keep flowing through. A hot document changing on every send used to
    /// move to the back each time and never be sent; its changes must each leave (or be
    /// folded into one that leaves) within a bounded number of sends, carrying its newest
    /// change, with `coalesced` counting every change once.
    #[tokio::test]
    async fn a_hot_document_is_delivered_within_a_bounded_number_of_sends_under_a_steady_stream() {
        let max_pending = 64;
        let hub = NotificationHub::default();
        let mut session = watcher(&hub, max_pending).await;
        let mut ledger = Ledger::default();
        let mut cold = 0u64;
        for _ in 0..max_pending / 2 {
            ledger.publish(&hub, &format!("cold-{cold}"), 0);
            cold += 1;
        }
        let steps = 400;
        let mut sent = 0;
        for _ in 0..steps {
            ledger.publish(&hub, "hot", sent);
            ledger.publish(&hub, &format!("cold-{cold}"), sent);
            cold += 1;
            ledger.take(&mut session, sent).await;
            sent += 1;
        }
        while !ledger.uncovered.is_empty() {
            ledger.take(&mut session, sent).await;
            sent += 1;
        }
        assert_eq!(
            ledger.delivered["hot"], steps as u64,
            "the last change arrives"
        );
        assert_eq!(ledger.counted, ledger.published(), "every change once");
        assert!(
            ledger.longest_wait <= max_pending,
            "a change waited {} sends (bound {max_pending})",
            ledger.longest_wait
        );
        let hot = ledger.deliveries["hot"];
        assert!(
            hot > 2 && hot < steps / 4,
            "the hot document is both delivered and coalesced: {hot} frames"
        );
    }

    /// A client that keeps up gets each notification alone, in position order: its resume
    /// mark is the notification's own position.
    #[tokio::test]
    async fn a_client_that_keeps_up_resumes_from_each_notifications_own_position() {
        let hub = NotificationHub::default();
        let mut session = watcher(&hub, 64).await;
        let mut ledger = Ledger::default();
        for round in 0..5 {
            ledger.publish(&hub, "a", round);
            let note = ledger.take(&mut session, round).await;
            assert_eq!(note.resume, Some(note.position));
        }
        // A backlog of distinct documents leaves in order too.
        for id in ["b", "c", "d", "e"] {
            ledger.publish(&hub, id, 5);
        }
        for _ in 0..4 {
            let note = ledger.take(&mut session, 5).await;
            assert_eq!(note.resume, Some(note.position));
        }
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
