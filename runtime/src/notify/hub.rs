//! The hub: per projection an epoch, a position counter, a bounded history ring and an index
//! of subscriptions; publishing routes each notification to the mailboxes that follow it.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::filter::{Route, Scope};
use super::notification::{Coalesced, Notification, Op, ResetReason, ServerMessage, Since};
use super::session::Mailbox;
use crate::event::{EventId, RecordedEvent};
use crate::projection::ReadModelStore;

/// Bounds of the hub's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubOptions {
    /// Notifications kept per projection for resume (default 10 000); a client further behind
    /// gets a `reset`.
    pub history: usize,
    /// Bytes of notifications (and the documents filters need) kept per projection (default 32 MiB).
    pub history_bytes: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            history: 10_000,
            history_bytes: 32 << 20,
        }
    }
}

/// One document written or deleted by a commit, with the event that did it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// The document as committed; `None` for a deletion.
    pub document: Option<Value>,
    /// The aggregate type of the event.
    pub aggregate_type: String,
    /// The aggregate id of the event.
    pub aggregate_id: String,
    /// The aggregate version after the event.
    pub aggregate_version: u64,
    /// The event id.
    pub event_id: EventId,
    /// The event's global log position.
    pub log_position: u64,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
    /// The correlation id of the event.
    pub correlation_id: Option<String>,
    /// Set when the commit wrote the document several times: only the last counts.
    pub coalesced: Option<Coalesced>,
    /// The document before the commit, when known (`Some(None)`: it did not exist), so a
    /// filter subscription learns that the document left it.
    pub previous: Option<Option<Value>>,
}

impl Change {
    /// The change `event` made to document `id` of `collection`.
    pub fn of(
        event: &RecordedEvent,
        collection: String,
        id: String,
        document: Option<Value>,
    ) -> Self {
        Self {
            collection,
            id,
            document,
            aggregate_type: event.stream.aggregate_type().to_owned(),
            aggregate_id: event.stream.aggregate_id().to_owned(),
            aggregate_version: event.version,
            event_id: event.id,
            log_position: event.position,
            recorded_at: event.recorded_at,
            correlation_id: event.metadata.correlation_id.clone(),
            coalesced: None,
            previous: None,
        }
    }

    /// Makes this change stand for `earlier` too (an earlier write of the same document in
    /// the same commit).
    pub fn absorb(&mut self, earlier: &Change) {
        self.coalesced = Some(Coalesced::merge(
            earlier.coalesced,
            earlier.aggregate_version,
            &earlier.aggregate_id,
            self.coalesced,
            &self.aggregate_id,
            self.aggregate_version,
        ));
    }
}

/// A published notification with its frame encoded once for every subscriber.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) note: Notification,
    /// `{"type":"notification",...,"resume":<position>}`.
    pub(crate) frame: Arc<str>,
    /// The committed document, for filter subscriptions that replay.
    document: Option<Value>,
    /// The document before the commit, when known.
    previous: Option<Option<Value>>,
    /// Identifies the document within the hub (projection, collection, id).
    pub(crate) doc_hash: u64,
    /// When the projection committed it, for commit-to-send latency.
    pub(crate) committed: Instant,
    bytes: usize,
}

impl Entry {
    /// What this change means to `scope`.
    fn route(&self, scope: &Scope) -> Route {
        scope.route(
            &self.note.collection,
            &self.note.id,
            self.document.as_ref(),
            self.previous.as_ref().map(Option::as_ref),
        )
    }

    /// The same change as a filter subscription that no longer matches the document sees it.
    fn left(&self) -> Arc<Entry> {
        let note = Notification {
            op: Op::Left,
            ..self.note.clone()
        };
        Arc::new(entry(note, None, None, self.committed))
    }

    pub(crate) fn same_document(&self, other: &Entry) -> bool {
        self.note.id == other.note.id
            && self.note.collection == other.note.collection
            && self.note.projection == other.note.projection
    }
}

/// A subscription as the index holds it.
#[derive(Clone)]
pub(crate) struct Sub {
    pub(crate) key: u64,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) scope: Arc<Scope>,
}

#[derive(Default)]
struct Index {
    by_document: HashMap<(String, String), Vec<Sub>>,
    by_collection: HashMap<String, Vec<Sub>>,
    whole: Vec<Sub>,
}

impl Index {
    fn list(&mut self, scope: &Scope) -> &mut Vec<Sub> {
        match scope {
            Scope::Projection => &mut self.whole,
            Scope::Collection(c) | Scope::Filter(c, _) => {
                self.by_collection.entry(c.clone()).or_default()
            }
            Scope::Document(c, id) => self.by_document.entry((c.clone(), id.clone())).or_default(),
        }
    }

    fn remove(&mut self, scope: &Scope, key: u64) {
        let list = self.list(scope);
        list.retain(|s| s.key != key);
        if list.is_empty() {
            match scope {
                Scope::Projection => {}
                Scope::Collection(c) | Scope::Filter(c, _) => {
                    self.by_collection.remove(c);
                }
                Scope::Document(c, id) => {
                    self.by_document.remove(&(c.clone(), id.clone()));
                }
            }
        }
    }

    /// The distinct mailboxes `entry` goes to, and how.
    fn targets<'a>(&'a self, entry: &Entry, into: &mut Vec<(&'a Arc<Mailbox>, Route)>) {
        into.clear();
        let note = &entry.note;
        let lists = [
            self.by_document
                .get(&(note.collection.clone(), note.id.clone())),
            self.by_collection.get(&note.collection),
            Some(&self.whole),
        ];
        for sub in lists.into_iter().flatten().flatten() {
            match entry.route(&sub.scope) {
                Route::Skip => {}
                route => into.push((&sub.mailbox, route)),
            }
        }
        if into.len() > 1 {
            into.sort_by_key(|(m, _)| m.id);
            into.dedup_by_key(|(m, _)| m.id);
        }
    }

    /// Whether a filter subscription follows `collection`.
    fn filters(&self, collection: &str) -> bool {
        self.by_collection
            .get(collection)
            .is_some_and(|subs| subs.iter().any(|s| s.scope.filters(collection)))
    }

    fn all(&self) -> impl Iterator<Item = &Sub> {
        self.whole
            .iter()
            .chain(self.by_collection.values().flatten())
            .chain(self.by_document.values().flatten())
    }
}

struct Channel {
    projection: Arc<str>,
    epoch: Arc<str>,
    /// The newest position (0: none yet in this epoch).
    last: u64,
    history: VecDeque<Arc<Entry>>,
    history_bytes: usize,
    /// The read model whose notification log holds what the memory no longer does (set when
    /// a projection run starts).
    log: Option<ReadModelStore>,
    /// False from when a runner is spawned until its run says where the log stands: a
    /// subscription waits for it (a while), so a client coming back right after a restart
    /// resumes instead of being reset against a placeholder epoch.
    ready: tokio::sync::watch::Sender<bool>,
    index: Index,
}

impl Channel {
    fn new(projection: &str) -> Self {
        metrics::counter!("nexus_notify_epochs_total", "projection" => projection.to_owned())
            .increment(0);
        metrics::counter!("nexus_notify_published_total", "projection" => projection.to_owned())
            .increment(0);
        Self {
            projection: projection.into(),
            epoch: new_epoch().into(),
            last: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            log: None,
            ready: tokio::sync::watch::Sender::new(true),
            index: Index::default(),
        }
    }

    /// Starts a new epoch: history and positions start over, every subscriber is told to refetch.
    fn new_epoch(&mut self) {
        self.adopt(new_epoch(), 0);
        self.count_epoch();
    }

    fn count_epoch(&self) {
        metrics::counter!("nexus_notify_epochs_total", "projection" => self.projection.to_string())
            .increment(1);
    }

    /// Continues from `epoch` at `last` (what the read model's notification log holds); when
    /// that is not where the channel stands, every subscriber is told to refetch.
    fn adopt(&mut self, epoch: String, last: u64) {
        self.epoch = epoch.into();
        self.last = last;
        self.history.clear();
        self.history_bytes = 0;
        let mut told = Vec::new();
        for sub in self.index.all() {
            if !told.contains(&sub.mailbox.id) {
                told.push(sub.mailbox.id);
                sub.mailbox.reset(self.reset(ResetReason::EpochChanged));
            }
        }
    }

    fn reset(&self, reason: ResetReason) -> ServerMessage {
        metrics::counter!("nexus_notify_resets_total", "reason" => match reason {
            ResetReason::TooOld => "too_old",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::TooManyToReplay => "too_many_to_replay",
        })
        .increment(1);
        ServerMessage::Reset {
            projection: self.projection.to_string(),
            epoch: self.epoch.to_string(),
            position: self.last,
            reason,
        }
    }
}

/// A random epoch id: 12 hex digits.
pub(crate) fn new_epoch() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the clock still makes a restart's epoch differ from the last one.
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a subscription got when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Started {
    pub(crate) epoch: String,
    pub(crate) position: u64,
    pub(crate) replayed: u64,
}

/// Routes committed read-model changes to subscribed clients; cheap to clone.
#[derive(Clone)]
pub struct NotificationHub {
    inner: Arc<Inner>,
}

struct Inner {
    options: HubOptions,
    channels: RwLock<HashMap<String, Arc<Mutex<Channel>>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for NotificationHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationHub")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Default for NotificationHub {
    fn default() -> Self {
        Self::new(HubOptions::default())
    }
}

impl NotificationHub {
    /// A hub with these history bounds.
    pub fn new(options: HubOptions) -> Self {
        register_metrics();
        Self {
            inner: Arc::new(Inner {
                options: HubOptions {
                    history: options.history.max(1),
                    history_bytes: options.history_bytes.max(1),
                },
                channels: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn channel(&self, projection: &str) -> Arc<Mutex<Channel>> {
        if let Some(channel) = self
            .inner
            .channels
            .read()
            .expect("hub lock poisoned")
            .get(projection)
        {
            return Arc::clone(channel);
        }
        let mut channels = self.inner.channels.write().expect("hub lock poisoned");
        Arc::clone(
            channels
                .entry(projection.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(Channel::new(projection)))),
        )
    }

    /// The epoch and newest position of `projection`.
    pub fn position(&self, projection: &str) -> (String, u64) {
        let channel = self.channel(projection);
        let channel = channel.lock().expect("channel lock poisoned");
        (channel.epoch.to_string(), channel.last)
    }

    /// Most notifications kept per projection for resume.
    pub(crate) fn history_limit(&self) -> usize {
        self.inner.options.history
    }

    /// A projection run starts on a read model whose notification log is at `epoch`/`last`
    /// ([`ReadModelStore`]'s view, which starts a new epoch, `fresh`, when the read model was
    /// rebuilt, restored or changed unnotified): the channel continues from there, older positions are
    /// resumed from `log`, and if that is not where the channel stood (a rebuild while running)
    /// every subscriber gets a `reset`.
    pub(crate) fn run_started(
        &self,
        projection: &str,
        (epoch, last, fresh): (String, u64, bool),
        log: ReadModelStore,
    ) {
        let channel = self.channel(projection);
        let mut channel = channel.lock().expect("channel lock poisoned");
        if *channel.epoch != *epoch || channel.last != last {
            tracing::info!(
                projection,
                epoch,
                last,
                was = &*channel.epoch,
                "notifications continue from the read model's log"
            );
            channel.adopt(epoch, last);
        }
        if fresh {
            channel.count_epoch();
        }
        channel.log = Some(log);
        channel.ready.send_replace(true);
    }

    /// A runner of `projection` is starting: subscriptions wait (at most [`START_WAIT`]) until
    /// its run has read the notification log.
    pub(crate) fn starting(&self, projection: &str) {
        self.channel(projection)
            .lock()
            .expect("channel lock poisoned")
            .ready
            .send_replace(false);
    }

    /// Starts a new epoch of `projection` by hand (after replacing its read model some other way).
    pub fn reset(&self, projection: &str) {
        self.channel(projection)
            .lock()
            .expect("channel lock poisoned")
            .new_epoch();
    }

    /// Publishes what one commit of `projection` changed; call it after the commit, never before.
    pub fn publish(&self, projection: &str, changes: Vec<Change>) {
        let prepared = self.prepare(projection, changes);
        self.publish_prepared(prepared);
    }

    /// Numbers the notifications of a commit about to be made (the runner writes them to the
    /// read model's log in that commit), without publishing them yet.
    pub(crate) fn prepare(&self, projection: &str, changes: Vec<Change>) -> Prepared {
        let channel = self.channel(projection);
        let channel = channel.lock().expect("channel lock poisoned");
        let committed_at = Utc::now();
        let notes = changes
            .into_iter()
            .zip(channel.last + 1..)
            .map(|(change, position)| {
                let note = Notification {
                    projection: projection.to_owned(),
                    op: if change.document.is_some() {
                        Op::Upsert
                    } else {
                        Op::Delete
                    },
                    collection: change.collection,
                    id: change.id,
                    aggregate_type: change.aggregate_type,
                    aggregate_id: change.aggregate_id,
                    aggregate_version: change.aggregate_version,
                    event_id: change.event_id,
                    log_position: change.log_position,
                    position,
                    resume: None,
                    epoch: channel.epoch.to_string(),
                    recorded_at: change.recorded_at,
                    committed_at,
                    correlation_id: change.correlation_id,
                    coalesced: change.coalesced,
                };
                (note, change.document, change.previous)
            })
            .collect();
        Prepared {
            projection: projection.to_owned(),
            epoch: Arc::clone(&channel.epoch),
            base: channel.last,
            notes,
        }
    }

    /// Publishes notifications [`NotificationHub::prepare`] numbered, once their commit is made.
    pub(crate) fn publish_prepared(&self, prepared: Prepared) {
        let channel = self.channel(&prepared.projection);
        let committed = Instant::now();
        let mut channel = channel.lock().expect("channel lock poisoned");
        if prepared.notes.is_empty() {
            return;
        }
        if channel.epoch != prepared.epoch || channel.last != prepared.base {
            // Another publisher or a reset came between numbering and publishing: the numbers
            // clash, so nobody may trust a position of this epoch.
            tracing::warn!(
                projection = prepared.projection,
                "notifications numbered for another position; new notification epoch"
            );
            channel.new_epoch();
            return;
        }
        metrics::counter!("nexus_notify_published_total", "projection" => prepared.projection.clone())
            .increment(prepared.notes.len() as u64);
        for (note, document, previous) in prepared.notes {
            channel.last = note.position;
            let entry = Arc::new(entry(note, document, previous, committed));
            {
                let mut targets = Vec::new();
                channel.index.targets(&entry, &mut targets);
                let mut left = None;
                for (mailbox, route) in &targets {
                    if *route == Route::Left {
                        mailbox.offer(left.get_or_insert_with(|| entry.left()));
                    } else {
                        mailbox.offer(&entry);
                    }
                }
            }
            channel.history_bytes += entry.bytes;
            channel.history.push_back(entry);
            while channel.history.len() > self.inner.options.history
                || (channel.history_bytes > self.inner.options.history_bytes
                    && channel.history.len() > 1)
            {
                if let Some(old) = channel.history.pop_front() {
                    channel.history_bytes -= old.bytes;
                }
            }
        }
    }

    /// Adds `sub` to `projection`'s index, replaying what matches it after `since` (or queueing
    /// a `reset` when that position cannot be resumed), atomically with publishing. What the
    /// memory no longer holds is read from the read model's notification log.
    pub(crate) async fn subscribe(
        &self,
        projection: &str,
        sub: Sub,
        since: Option<&Since>,
        max_replay: usize,
    ) -> Started {
        let channel = self.channel(projection);
        let mut ready = channel
            .lock()
            .expect("channel lock poisoned")
            .ready
            .subscribe();
        let _ = tokio::time::timeout(START_WAIT, ready.wait_for(|ready| *ready)).await;
        let mut logged = None;
        if let Some(since) = since {
            let older = {
                let channel = channel.lock().expect("channel lock poisoned");
                let first = first_in_memory(&channel);
                (since.epoch == *channel.epoch
                    && since.position <= channel.last
                    && since.position + 1 < first)
                    .then(|| channel.log.clone())
                    .flatten()
                    .map(|log| (log, first))
            };
            if let Some((log, first)) = older {
                logged = Some(read_log(&log, since, first, &sub.scope, max_replay).await);
            }
        }
        let mut channel = channel.lock().expect("channel lock poisoned");
        let mut replayed = 0;
        // The client's resume mark starts where it resumes from, or here; a reset moves it.
        let start = since
            .filter(|since| since.epoch == *channel.epoch && since.position <= channel.last)
            .map_or(channel.last, |since| since.position);
        sub.mailbox.follow(projection, start);
        if let Some(since) = since {
            let first = first_in_memory(&channel);
            let outcome = if since.epoch != *channel.epoch || since.position > channel.last {
                Err(ResetReason::EpochChanged)
            } else {
                // Before the memory, the log, which must reach up to where the memory begins.
                let from_log = if since.position + 1 < first {
                    match logged {
                        Some(Ok(Logged { entries, to })) if to + 1 >= first => Ok((entries, to)),
                        Some(Err(reason)) => Err(reason),
                        _ => Err(ResetReason::TooOld),
                    }
                } else {
                    Ok((Vec::new(), since.position))
                };
                from_log.and_then(|(mut missed, after)| {
                    missed.extend(
                        channel
                            .history
                            .iter()
                            .filter(|e| e.note.position > after)
                            .filter_map(|e| replayed_as(e, &sub.scope)),
                    );
                    if missed.len() > max_replay {
                        Err(ResetReason::TooManyToReplay)
                    } else {
                        Ok(missed)
                    }
                })
            };
            match outcome {
                Ok(missed) => {
                    for entry in &missed {
                        sub.mailbox.offer(entry);
                    }
                    replayed = missed.len() as u64;
                }
                Err(reason) => sub.mailbox.reset(channel.reset(reason)),
            }
        }
        let started = Started {
            epoch: channel.epoch.to_string(),
            position: channel.last,
            replayed,
        };
        let scope = Arc::clone(&sub.scope);
        channel.index.list(&scope).push(sub);
        started
    }

    /// Whether a filter subscription follows `collection` of `projection` (then the runner
    /// tells what each changed document was before, so the filter learns what left it).
    pub(crate) fn follows_filters(&self, projection: &str, collection: &str) -> bool {
        self.channel(projection)
            .lock()
            .expect("channel lock poisoned")
            .index
            .filters(collection)
    }

    /// Removes subscription `key` from `projection`'s index.
    pub(crate) fn unsubscribe(&self, projection: &str, scope: &Scope, key: u64) {
        self.channel(projection)
            .lock()
            .expect("channel lock poisoned")
            .index
            .remove(scope, key);
    }
}

/// The oldest position the memory still holds (the next one when it holds none).
fn first_in_memory(channel: &Channel) -> u64 {
    channel
        .history
        .front()
        .map_or(channel.last + 1, |e| e.note.position)
}

/// `entry` as a subscription on `scope` replays it, if at all.
fn replayed_as(entry: &Arc<Entry>, scope: &Scope) -> Option<Arc<Entry>> {
    match entry.route(scope) {
        Route::Skip => None,
        Route::Deliver => Some(Arc::clone(entry)),
        Route::Left => Some(entry.left()),
    }
}

/// How long a subscription waits for a starting projection run to read its notification log.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Notifications read from the log per round trip.
const LOG_PAGE: usize = 512;

/// What the log held after a resume position: the matching entries, read up to `to`.
struct Logged {
    entries: Vec<Arc<Entry>>,
    to: u64,
}

/// Reads the notifications after `since` that the memory (from `first` on) no longer holds
/// from the read model's log: every position in turn, or a reason to reset instead.
async fn read_log(
    log: &ReadModelStore,
    since: &Since,
    first: u64,
    scope: &Scope,
    max_replay: usize,
) -> Result<Logged, ResetReason> {
    let mut entries = Vec::new();
    let mut after = since.position;
    while after + 1 < first {
        let page = log
            .notifications_after(&since.epoch, after, LOG_PAGE)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "reading the notification log failed; resetting the client");
                ResetReason::TooOld
            })?;
        if page.is_empty() {
            return Err(ResetReason::TooOld);
        }
        for (position, note, document) in page {
            if position >= first {
                break;
            }
            // Positions are consecutive; a hole is what the bound pruned away.
            if position != after + 1 {
                return Err(ResetReason::TooOld);
            }
            let corrupt = |err: serde_json::Error| {
                tracing::warn!(error = %err, position, "a logged notification does not decode; resetting the client");
                ResetReason::TooOld
            };
            let note: Notification = serde_json::from_str(&note).map_err(corrupt)?;
            let document: Option<Value> = document
                .map(|d| serde_json::from_str(&d))
                .transpose()
                .map_err(corrupt)?;
            after = position;
            let logged = Arc::new(entry(note, document, None, Instant::now()));
            if let Some(entry) = replayed_as(&logged, scope) {
                entries.push(entry);
                if entries.len() > max_replay {
                    return Err(ResetReason::TooManyToReplay);
                }
            }
        }
    }
    Ok(Logged { entries, to: after })
}

/// Notifications numbered for a commit not yet made.
#[derive(Debug)]
pub(crate) struct Prepared {
    projection: String,
    epoch: Arc<str>,
    /// The channel's newest position when they were numbered.
    base: u64,
    notes: Vec<(Notification, Option<Value>, Option<Option<Value>>)>,
}

impl Prepared {
    /// The rows the commit writes to the read model's notification log, keeping `keep`.
    pub(crate) fn log(&self, keep: usize) -> crate::projection::NotifyCommit {
        crate::projection::NotifyCommit {
            epoch: self.epoch.to_string(),
            rows: self
                .notes
                .iter()
                .map(|(note, document, _)| {
                    (
                        note.position,
                        serde_json::to_string(note).unwrap_or_else(|_| "{}".to_owned()),
                        document.as_ref().map(Value::to_string),
                    )
                })
                .collect(),
            keep: keep as u64,
        }
    }
}

/// Registers the notification metrics at zero, so they are exposed before the first client.
fn register_metrics() {
    metrics::gauge!("nexus_notify_connections").increment(0.0);
    metrics::gauge!("nexus_notify_subscriptions").increment(0.0);
    metrics::counter!("nexus_notify_sent_total").increment(0);
    metrics::counter!("nexus_notify_coalesced_total").increment(0);
    metrics::counter!("nexus_notify_refused_connections_total").increment(0);
    for reason in ["slow", "idle", "expired"] {
        metrics::counter!("nexus_notify_dropped_clients_total", "reason" => reason).increment(0);
    }
    for reason in ["too_old", "epoch_changed", "too_many_to_replay"] {
        metrics::counter!("nexus_notify_resets_total", "reason" => reason).increment(0);
    }
    let _ = metrics::histogram!("nexus_notify_commit_to_send_seconds");
    let _ = metrics::histogram!("nexus_notify_connect_seconds");
}

fn entry(
    note: Notification,
    document: Option<Value>,
    previous: Option<Option<Value>>,
    committed: Instant,
) -> Entry {
    let json = serde_json::to_string(&note).unwrap_or_else(|_| "{}".to_owned());
    // `{"projection":...}` becomes `{"type":"notification","projection":...,"resume":<position>}`,
    // the frame every client that keeps up gets (its resume mark is the position).
    let fields = json
        .strip_prefix('{')
        .and_then(|j| j.strip_suffix('}'))
        .unwrap_or_default();
    let frame: Arc<str> = format!(
        "{{\"type\":\"notification\",{fields},\"resume\":{}}}",
        note.position
    )
    .into();
    let json_bytes =
        |d: Option<&Value>| d.map_or(0, |d| serde_json::to_vec(d).map_or(0, |v| v.len()));
    let document_bytes =
        json_bytes(document.as_ref()) + json_bytes(previous.as_ref().and_then(Option::as_ref));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&note.projection, &note.collection, &note.id).hash(&mut hasher);
    Entry {
        bytes: frame.len() + document_bytes + std::mem::size_of::<Entry>(),
        doc_hash: hasher.finish(),
        note,
        frame,
        document,
        previous,
        committed,
    }
}
