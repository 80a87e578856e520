//! The projection runner: one supervised task per projection, fed by its own bus consumer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::Projection;
use super::changes::{Changes, DocumentCache, Writes};
use super::health::{HealthRegistry, ProjectionHealth, ProjectionStatus};
use super::store::audit::{AuditCause, AuditWrite};
use super::store::{
    Batch, DeadLetterStatus, NewDeadLetter, ReadModelError, ReadModelStore, ReadModels,
};
use crate::bus::{BusError, Delivery, EventBus};
use crate::event::{LogPosition, RecordedEvent, StreamId};
use crate::notify::{Change, NotificationHub};
use crate::store::{EventStore, ReadError};
use crate::telemetry::trace;

/// When to retry a failed event: exponential backoff from `initial`, capped at `max`, and
/// `max_retries` retries after the first attempt before the event is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between retries.
    pub max: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_retries: 5,
        }
    }
}

impl RetrySchedule {
    /// The delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What happens to a key's later events once one of its events is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterMode {
    /// The key moves on; only the failed event waits in the dead-letter queue.
    #[default]
    Skip,
    /// The key is parked: its later events queue behind the failed one, in order, until redriven.
    Park,
}

/// How a runner drives its projections.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Retry schedule of failed events.
    pub retry: RetrySchedule,
    /// What a dead letter does to its key.
    pub dead_letter: DeadLetterMode,
    /// Events applied per commit.
    pub batch_size: usize,
    /// Events a projection holds in memory at most.
    pub max_pending: usize,
    /// How often the dead-letter queue is checked for redrive requests.
    pub redrive_poll: Duration,
    /// Redrive requests read per poll (a page, so a huge queue is never loaded at once).
    pub redrive_page: usize,
    /// How long a key may wait for versions the bus skipped and the store does not have (a
    /// stray publish, a shared stream, a store restored from an older backup) before the
    /// projection reports `failing`; it keeps checking the store with backoff either way.
    pub gap_wait: Duration,
    /// How search indexes are written (feature `search`): commit interval and size cap.
    #[cfg(feature = "search")]
    pub search: crate::search::IndexOptions,
    /// Bytes of each projection's read cache (documents, list queries and search responses,
    /// estimated from their JSON); 0 turns it off.
    pub read_cache_bytes: u64,
    /// Steps that bring events of older schema versions to the current shape before a
    /// projection sees them (none by default).
    pub upcasters: crate::upcast::Upcasters,
    /// Append every document change to the read model's audit log, in the commit's
    /// transaction (default on; see [`crate::projection::ReadModelStore::audit_history`]).
    pub audit: bool,
    /// Prune the audit log by itself (default none: it is kept until `nexus audit prune`).
    pub audit_retention: Option<super::AuditRetention>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            retry: RetrySchedule::default(),
            dead_letter: DeadLetterMode::Skip,
            batch_size: 256,
            max_pending: 10_000,
            redrive_poll: Duration::from_millis(500),
            redrive_page: 256,
            gap_wait: Duration::from_secs(30),
            #[cfg(feature = "search")]
            search: crate::search::IndexOptions::default(),
            read_cache_bytes: 32 * 1024 * 1024,
            upcasters: crate::upcast::Upcasters::new(),
            audit: true,
            audit_retention: None,
        }
    }
}

/// Starts projections, each in its own supervised task with its own read model.
#[derive(Clone)]
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    read_models: ReadModels,
    options: RunnerOptions,
    health: HealthRegistry,
    notifications: Option<NotificationHub>,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("read_models", &self.read_models)
            .finish_non_exhaustive()
    }
}

impl ProjectionRunner {
    /// A runner reading `bus` (and `store`, to fill gaps), keeping read models in SQLite files
    /// under `dir`.
    pub fn new(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        dir: impl Into<PathBuf>,
    ) -> Self {
        crate::telemetry::ensure_recorder();
        Self::with_read_models(store, bus, ReadModels::sqlite(dir))
    }

    /// A runner reading `bus` (and `store`, to fill gaps), keeping read models in
    /// `read_models` (SQLite files or PostgreSQL tables).
    pub fn with_read_models(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        read_models: ReadModels,
    ) -> Self {
        crate::telemetry::ensure_recorder();
        Self {
            store,
            bus,
            read_models,
            options: RunnerOptions::default(),
            health: HealthRegistry::new(),
            notifications: None,
        }
    }

    /// The same runner bringing events of older schema versions to the current shape with
    /// `upcasters` before its projections see them (see [`crate::upcast`]). They are part of
    /// [`RunnerOptions`]: a later [`with_options`](Self::with_options) replaces them.
    pub fn with_upcasters(mut self, upcasters: crate::upcast::Upcasters) -> Self {
        self.options.upcasters = upcasters;
        self
    }

    /// The same runner publishing to `hub`, after each commit, one notification per document
    /// the commit changed.
    pub fn with_notifications(mut self, hub: NotificationHub) -> Self {
        self.notifications = Some(hub);
        self
    }

    /// The same runner with other options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// The health of every projection this runner started.
    pub fn health(&self) -> HealthRegistry {
        self.health.clone()
    }

    /// The SQLite read model file of projection `name` under `dir`.
    pub fn read_model_path(dir: &Path, name: &str) -> PathBuf {
        super::store::sqlite_path(dir, name)
    }

    /// Where this runner keeps read models.
    pub fn read_models(&self) -> &ReadModels {
        &self.read_models
    }

    /// Starts `projection` in its own supervised task.
    ///
    /// A SQLite read model is opened (created if missing) here; its dead letters are counted
    /// into the health by the task as it starts.
    pub fn spawn<P: Projection>(&self, projection: P) -> Result<ProjectionHandle, ReadModelError> {
        let name = projection.name().to_owned();
        let read_model = self
            .read_models
            .open(&name)?
            .with_cache(&name, self.options.read_cache_bytes);
        #[cfg(feature = "search")]
        let search = self.open_search(&projection, &read_model)?;
        let health = self.health.register(&name);
        if let Some(hub) = &self.notifications {
            // Resumes wait for the run to say where its notification log stands.
            hub.starting(&name);
        }
        let (stop, stopped) = watch::channel(false);
        let worker = Worker {
            name: name.clone(),
            projection: Arc::new(projection),
            read_model: read_model.clone(),
            store: Arc::clone(&self.store),
            bus: Arc::clone(&self.bus),
            options: self.options.clone(),
            health: Arc::clone(&health),
            notifications: self.notifications.clone(),
            #[cfg(feature = "search")]
            search: search.clone(),
        };
        let task = tokio::spawn(supervise(worker, stopped));
        let retention = self
            .options
            .audit_retention
            .filter(|_| self.options.audit)
            .map(|retention| {
                tokio::spawn(retain(
                    name.clone(),
                    read_model.clone(),
                    retention,
                    stop.subscribe(),
                ))
            });
        Ok(ProjectionHandle {
            name,
            read_model,
            health,
            stop,
            task,
            retention,
            #[cfg(feature = "search")]
            search,
        })
    }

    /// Opens the search `projection` declares: tantivy indexes beside a SQLite read model, or
    /// PostgreSQL full text in a PostgreSQL one.
    #[cfg(feature = "search")]
    fn open_search<P: Projection>(
        &self,
        projection: &P,
        read_model: &ReadModelStore,
    ) -> Result<Option<Arc<crate::search::SearchIndex>>, ReadModelError> {
        let declaration = projection.search();
        if declaration.is_empty() {
            return Ok(None);
        }
        let name = projection.name();
        let dir = self.read_models.search_dir(name);
        crate::search::SearchIndex::open(
            name,
            dir.as_deref(),
            &declaration,
            read_model.clone(),
            self.options.search,
            self.options.audit,
        )
        .map(|index| Some(Arc::new(index)))
        .map_err(|e| ReadModelError::Search {
            projection: name.to_owned(),
            source: Box::new(e),
        })
    }
}

/// Controls one running projection.
pub struct ProjectionHandle {
    name: String,
    read_model: ReadModelStore,
    health: Arc<RwLock<ProjectionHealth>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The task applying automatic audit retention, when configured.
    retention: Option<JoinHandle<()>>,
    #[cfg(feature = "search")]
    search: Option<Arc<crate::search::SearchIndex>>,
}

/// Applies `retention` to `read_model`'s audit log every `retention.every` until `stopped`;
/// each prune that removes something is recorded in the chain and logged.
async fn retain(
    name: String,
    read_model: ReadModelStore,
    retention: super::AuditRetention,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(retention.every) => {}
        }
        match read_model.audit_prune(retention.now()).await {
            Ok(report) if report.removed > 0 => {
                tracing::info!(projection = %name, removed = report.removed, range = ?report.range, entry = ?report.entry, "audit retention removed old segments");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(projection = %name, error = %crate::redact::error_chain(&err), "audit retention failed; retrying at the next interval");
            }
        }
    }
}

impl ProjectionHandle {
    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its read model (documents, checkpoint, dead letters).
    pub fn read_model(&self) -> &ReadModelStore {
        &self.read_model
    }

    /// Its health now.
    pub fn health(&self) -> ProjectionHealth {
        self.health.read().expect("health lock poisoned").clone()
    }

    /// Its search indexes, when it declares searchable collections (feature `search`).
    #[cfg(feature = "search")]
    pub fn search(&self) -> Option<&Arc<crate::search::SearchIndex>> {
        self.search.as_ref()
    }

    /// Stops it after the batch in progress commits (and its search index commits).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        if let Some(retention) = self.retention.take() {
            let _ = retention.await;
        }
        #[cfg(feature = "search")]
        if let Some(search) = &self.search {
            search.stop().await;
        }
    }

    /// Kills it at once, as a crash would: nothing after the last commit is kept (the search
    /// index keeps nothing after its last commit either).
    pub fn abort(self) {
        self.task.abort();
        if let Some(retention) = &self.retention {
            retention.abort();
        }
        #[cfg(feature = "search")]
        if let Some(search) = &self.search {
            search.kill();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error(transparent)]
    ReadModel(#[from] ReadModelError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("failed to read missing events from the store")]
    Store(#[from] ReadError),
    #[error("the bus consumer stopped")]
    IntakeClosed,
}

/// Registers a projection's metrics at zero, so every series exists before its first event.
fn register_metrics(name: &str) {
    for counter in [
        "nexus_projection_events_total",
        "nexus_projection_retries_total",
        "nexus_projection_errors_total",
        "nexus_projection_dead_letters_total",
        "nexus_projection_gap_fills_total",
        "nexus_projection_restarts_total",
        "nexus_projection_audit_entries_total",
    ] {
        metrics::counter!(counter, "projection" => name.to_owned()).increment(0);
    }
    let _registered =
        metrics::histogram!("nexus_projection_latency_seconds", "projection" => name.to_owned());
    let _registered =
        metrics::histogram!("nexus_projection_commit_seconds", "projection" => name.to_owned());
}

async fn supervise<P: Projection>(worker: Worker<P>, mut stopped: watch::Receiver<bool>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    register_metrics(&worker.name);
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stopped.borrow() {
            break;
        }
        let processed = worker
            .health
            .read()
            .expect("health lock poisoned")
            .processed;
        match worker.run(stopped.clone()).await {
            Ok(()) => break,
            Err(err) => {
                // A run that made progress was healthy until it failed: start backing off anew,
                // so a server that drops connections now and then does not slow restarts for good.
                if worker
                    .health
                    .read()
                    .expect("health lock poisoned")
                    .processed
                    > processed
                {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(projection = %worker.name, error = %crate::redact::error_chain(&err), "projection worker failed; restarting");
                metrics::counter!("nexus_projection_restarts_total", "projection" => worker.name.clone()).increment(1);
                worker.update_health(|h| {
                    h.status = ProjectionStatus::Failing;
                    h.last_error = Some(err.to_string());
                });
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    worker.update_health(|h| h.status = ProjectionStatus::Stopped);
}

struct Worker<P> {
    name: String,
    projection: Arc<P>,
    read_model: ReadModelStore,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    options: RunnerOptions,
    health: Arc<RwLock<ProjectionHealth>>,
    notifications: Option<NotificationHub>,
    #[cfg(feature = "search")]
    search: Option<Arc<crate::search::SearchIndex>>,
}

struct Item {
    /// The event, with what acknowledges it on the bus (nothing for gap fills and redrives).
    delivery: Delivery,
    /// The intake sequence number, for the checkpoint; `None` for gap fills and redrives.
    seq: Option<u64>,
    /// The dead letter this item redrives.
    redrive: Option<i64>,
}

impl Item {
    fn event(&self) -> &RecordedEvent {
        &self.delivery.event
    }
}

/// The spans of the batch being applied: one OpenTelemetry consumer `process {projection}` span
/// per batch, as the messaging conventions describe for batches: a child of the trace context
/// the batch's first applied event was appended under (so a request whose event is alone in its
/// batch, the case of light load, is one trace through to the read model) and linked to the
/// others' (at most [`MAX_LINKS`]), with `apply` (the projection's handler over the batch) and
/// `commit {projection}` below it.
#[derive(Default)]
struct BatchTrace {
    /// `process {projection}` and `apply`, from the first event the batch applies.
    spans: Option<(tracing::Span, tracing::Span)>,
    links: usize,
}

/// Links a batch span keeps besides its parent (the exporter's default limit is 128).
const MAX_LINKS: usize = 127;

impl BatchTrace {
    /// The `apply` span `event` runs under: the batch's spans start with the first event (its
    /// context their parent), later events are links.
    fn applying(&mut self, projection: &str, event: &RecordedEvent) -> &tracing::Span {
        match &self.spans {
            Some((process, _)) => {
                if self.links < MAX_LINKS
                    && let Some(traceparent) = &event.metadata.traceparent
                {
                    trace::add_link(process, traceparent);
                    self.links += 1;
                }
            }
            None => {
                let process = tracing::info_span!(
                    "process",
                    otel.name = %format_args!("process {projection}"),
                    otel.kind = "consumer",
                    messaging.operation.type = "process",
                    messaging.consumer.group.name = projection,
                    messaging.batch.message_count = tracing::field::Empty,
                );
                if let Some(traceparent) = &event.metadata.traceparent {
                    trace::set_parent(&process, traceparent, None);
                }
                let apply = tracing::info_span!(parent: &process, "apply");
                self.spans = Some((process, apply));
            }
        }
        &self.spans.as_ref().expect("set above").1
    }

    /// Ends `apply` and starts `commit {projection}` for the `events` the batch commits; the
    /// `process` span ends when the trace is dropped.
    fn committing(&mut self, projection: &str, events: usize) -> (tracing::Span, tracing::Span) {
        let Some((process, apply)) = self.spans.take() else {
            return (tracing::Span::none(), tracing::Span::none());
        };
        drop(apply);
        // As an integer: `tracing-opentelemetry` records unsigned fields as text.
        process.record(
            "messaging.batch.message_count",
            i64::try_from(events).unwrap_or(i64::MAX),
        );
        let commit = tracing::info_span!(
            parent: &process,
            "commit",
            otel.name = %format_args!("commit {projection}"),
            events
        );
        (process, commit)
    }
}

/// The span of one event's application, for log lines (not exported, see
/// [`trace::DELIVERY_TARGET`]):
/// the event's id, position, correlation and causation ids, below the batch's `apply`.
fn event_span(apply: &tracing::Span, projection: &str, event: &RecordedEvent) -> tracing::Span {
    tracing::info_span!(
        target: trace::DELIVERY_TARGET,
        parent: apply,
        "deliver",
        messaging.consumer.group.name = projection,
        messaging.message.id = %event.id,
        nexus.position = event.position,
        correlation_id = event.metadata.correlation_id.as_deref().unwrap_or_default(),
        causation_id = event.metadata.causation_id.as_deref().unwrap_or_default(),
    )
}

/// Most applied stream versions a run remembers before it starts over from the read model.
const CACHED_VERSIONS: usize = 65_536;
/// Most committed documents a run remembers.
const CACHED_DOCUMENTS: usize = 4_096;
/// Events read from the store per round while a run catches up from its checkpoint.
const CATCH_UP_BATCH: usize = 512;
/// How often a projection's lag is measured.
const HEALTH_REFRESH: Duration = Duration::from_secs(1);
/// Longest pause between two looks at the store for versions a key is missing.
const GAP_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
struct KeyState {
    queue: VecDeque<Item>,
    attempts: u32,
    first_failed: Option<DateTime<Utc>>,
    retry_at: Option<Instant>,
    in_ready: bool,
}

/// A key waiting for versions the bus skipped but the store does not have (yet).
struct Gap {
    since: Instant,
    checks: u32,
    /// The version the bus delivered.
    delivered: u64,
    /// The last version the store had.
    stored: u64,
    /// The version the read model has applied.
    applied: u64,
}

struct State {
    keys: HashMap<StreamId, KeyState>,
    /// Stream versions the read model has committed, as far as this run knows them.
    versions: HashMap<StreamId, u64>,
    /// The lowest dead-letter version of each stream, as far as this run knows it (`None`: the
    /// stream has no dead letter).
    letter_heads: HashMap<StreamId, Option<u64>>,
    /// Documents the read model has committed, as far as this run knows them.
    documents: DocumentCache,
    ready: VecDeque<StreamId>,
    /// Received events in order, for the checkpoint: (seq, position, recorded_at).
    intake: VecDeque<(u64, LogPosition, DateTime<Utc>)>,
    done: HashSet<u64>,
    next_seq: u64,
    pending: usize,
    redriving: HashSet<i64>,
    /// The id after which the next page of redrive requests starts.
    redrive_cursor: i64,
    gaps: HashMap<StreamId, Gap>,
    /// The low-water mark: every event received before it is applied or dead-lettered.
    checkpoint: LogPosition,
    last_position: u64,
    processed: u64,
    dead_letters: u64,
    /// The spans of the batch being applied.
    trace: BatchTrace,
}

impl State {
    fn new(checkpoint: LogPosition) -> Self {
        Self {
            keys: HashMap::new(),
            versions: HashMap::new(),
            letter_heads: HashMap::new(),
            documents: DocumentCache::new(CACHED_DOCUMENTS),
            ready: VecDeque::new(),
            intake: VecDeque::new(),
            done: HashSet::new(),
            next_seq: 0,
            pending: 0,
            redriving: HashSet::new(),
            redrive_cursor: 0,
            gaps: HashMap::new(),
            checkpoint,
            last_position: checkpoint.position,
            processed: 0,
            dead_letters: 0,
            trace: BatchTrace::default(),
        }
    }

    /// Records what a batch committed.
    fn committed(&mut self, batch: Batch) {
        if self.versions.len() + batch.versions.len() > CACHED_VERSIONS {
            self.versions.clear();
        }
        for (stream, version) in batch.versions {
            let known = self.versions.entry(stream).or_insert(version);
            *known = (*known).max(version);
        }
        for ((collection, id), document) in batch.writes {
            self.documents.insert(&collection, &id, document);
        }
    }

    fn make_ready(&mut self, key: &StreamId) {
        if let Some(state) = self.keys.get_mut(key)
            && !state.in_ready
            && state.retry_at.is_none()
            && !state.queue.is_empty()
        {
            state.in_ready = true;
            self.ready.push_back(key.clone());
        }
    }

    fn enqueue(&mut self, item: Item, front: bool) {
        let key = item.event().stream.clone();
        let state = self.keys.entry(key.clone()).or_default();
        if front {
            state.queue.push_front(item);
        } else {
            state.queue.push_back(item);
        }
        self.pending += 1;
        self.make_ready(&key);
    }

    fn receive(&mut self, delivery: Delivery) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.intake.push_back((
            seq,
            delivery.event.log_position(),
            delivery.event.recorded_at,
        ));
        self.enqueue(
            Item {
                delivery,
                seq: Some(seq),
                redrive: None,
            },
            false,
        );
    }

    /// Moves keys whose retry time has come back to the ready queue.
    fn release_due(&mut self, now: Instant) {
        let due: Vec<StreamId> = self
            .keys
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(state) = self.keys.get_mut(&key) {
                state.retry_at = None;
            }
            self.make_ready(&key);
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.keys.values().filter_map(|s| s.retry_at).min()
    }

    fn retrying(&self) -> usize {
        self.keys.values().filter(|s| s.retry_at.is_some()).count()
    }

    /// Advances the low-water mark past every completed event; returns it if it moved forward.
    ///
    /// A redelivery of an event applied long ago completes at once but never moves the mark back.
    fn advance_checkpoint(&mut self) -> Option<LogPosition> {
        let mut moved = None;
        while let Some((seq, position, _)) = self.intake.front().copied() {
            if !self.done.remove(&seq) {
                break;
            }
            self.intake.pop_front();
            if position > self.checkpoint {
                self.checkpoint = position;
                moved = Some(position);
            }
        }
        moved
    }

    /// What a key stuck on a gap longer than `wait` is missing, for the health.
    fn stalled(&self, wait: Duration) -> Option<String> {
        let now = Instant::now();
        let stuck: Vec<String> = self
            .gaps
            .iter()
            .filter(|(_, gap)| now.duration_since(gap.since) >= wait)
            .map(|(stream, gap)| {
                format!(
                    "stream `{stream}`: the bus delivered version {} after version {}, \
                     but the store has only up to version {}",
                    gap.delivered, gap.applied, gap.stored
                )
            })
            .collect();
        match stuck.len() {
            0 => None,
            1 => stuck.into_iter().next(),
            n => Some(format!(
                "{n} streams wait for missing versions; {}",
                stuck[0]
            )),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .map_or_else(
            || "the handler panicked".to_owned(),
            |m| format!("the handler panicked: {m}"),
        )
}

/// Feeds a run's intake: first the store from the checkpoint up to `catch_up_to` (when the bus
/// does not replay from the checkpoint), then the bus consumer.
async fn feed(
    name: String,
    store: Arc<dyn EventStore>,
    start: LogPosition,
    catch_up_to: Option<LogPosition>,
    mut consumer: Box<dyn crate::bus::BusConsumer>,
    intake: mpsc::Sender<Delivery>,
) {
    let mut backoff = Duration::from_millis(50);
    if let Some(head) = catch_up_to {
        let mut after = start;
        while after < head {
            match store.read_all(after, CATCH_UP_BATCH).await {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    backoff = Duration::from_millis(50);
                    for event in events {
                        after = event.log_position();
                        if intake.send(Delivery::unacknowledged(event)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(projection = %name, error = %crate::redact::error_chain(&err), "cannot read the store to catch up; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::debug!(projection = %name, position = after.position, "caught up from the store");
    }
    loop {
        match consumer.next().await {
            Ok(delivery) => {
                backoff = Duration::from_millis(50);
                if intake.send(delivery).await.is_err() {
                    return;
                }
            }
            Err(BusError::Malformed { sequence, .. }) => {
                tracing::warn!(projection = %name, sequence, "skipped a message that is not a Nexus event");
            }
            Err(err) if catch_up_to.is_some() => {
                // Deliveries in flight when the connection broke come back only after the
                // bus's ack wait: end the run, so the next one reads the store from its
                // checkpoint instead.
                tracing::warn!(projection = %name, error = %crate::redact::error_chain(&err), "bus consumer failed; restarting from the checkpoint");
                return;
            }
            Err(err) => {
                tracing::warn!(projection = %name, error = %crate::redact::error_chain(&err), "bus consumer failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What to do with the next item of a key.
enum Step {
    /// Apply it.
    Apply,
    /// Nothing to apply (already applied); complete it.
    Complete,
    /// Park it behind its stream's earlier dead letter.
    Park,
    /// Resolve its dead letter without applying it (the event is already applied).
    Resolve(i64),
    /// A redrive that must wait for an older dead letter of its stream.
    Defer(i64),
    /// Fill versions `from..=to` from the store first.
    Fill(u64, u64),
}

impl<P: Projection> Worker<P> {
    fn update_health(&self, f: impl FnOnce(&mut ProjectionHealth)) {
        let mut health = self.health.write().expect("health lock poisoned");
        f(&mut health);
        health.updated_at = Utc::now();
    }

    async fn run(&self, mut stopped: watch::Receiver<bool>) -> Result<(), WorkerError> {
        // The index catches up with the read model before anything new is applied, so a
        // caught-up document is never overwritten by an older handoff.
        #[cfg(feature = "search")]
        if let Some(search) = &self.search {
            search.ready().await;
        }
        let start = self
            .read_model
            .checkpoint()
            .await?
            .unwrap_or(LogPosition::START);
        if let Some(hub) = &self.notifications {
            let started = self.read_model.notify_start().await?;
            hub.run_started(&self.name, started, self.read_model.clone());
        }
        if self.options.audit
            && let Some(seq) = self.read_model.audit_run_started(start.position).await?
        {
            tracing::info!(
                projection = %self.name, from = start.position, seq,
                "the read model went back: recorded as a rebuild in its audit log"
            );
        }
        let catch_up_to = if self.bus.replays_from_position() {
            None
        } else {
            Some(self.store.head().await?)
        };
        let consumer = self.bus.consumer(&self.name, start).await?;
        let (intake_tx, mut intake) = mpsc::channel::<Delivery>(1024);
        let intake_task = tokio::spawn(feed(
            self.name.clone(),
            Arc::clone(&self.store),
            start,
            catch_up_to,
            consumer,
            intake_tx,
        ));
        let _intake_guard = AbortOnDrop(intake_task);

        let mut state = State::new(start);
        state.dead_letters = self.read_model.dead_letter_count().await?;
        let mut redrive_tick = tokio::time::interval(self.options.redrive_poll);
        // Health (lag above all) is refreshed once a second, busy or idle.
        let mut next_health = Instant::now();
        let dead_letters = state.dead_letters;
        self.update_health(|h| {
            h.status = ProjectionStatus::Running;
            h.last_position = start.position;
            h.dead_letters = dead_letters;
        });
        loop {
            if *stopped.borrow() {
                return Ok(());
            }
            while state.pending < self.options.max_pending {
                match intake.try_recv() {
                    Ok(delivery) => state.receive(delivery),
                    Err(_) => break,
                }
            }
            state.release_due(Instant::now());
            if Instant::now() >= next_health {
                self.refresh_health(&state).await;
                next_health = Instant::now() + HEALTH_REFRESH;
            }
            if state.ready.is_empty() {
                let next_retry = state.next_retry();
                tokio::select! {
                    _ = stopped.changed() => return Ok(()),
                    delivery = intake.recv(), if state.pending < self.options.max_pending => match delivery {
                        Some(delivery) => state.receive(delivery),
                        None => return Err(WorkerError::IntakeClosed),
                    },
                    () = sleep_until(next_retry) => {}
                    _ = redrive_tick.tick() => self.pick_up_redrives(&mut state).await?,
                    () = tokio::time::sleep_until(next_health) => {}
                }
                continue;
            }
            self.process_batch(&mut state).await?;
        }
    }

    /// Enqueues one page of redrive requests, walking the queue page by page across polls.
    async fn pick_up_redrives(&self, state: &mut State) -> Result<(), WorkerError> {
        let page = self.options.redrive_page.max(1);
        let letters = self
            .read_model
            .redrive_requests(state.redrive_cursor, page)
            .await?;
        state.redrive_cursor = match letters.last() {
            Some(last) if letters.len() == page => last.id,
            _ => 0,
        };
        for letter in letters {
            if state.pending >= self.options.max_pending {
                break;
            }
            if !state.redriving.insert(letter.id) {
                continue;
            }
            state.enqueue(
                Item {
                    delivery: Delivery::unacknowledged(letter.event),
                    seq: None,
                    redrive: Some(letter.id),
                },
                false,
            );
        }
        Ok(())
    }

    async fn refresh_health(&self, state: &State) {
        let head = self
            .store
            .head()
            .await
            .map(|h| h.position)
            .unwrap_or(state.checkpoint.position);
        // Lag is the age of the oldest event not applied yet: the oldest received, else (an
        // intake still empty while the checkpoint is below the head: events not delivered
        // yet, or a hole) the first event after the checkpoint; 0 when caught up.
        let mut oldest = state.intake.front().map(|(_, _, at)| *at);
        if oldest.is_none()
            && head > state.checkpoint.position
            && let Ok(next) = self.store.read_all(state.checkpoint, 1).await
        {
            oldest = next.first().map(|e| e.recorded_at);
        }
        let lag_seconds = oldest.map_or(0.0, |at| {
            (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
        });
        // From the low-water mark, not the furthest event applied: a hole below events
        // already applied is lag too.
        let lag_events = head
            .saturating_sub(state.checkpoint.position)
            .max(state.intake.len() as u64);
        metrics::gauge!("nexus_projection_lag_events", "projection" => self.name.clone())
            .set(lag_events as f64);
        metrics::gauge!("nexus_projection_lag_seconds", "projection" => self.name.clone())
            .set(lag_seconds);
        metrics::gauge!("nexus_projection_dead_letters", "projection" => self.name.clone())
            .set(state.dead_letters as f64);
        let retrying = state.retrying();
        let stalled = state.stalled(self.options.gap_wait);
        self.update_health(|h| {
            h.lag_events = lag_events;
            h.lag_seconds = lag_seconds;
            h.set_activity(retrying, stalled);
        });
    }

    /// The version of `key` applied so far: in this batch, else committed.
    async fn applied_version(
        &self,
        state: &mut State,
        batch: &Batch,
        key: &StreamId,
    ) -> Result<u64, WorkerError> {
        if let Some(version) = batch.versions.get(key).or_else(|| state.versions.get(key)) {
            return Ok(*version);
        }
        let version = self.read_model.stream_version(key).await?;
        state.versions.insert(key.clone(), version);
        Ok(version)
    }

    /// The lowest dead-letter version of `key`, if it has dead letters.
    async fn letter_head(
        &self,
        state: &mut State,
        key: &StreamId,
    ) -> Result<Option<u64>, WorkerError> {
        if let Some(head) = state.letter_heads.get(key) {
            return Ok(*head);
        }
        let head = self
            .read_model
            .letter_heads(vec![key.clone()])
            .await?
            .remove(key);
        // Never cleared mid-batch (heads updated by this batch are not committed yet); the
        // next batch's prefetch bounds the map.
        state.letter_heads.insert(key.clone(), head);
        Ok(head)
    }

    /// Loads, in one round trip each, what the keys of the coming batch need and the run does
    /// not know yet: their applied versions and (in park mode) their dead-letter heads.
    async fn prefetch(&self, state: &mut State) -> Result<(), WorkerError> {
        let coming = || state.ready.iter().take(self.options.batch_size);
        let unknown: Vec<StreamId> = coming()
            .filter(|key| !state.versions.contains_key(*key))
            .cloned()
            .collect();
        let no_head: Vec<StreamId> = if self.options.dead_letter == DeadLetterMode::Park {
            coming()
                .filter(|key| !state.letter_heads.contains_key(*key))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if !unknown.is_empty() {
            let versions = self.read_model.stream_versions(unknown).await?;
            state.versions.extend(versions);
        }
        if state.letter_heads.len() + no_head.len() > CACHED_VERSIONS {
            state.letter_heads.clear();
        }
        if !no_head.is_empty() {
            let mut heads = self.read_model.letter_heads(no_head.clone()).await?;
            for key in no_head {
                let head = heads.remove(&key);
                state.letter_heads.insert(key, head);
            }
        }
        Ok(())
    }

    /// Decides what to do with `item`, the next event of its key.
    async fn step(
        &self,
        state: &mut State,
        item: &Item,
        applied: u64,
    ) -> Result<Step, WorkerError> {
        let event = item.event();
        let park = self.options.dead_letter == DeadLetterMode::Park;
        match item.redrive {
            None => {
                if event.version <= applied {
                    // Already applied (a redelivery): recognised, not applied twice.
                    return Ok(Step::Complete);
                }
                if park && self.letter_head(state, &event.stream).await?.is_some() {
                    return Ok(Step::Park);
                }
                if event.version > applied + 1 {
                    return Ok(Step::Fill(applied + 1, event.version - 1));
                }
                Ok(Step::Apply)
            }
            Some(id) => {
                // Dead letters of one stream are redriven in version order: only the oldest
                // goes; the others wait for it.
                let head = self.letter_head(state, &event.stream).await?;
                if head != Some(event.version) {
                    return Ok(Step::Defer(id));
                }
                if park && event.version <= applied {
                    return Ok(Step::Resolve(id));
                }
                if park && event.version > applied + 1 {
                    return Ok(Step::Defer(id));
                }
                Ok(Step::Apply)
            }
        }
    }

    /// Fills versions `from..=to` of `key` from the store in front of its queue; `false` when
    /// the store does not have them all (the key then waits with backoff).
    async fn fill_gap(
        &self,
        state: &mut State,
        key: &StreamId,
        (from, to): (u64, u64),
        delivered: u64,
    ) -> Result<bool, WorkerError> {
        let missing = match self.store.read_stream(key, from, Some(to)).await {
            Ok(events) => events,
            Err(ReadError::StreamNotFound(_)) => Vec::new(),
            Err(err) => return Err(err.into()),
        };
        let complete = missing.len() as u64 == to - from + 1
            && missing.first().is_some_and(|e| e.version == from);
        if !complete {
            let gap = state.gaps.entry(key.clone()).or_insert_with(|| Gap {
                since: Instant::now(),
                checks: 0,
                delivered,
                stored: 0,
                applied: from - 1,
            });
            gap.checks += 1;
            gap.delivered = delivered;
            gap.applied = from - 1;
            gap.stored = missing.last().map_or(from - 1, |e| e.version);
            let delay = Duration::from_millis(50)
                .saturating_mul(2u32.saturating_pow(gap.checks.min(16)))
                .min(GAP_BACKOFF_MAX);
            if gap.checks == 1 {
                tracing::warn!(
                    projection = %self.name, stream = %key, delivered, missing_from = from,
                    "the bus delivered a version the store does not have; waiting for it"
                );
            }
            if let Some(key_state) = state.keys.get_mut(key) {
                key_state.retry_at = Some(Instant::now() + delay);
            }
            return Ok(false);
        }
        state.gaps.remove(key);
        let key_state = state.keys.get_mut(key).expect("the key has queued items");
        for missed in missing.into_iter().rev() {
            key_state.queue.push_front(Item {
                delivery: Delivery::unacknowledged(missed),
                seq: None,
                redrive: None,
            });
            state.pending += 1;
        }
        metrics::counter!("nexus_projection_gap_fills_total", "projection" => self.name.clone())
            .increment(1);
        Ok(true)
    }

    async fn process_batch(&self, state: &mut State) -> Result<(), WorkerError> {
        self.prefetch(state).await?;
        let mut batch = Batch::default();
        let mut completed: Vec<Item> = Vec::new();
        let mut applied = 0usize;
        while applied < self.options.batch_size {
            let Some(key) = state.ready.pop_front() else {
                break;
            };
            if let Some(key_state) = state.keys.get_mut(&key) {
                key_state.in_ready = false;
            } else {
                continue;
            }
            self.process_key(state, &key, &mut batch, &mut completed, &mut applied)
                .await?;
            state.make_ready(&key);
            if let Some(s) = state.keys.get(&key)
                && s.queue.is_empty()
                && s.retry_at.is_none()
                && s.attempts == 0
            {
                state.keys.remove(&key);
            }
        }
        self.commit(state, batch, completed).await
    }

    /// Processes the queue of one key until it empties, waits, or the batch is full.
    async fn process_key(
        &self,
        state: &mut State,
        key: &StreamId,
        batch: &mut Batch,
        completed: &mut Vec<Item>,
        applied: &mut usize,
    ) -> Result<(), WorkerError> {
        while *applied < self.options.batch_size {
            if state.keys.get(key).is_none_or(|k| k.queue.is_empty()) {
                break;
            }
            let applied_version = self.applied_version(state, batch, key).await?;
            let key_state = state.keys.get_mut(key).expect("checked above");
            let item = key_state.queue.pop_front().expect("checked above");
            let step = self.step(state, &item, applied_version).await?;
            match step {
                Step::Complete => completed.push(item),
                Step::Park => {
                    batch.dead_letters.push(NewDeadLetter {
                        event: item.event().clone(),
                        error: "parked behind an earlier dead letter of the same key".into(),
                        attempts: 0,
                        first_failed_at: Utc::now(),
                        status: DeadLetterStatus::Parked,
                        existing: None,
                    });
                    state.dead_letters += 1;
                    completed.push(item);
                }
                Step::Resolve(id) => {
                    // Its event is already applied: the letter goes, the event is not applied twice.
                    batch.redriven.push(id);
                    batch.release.push(key.clone());
                    state.dead_letters = state.dead_letters.saturating_sub(1);
                    completed.push(item);
                    // The stream's next dead letter is known only after this batch commits.
                    break;
                }
                Step::Defer(id) => {
                    state.redriving.remove(&id);
                    state.pending = state.pending.saturating_sub(1);
                }
                Step::Fill(from, to) => {
                    let delivered = item.event().version;
                    state
                        .keys
                        .get_mut(key)
                        .expect("checked above")
                        .queue
                        .push_front(item);
                    if !self.fill_gap(state, key, (from, to), delivered).await? {
                        break;
                    }
                }
                Step::Apply => {
                    let redrive = item.redrive.is_some();
                    let go_on = self
                        .apply(state, key, item, applied_version, batch, completed)
                        .await;
                    *applied += 1;
                    // After a redrive the stream's next dead letter is known only once this
                    // batch commits.
                    if !go_on || redrive {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the projection on `event` (upcast first): its writes, `None` when it does not
    /// handle the event, or why it failed (an error or a panic).
    async fn run_projection(
        &self,
        event: &RecordedEvent,
        span: tracing::Span,
        batch: &Writes,
        documents: &DocumentCache,
    ) -> Result<Option<Writes>, String> {
        if !self.projection.handles(event) {
            return Ok(None);
        }
        // An event that cannot be upcast is retried, then dead-lettered, like any event the
        // projection cannot apply.
        let event = self
            .options
            .upcasters
            .upcast_event(event)
            .map_err(|err| err.to_string())?;
        let mut changes = Changes::new(batch, documents, &self.read_model);
        let result = AssertUnwindSafe(self.projection.apply(&event, &mut changes))
            .catch_unwind()
            .instrument(span)
            .await;
        match result {
            Ok(Ok(())) => Ok(Some(changes.into_writes())),
            Ok(Err(err)) => Err(err.to_string()),
            Err(panic) => Err(panic_message(panic.as_ref())),
        }
    }

    /// Adds the writes `event` caused to the batch, with what the audit log and the
    /// notifications need to know about them.
    fn record_writes(&self, event: &RecordedEvent, writes: Option<Writes>, batch: &mut Batch) {
        if self.options.audit
            && let Some(writes) = writes.as_ref().filter(|w| !w.is_empty())
        {
            let cause = Arc::new(AuditCause::of(event));
            let mut ordered: Vec<_> = writes.iter().collect();
            ordered.sort_by(|a, b| a.0.cmp(b.0));
            batch.audit.extend(
                ordered
                    .into_iter()
                    .map(|((collection, id), after)| AuditWrite {
                        collection: collection.clone(),
                        id: id.clone(),
                        after: after.clone(),
                        cause: Arc::clone(&cause),
                    }),
            );
        }
        for (doc, value) in writes.into_iter().flatten() {
            if self.notifications.is_some() {
                let (collection, id) = doc.clone();
                let mut change = Change::of(event, collection, id, None);
                if let Some(earlier) = batch.sources.get(&doc) {
                    change.absorb(earlier);
                }
                batch.sources.insert(doc.clone(), change);
            }
            batch.positions.insert(doc.clone(), event.position as i64);
            batch.writes.insert(doc, value);
        }
    }

    /// Applies `item`; on failure schedules a retry or dead-letters it. `false` when the key
    /// must wait (a retry is scheduled).
    async fn apply(
        &self,
        state: &mut State,
        key: &StreamId,
        item: Item,
        applied_version: u64,
        batch: &mut Batch,
        completed: &mut Vec<Item>,
    ) -> bool {
        let event = item.event();
        let span = event_span(state.trace.applying(&self.name, event), &self.name, event);
        let outcome = self
            .run_projection(event, span, &batch.writes, &state.documents)
            .await;
        let park = self.options.dead_letter == DeadLetterMode::Park;
        let retry = self.options.retry;
        let key_state = state.keys.get_mut(key).expect("the key is being processed");
        match outcome {
            Ok(writes) => {
                self.record_writes(event, writes, batch);
                batch
                    .versions
                    .insert(key.clone(), applied_version.max(event.version));
                if let Some(id) = item.redrive {
                    batch.redriven.push(id);
                    if park {
                        // What was parked behind this letter may follow it now, in order.
                        batch.release.push(key.clone());
                    }
                    state.dead_letters = state.dead_letters.saturating_sub(1);
                }
                key_state.attempts = 0;
                key_state.first_failed = None;
                completed.push(item);
                true
            }
            Err(error) => {
                key_state.attempts += 1;
                let first_failed = *key_state.first_failed.get_or_insert_with(Utc::now);
                metrics::counter!("nexus_projection_errors_total", "projection" => self.name.clone()).increment(1);
                self.update_health(|h| h.last_error = Some(error.clone()));
                if key_state.attempts <= retry.max_retries {
                    metrics::counter!("nexus_projection_retries_total", "projection" => self.name.clone()).increment(1);
                    key_state.retry_at = Some(Instant::now() + retry.delay(key_state.attempts));
                    key_state.queue.push_front(item);
                    return false;
                }
                tracing::warn!(
                    projection = %self.name, stream = %key, version = event.version,
                    attempts = key_state.attempts, %error, "event moved to the dead-letter queue"
                );
                metrics::counter!("nexus_projection_dead_letters_total", "projection" => self.name.clone()).increment(1);
                batch.dead_letters.push(NewDeadLetter {
                    event: event.clone(),
                    error,
                    attempts: key_state.attempts,
                    first_failed_at: first_failed,
                    status: DeadLetterStatus::Dead,
                    existing: item.redrive,
                });
                key_state.attempts = 0;
                key_state.first_failed = None;
                let mut go_on = true;
                if item.redrive.is_none() {
                    state.dead_letters += 1;
                    if !park {
                        // Skip mode: the key moves on past the dead letter.
                        batch
                            .versions
                            .insert(key.clone(), applied_version.max(event.version));
                    }
                    // The stream's lowest dead letter, known exactly only if it was known
                    // before; otherwise the key waits for the commit and reads it afresh.
                    match state.letter_heads.get_mut(key) {
                        Some(head) => {
                            *head = Some(head.map_or(event.version, |h| h.min(event.version)));
                        }
                        None => go_on = false,
                    }
                }
                completed.push(item);
                go_on
            }
        }
    }

    /// Commits the batch and hands its searchable writes to the search index, under the gate
    /// that lets `wait_for` on search see the handoff of every commit it saw.
    #[cfg(feature = "search")]
    async fn commit_searchable(
        &self,
        batch: Batch,
        completed: &[Item],
    ) -> Result<Batch, WorkerError> {
        let Some(search) = self.search.as_ref().and_then(|s| s.tantivy()) else {
            return Ok(self.read_model.commit(batch).await?);
        };
        let writes = search.searchable_writes(&batch.writes);
        let mut gate = search.gate().await;
        let committed = self.read_model.commit(batch).await?;
        if !writes.is_empty() {
            let handoff = crate::search::Handoff {
                writes,
                recorded: completed.iter().map(|i| i.event().recorded_at).collect(),
                stamp: committed.committed_at,
                position: committed.checkpoint.map_or(0, |c| c.position),
                audit_seq: committed.audit_seq,
            };
            search.hand(&mut gate, handoff).await;
        }
        Ok(committed)
    }

    /// Commits the batch, then acknowledges its events on the bus.
    async fn commit(
        &self,
        state: &mut State,
        mut batch: Batch,
        completed: Vec<Item>,
    ) -> Result<(), WorkerError> {
        for item in &completed {
            if let Some(seq) = item.seq {
                state.done.insert(seq);
            }
        }
        batch.checkpoint = state.advance_checkpoint();
        let sources = std::mem::take(&mut batch.sources);
        // The batch's `process` span ends with its commit.
        let mut trace = std::mem::take(&mut state.trace);
        if !batch.is_empty() {
            // Numbered before the commit and logged in it, so a client resumes across restarts.
            let prepared = if let Some(hub) = &self.notifications {
                let mut changes = Vec::with_capacity(sources.len());
                for ((collection, id), mut change) in sources {
                    change.document = batch
                        .writes
                        .get(&(collection.clone(), id.clone()))
                        .cloned()
                        .flatten();
                    // A filter subscription learns from the document's previous state that
                    // the document left it.
                    if hub.follows_filters(&self.name, &collection) {
                        change.previous = Some(match state.documents.get(&collection, &id) {
                            Some(known) => known,
                            None => self.read_model.get(&collection, &id).await?,
                        });
                    }
                    changes.push(change);
                }
                changes.sort_by(|a, b| {
                    (a.log_position, &a.collection, &a.id).cmp(&(
                        b.log_position,
                        &b.collection,
                        &b.id,
                    ))
                });
                let prepared = hub.prepare(&self.name, changes);
                batch.notify = Some(prepared.log(hub.history_limit()));
                Some(prepared)
            } else {
                None
            };
            let started = Instant::now();
            let (_process, commit) = trace.committing(&self.name, completed.len());
            #[cfg(feature = "search")]
            let committed = self
                .commit_searchable(batch, &completed)
                .instrument(commit)
                .await?;
            #[cfg(not(feature = "search"))]
            let committed = self.read_model.commit(batch).instrument(commit).await?;
            metrics::histogram!("nexus_projection_commit_seconds", "projection" => self.name.clone())
                .record(started.elapsed().as_secs_f64());
            // Only now, with the documents readable, tell subscribers.
            if let (Some(hub), Some(prepared)) = (&self.notifications, prepared) {
                hub.publish_prepared(prepared);
            }
            state.committed(committed);
        }
        // Only now, with the read model and checkpoint durable, tell the bus.
        let now = Utc::now();
        let latencies = metrics::histogram!("nexus_projection_latency_seconds", "projection" => self.name.clone());
        metrics::counter!("nexus_projection_events_total", "projection" => self.name.clone())
            .increment(completed.len() as u64);
        crate::telemetry::live::count(
            crate::telemetry::live::Series::EventsProjected,
            completed.len() as u64,
        );
        for item in completed {
            state.pending = state.pending.saturating_sub(1);
            if let Some(id) = item.redrive {
                state.redriving.remove(&id);
                // Its stream's next dead letter is known only from the committed queue.
                state.letter_heads.remove(&item.event().stream);
            }
            let event = item.event();
            state.last_position = state.last_position.max(event.position);
            state.processed += 1;
            let latency = (now - event.recorded_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            latencies.record(latency);
            if let Err(err) = item.delivery.ack().await {
                // The event is committed; a redelivery will be recognised and skipped.
                tracing::debug!(projection = %self.name, error = %crate::redact::error_chain(&err), "ack failed");
            }
        }
        let (last_position, processed, dead_letters, retrying) = (
            state.last_position,
            state.processed,
            state.dead_letters,
            state.retrying(),
        );
        let stalled = state.stalled(self.options.gap_wait);
        self.update_health(|h| {
            h.last_position = last_position;
            h.processed = processed;
            h.dead_letters = dead_letters;
            h.set_activity(retrying, stalled);
        });
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
