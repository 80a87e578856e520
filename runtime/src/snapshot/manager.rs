//! The snapshot manager: watches the log and snapshots a stream when it passes a threshold.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lru::LruCache;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Snapshot, SnapshotStore};
use crate::aggregate::Aggregate;
use crate::command::{LoadError, Repository};
use crate::event::{LogPosition, RecordedEvent, StreamId};
use crate::store::{EventStore, subscribe};

/// How often age thresholds are checked and the checkpoint saved.
const TICK: Duration = Duration::from_secs(1);
/// Streams whose progress towards a snapshot is remembered, by default.
const DEFAULT_MAX_TRACKED: usize = 100_000;

/// When to snapshot a stream: whichever threshold is passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Events appended since the last snapshot.
    pub every_events: Option<u64>,
    /// Bytes of event payload appended since the last snapshot: what a load must decode
    /// beyond the snapshot, so it tracks how much the aggregate's rebuild costs.
    pub max_tail_bytes: Option<u64>,
    /// Time since the last snapshot (or since the stream's first unsnapshotted event).
    pub max_age: Option<Duration>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every_events: Some(100),
            max_tail_bytes: Some(256 * 1024),
            max_age: Some(Duration::from_secs(3600)),
        }
    }
}

/// Which threshold made the manager take a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerReason {
    /// `every_events` was reached.
    EventCount,
    /// `max_tail_bytes` was reached.
    Size,
    /// `max_age` was reached.
    Age,
}

impl TriggerReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::EventCount => "event_count",
            Self::Size => "size",
            Self::Age => "age",
        }
    }
}

impl fmt::Display for TriggerReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[async_trait]
trait Taker: Send + Sync {
    async fn take(&self, id: &str) -> Result<Option<Snapshot>, LoadError>;
}

#[async_trait]
impl<A: Aggregate> Taker for Repository<A> {
    async fn take(&self, id: &str) -> Result<Option<Snapshot>, LoadError> {
        self.snapshot(id).await
    }
}

struct Registered {
    policy: SnapshotPolicy,
    taker: Arc<dyn Taker>,
}

struct Tracked {
    snapshot_version: u64,
    latest_version: u64,
    tail_bytes: u64,
    since: DateTime<Utc>,
}

/// Watches the event log and snapshots streams of registered aggregate types.
pub struct SnapshotManager {
    name: String,
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    aggregates: HashMap<&'static str, Registered>,
    max_tracked: usize,
}

/// The streams being watched, least recently written first out.
type Tracking = LruCache<StreamId, Tracked>;

impl SnapshotManager {
    /// A manager reading `store` and writing to `snapshots`.
    pub fn new(store: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Self {
        crate::telemetry::ensure_recorder();
        Self {
            name: "snapshot-manager".into(),
            store,
            snapshots,
            aggregates: HashMap::new(),
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }

    /// Remembers the progress of at most `max` streams (default 100 000); the
    /// least recently written one is forgotten first. A forgotten stream is picked up again
    /// from its last snapshot on its next event: event-count and age triggers still hold (they
    /// count versions and time from the snapshot), only its tail-size count starts over.
    pub fn with_max_tracked(mut self, max: usize) -> Self {
        self.max_tracked = max;
        self
    }

    /// Snapshots aggregates of type `A` by `policy`.
    pub fn register<A: Aggregate>(mut self, policy: SnapshotPolicy) -> Self {
        let repository = Repository::<A>::new(Arc::clone(&self.store))
            .with_snapshots(Arc::clone(&self.snapshots));
        for reason in ["event_count", "size", "age"] {
            metrics::counter!("nexus_snapshots_taken_total", "aggregate" => A::TYPE, "reason" => reason)
                .increment(0);
        }
        metrics::counter!("nexus_snapshot_failures_total", "aggregate" => A::TYPE).increment(0);
        let _registered = metrics::histogram!("nexus_snapshot_size_bytes", "aggregate" => A::TYPE);
        self.aggregates.insert(
            A::TYPE,
            Registered {
                policy,
                taker: Arc::new(repository),
            },
        );
        self
    }

    /// Starts watching in a background task.
    pub fn spawn(self) -> SnapshotManagerHandle {
        let (stop, stopped) = oneshot::channel();
        let taken = Arc::new(AtomicU64::new(0));
        let tracking = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            self,
            stopped,
            Arc::clone(&taken),
            Arc::clone(&tracking),
        ));
        SnapshotManagerHandle {
            stop: Some(stop),
            task,
            taken,
            tracking,
        }
    }

    async fn tracked_for(&self, tracked: &mut Tracking, event: &RecordedEvent) -> bool {
        if tracked.contains(&event.stream) {
            return true;
        }
        match self.snapshots.load(&event.stream).await {
            Ok(snapshot) => {
                let (snapshot_version, since) =
                    snapshot.map_or((0, event.recorded_at), |s| (s.version, s.taken_at));
                tracked.put(
                    event.stream.clone(),
                    Tracked {
                        snapshot_version,
                        latest_version: snapshot_version,
                        tail_bytes: 0,
                        since,
                    },
                );
                true
            }
            Err(err) => {
                tracing::warn!(stream = %event.stream, error = %err, "cannot read snapshot state");
                false
            }
        }
    }

    async fn take(&self, stream: &StreamId, entry: &mut Tracked, reason: TriggerReason) -> bool {
        let Some(registered) = self.aggregates.get(stream.aggregate_type()) else {
            return false;
        };
        match registered.taker.take(stream.aggregate_id()).await {
            Ok(Some(snapshot)) => {
                let kind = stream.aggregate_type().to_owned();
                metrics::counter!("nexus_snapshots_taken_total", "aggregate" => kind.clone(), "reason" => reason.as_str())
                    .increment(1);
                metrics::histogram!("nexus_snapshot_size_bytes", "aggregate" => kind)
                    .record(snapshot.state.len() as f64);
                tracing::debug!(%stream, version = snapshot.version, %reason, "snapshot taken");
                entry.snapshot_version = snapshot.version;
                entry.latest_version = entry.latest_version.max(snapshot.version);
                entry.tail_bytes = 0;
                entry.since = snapshot.taken_at;
                true
            }
            Ok(None) => false,
            Err(err) => {
                metrics::counter!("nexus_snapshot_failures_total", "aggregate" => stream.aggregate_type().to_owned())
                    .increment(1);
                tracing::warn!(%stream, error = %err, "snapshot failed; will retry on the next trigger");
                false
            }
        }
    }
}

/// Controls a running snapshot manager.
pub struct SnapshotManagerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    taken: Arc<AtomicU64>,
    tracking: Arc<AtomicUsize>,
}

impl SnapshotManagerHandle {
    /// Streams whose progress the manager remembers now (at most its `max_tracked`).
    pub fn tracked_streams(&self) -> usize {
        self.tracking.load(Ordering::Relaxed)
    }

    /// Snapshots taken since the manager started.
    pub fn snapshots_taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Stops the manager after it saves its checkpoint.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for SnapshotManagerHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

async fn run(
    manager: SnapshotManager,
    mut stopped: oneshot::Receiver<()>,
    taken: Arc<AtomicU64>,
    tracking: Arc<AtomicUsize>,
) {
    let start = loop {
        match manager.snapshots.load_checkpoint(&manager.name).await {
            Ok(position) => break position.unwrap_or(LogPosition::START),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the snapshot manager checkpoint; retrying");
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(TICK) => {}
                }
            }
        }
    };
    let mut subscription = subscribe(Arc::clone(&manager.store), start);
    let capacity = NonZeroUsize::new(manager.max_tracked).unwrap_or(NonZeroUsize::MIN);
    let mut tracked: Tracking = LruCache::new(capacity);
    let mut saved = start;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            next = subscription.next() => match next {
                Ok(event) => {
                    let Some(registered) = manager.aggregates.get(event.stream.aggregate_type()) else {
                        continue;
                    };
                    let policy = registered.policy;
                    let known = manager.tracked_for(&mut tracked, &event).await;
                    tracking.store(tracked.len(), Ordering::Relaxed);
                    if !known {
                        continue;
                    }
                    let entry = tracked.get_mut(&event.stream).expect("tracked just above");
                    if event.version <= entry.snapshot_version {
                        continue;
                    }
                    if entry.latest_version == entry.snapshot_version {
                        entry.since = entry.since.min(event.recorded_at);
                    }
                    entry.latest_version = entry.latest_version.max(event.version);
                    entry.tail_bytes += event.payload.get().len() as u64;
                    let reason = if policy
                        .every_events
                        .is_some_and(|n| entry.latest_version - entry.snapshot_version >= n)
                    {
                        Some(TriggerReason::EventCount)
                    } else if policy.max_tail_bytes.is_some_and(|n| entry.tail_bytes >= n) {
                        Some(TriggerReason::Size)
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        let stream = event.stream.clone();
                        if manager.take(&stream, entry, reason).await {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "snapshot manager cannot read the log; retrying");
                    tokio::time::sleep(TICK).await;
                }
            },
            _ = tick.tick() => {
                let now = Utc::now();
                let due: Vec<StreamId> = tracked
                    .iter()
                    .filter(|(stream, entry)| {
                        entry.latest_version > entry.snapshot_version
                            && manager
                                .aggregates
                                .get(stream.aggregate_type())
                                .and_then(|r| r.policy.max_age)
                                .is_some_and(|age| {
                                    (now - entry.since).to_std().unwrap_or_default() >= age
                                })
                    })
                    .map(|(stream, _)| stream.clone())
                    .collect();
                for stream in due {
                    let entry = tracked.get_mut(&stream).expect("collected from the map");
                    if manager.take(&stream, entry, TriggerReason::Age).await {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let position = subscription.position();
                if position != saved && manager.snapshots.save_checkpoint(&manager.name, position).await.is_ok() {
                    saved = position;
                }
            }
        }
    }
    let position = subscription.position();
    if position != saved
        && let Err(err) = manager
            .snapshots
            .save_checkpoint(&manager.name, position)
            .await
    {
        tracing::warn!(error = %err, "cannot save the snapshot manager checkpoint");
    }
}
