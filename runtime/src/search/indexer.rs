//! A projection's search indexes and the one thread that writes them.
//!
//! The runner hands every committed batch of document writes to the thread, which adds them to
//! long-lived tantivy writers (one per searchable collection) and commits on a timer
//! ([`IndexOptions::commit_interval`]) or when [`IndexOptions::commit_documents`] are pending,
//! never per event: per-event commits make tantivy crawl. Each commit records in its payload the
//! read model's position, the seq of the read model's audit log up to which it holds every
//! change, and whether it was taken at a clean stop.
//!
//! After a crash the index may lack what the read model committed since the last index commit.
//! A start that does not find a clean-stop payload replays the audit entries after the recorded
//! seq: the documents they name are re-indexed as the read model has them now, or deleted when it
//! no longer has them. When the projection does not audit, or a rebuild or prune came since,
//! it compares the index with the read model by document id and `updated_at` stamp instead and
//! re-indexes only what differs. Either way before the projection applies anything: it never
//! re-indexes everything, and a clean restart compares nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use tantivy::IndexWriter;

use tokio::sync::{oneshot, watch};

use super::index::{CollectionIndex, Payload, schema_fingerprint};
use super::request::{SearchError, SearchLimits, SearchRequest, SearchResponse};
use super::schema::{CollectionSchema, SearchSchema};
use crate::projection::ReadModelStore;

/// How a projection's indexes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// Longest time a committed read-model write waits before it is searchable (default 250 ms).
    pub commit_interval: Duration,
    /// Pending documents that trigger a commit before the interval is up (default 10,000).
    pub commit_documents: usize,
    /// The writer's indexing memory per collection (default 50 MB; tantivy needs at least 15 MB).
    pub writer_memory: usize,
    /// Batches waiting for the index thread at most; the projection waits beyond (default 64).
    pub queue: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(250),
            commit_documents: 10_000,
            writer_memory: 50_000_000,
            queue: 64,
        }
    }
}

/// Why the search index could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The declaration is not valid.
    #[error("invalid search declaration of `{projection}`: {message}")]
    Declaration {
        /// The projection.
        projection: String,
        /// What is wrong.
        message: String,
    },
    /// tantivy failed to open or create an index.
    #[error("search index `{path}` failed to open")]
    Open {
        /// The index folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tantivy::TantivyError,
    },
}

/// The document writes of one committed read-model batch, for the indexer.
pub(crate) struct Handoff {
    /// `(collection, id, document or None for a deletion)`, searchable collections only.
    pub(crate) writes: Vec<(String, String, Option<Value>)>,
    /// When the events of the batch were recorded (for the time-to-search metric).
    pub(crate) recorded: Vec<DateTime<Utc>>,
    /// The read model's `updated_at` of the batch.
    pub(crate) stamp: i64,
    /// The read model's checkpoint after the batch.
    pub(crate) position: u64,
    /// The seq of the last audit entry the batch's commit appended, if any.
    pub(crate) audit_seq: Option<u64>,
}

/// What the last start's catch-up did (see [`super::SearchIndex::catch_up`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Documents re-indexed because the index lacked them or held another version.
    pub indexed: usize,
    /// Documents deleted from the index because the read model no longer has them.
    pub deleted: usize,
    /// Whether the documents to fix came from the read model's audit log (its entries after
    /// the index's last commit) rather than from comparing every document's stamp.
    pub from_audit: bool,
}

enum Message {
    Batch { seq: u64, handoff: Handoff },
    Stop(oneshot::Sender<()>),
}

/// One projection's tantivy indexes: searched by the query dashboard, fed by the runner.
pub(crate) struct TantivyIndex {
    projection: String,
    collections: BTreeMap<String, Arc<CollectionIndex>>,
    /// The sequence number of the last batch handed over; held across a read-model commit and
    /// its handoff, so a reader that saw the commit sees its number.
    gate: tokio::sync::Mutex<u64>,
    committed: watch::Receiver<u64>,
    ready: watch::Receiver<bool>,
    feed: SyncSender<Message>,
    killed: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    caught_up: Arc<Mutex<Option<CatchUp>>>,
}

impl std::fmt::Debug for TantivyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyIndex")
            .field("projection", &self.projection)
            .field("collections", &self.collections.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TantivyIndex {
    /// Opens (creating if needed) the indexes of `schema` under `dir`, one folder per
    /// collection, and starts the thread that writes them, which first catches up with
    /// `read_model` if the last stop was not clean. Must be called inside a Tokio runtime.
    pub(crate) fn open(
        projection: &str,
        dir: &Path,
        schema: &SearchSchema,
        read_model: ReadModelStore,
        options: IndexOptions,
        audited: bool,
    ) -> Result<Self, IndexError> {
        schema
            .validate()
            .map_err(|message| IndexError::Declaration {
                projection: projection.to_owned(),
                message,
            })?;
        let mut collections = BTreeMap::new();
        let mut writers = HashMap::new();
        for (name, declaration) in schema.collections() {
            let path = dir.join(name);
            let open = |source| IndexError::Open {
                path: path.clone(),
                source,
            };
            let index = CollectionIndex::open(&path, name, declaration).map_err(open)?;
            let writer = index.writer(options.writer_memory).map_err(open)?;
            writers.insert(name.to_owned(), writer);
            collections.insert(name.to_owned(), Arc::new(index));
        }
        crate::telemetry::ensure_recorder();
        for counter in [
            "nexus_search_documents_indexed_total",
            "nexus_search_commit_failures_total",
            "nexus_search_catch_up_documents_total",
        ] {
            metrics::counter!(counter, "projection" => projection.to_owned()).increment(0);
        }
        for histogram in [
            "nexus_search_visibility_seconds",
            "nexus_search_commit_seconds",
        ] {
            let _registered = metrics::histogram!(histogram, "projection" => projection.to_owned());
        }
        let (feed, intake) = mpsc::sync_channel(options.queue.max(1));
        let caught_up = Arc::new(Mutex::new(None));
        let (committed_tx, committed) = watch::channel(0);
        let (ready_tx, ready) = watch::channel(false);
        let killed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            projection: projection.to_owned(),
            collections: collections.clone(),
            writers,
            read_model,
            options,
            killed: Arc::clone(&killed),
            committed: committed_tx,
            runtime: tokio::runtime::Handle::current(),
            caught_up: Arc::clone(&caught_up),
            audited,
            audit_seq: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("search-{projection}"))
            .spawn(move || writer.run(intake, ready_tx))
            .map_err(|e| IndexError::Open {
                path: dir.to_path_buf(),
                source: tantivy::TantivyError::from(e),
            })?;
        Ok(Self {
            projection: projection.to_owned(),
            collections,
            gate: tokio::sync::Mutex::new(0),
            committed,
            ready,
            feed,
            killed,
            thread: Mutex::new(Some(thread)),
            caught_up,
        })
    }

    /// The declaration of `collection`, if it is searchable.
    pub(crate) fn declaration(&self, collection: &str) -> Option<&CollectionSchema> {
        self.collections.get(collection).map(|c| &c.schema)
    }

    /// How many times the index of `collection` was reloaded (what its searches read changed).
    pub(crate) fn generation(&self, collection: &str) -> Option<u64> {
        self.collections.get(collection).map(|c| c.generation())
    }

    /// Live documents searchable now, per collection.
    pub(crate) fn documents(&self) -> BTreeMap<String, u64> {
        self.collections
            .iter()
            .map(|(name, index)| (name.clone(), index.len()))
            .collect()
    }

    /// Runs `request` against `collection` on the blocking pool; `guard` (a semaphore permit,
    /// say) is held until the search itself ends, even if the caller stops waiting for it.
    pub(crate) async fn search<G: Send + 'static>(
        &self,
        collection: &str,
        request: SearchRequest,
        limits: SearchLimits,
        guard: G,
    ) -> Result<SearchResponse, SearchError> {
        let index = self.collections.get(collection).cloned().ok_or_else(|| {
            SearchError::NotSearchable {
                projection: self.projection.clone(),
                collection: collection.to_owned(),
            }
        })?;
        let projection = self.projection.clone();
        let work = move || {
            let result = index.search(&request, &limits);
            drop(guard);
            result
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            // A query tantivy cannot handle must not take the service down: it is a failed
            // request, logged with its cause.
            Err(err) if err.is_panic() => Err(SearchError::Backend {
                projection,
                source: Box::new(err),
            }),
            Err(err) => Err(SearchError::Unavailable {
                projection,
                source: Box::new(err),
            }),
        }
    }

    /// Waits until every read-model commit made before this call is searchable (and the
    /// start-up catch-up is done), or `timeout` passes; returns whether it is.
    pub(crate) async fn wait_searchable(&self, timeout: Duration) -> bool {
        let wait = async {
            self.ready().await;
            let target = *self.gate.lock().await;
            let mut committed = self.committed.clone();
            committed.wait_for(|seq| *seq >= target).await.is_ok()
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// What this start's catch-up did; `None` when the index was stopped cleanly last time
    /// (nothing compared) or the catch-up has not finished.
    pub(crate) fn catch_up(&self) -> Option<CatchUp> {
        *self.caught_up.lock().expect("catch-up lock poisoned")
    }

    /// Waits until the start-up catch-up is done (or the index thread is gone).
    pub(crate) async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Takes the gate for one read-model commit and its handoff.
    pub(crate) async fn gate(&self) -> tokio::sync::MutexGuard<'_, u64> {
        self.gate.lock().await
    }

    /// The writes of `writes` that touch searchable collections.
    pub(crate) fn searchable_writes(
        &self,
        writes: &crate::projection::Writes,
    ) -> Vec<(String, String, Option<Value>)> {
        writes
            .iter()
            .filter(|((collection, _), _)| self.collections.contains_key(collection))
            .map(|((collection, id), document)| (collection.clone(), id.clone(), document.clone()))
            .collect()
    }

    /// Sends `message` to the index thread, waiting (without blocking the runtime) while its
    /// queue is full; `false` when the thread is gone.
    async fn send(&self, mut message: Message) -> bool {
        loop {
            match self.feed.try_send(message) {
                Ok(()) => return true,
                Err(TrySendError::Full(back)) => {
                    message = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// Hands a committed batch to the index thread (waiting while its queue is full).
    pub(crate) async fn hand(&self, gate: &mut tokio::sync::MutexGuard<'_, u64>, handoff: Handoff) {
        **gate += 1;
        let seq = **gate;
        if !self.send(Message::Batch { seq, handoff }).await {
            tracing::error!(projection = %self.projection, "search index thread is gone; the batch is indexed at the next start");
        }
    }

    /// Commits what is pending as a clean stop and ends the thread.
    pub(crate) async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.send(Message::Stop(done)).await {
            let _ = stopped.await;
        }
        self.join();
    }

    /// Ends the thread at once without committing, as a crash would.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.join();
    }

    fn join(&self) {
        let thread = self
            .thread
            .lock()
            .expect("search thread lock poisoned")
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for TantivyIndex {
    fn drop(&mut self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

/// The index thread's state.
struct Writer {
    projection: String,
    collections: BTreeMap<String, Arc<CollectionIndex>>,
    writers: HashMap<String, IndexWriter>,
    read_model: ReadModelStore,
    options: IndexOptions,
    killed: Arc<AtomicBool>,
    committed: watch::Sender<u64>,
    runtime: tokio::runtime::Handle,
    caught_up: Arc<Mutex<Option<CatchUp>>>,
    /// Whether the projection appends its changes to the read model's audit log.
    audited: bool,
    /// The audit seq up to which the writers hold every change (`None`: unknown, or not
    /// audited); recorded in each commit's payload.
    audit_seq: Option<u64>,
}

/// How long a projection waits before offering a batch again to a full index queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// How often a waiting index thread looks at its kill flag.
const KILL_POLL: Duration = Duration::from_millis(20);

/// Documents (and audit entries) read from the read model per round trip during catch-up.
const CATCH_UP_PAGE: usize = 500;

/// Most documents a catch-up from the audit log re-indexes; beyond, comparing every
/// document's stamp is as cheap.
const MAX_REPLAYED: usize = 100_000;

impl Writer {
    fn run(mut self, intake: mpsc::Receiver<Message>, ready: watch::Sender<bool>) {
        let position = self.catch_up();
        if self.killed.load(Ordering::SeqCst) {
            return;
        }
        // From here on the index is marked unclean until a stop commits it clean again.
        if let Err(err) = self.commit(false, position) {
            tracing::error!(projection = %self.projection, error = %err, "search index commit failed");
        }
        let _ = ready.send(true);
        let mut pending = 0usize;
        let mut deadline: Option<Instant> = None;
        let mut last_seq = 0u64;
        let mut last_position = position;
        let mut recorded: Vec<DateTime<Utc>> = Vec::new();
        loop {
            if self.killed.load(Ordering::SeqCst) {
                return;
            }
            let wait = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(KILL_POLL)
                .min(KILL_POLL);
            match intake.recv_timeout(wait) {
                Ok(Message::Batch { seq, handoff }) => {
                    if self.killed.load(Ordering::SeqCst) {
                        return;
                    }
                    pending += handoff.writes.len();
                    last_seq = seq;
                    last_position = last_position.max(handoff.position);
                    self.apply(&handoff);
                    recorded.extend(handoff.recorded);
                    deadline.get_or_insert_with(|| Instant::now() + self.options.commit_interval);
                    if pending < self.options.commit_documents {
                        continue;
                    }
                }
                Ok(Message::Stop(done)) => {
                    if let Err(err) = self.commit(true, last_position) {
                        tracing::error!(projection = %self.projection, error = %err, "search index commit at stop failed");
                    }
                    let _ = self.committed.send(last_seq);
                    let _ = done.send(());
                    return;
                }
                // Every sender is gone: the projection ended without a stop; the next start
                // catches up.
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if deadline.is_some_and(|d| Instant::now() >= d) => {
                }
                Err(RecvTimeoutError::Timeout) => continue,
            }
            if self.killed.load(Ordering::SeqCst) {
                return;
            }
            let started = Instant::now();
            match self.commit(false, last_position) {
                Ok(()) => {
                    let now = Utc::now();
                    let visibility = metrics::histogram!("nexus_search_visibility_seconds", "projection" => self.projection.clone());
                    for at in recorded.drain(..) {
                        visibility
                            .record((now - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                    }
                    metrics::histogram!("nexus_search_commit_seconds", "projection" => self.projection.clone())
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("nexus_search_documents_indexed_total", "projection" => self.projection.clone())
                        .increment(pending as u64);
                    let _ = self.committed.send(last_seq);
                    pending = 0;
                    deadline = None;
                }
                Err(err) => {
                    // Kept pending: the next interval commits again.
                    tracing::error!(projection = %self.projection, error = %err, "search index commit failed");
                    metrics::counter!("nexus_search_commit_failures_total", "projection" => self.projection.clone()).increment(1);
                    deadline = Some(Instant::now() + self.options.commit_interval);
                }
            }
        }
    }

    fn apply(&mut self, handoff: &Handoff) {
        if self.audited && handoff.audit_seq.is_some() {
            self.audit_seq = self.audit_seq.max(handoff.audit_seq);
        }
        for (collection, id, document) in &handoff.writes {
            let (Some(index), Some(writer)) = (
                self.collections.get(collection),
                self.writers.get(collection),
            ) else {
                continue;
            };
            writer.delete_term(index.id_term(id));
            if let Some(document) = document
                && let Err(err) = writer.add_document(index.document(id, document, handoff.stamp))
            {
                tracing::error!(projection = %self.projection, %collection, %id, error = %err, "failed to index a document");
            }
        }
    }

    /// Commits every collection's writer with the payload, then makes it searchable.
    fn commit(&mut self, clean: bool, position: u64) -> tantivy::Result<()> {
        for (name, writer) in &mut self.writers {
            let index = &self.collections[name];
            let payload = Payload {
                schema: schema_fingerprint(&index.schema),
                clean,
                position,
                audit_seq: self.audit_seq,
            };
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&serde_json::to_string(&payload).unwrap_or_default());
            prepared.commit()?;
            index.reload()?;
        }
        Ok(())
    }

    /// Brings every collection index level with the read model unless it was stopped
    /// cleanly with the same declaration; returns the read model's position.
    fn catch_up(&mut self) -> u64 {
        let position = self
            .runtime
            .block_on(self.read_model.checkpoint())
            .ok()
            .flatten()
            .map_or(0, |c| c.position);
        let names: Vec<String> = self.collections.keys().cloned().collect();
        let mut total: Option<CatchUp> = None;
        for name in names {
            let index = Arc::clone(&self.collections[&name]);
            let fingerprint = schema_fingerprint(&index.schema);
            if index
                .payload()
                .is_some_and(|p| p.clean && p.schema == fingerprint)
            {
                continue;
            }
            let started = Instant::now();
            let replayed = match index.payload().and_then(|p| p.audit_seq) {
                Some(after) if self.audited => self.replay(&index, after).unwrap_or_else(|err| {
                    tracing::warn!(projection = %self.projection, collection = %name, error = %err, "search catch-up from the audit log failed; comparing every document");
                    None
                }),
                _ => None,
            };
            let from_audit = replayed.is_some();
            match replayed.map_or_else(|| self.sweep(&index), Ok) {
                Ok((indexed, deleted)) => {
                    let sum = total.get_or_insert_with(CatchUp::default);
                    sum.indexed += indexed;
                    sum.deleted += deleted;
                    sum.from_audit = from_audit;
                    tracing::info!(projection = %self.projection, collection = %name, indexed, deleted, elapsed_ms = started.elapsed().as_millis() as u64, "search index caught up with the read model");
                    metrics::counter!("nexus_search_catch_up_documents_total", "projection" => self.projection.clone())
                        .increment((indexed + deleted) as u64);
                }
                Err(err) => {
                    tracing::error!(projection = %self.projection, collection = %name, error = %err, "search index catch-up failed");
                }
            }
        }
        *self.caught_up.lock().expect("catch-up lock poisoned") = total;
        // Every change the audit log holds is in the writers now (nothing applies before ready).
        if self.audited {
            self.audit_seq = self.runtime.block_on(self.read_model.audit_tail_seq()).ok();
        }
        position
    }

    /// Re-indexes the documents of `index`'s collection that the audit log says changed after
    /// seq `after` (and deletes those the read model no longer has); `None` when the log cannot
    /// tell (a rebuild or prune since, a gap, or too many changes), so the caller compares.
    fn replay(
        &self,
        index: &CollectionIndex,
        after: u64,
    ) -> Result<Option<(usize, usize)>, Box<dyn std::error::Error + Send + Sync>> {
        let mut changed: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = after;
        loop {
            let marks = self
                .runtime
                .block_on(self.read_model.audit_marks(cursor, CATCH_UP_PAGE))?;
            let Some(last) = marks.last() else { break };
            if marks[0].seq != cursor + 1
                || marks
                    .iter()
                    .any(|m| m.kind != crate::projection::AuditKind::Change)
            {
                return Ok(None);
            }
            cursor = last.seq;
            for mark in marks {
                if mark.collection.as_deref() == Some(index.collection.as_str())
                    && let Some(id) = mark.id
                    && seen.insert(id.clone())
                {
                    changed.push(id);
                }
            }
            if changed.len() > MAX_REPLAYED {
                return Ok(None);
            }
        }
        let writer = &self.writers[&index.collection];
        let (mut indexed, mut deleted) = (0, 0);
        for page in changed.chunks(CATCH_UP_PAGE) {
            if self.killed.load(Ordering::SeqCst) {
                break;
            }
            let documents = self
                .runtime
                .block_on(self.read_model.documents(&index.collection, page.to_vec()))?;
            let found: std::collections::HashSet<&str> =
                documents.iter().map(|(id, _, _)| id.as_str()).collect();
            for id in page.iter().filter(|id| !found.contains(id.as_str())) {
                writer.delete_term(index.id_term(id));
                deleted += 1;
            }
            for (id, body, stamp) in &documents {
                writer.delete_term(index.id_term(id));
                writer.add_document(index.document(id, body, *stamp))?;
                indexed += 1;
            }
        }
        Ok(Some((indexed, deleted)))
    }

    /// Re-indexes the documents whose stamp differs from the index's and deletes those the
    /// read model no longer has; returns how many of each.
    fn sweep(
        &self,
        index: &CollectionIndex,
    ) -> Result<(usize, usize), Box<dyn std::error::Error + Send + Sync>> {
        let writer = &self.writers[&index.collection];
        let mut indexed_stamps = index.stamps()?;
        let stamps = self
            .runtime
            .block_on(self.read_model.stamps(&index.collection))?;
        let mut stale = Vec::new();
        for (id, stamp) in stamps {
            match indexed_stamps.remove(&id) {
                Some(indexed) if indexed == stamp => {}
                _ => stale.push(id),
            }
        }
        let deleted = indexed_stamps.len();
        for id in indexed_stamps.keys() {
            writer.delete_term(index.id_term(id));
        }
        let indexed = stale.len();
        for page in stale.chunks(CATCH_UP_PAGE) {
            if self.killed.load(Ordering::SeqCst) {
                break;
            }
            let documents = self
                .runtime
                .block_on(self.read_model.documents(&index.collection, page.to_vec()))?;
            for (id, body, stamp) in documents {
                writer.delete_term(index.id_term(&id));
                writer.add_document(index.document(&id, &body, stamp))?;
            }
        }
        Ok((indexed, deleted))
    }
}
