//! The hub: per projection an epoch, a position counter, a bounded history ring and an index
//! of subscriptions; publishing routes each notification to the mailboxes that follow it.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::filter::Scope;
use super::notification::{Coalesced, Notification, Op, ResetReason, ServerMessage, Since};
use super::session::Mailbox;
use crate::event::{EventId, LogPosition, RecordedEvent};

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
    /// `{"type":"notification",...}`.
    pub(crate) frame: Arc<str>,
    /// The committed document, for filter subscriptions that replay.
    document: Option<Value>,
    /// Identifies the document within the hub (projection, collection, id).
    pub(crate) doc_hash: u64,
    /// When the projection committed it, for commit-to-send latency.
    pub(crate) committed: Instant,
    bytes: usize,
}

impl Entry {
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

    /// The distinct mailboxes `entry` goes to.
    fn targets<'a>(&'a self, entry: &Entry, into: &mut Vec<&'a Arc<Mailbox>>) {
        into.clear();
        let note = &entry.note;
        let document = entry.document.as_ref();
        let lists = [
            self.by_document
                .get(&(note.collection.clone(), note.id.clone())),
            self.by_collection.get(&note.collection),
            Some(&self.whole),
        ];
        for sub in lists.into_iter().flatten().flatten() {
            if sub.scope.matches(&note.collection, &note.id, document) {
                into.push(&sub.mailbox);
            }
        }
        if into.len() > 1 {
            into.sort_by_key(|m| m.id);
            into.dedup_by_key(|m| m.id);
        }
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
    /// The newest checkpoint committed, to recognise a read model that went back (a rebuild).
    checkpoint: u64,
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
            checkpoint: 0,
            index: Index::default(),
        }
    }

    /// Starts a new epoch: history and positions start over, every subscriber is told to refetch.
    fn new_epoch(&mut self) {
        self.epoch = new_epoch().into();
        self.last = 0;
        self.history.clear();
        self.history_bytes = 0;
        let mut told = Vec::new();
        for sub in self.index.all() {
            if !told.contains(&sub.mailbox.id) {
                told.push(sub.mailbox.id);
                sub.mailbox.reset(self.reset(ResetReason::EpochChanged));
            }
        }
        metrics::counter!("nexus_notify_epochs_total", "projection" => self.projection.to_string())
            .increment(1);
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
fn new_epoch() -> String {
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

    /// A projection run starts from `checkpoint`: if that is behind what was committed before
    /// (the read model was rebuilt or restored), positions start over in a new epoch and every
    /// subscriber gets a `reset`.
    pub fn run_started(&self, projection: &str, checkpoint: Option<LogPosition>) {
        let channel = self.channel(projection);
        let mut channel = channel.lock().expect("channel lock poisoned");
        let from = checkpoint.map_or(0, |c| c.position);
        if from < channel.checkpoint {
            tracing::info!(
                projection,
                from,
                was = channel.checkpoint,
                "read model went back; new notification epoch"
            );
            channel.new_epoch();
        }
        channel.checkpoint = from;
    }

    /// Starts a new epoch of `projection` by hand (after replacing its read model some other way).
    pub fn reset(&self, projection: &str) {
        self.channel(projection)
            .lock()
            .expect("channel lock poisoned")
            .new_epoch();
    }

    /// Publishes what one commit of `projection` changed; call it after the commit, never before.
    pub fn publish(&self, projection: &str, checkpoint: Option<LogPosition>, changes: Vec<Change>) {
        let channel = self.channel(projection);
        let committed_at = Utc::now();
        let committed = Instant::now();
        let mut channel = channel.lock().expect("channel lock poisoned");
        if let Some(checkpoint) = checkpoint {
            channel.checkpoint = channel.checkpoint.max(checkpoint.position);
        }
        if changes.is_empty() {
            return;
        }
        metrics::counter!("nexus_notify_published_total", "projection" => projection.to_owned())
            .increment(changes.len() as u64);
        for change in changes {
            channel.last += 1;
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
                position: channel.last,
                epoch: channel.epoch.to_string(),
                recorded_at: change.recorded_at,
                committed_at,
                correlation_id: change.correlation_id,
                coalesced: change.coalesced,
            };
            let entry = Arc::new(entry(note, change.document, committed));
            {
                let mut targets = Vec::new();
                channel.index.targets(&entry, &mut targets);
                for mailbox in &targets {
                    mailbox.offer(&entry);
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
    /// a `reset` when that position cannot be resumed), atomically with publishing.
    pub(crate) fn subscribe(
        &self,
        projection: &str,
        sub: Sub,
        since: Option<&Since>,
        max_replay: usize,
    ) -> Started {
        let channel = self.channel(projection);
        let mut channel = channel.lock().expect("channel lock poisoned");
        let mut replayed = 0;
        if let Some(since) = since {
            let first = channel
                .history
                .front()
                .map_or(channel.last + 1, |e| e.note.position);
            let reason = if since.epoch != *channel.epoch || since.position > channel.last {
                Some(ResetReason::EpochChanged)
            } else if since.position + 1 < first {
                Some(ResetReason::TooOld)
            } else {
                let missed: Vec<&Arc<Entry>> = channel
                    .history
                    .iter()
                    .filter(|e| {
                        e.note.position > since.position
                            && sub.scope.matches(
                                &e.note.collection,
                                &e.note.id,
                                e.document.as_ref(),
                            )
                    })
                    .collect();
                if missed.len() > max_replay {
                    Some(ResetReason::TooManyToReplay)
                } else {
                    for entry in missed {
                        sub.mailbox.offer(entry);
                        replayed += 1;
                    }
                    None
                }
            };
            if let Some(reason) = reason {
                sub.mailbox.reset(channel.reset(reason));
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

    /// Removes subscription `key` from `projection`'s index.
    pub(crate) fn unsubscribe(&self, projection: &str, scope: &Scope, key: u64) {
        self.channel(projection)
            .lock()
            .expect("channel lock poisoned")
            .index
            .remove(scope, key);
    }
}

/// Registers the notification metrics at zero, so they are exposed before the first client.
fn register_metrics() {
    metrics::gauge!("nexus_notify_connections").increment(0.0);
    metrics::gauge!("nexus_notify_subscriptions").increment(0.0);
    metrics::counter!("nexus_notify_sent_total").increment(0);
    metrics::counter!("nexus_notify_coalesced_total").increment(0);
    metrics::counter!("nexus_notify_refused_connections_total").increment(0);
    for reason in ["slow", "idle"] {
        metrics::counter!("nexus_notify_dropped_clients_total", "reason" => reason).increment(0);
    }
    for reason in ["too_old", "epoch_changed", "too_many_to_replay"] {
        metrics::counter!("nexus_notify_resets_total", "reason" => reason).increment(0);
    }
    let _ = metrics::histogram!("nexus_notify_commit_to_send_seconds");
    let _ = metrics::histogram!("nexus_notify_connect_seconds");
}

fn entry(note: Notification, document: Option<Value>, committed: Instant) -> Entry {
    let json = serde_json::to_string(&note).unwrap_or_else(|_| "{}".to_owned());
    // `{"projection":...}` becomes `{"type":"notification","projection":...}`.
    let frame: Arc<str> = format!("{{\"type\":\"notification\",{}", &json[1..]).into();
    let document_bytes = document
        .as_ref()
        .map_or(0, |d| serde_json::to_vec(d).map_or(0, |v| v.len()));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&note.projection, &note.collection, &note.id).hash(&mut hasher);
    Entry {
        bytes: frame.len() + document_bytes + std::mem::size_of::<Entry>(),
        doc_hash: hasher.finish(),
        note,
        frame,
        document,
        committed,
    }
}
