//! A projection's read model: documents, applied stream versions, the checkpoint and the
//! dead-letter queue, so that a batch of document writes and the checkpoint commit together.
//!
//! Two backends sit behind one handle, [`ReadModelStore`]: one SQLite file per projection
//! (the default, [`ReadModels::sqlite`]) and tables in one PostgreSQL schema shared by every
//! projection (feature `postgres`, [`ReadModels::postgres`]). Every call is async; the SQLite
//! backend does its blocking work on Tokio's blocking pool.

pub mod audit;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::cache::{CacheStats, ReadCache};
use super::changes::Writes;
use crate::event::{LogPosition, RecordedEvent, StreamId};
use crate::store::BoxError;

/// Why the read model failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// The SQLite file failed.
    #[error("read model `{path}` failed")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL answered with an error.
    #[error("read model `{projection}` failed in PostgreSQL")]
    Postgres {
        /// The projection.
        projection: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The database could not be reached (a connection failed or was closed).
    #[error("read model `{read_model}` is unavailable")]
    Unavailable {
        /// The projection or file.
        read_model: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A stored document or dead letter does not decode.
    #[error("read model `{read_model}` holds a corrupt record")]
    Corrupt {
        /// The projection or file.
        read_model: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The read models are configured wrongly (a schema name that is not an identifier).
    #[error("invalid read model configuration: {0}")]
    Config(String),
    /// Applying the PostgreSQL schema migrations failed.
    #[error("failed to migrate the read model schema")]
    Migration(#[source] BoxError),
    /// A filter field is not a plain field name.
    #[error("invalid filter field `{0}`: use letters, digits, `_` and `.` for nesting")]
    InvalidField(String),
    /// No dead letter has this id.
    #[error("no dead letter with id {0}")]
    NoSuchDeadLetter(i64),
    /// The projection's search index could not be opened.
    #[error("search index of `{projection}` failed")]
    Search {
        /// The projection.
        projection: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

/// Checks that a filter field is a plain (possibly nested) field name.
fn check_field(field: &str) -> Result<(), ReadModelError> {
    let valid = !field.is_empty()
        && field
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if valid {
        Ok(())
    } else {
        Err(ReadModelError::InvalidField(field.to_owned()))
    }
}

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Failed every attempt; its key moved on.
    Dead,
    /// Held back behind an earlier dead letter of its key (park mode), never attempted.
    Parked,
    /// Asked to be processed again; the runner picks it up.
    Redrive,
}

impl DeadLetterStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::Parked => "parked",
            Self::Redrive => "redrive",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "parked" => Self::Parked,
            "redrive" => Self::Redrive,
            _ => Self::Dead,
        }
    }
}

/// An event a projection could not apply, with everything needed to understand and redrive it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its id in this dead-letter queue.
    pub id: i64,
    /// The full event, payload and metadata included.
    pub event: RecordedEvent,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the last attempt failed.
    pub last_failed_at: DateTime<Utc>,
    /// Where it stands.
    pub status: DeadLetterStatus,
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveFilter {
    /// One dead letter.
    Id(i64),
    /// Every dead letter of one stream (partition key), in order.
    Stream(StreamId),
    /// Every dead letter.
    All,
}

/// A dead letter about to be written.
#[derive(Debug, Clone)]
pub(crate) struct NewDeadLetter {
    pub(crate) event: RecordedEvent,
    pub(crate) error: String,
    pub(crate) attempts: u32,
    pub(crate) first_failed_at: DateTime<Utc>,
    pub(crate) status: DeadLetterStatus,
    /// Set when the event came from the queue itself (a failed redrive): update that row.
    pub(crate) existing: Option<i64>,
}

/// Everything one batch commits at once.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) writes: Writes,
    pub(crate) positions: HashMap<(String, String), i64>,
    pub(crate) versions: HashMap<StreamId, u64>,
    pub(crate) dead_letters: Vec<NewDeadLetter>,
    pub(crate) redriven: Vec<i64>,
    /// Streams whose parked letters are released for redrive (their head letter was redriven).
    pub(crate) release: Vec<StreamId>,
    pub(crate) checkpoint: Option<LogPosition>,
    /// The event behind each written document, for notifications (only with a hub).
    pub(crate) sources: HashMap<(String, String), crate::notify::Change>,
    /// Every document write in the order the projection made it, with the event behind it,
    /// for the audit log (empty when the runner does not audit).
    pub(crate) audit: Vec<audit::AuditWrite>,
    /// The documents' `updated_at` (microseconds since the epoch), set by the commit (what a
    /// search index stamps its documents with).
    #[cfg_attr(not(feature = "search"), allow(dead_code))]
    pub(crate) committed_at: i64,
    /// The seq of the last audit entry the commit appended (SQLite), set by the commit.
    #[cfg_attr(not(feature = "search"), allow(dead_code))]
    pub(crate) audit_seq: Option<u64>,
    /// The notifications of this commit, kept with it so a client resumes across restarts
    /// (only with a hub).
    pub(crate) notify: Option<NotifyCommit>,
}

/// The notifications one commit publishes, written in its transaction to the read model's
/// bounded notification log.
#[derive(Debug, Default)]
pub(crate) struct NotifyCommit {
    /// The epoch they belong to; a log of another epoch is emptied first.
    pub(crate) epoch: String,
    /// Position, notification (JSON) and the committed document (JSON, `None` for a deletion).
    pub(crate) rows: Vec<(u64, String, Option<String>)>,
    /// Notifications kept: older ones are deleted by the same commit.
    pub(crate) keep: u64,
}

/// One notification read back from the log: its position, the notification and document as
/// JSON.
pub(crate) type LoggedNotification = (u64, String, Option<String>);

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.versions.is_empty()
            && self.dead_letters.is_empty()
            && self.redriven.is_empty()
            && self.release.is_empty()
            && self.checkpoint.is_none()
    }
}

/// Where a runner keeps its projections' read models.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use nexus_runtime::projection::{ProjectionRunner, ReadModels};
/// # fn demo(store: Arc<dyn nexus_runtime::EventStore>, bus: Arc<dyn nexus_runtime::bus::EventBus>) {
/// // One SQLite file per projection under `data/read-models` (what `ProjectionRunner::new` does).
/// let runner = ProjectionRunner::with_read_models(store, bus, ReadModels::sqlite("data/read-models"));
/// # }
/// ```
#[derive(Clone)]
pub struct ReadModels {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Sqlite(PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(postgres::Tables),
}

impl std::fmt::Debug for ReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Sqlite(dir) => f.debug_tuple("ReadModels::Sqlite").field(dir).finish(),
            #[cfg(feature = "postgres")]
            Kind::Postgres(tables) => f
                .debug_tuple("ReadModels::Postgres")
                .field(&tables.schema())
                .finish(),
        }
    }
}

impl ReadModels {
    /// The schema PostgreSQL read models live in unless told otherwise.
    pub const DEFAULT_POSTGRES_SCHEMA: &'static str = "nexus_read_models";

    /// One SQLite file per projection under `dir` (`{dir}/{projection}.db`).
    pub fn sqlite(dir: impl Into<PathBuf>) -> Self {
        Self {
            kind: Kind::Sqlite(dir.into()),
        }
    }

    /// Tables in `schema` of the PostgreSQL database at `url`, shared by every projection and
    /// keyed by projection name; connects and applies pending migrations under an advisory lock.
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str, schema: &str) -> Result<Self, ReadModelError> {
        let pool = crate::store::postgres::pool(url, postgres::POOL_SIZE).map_err(|e| {
            ReadModelError::Config(format!("failed to configure the read model pool: {e}"))
        })?;
        Self::postgres_with_pool(pool, schema).await
    }

    /// Like [`ReadModels::postgres`] on an existing pool (for instance the event store's,
    /// `PostgresStore::pool().clone()`, when read models live in the same database).
    #[cfg(feature = "postgres")]
    pub async fn postgres_with_pool(
        pool: deadpool_postgres::Pool,
        schema: &str,
    ) -> Result<Self, ReadModelError> {
        Ok(Self {
            kind: Kind::Postgres(postgres::Tables::open(pool, schema).await?),
        })
    }

    /// The read model of projection `name` (for SQLite, its file is created if missing).
    pub fn open(&self, name: &str) -> Result<ReadModelStore, ReadModelError> {
        match &self.kind {
            Kind::Sqlite(dir) => ReadModelStore::open(sqlite_path(dir, name)),
            #[cfg(feature = "postgres")]
            Kind::Postgres(tables) => Ok(ReadModelStore {
                backend: Backend::Postgres(Arc::new(tables.projection(name))),
                cache: None,
            }),
        }
    }

    /// Where projection `name` keeps its search indexes: `{dir}/{name}.search` beside a SQLite
    /// read model; `None` for PostgreSQL read models.
    pub fn search_dir(&self, name: &str) -> Option<PathBuf> {
        match &self.kind {
            Kind::Sqlite(dir) => Some(dir.join(format!("{name}.search"))),
            #[cfg(feature = "postgres")]
            Kind::Postgres(_) => None,
        }
    }
}

/// The SQLite file of projection `name` under `dir`.
pub(crate) fn sqlite_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.db"))
}

/// Clamps a history page size to `1..=MAX_HISTORY_PAGE`.
fn history_limit(limit: usize) -> i64 {
    limit.clamp(1, audit::MAX_HISTORY_PAGE) as i64
}

/// One projection's read model: a cheap-to-clone handle, whichever backend holds it.
///
/// The handle a runner opens for its projection carries a read cache (see
/// [`ReadModelStore::with_cache`]); clones share it.
#[derive(Clone)]
pub struct ReadModelStore {
    backend: Backend,
    cache: Option<Arc<ReadCache>>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::SqliteReadModel>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<postgres::PostgresReadModel>),
}

impl std::fmt::Debug for ReadModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("ReadModelStore");
        match &self.backend {
            Backend::Sqlite(db) => debug.field("path", &db.path()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => debug
                .field("schema", &db.schema())
                .field("projection", &db.projection()),
        };
        debug.finish_non_exhaustive()
    }
}

/// Runs `call` on the blocking pool; a panic in it is resumed here.
async fn blocking<T: Send + 'static>(
    db: &Arc<sqlite::SqliteReadModel>,
    call: impl FnOnce(&sqlite::SqliteReadModel) -> Result<T, ReadModelError> + Send + 'static,
) -> Result<T, ReadModelError> {
    let db = Arc::clone(db);
    let read_model = db.path().display().to_string();
    match tokio::task::spawn_blocking(move || call(&db)).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(ReadModelError::Unavailable {
            read_model,
            source: Box::new(err),
        }),
    }
}

impl ReadModelStore {
    /// Opens (creating if needed) the SQLite read model at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReadModelError> {
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(sqlite::SqliteReadModel::open(path.as_ref())?)),
            cache: None,
        })
    }

    /// This handle with a read cache of `max_bytes` in front of [`get`](Self::get) and
    /// [`list`](Self::list) (0 turns it off), invalidated by commits through this handle or
    /// its clones. Only for the handle of the process that writes the read model: another
    /// process's commits would not reach it.
    pub fn with_cache(mut self, projection: &str, max_bytes: u64) -> Self {
        self.cache = (max_bytes > 0).then(|| Arc::new(ReadCache::new(projection, max_bytes)));
        self
    }

    /// The read cache, when this handle has one (search responses are cached in it too).
    #[cfg(feature = "search")]
    pub(crate) fn read_cache(&self) -> Option<&Arc<ReadCache>> {
        self.cache.as_ref()
    }

    /// The read cache's counters, when this handle has one.
    pub fn cache_stats(&self) -> Option<Arc<CacheStats>> {
        self.cache.as_ref().map(|cache| Arc::clone(cache.stats()))
    }

    /// The PostgreSQL read model behind this handle, if it is one.
    #[cfg(feature = "postgres")]
    #[cfg_attr(not(feature = "search"), allow(dead_code))]
    pub(crate) fn postgres(&self) -> Option<&Arc<postgres::PostgresReadModel>> {
        match &self.backend {
            Backend::Postgres(db) => Some(db),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite file, or `None` when the read model lives in PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(db) => Some(db.path()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => None,
        }
    }

    /// Document `id` of `collection`.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, ReadModelError> {
        let Some(cache) = &self.cache else {
            return self.get_uncached(collection, id).await;
        };
        let _read = cache.read().await;
        if let Some(found) = cache.document(collection, id) {
            return Ok(found);
        }
        let found = self.get_uncached(collection, id).await?;
        cache.put_document(collection, id, found.as_ref());
        Ok(found)
    }

    async fn get_uncached(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Value>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (collection, id) = (collection.to_owned(), id.to_owned());
                blocking(db, move |db| db.get(&collection, &id)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.get(collection, id).await,
        }
    }

    /// Documents of `collection` whose fields equal the given values, ordered by id.
    ///
    /// Field names may use `.` for nested fields (`customer.name`).
    pub async fn list(
        &self,
        collection: &str,
        filters: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<Vec<(String, Value)>, ReadModelError> {
        for (field, _) in filters {
            check_field(field)?;
        }
        let limit = limit.min(10_000);
        let Some(cache) = &self.cache else {
            return self.list_uncached(collection, filters, limit, offset).await;
        };
        let query = serde_json::json!([filters, limit, offset]).to_string();
        let _read = cache.read().await;
        if let Some(rows) = cache.list(collection, query.clone()) {
            return Ok(rows);
        }
        let rows = self
            .list_uncached(collection, filters, limit, offset)
            .await?;
        cache.put_list(collection, query, &rows);
        Ok(rows)
    }

    async fn list_uncached(
        &self,
        collection: &str,
        filters: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<Vec<(String, Value)>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (collection, filters) = (collection.to_owned(), filters.to_vec());
                blocking(db, move |db| db.list(&collection, &filters, limit, offset)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.list(collection, filters, limit, offset).await,
        }
    }

    /// The version of `stream` this read model has applied.
    pub async fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let stream = stream.clone();
                blocking(db, move |db| db.stream_version(&stream)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.stream_version(stream).await,
        }
    }

    /// The versions of `streams` this read model has applied (0 for a stream it has not seen),
    /// in one round trip.
    pub(crate) async fn stream_versions(
        &self,
        streams: Vec<StreamId>,
    ) -> Result<HashMap<StreamId, u64>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.stream_versions(streams)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.stream_versions(streams).await,
        }
    }

    /// The log position up to which every event has been applied or dead-lettered.
    pub async fn checkpoint(&self) -> Result<Option<LogPosition>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.checkpoint()).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.checkpoint().await,
        }
    }

    /// Commits a batch in one transaction: documents, stream versions, dead letters and the
    /// checkpoint together or not at all; hands the committed batch back.
    pub(crate) async fn commit(&self, batch: Batch) -> Result<Batch, ReadModelError> {
        let Some(cache) = &self.cache else {
            return self.commit_uncached(batch).await;
        };
        // Forgotten whatever the outcome: a commit that failed on a lost connection may still
        // have committed.
        let written: Vec<(String, String)> = batch.writes.keys().cloned().collect();
        let _write = cache.write().await;
        let committed = self.commit_uncached(batch).await;
        cache.invalidate(
            written
                .iter()
                .map(|(collection, id)| (collection.as_str(), id.as_str())),
        );
        committed
    }

    async fn commit_uncached(&self, batch: Batch) -> Result<Batch, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.commit(&batch).map(|(now, audit_seq)| Batch {
                        committed_at: now,
                        audit_seq,
                        ..batch
                    })
                })
                .await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.commit(&batch).await.map(|()| batch),
        }
    }

    /// The epoch and newest position of the notification log, starting a new epoch (and an
    /// empty log; the flag says so) unless the log was written up to the read model's
    /// checkpoint: a read model rebuilt, restored or changed while nothing was notified is never
    /// mistaken for continuity.
    pub(crate) async fn notify_start(&self) -> Result<(String, u64, bool), ReadModelError> {
        let epoch = crate::notify::new_epoch();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.notify_start(epoch)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.notify_start(epoch).await,
        }
    }

    /// At most `limit` notifications of `epoch` after position `after`, in position order
    /// (none when the log is of another epoch).
    pub(crate) async fn notifications_after(
        &self,
        epoch: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedNotification>, ReadModelError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Sqlite(db) => {
                let epoch = epoch.to_owned();
                blocking(db, move |db| db.notifications_after(&epoch, after, limit)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.notifications_after(epoch, after, limit).await,
        }
    }

    /// Every dead letter, in log order.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.dead_letters(None)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.dead_letters(None).await,
        }
    }

    /// At most `limit` dead letters whose id is above `after`, in id order: one page of the
    /// queue, for callers that must not load all of it (the query dashboard's endpoint).
    pub async fn dead_letter_page(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.dead_letter_page(after, limit)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.dead_letter_page(after, limit).await,
        }
    }

    /// The names of at most `limit` collections holding documents, in byte order (an index
    /// skip-scan: one lookup per name, however many documents there are).
    pub async fn collections(&self, limit: usize) -> Result<Vec<String>, ReadModelError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.collections(limit)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.collections(limit).await,
        }
    }

    /// One dead letter.
    pub async fn dead_letter(&self, id: i64) -> Result<DeadLetter, ReadModelError> {
        let found = match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.dead_letter(id)).await?,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.dead_letter(id).await?,
        };
        found.ok_or(ReadModelError::NoSuchDeadLetter(id))
    }

    /// How many dead letters the queue holds.
    pub async fn dead_letter_count(&self) -> Result<u64, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.dead_letter_count()).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.dead_letter_count().await,
        }
    }

    /// The lowest version among the dead letters of each of `streams`; streams without dead
    /// letters are left out. One round trip.
    pub(crate) async fn letter_heads(
        &self,
        streams: Vec<StreamId>,
    ) -> Result<HashMap<StreamId, u64>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.letter_heads(streams)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.letter_heads(streams).await,
        }
    }

    /// At most `limit` dead letters waiting to be processed again whose id is above `after`,
    /// in id order: one page of the redrive requests.
    pub(crate) async fn redrive_requests(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.redrive_requests(after, limit)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.redrive_requests(after, limit).await,
        }
    }

    /// Every document id of `collection` with its `updated_at` stamp (what search catch-up
    /// compares).
    #[cfg(feature = "search")]
    pub(crate) async fn stamps(
        &self,
        collection: &str,
    ) -> Result<Vec<(String, i64)>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let collection = collection.to_owned();
                blocking(db, move |db| db.stamps(&collection)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(ReadModelError::Config(
                "PostgreSQL read models search in PostgreSQL, not in a local index".to_owned(),
            )),
        }
    }

    /// The seq of the newest audit entry (0 for an empty log); SQLite read models only (what
    /// their search indexes catch up from).
    #[cfg(feature = "search")]
    pub(crate) async fn audit_tail_seq(&self) -> Result<u64, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.audit_tail_seq()).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(ReadModelError::Config(
                "PostgreSQL read models search in PostgreSQL, not in a local index".to_owned(),
            )),
        }
    }

    /// At most `limit` audit entries after seq `after`, without their contents; SQLite read
    /// models only.
    #[cfg(feature = "search")]
    pub(crate) async fn audit_marks(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<audit::AuditMark>, ReadModelError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.audit_marks(after, limit)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(ReadModelError::Config(
                "PostgreSQL read models search in PostgreSQL, not in a local index".to_owned(),
            )),
        }
    }

    /// Documents `ids` of `collection` that exist, with their `updated_at` stamps.
    #[cfg(feature = "search")]
    pub(crate) async fn documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<Vec<(String, Value, i64)>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let collection = collection.to_owned();
                blocking(db, move |db| db.documents(&collection, &ids)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(ReadModelError::Config(
                "PostgreSQL read models search in PostgreSQL, not in a local index".to_owned(),
            )),
        }
    }

    /// Asks the running projection to process dead letters again; returns how many were marked.
    ///
    /// Works from another process too: the runner polls its queue for redrive requests.
    pub async fn request_redrive(&self, filter: &RedriveFilter) -> Result<usize, ReadModelError> {
        let changed = match &self.backend {
            Backend::Sqlite(db) => {
                let filter = filter.clone();
                blocking(db, move |db| db.request_redrive(&filter)).await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.request_redrive(filter).await?,
        };
        match filter {
            RedriveFilter::Id(id) if changed == 0 => Err(ReadModelError::NoSuchDeadLetter(*id)),
            _ => Ok(changed),
        }
    }

    /// Records a run starting from `from` in the audit log: below the checkpoint the log last
    /// saw, it is a rebuild and gets a `rebuild` entry (whose seq is returned).
    pub(crate) async fn audit_run_started(&self, from: u64) -> Result<Option<u64>, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.audit_run_started(from)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.audit_run_started(from).await,
        }
    }

    /// One page of the audit history of document `id` of `collection`: its changes with `seq`
    /// above `after`, oldest first, with the rebuilds and prunes since its first change; at most
    /// `limit` entries (1 to [`audit::MAX_HISTORY_PAGE`]).
    pub async fn audit_history(
        &self,
        collection: &str,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<audit::AuditPage, ReadModelError> {
        let limit = history_limit(limit);
        match &self.backend {
            Backend::Sqlite(db) => {
                let (collection, id) = (collection.to_owned(), id.to_owned());
                blocking(db, move |db| {
                    db.audit_history(&collection, &id, after, limit)
                })
                .await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.audit_history(collection, id, after, limit).await,
        }
    }

    /// Checks the projection's whole audit chain, from the anchor of the newest prune (or the
    /// first entry) to the newest entry, on one consistent snapshot.
    pub async fn audit_verify(&self) -> Result<audit::AuditReport, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.audit_verify()).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.audit_verify().await,
        }
    }

    /// Removes the oldest whole segments of the audit log that `retention` allows, and records
    /// what it removed as a `prune` entry of the chain.
    pub async fn audit_prune(
        &self,
        retention: audit::Retention,
    ) -> Result<audit::PruneReport, ReadModelError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.audit_prune(&retention)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.audit_prune(&retention).await,
        }
    }
}
