//! The embedded event store: one SQLite file, zero set-up, durable on commit.
//!
//! One writer thread owns the write connection and coalesces concurrent appends into one
//! transaction (group commit), so many writers share one fsync. Readers use their own
//! connections (WAL mode lets them read while the writer commits).
//!
//! Commits made by another process on the same file wake this process's readers too: a
//! file-change watch (inotify, kqueue, ReadDirectoryChanges through `notify`) on the file's
//! write-ahead log signals [`EventStore::changes`]; subscribers still poll as a fallback.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::{
    AppendError, AppendResult, EventStore, ExpectedVersion, OpenError, ReadError, StoreLimits,
    StoredPayload, validate_append,
};
use crate::event::{EventId, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::wal::WalCheckpointer;

/// Default number of partitions streams are spread over.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// Most appends coalesced into one transaction.
const MAX_GROUP: usize = 256;
/// Appends waiting for the writer thread at most, by default: a caller beyond it waits for room.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Read connections kept open at most, by default; readers beyond it wait for one.
pub const DEFAULT_READERS: usize = 8;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS nexus_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    partition      INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, version)
);
CREATE INDEX IF NOT EXISTS events_stream_time ON events (aggregate_type, aggregate_id, recorded_at);
-- Temporal queries: time to position, and positions of one aggregate type (rowid is implied).
CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at);
CREATE INDEX IF NOT EXISTS events_aggregate_type ON events (aggregate_type);
CREATE TRIGGER IF NOT EXISTS events_are_immutable_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'nexus: events are immutable, UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS events_are_immutable_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'nexus: events are immutable, DELETE is not allowed'); END;
-- INSERT OR REPLACE deletes the row it collides with without firing the DELETE trigger.
CREATE TRIGGER IF NOT EXISTS events_are_immutable_replace BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE position = NEW.position)
  OR EXISTS (SELECT 1 FROM events WHERE event_id = NEW.event_id)
  OR EXISTS (SELECT 1 FROM events WHERE aggregate_type = NEW.aggregate_type
             AND aggregate_id = NEW.aggregate_id AND version = NEW.version)
BEGIN SELECT RAISE(ABORT, 'nexus: events are immutable, REPLACE is not allowed'); END;
";

pub(crate) const SELECT_COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, version, partition, \
     event_type, schema_version, payload, metadata, recorded_at";

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Number of partitions (fixed when the file is created).
    pub partitions: u16,
    /// Limits on appends.
    pub limits: StoreLimits,
    /// Appends waiting for the writer thread at most; more callers wait for room (backpressure).
    pub queue_capacity: usize,
    /// Read connections open at most; more concurrent reads wait for one.
    pub readers: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            partitions: DEFAULT_PARTITIONS,
            limits: StoreLimits::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            readers: DEFAULT_READERS,
        }
    }
}

struct AppendRequest {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

/// The embedded SQLite event store.
pub struct EmbeddedStore {
    path: PathBuf,
    writer: mpsc::Sender<AppendRequest>,
    readers: Arc<Mutex<Vec<Connection>>>,
    reader_permits: Arc<Semaphore>,
    changes: watch::Receiver<u64>,
    /// Watches the write-ahead log for commits of other processes; stops when dropped.
    _log_watch: Option<notify::RecommendedWatcher>,
    options: EmbeddedOptions,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(err: impl std::error::Error + Send + Sync + 'static) -> AppendError {
    AppendError::Backend(Box::new(err))
}

fn read_backend(err: impl std::error::Error + Send + Sync + 'static) -> ReadError {
    ReadError::Backend(Box::new(err))
}

fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    // FULL: every commit is fsynced before the append is acknowledged.
    conn.pragma_update(None, "synchronous", "FULL")?;
    plan_once(&conn)?;
    Ok(conn)
}

/// Creates the schema and records the partition count, or checks it against the stored one,
/// in one `IMMEDIATE` transaction: the command service and the query dashboard of a generated
/// project open the same new file at once, and a check-then-insert outside a write lock let
/// both see no count and the second insert fail
/// (`a_store_opened_by_several_processes_at_once_is_created_once`).
fn migrate(conn: &mut Connection, partitions: u16) -> Result<(), OpenError> {
    let migration = |e: rusqlite::Error| OpenError::Migration(Box::new(e));
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(migration)?;
    tx.execute_batch(SCHEMA).map_err(migration)?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT value FROM nexus_meta WHERE key = 'partitions'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(migration)?;
    match stored.map(|s| s.parse::<u16>()) {
        None => {
            tx.execute(
                "INSERT INTO nexus_meta (key, value) VALUES ('partitions', ?1)",
                [partitions.to_string()],
            )
            .map_err(migration)?;
        }
        Some(Ok(stored)) if stored == partitions => {}
        Some(Ok(stored)) => {
            return Err(OpenError::PartitionMismatch {
                stored,
                configured: partitions,
            });
        }
        Some(Err(err)) => return Err(OpenError::Migration(Box::new(err))),
    }
    tx.commit().map_err(migration)
}

/// Makes `conn`'s cached statements keep their plan whatever values are bound. Without it,
/// SQLite re-prepares (parses and plans again) a statement on every run whose plan could
/// depend on a bound value, such as a bound `LIMIT ?`: the log reads the bus and the projections
/// make all the time. Nexus runs no `ANALYZE` and no bound `LIKE`, so no plan gets worse.
pub(crate) fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in the SQLite file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// Opens the store with explicit options.
    pub fn open_with(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if options.partitions == 0 {
            return Err(OpenError::Config(
                "partition count must be at least 1".into(),
            ));
        }
        if options.queue_capacity == 0 || options.readers == 0 {
            return Err(OpenError::Config(
                "queue capacity and readers must be at least 1".into(),
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        }
        let mut conn =
            open_connection(&path, false).map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        migrate(&mut conn, options.partitions)?;
        let head = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(|e| OpenError::Migration(Box::new(e)))?;

        // Commits never copy the log back into the database themselves (a stall of a sync now
        // and then); a background WAL checkpointer does.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        let wal_checkpointer = WalCheckpointer::new(&path);
        let (tx, rx) = mpsc::channel(options.queue_capacity);
        let (changes_tx, changes) = watch::channel(head);
        let log_watch = watch_log(&path, changes_tx.clone());
        let limits = options.limits;
        thread::Builder::new()
            .name("nexus-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, changes_tx, limits, wal_checkpointer))
            .map_err(|e| OpenError::Unavailable(Box::new(e)))?;
        Ok(Self {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            reader_permits: Arc::new(Semaphore::new(options.readers)),
            changes,
            _log_watch: log_watch,
            options,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends queued for the writer thread now (at most the configured queue capacity).
    pub fn queued_appends(&self) -> usize {
        self.writer.max_capacity() - self.writer.capacity()
    }

    /// Read connections open now, idle or in use (at most the configured readers).
    pub fn reader_connections(&self) -> usize {
        let idle = self
            .readers
            .lock()
            .expect("reader pool lock poisoned")
            .len();
        let in_use = self.options.readers - self.reader_permits.available_permits();
        idle + in_use
    }

    async fn with_reader<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ReadError> + Send + 'static,
    {
        // A permit per connection in use: at most `readers` connections exist at a time.
        let permit = Arc::clone(&self.reader_permits)
            .acquire_owned()
            .await
            .map_err(read_backend)?;
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = readers.lock().expect("reader pool lock poisoned").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => {
                    open_connection(&path, true).map_err(|e| ReadError::Unavailable(Box::new(e)))?
                }
            };
            let result = f(&conn);
            readers
                .lock()
                .expect("reader pool lock poisoned")
                .push(conn);
            result
        })
        .await
        .map_err(read_backend)?
    }
}

/// Watches the folder of the store's file and signals `changes` whenever its write-ahead log
/// is written, which is how commits of other processes show. `None` (readers poll) when the
/// platform gives no watch.
fn watch_log(path: &Path, changes: watch::Sender<u64>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    let log = PathBuf::from(log);
    let folder = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) => folder.to_path_buf(),
        None => PathBuf::from("."),
    };
    let file_name = log.file_name().map(ToOwned::to_owned);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_))
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(ToOwned::to_owned) == file_name)
        {
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    };
    let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(&folder, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch the event store's log; commits of other processes are found by polling");
            None
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<AppendRequest>,
    changes: watch::Sender<u64>,
    limits: StoreLimits,
    mut wal_checkpointer: WalCheckpointer,
) {
    let partitions: u16 = conn
        .query_row(
            "SELECT value FROM nexus_meta WHERE key = 'partitions'",
            [],
            |row| row.get::<_, String>(0),
        )
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PARTITIONS);
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let outcome = commit_group(&mut conn, &group, partitions, &limits);
        match outcome {
            Ok((results, head)) => {
                for (request, result) in group.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
                wal_checkpointer.committed();
                if head > 0 {
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(err) => {
                let message = err.to_string();
                for request in group {
                    let _ = request
                        .reply
                        .send(Err(AppendError::Backend(message.clone().into())));
                }
            }
        }
    }
}

/// Appends every request of the group in one transaction; each request in its own savepoint,
/// so one that fails leaves the others untouched.
fn commit_group(
    conn: &mut Connection,
    group: &[AppendRequest],
    partitions: u16,
    limits: &StoreLimits,
) -> rusqlite::Result<(Vec<Result<AppendResult, AppendError>>, u64)> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    let mut head = 0;
    for request in group {
        if let Err(err) = validate_append(&request.stream, &request.events, limits) {
            results.push(Err(err));
            continue;
        }
        let sp = tx.savepoint()?;
        match append_one(&sp, request, partitions) {
            Ok(result) => {
                sp.commit()?;
                head = head.max(result.last_position);
                results.push(Ok(result));
            }
            Err(err) => {
                drop(sp);
                results.push(Err(err));
            }
        }
    }
    tx.commit()?;
    Ok((results, head))
}

fn current_version(conn: &Connection, stream: &StreamId) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2",
    )?
    .query_row(params![stream.aggregate_type(), stream.aggregate_id()], |row| {
        row.get::<_, i64>(0)
    })
    .map(|v| v as u64)
}

fn append_one(
    conn: &Connection,
    request: &AppendRequest,
    partitions: u16,
) -> Result<AppendResult, AppendError> {
    let stream = &request.stream;
    let actual = current_version(conn, stream).map_err(backend)?;
    if let Some(required) = request.expected.required()
        && required != actual
    {
        // A retry of a stored batch answers as the first attempt did, whatever it expected.
        if let Some(replay) = idempotent_replay(conn, stream, &request.events)? {
            return Ok(replay);
        }
        return Err(AppendError::Conflict {
            stream: stream.clone(),
            expected: request.expected,
            actual,
        });
    }
    let partition = stream.partition(partitions);
    let recorded_at = Utc::now().timestamp_micros();
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, partition, \
             event_type, schema_version, payload, metadata, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(backend)?;
    let mut first_position = 0;
    let mut last_position = 0;
    for (offset, event) in request.events.iter().enumerate() {
        let metadata = serde_json::to_string(&event.metadata).map_err(backend)?;
        let inserted = insert.execute(params![
            event.id.0.as_bytes().as_slice(),
            stream.aggregate_type(),
            stream.aggregate_id(),
            (actual + offset as u64 + 1) as i64,
            partition,
            event.event_type,
            event.schema_version,
            event.payload.get(),
            metadata,
            recorded_at,
        ]);
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                // Inserted first, checked only now: a batch is stored all or nothing, so only
                // a violation by its first event can be a retry of a stored batch.
                if offset == 0
                    && let Some(replay) = idempotent_replay(conn, stream, &request.events)?
                {
                    return Ok(replay);
                }
                // Otherwise the event id is stored in another stream or twice in this batch.
                return Err(AppendError::DuplicateEventId {
                    id: event.id,
                    stream: stream_of_event(conn, event.id)
                        .map_err(backend)?
                        .unwrap_or_else(|| stream.clone()),
                });
            }
            Err(err) => return Err(backend(err)),
        }
        last_position = conn.last_insert_rowid() as u64;
        if offset == 0 {
            first_position = last_position;
        }
    }
    Ok(AppendResult {
        version: actual + request.events.len() as u64,
        event_ids: request.events.iter().map(|e| e.id).collect(),
        first_position,
        last_position,
        idempotent_replay: false,
    })
}

fn stream_of_event(conn: &Connection, id: EventId) -> rusqlite::Result<Option<StreamId>> {
    conn.prepare_cached("SELECT aggregate_type, aggregate_id FROM events WHERE event_id = ?1")?
        .query_row([id.0.as_bytes().as_slice()], |row| {
            Ok(StreamId::new(
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
            ))
        })
        .optional()
}

/// If the batch's events are all stored already with the same content, the stored result.
fn idempotent_replay(
    conn: &Connection,
    stream: &StreamId,
    events: &[NewEvent],
) -> Result<Option<AppendResult>, AppendError> {
    let mut lookup = conn
        .prepare_cached(
            "SELECT aggregate_type, aggregate_id, version, position, event_type, payload \
             FROM events WHERE event_id = ?1",
        )
        .map_err(backend)?;
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        let row = lookup
            .query_row([event.id.0.as_bytes().as_slice()], |row| {
                Ok((
                    StreamId::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                    row.get::<_, i64>(2)? as u64,
                    row.get::<_, i64>(3)? as u64,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .optional()
            .map_err(backend)?;
        match row {
            None if stored.is_empty() => return Ok(None),
            None => {
                // Some ids stored, others not: a different batch reusing ids.
                return Err(AppendError::DuplicateEventId {
                    id: events[0].id,
                    stream: stream.clone(),
                });
            }
            Some((owner, version, position, event_type, payload)) => {
                if &owner != stream
                    || event_type != event.event_type
                    || !same_json(&payload, event.payload.get())
                {
                    return Err(AppendError::DuplicateEventId {
                        id: event.id,
                        stream: owner,
                    });
                }
                stored.push((version, position));
            }
        }
    }
    Ok(Some(AppendResult {
        version: stored.last().map_or(0, |s| s.0),
        event_ids: events.iter().map(|e| e.id).collect(),
        first_position: stored.first().map_or(0, |s| s.1),
        last_position: stored.last().map_or(0, |s| s.1),
        idempotent_replay: true,
    }))
}

/// Compares two JSON texts by value (key order and whitespace aside).
pub(crate) fn same_json(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Decodes one row of `SELECT_COLUMNS`; `known` is the stream when the query was for one
/// stream (saves allocations). The read-only history decodes its rows with it too.
pub(crate) fn row_to_event(
    row: &Row<'_>,
    known: Option<&StreamId>,
) -> rusqlite::Result<Result<RecordedEvent, ReadError>> {
    let position = row.get::<_, i64>(0)? as u64;
    let id_bytes: Vec<u8> = row.get(1)?;
    let stream = match known {
        Some(stream) => stream.clone(),
        None => StreamId::new(row.get_ref(2)?.as_str()?, row.get_ref(3)?.as_str()?),
    };
    let payload: String = row.get(8)?;
    let metadata: String = row.get(9)?;
    let micros: i64 = row.get(10)?;
    let corrupt =
        |source: Box<dyn std::error::Error + Send + Sync>| ReadError::Corrupt { position, source };
    let decoded = (|| {
        let id = uuid::Uuid::from_slice(&id_bytes).map_err(|e| corrupt(Box::new(e)))?;
        let payload = RawValue::from_string(payload).map_err(|e| corrupt(Box::new(e)))?;
        let metadata: Metadata =
            serde_json::from_str(&metadata).map_err(|e| corrupt(Box::new(e)))?;
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt("recorded_at out of range".into()))?;
        Ok((id, payload, metadata, recorded_at))
    })();
    Ok(match decoded {
        Ok((id, payload, metadata, recorded_at)) => Ok(RecordedEvent {
            id: EventId(id),
            stream,
            version: row.get::<_, i64>(4)? as u64,
            position,
            commit: position,
            partition: row.get(5)?,
            event_type: row.get(6)?,
            schema_version: row.get(7)?,
            payload,
            metadata,
            recorded_at,
        }),
        Err(err) => Err(err),
    })
}

fn collect(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    known: Option<&StreamId>,
) -> Result<Vec<RecordedEvent>, ReadError> {
    let rows = stmt
        .query_map(params, |row| row_to_event(row, known))
        .map_err(read_backend)?;
    let mut events = Vec::new();
    for row in rows {
        events.push(row.map_err(read_backend)??);
    }
    Ok(events)
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        validate_append(stream, &events, &self.options.limits)?;
        let (reply, response) = oneshot::channel();
        self.writer
            .send(AppendRequest {
                stream: stream.clone(),
                expected,
                events,
                reply,
            })
            .await
            .map_err(|_| AppendError::Unavailable("the writer thread has stopped".into()))?;
        response
            .await
            .map_err(|_| AppendError::Unavailable("the writer thread has stopped".into()))?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let to = to.unwrap_or(u64::MAX >> 1);
        if from > to {
            return Err(ReadError::InvalidRange(format!(
                "from version {from} is after to version {to}"
            )));
        }
        let stream = stream.clone();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                     AND version >= ?3 AND version <= ?4 ORDER BY version"
                ))
                .map_err(read_backend)?;
            let events = collect(
                &mut stmt,
                params![
                    stream.aggregate_type(),
                    stream.aggregate_id(),
                    from as i64,
                    to as i64
                ],
                Some(&stream),
            )?;
            if events.is_empty() && current_version(conn, &stream).map_err(read_backend)? == 0 {
                return Err(ReadError::StreamNotFound(stream));
            }
            Ok(events)
        })
        .await
    }

    async fn find_events(
        &self,
        stream: &StreamId,
        ids: &[EventId],
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let stream = stream.clone();
        let ids = ids.to_vec();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM events \
                     WHERE event_id = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3"
                ))
                .map_err(read_backend)?;
            let mut found = Vec::new();
            for id in ids {
                found.extend(collect(
                    &mut stmt,
                    params![
                        id.0.as_bytes().as_slice(),
                        stream.aggregate_type(),
                        stream.aggregate_id()
                    ],
                    Some(&stream),
                )?);
            }
            found.sort_by_key(|event| event.version);
            Ok(found)
        })
        .await
    }

    async fn read_payloads(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> Result<Vec<StoredPayload>, ReadError> {
        let stream = stream.clone();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, event_type, payload, schema_version FROM events \
                     WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version >= ?3 ORDER BY version",
                )
                .map_err(read_backend)?;
            let rows = stmt
                .query_map(
                    params![
                        stream.aggregate_type(),
                        stream.aggregate_id(),
                        from.min(i64::MAX as u64) as i64
                    ],
                    |row| {
                        Ok(StoredPayload {
                            version: row.get::<_, i64>(0)? as u64,
                            event_type: row.get(1)?,
                            payload: row.get(2)?,
                            schema_version: row.get(3)?,
                        })
                    },
                )
                .map_err(read_backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(read_backend)
        })
        .await
    }

    async fn read_stream_between(
        &self,
        stream: &StreamId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        if from > to {
            return Err(ReadError::InvalidRange(format!(
                "from {from} is after to {to}"
            )));
        }
        let stream = stream.clone();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
                     AND recorded_at >= ?3 AND recorded_at < ?4 ORDER BY version LIMIT ?5"
                ))
                .map_err(read_backend)?;
            let events = collect(
                &mut stmt,
                params![
                    stream.aggregate_type(),
                    stream.aggregate_id(),
                    from.timestamp_micros(),
                    to.timestamp_micros(),
                    limit as i64
                ],
                Some(&stream),
            )?;
            if events.is_empty() && current_version(conn, &stream).map_err(read_backend)? == 0 {
                return Err(ReadError::StreamNotFound(stream));
            }
            Ok(events)
        })
        .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, ReadError> {
        let stream = stream.clone();
        self.with_reader(move |conn| {
            let version = current_version(conn, &stream).map_err(read_backend)?;
            Ok((version > 0).then_some(version))
        })
        .await
    }

    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))
                .map_err(read_backend)?;
            collect(&mut stmt, params![after.position as i64, limit as i64], None)
        })
        .await
    }

    async fn head(&self) -> Result<LogPosition, ReadError> {
        self.with_reader(|conn| {
            let position = conn
                .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map_err(read_backend)? as u64;
            Ok(LogPosition {
                commit: position,
                position,
            })
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn partition_count(&self) -> u16 {
        self.options.partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn log_reads_keep_their_prepared_statement_whatever_limit_is_bound() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = EmbeddedStore::open(dir.path().join("events.db")).expect("the store opens");
        let stream = StreamId::new("meter", "a");
        let events = (0..3)
            .map(|n| {
                NewEvent::from_json("Ticked", 1, format!(r#"{{"n":{n}}}"#), Metadata::default())
                    .expect("valid JSON")
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .expect("an append");
        // One read at a time: each takes the same pooled connection and its cached statement.
        for limit in [1, 2, 3, 1, 500] {
            let read = store
                .read_all(LogPosition::default(), limit)
                .await
                .expect("a read");
            assert_eq!(read.len(), limit.min(3));
        }
        let reprepared = store
            .with_reader(|conn| {
                let stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {SELECT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                    ))
                    .map_err(read_backend)?;
                Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .await
            .expect("the reader");
        assert_eq!(reprepared, 0, "the statement was parsed and planned again");
    }
}
