//! The command path: load an aggregate (snapshot, then the tail of its stream), decide, append.
//!
//! Publication to the bus is not done here: the bus relay reads the store's change-data-capture
//! stream after the append commits, so there is never a dual write.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::aggregate::Aggregate;
use crate::event::{EventId, Metadata, NewEvent, PayloadError, StreamId};
use crate::snapshot::{Snapshot, SnapshotError, SnapshotStore};
use crate::store::{AppendError, EventStore, ExpectedVersion, ReadError};
use crate::telemetry::{live, trace};
use crate::upcast::{UpcastError, Upcasters};

/// An aggregate's state rebuilt from the store.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version the state includes (0 for a new aggregate).
    pub version: u64,
    /// The version of the snapshot the load started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// How many events were applied on top of the snapshot (or from the start).
    pub events_applied: usize,
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading the stream failed.
    #[error("failed to read stream `{stream}`")]
    Read {
        /// The stream.
        stream: StreamId,
        /// The cause.
        #[source]
        source: ReadError,
    },
    /// A stored event does not decode into the aggregate's event type.
    #[error("event {version} of stream `{stream}` ({event_type}) does not decode")]
    Decode {
        /// The stream.
        stream: StreamId,
        /// The event's version.
        version: u64,
        /// The event's type name.
        event_type: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored event of an older schema version could not be upcast.
    #[error("event {version} of stream `{stream}` could not be upcast")]
    Upcast {
        /// The stream.
        stream: StreamId,
        /// The event's version.
        version: u64,
        /// The cause.
        #[source]
        source: UpcastError,
    },
    /// The snapshot store failed.
    #[error("failed to load the snapshot of `{stream}`")]
    Snapshot {
        /// The stream.
        stream: StreamId,
        /// The cause.
        #[source]
        source: SnapshotError,
    },
}

/// Why a command was not executed. Nothing was stored in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate rejected the command.
    #[error("command rejected")]
    Rejected(#[source] E),
    /// Another writer changed the stream first (after the configured retries).
    #[error("stream `{stream}` is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// The version the command was decided against.
        expected: ExpectedVersion,
        /// The version the stream is at.
        actual: u64,
    },
    /// The aggregate could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An event could not be serialised.
    #[error("failed to serialise an event")]
    Encode(#[source] PayloadError),
    /// The append failed for another reason.
    #[error("failed to append events")]
    Append(#[source] AppendError),
    /// The idempotency key was used before for a different request on this aggregate.
    #[error("idempotency key `{key}` was already used for a different command on `{stream}`")]
    IdempotencyKeyReused {
        /// The stream.
        stream: StreamId,
        /// The key.
        key: String,
    },
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandOutcome {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The aggregate's version after the command (unchanged if it emitted no events).
    pub version: u64,
    /// The ids of the events it appended.
    pub event_ids: Vec<EventId>,
    /// The global position of its last event, if it appended any.
    pub position: Option<u64>,
    /// Whether this is the stored outcome of an earlier attempt with the same idempotency key
    /// (nothing was decided or appended this time).
    pub replayed: bool,
}

/// How [`CommandHandler::execute_with`] runs one command.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    /// Decide only if the aggregate is at this version; a conflict is never retried.
    pub expected: Option<u64>,
    /// Makes the command safe to send again: the events it appends get ids derived from the
    /// stream and this key, so a retry after a lost answer finds them and returns the stored
    /// outcome instead of deciding a second time.
    pub idempotency_key: Option<String>,
    /// What identifies the request itself (e.g. a hash of its canonical body), kept with the
    /// events; a retry with the same key but another fingerprint is
    /// [`CommandError::IdempotencyKeyReused`].
    pub fingerprint: Option<String>,
}

/// Events one command appends at most, when looking for what an idempotent attempt stored.
const MAX_EVENTS_PER_COMMAND: usize = 256;

/// The namespace of event ids derived from idempotency keys (a UUIDv5 namespace).
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6e65_7875_735f_6964_656d_706f_7465_6e74);

/// The id of the `index`-th event appended to `stream` under idempotency key `key`.
fn idempotent_event_id(stream: &StreamId, key: &str, index: usize) -> EventId {
    let name = format!(
        "{}\u{0}{}\u{0}{key}\u{0}{index}",
        stream.aggregate_type(),
        stream.aggregate_id()
    );
    EventId(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()))
}

/// What to do when another writer wins the race for a stream version.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 means never retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further retry.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_millis(5),
        }
    }
}

impl RetryPolicy {
    /// Never retry: a conflict goes straight back to the caller.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            backoff: Duration::ZERO,
        }
    }
}

/// Loads aggregates of type `A` from an event store, starting from snapshots when there are any.
pub struct Repository<A> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    upcasters: Option<Arc<Upcasters>>,
    _aggregate: PhantomData<fn() -> A>,
}

/// Why a stored event did not become an `A::Event` during a load.
enum Undecodable {
    Upcast(UpcastError),
    Json(serde_json::Error),
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            snapshots: self.snapshots.clone(),
            upcasters: self.upcasters.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository without snapshots.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            snapshots: None,
            upcasters: None,
            _aggregate: PhantomData,
        }
    }

    /// The same repository, starting loads from the snapshots in `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// The same repository, bringing stored events of older schema versions to the current
    /// shape with `upcasters` before the aggregate applies them.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = (!upcasters.is_empty()).then(|| Arc::new(upcasters));
        self
    }

    /// The stream of aggregate `id`.
    pub fn stream(id: &str) -> StreamId {
        StreamId::new(A::TYPE, id)
    }

    /// The event store behind this repository.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Rebuilds aggregate `id`: latest usable snapshot, then the events after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, LoadError> {
        let stream = Self::stream(id);
        let started = Instant::now();
        let mut loaded = match self.load_snapshot(&stream).await? {
            Some(loaded) => loaded,
            None => Loaded {
                state: A::default(),
                version: 0,
                snapshot_version: None,
                events_applied: 0,
            },
        };
        // Decoded as the rows arrive; the first event that does not decode stops the read.
        let mut undecodable = None;
        let from = loaded.version + 1;
        let upcasters = self.upcasters.as_deref();
        let read = self
            .store
            .visit_payloads(&stream, from, &mut |stored| {
                let payload = match upcasters {
                    None => Ok(Cow::Borrowed(stored.payload)),
                    Some(upcasters) => upcasters
                        .upcast(stored.event_type, stored.schema_version, stored.payload)
                        .map(|(payload, _)| payload),
                };
                let decoded = payload.map_err(Undecodable::Upcast).and_then(|payload| {
                    serde_json::from_str::<A::Event>(&payload).map_err(Undecodable::Json)
                });
                match decoded {
                    Ok(event) => {
                        loaded.state.apply(&event);
                        loaded.version = stored.version;
                        loaded.events_applied += 1;
                        ControlFlow::Continue(())
                    }
                    Err(cause) => {
                        undecodable = Some((stored.version, stored.event_type.to_owned(), cause));
                        ControlFlow::Break(())
                    }
                }
            })
            .await;
        match undecodable {
            Some((version, event_type, Undecodable::Json(source))) => {
                return Err(LoadError::Decode {
                    stream,
                    version,
                    event_type,
                    source,
                });
            }
            Some((version, _, Undecodable::Upcast(source))) => {
                return Err(LoadError::Upcast {
                    stream,
                    version,
                    source,
                });
            }
            None => {}
        }
        if let Err(source) = read {
            return Err(LoadError::Read { stream, source });
        }
        if loaded.snapshot_version.is_some() {
            metrics::histogram!("nexus_snapshot_load_seconds", "aggregate" => A::TYPE)
                .record(started.elapsed().as_secs_f64());
        }
        metrics::histogram!("nexus_aggregate_load_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        Ok(loaded)
    }

    /// Rebuilds aggregate `id` from its events alone, ignoring snapshots.
    pub async fn load_from_events(&self, id: &str) -> Result<Loaded<A>, LoadError> {
        Repository::<A> {
            snapshots: None,
            ..self.clone()
        }
        .load(id)
        .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Loaded<A>>, LoadError> {
        let Some(snapshots) = &self.snapshots else {
            return Ok(None);
        };
        let snapshot = snapshots
            .load(stream)
            .await
            .map_err(|source| LoadError::Snapshot {
                stream: stream.clone(),
                source,
            })?;
        Ok(snapshot.and_then(|snapshot| decode_snapshot::<A>(&snapshot)))
    }

    /// Takes a snapshot of aggregate `id` as it is now and stores it.
    pub async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, LoadError> {
        let stream = Self::stream(id);
        let Some(snapshots) = &self.snapshots else {
            return Ok(None);
        };
        let loaded = self.load(id).await?;
        if loaded.version == 0 || loaded.snapshot_version == Some(loaded.version) {
            return Ok(None);
        }
        let state = serde_json::to_string(&loaded.state).map_err(|source| LoadError::Decode {
            stream: stream.clone(),
            version: loaded.version,
            event_type: format!("{} snapshot", A::TYPE),
            source,
        })?;
        let snapshot = Snapshot {
            stream: stream.clone(),
            version: loaded.version,
            schema_version: A::SNAPSHOT_VERSION,
            state,
            taken_at: chrono::Utc::now(),
        };
        snapshots
            .save(&snapshot)
            .await
            .map_err(|source| LoadError::Snapshot { stream, source })?;
        Ok(Some(snapshot))
    }
}

/// Decodes a snapshot, upcasting an older schema version; `None` means "rebuild from events".
pub(crate) fn decode_snapshot<A: Aggregate>(snapshot: &Snapshot) -> Option<Loaded<A>> {
    let state = if snapshot.schema_version == A::SNAPSHOT_VERSION {
        serde_json::from_str::<A>(&snapshot.state).ok()
    } else if snapshot.schema_version < A::SNAPSHOT_VERSION {
        serde_json::from_str(&snapshot.state)
            .ok()
            .and_then(|value| A::upcast_snapshot(snapshot.schema_version, value))
            .and_then(|value| serde_json::from_value::<A>(value).ok())
    } else {
        None
    };
    if state.is_none() {
        tracing::warn!(
            stream = %snapshot.stream,
            snapshot_version = snapshot.schema_version,
            current_version = A::SNAPSHOT_VERSION,
            "snapshot not usable, rebuilding from events"
        );
        metrics::counter!("nexus_snapshots_discarded_total", "aggregate" => A::TYPE).increment(1);
    }
    state.map(|state| Loaded {
        state,
        version: snapshot.version,
        snapshot_version: Some(snapshot.version),
        events_applied: 0,
    })
}

/// Registers the command metrics of aggregate `A` at zero, so every outcome's series exists
/// (and `rate()` works) before the first command of that outcome.
fn register_metrics<A: Aggregate>() {
    for outcome in ["ok", "replayed", "rejected", "conflict", "error"] {
        metrics::counter!("nexus_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(0);
        let _registered = metrics::histogram!("nexus_command_duration_seconds", "aggregate" => A::TYPE, "outcome" => outcome);
    }
    metrics::counter!("nexus_events_appended_total", "aggregate" => A::TYPE).increment(0);
    metrics::counter!("nexus_command_retries_total", "aggregate" => A::TYPE).increment(0);
    metrics::counter!("nexus_snapshots_discarded_total", "aggregate" => A::TYPE).increment(0);
    let _registered = metrics::histogram!("nexus_aggregate_load_seconds", "aggregate" => A::TYPE);
    let _registered = metrics::histogram!("nexus_snapshot_load_seconds", "aggregate" => A::TYPE);
}

/// Executes commands against aggregates of type `A`: load, decide, append with the expected version.
pub struct CommandHandler<A> {
    repository: Repository<A>,
    retry: RetryPolicy,
}

impl<A> Clone for CommandHandler<A> {
    fn clone(&self) -> Self {
        Self {
            repository: self.repository.clone(),
            retry: self.retry,
        }
    }
}

impl<A: Aggregate> CommandHandler<A> {
    /// A handler over `repository` with the default retry policy.
    pub fn new(repository: Repository<A>) -> Self {
        crate::telemetry::ensure_recorder();
        register_metrics::<A>();
        Self {
            repository,
            retry: RetryPolicy::default(),
        }
    }

    /// The same handler with another retry policy for version conflicts.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The repository this handler loads from.
    pub fn repository(&self) -> &Repository<A> {
        &self.repository
    }

    /// Executes `command` on aggregate `id`, retrying on version conflicts per the policy.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.execute_with(id, command, metadata, &ExecuteOptions::default())
            .await
    }

    /// Executes `command` only if aggregate `id` is at `expected` (the version the caller saw).
    ///
    /// A conflict is returned as is, never retried: the caller decided on stale state.
    pub async fn execute_at(
        &self,
        id: &str,
        expected: u64,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let options = ExecuteOptions {
            expected: Some(expected),
            ..ExecuteOptions::default()
        };
        self.execute_with(id, command, metadata, &options).await
    }

    /// Executes `command` on aggregate `id` as `options` say (expected version, idempotency).
    pub async fn execute_with(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
        options: &ExecuteOptions,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let started = Instant::now();
        let span = tracing::info_span!(
            "command",
            otel.name = %format_args!("command {}", A::TYPE),
            aggregate = A::TYPE,
            id,
            correlation_id = metadata.correlation_id.as_deref().unwrap_or_default(),
            causation_id = metadata.causation_id.as_deref().unwrap_or_default()
        );
        let result = self
            .attempt_all(id, command, metadata, options)
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(done) if done.replayed => "replayed",
            Ok(_) => "ok",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        let elapsed = started.elapsed();
        metrics::histogram!("nexus_command_duration_seconds", "aggregate" => A::TYPE, "outcome" => outcome)
            .record(elapsed.as_secs_f64());
        metrics::counter!("nexus_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        live::count(live::Series::Commands, 1);
        live::latency(live::Latency::Command, elapsed);
        match &result {
            Ok(done) if !done.replayed => {
                metrics::counter!("nexus_events_appended_total", "aggregate" => A::TYPE)
                    .increment(done.event_ids.len() as u64);
                live::count(live::Series::EventsAppended, done.event_ids.len() as u64);
            }
            Ok(_) => {}
            Err(_) => live::count(live::Series::CommandErrors, 1),
        }
        result
    }

    async fn attempt_all(
        &self,
        id: &str,
        command: &A::Command,
        mut metadata: Metadata,
        options: &ExecuteOptions,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        if metadata.correlation_id.is_none() {
            metadata.correlation_id = Some(EventId::new().to_string());
        }
        if let Some(key) = &options.idempotency_key {
            if let Some(done) = self.replay(id, key, options.fingerprint.as_deref()).await? {
                return Ok(done);
            }
            let mut idempotency = serde_json::Map::new();
            idempotency.insert("key".into(), key.clone().into());
            if let Some(fingerprint) = &options.fingerprint {
                idempotency.insert("fingerprint".into(), fingerprint.clone().into());
            }
            metadata
                .extra
                .insert("idempotency".into(), idempotency.into());
        }
        let attempts = if options.expected.is_some() {
            1
        } else {
            self.retry.max_attempts.max(1)
        };
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            let result = self.attempt(id, command, &metadata, options).await;
            if let (Err(CommandError::Conflict { .. }), Some(key)) =
                (&result, &options.idempotency_key)
            {
                // A duplicate of this request may have won the race: answer as it did.
                if let Some(done) = self.replay(id, key, options.fingerprint.as_deref()).await? {
                    return Ok(done);
                }
            }
            match result {
                Err(CommandError::Conflict { .. }) if attempt < attempts => {
                    tracing::debug!(attempt, "version conflict, retrying");
                    metrics::counter!("nexus_command_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The stored outcome of an earlier attempt with idempotency key `key`, if one appended.
    async fn replay(
        &self,
        id: &str,
        key: &str,
        fingerprint: Option<&str>,
    ) -> Result<Option<CommandOutcome>, CommandError<A::Error>> {
        let stream = Repository::<A>::stream(id);
        let find = |ids: Vec<EventId>| {
            let stream = stream.clone();
            async move {
                self.repository
                    .store
                    .find_events(&stream, &ids)
                    .await
                    .map_err(|source| CommandError::Load(LoadError::Read { stream, source }))
            }
        };
        // A command's events are stored all or none: if its first is not stored, none is.
        if find(vec![idempotent_event_id(&stream, key, 0)])
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        let stored = find(
            (0..MAX_EVENTS_PER_COMMAND)
                .map(|index| idempotent_event_id(&stream, key, index))
                .collect(),
        )
        .await?;
        let Some(last) = stored.last() else {
            return Ok(None);
        };
        let stored_fingerprint = stored[0]
            .metadata
            .extra
            .get("idempotency")
            .and_then(|i| i.get("fingerprint"))
            .and_then(serde_json::Value::as_str);
        if let (Some(stored), Some(given)) = (stored_fingerprint, fingerprint)
            && stored != given
        {
            return Err(CommandError::IdempotencyKeyReused {
                stream,
                key: key.to_owned(),
            });
        }
        Ok(Some(CommandOutcome {
            version: last.version,
            position: Some(last.position),
            event_ids: stored.iter().map(|e| e.id).collect(),
            stream,
            replayed: true,
        }))
    }

    async fn attempt(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        options: &ExecuteOptions,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let expected = options.expected;
        let loaded = self
            .repository
            .load(id)
            .instrument(tracing::info_span!("load", aggregate = A::TYPE))
            .await?;
        let stream = Repository::<A>::stream(id);
        if let Some(expected) = expected
            && expected != loaded.version
        {
            return Err(CommandError::Conflict {
                stream,
                expected: ExpectedVersion::Exact(expected),
                actual: loaded.version,
            });
        }
        let events = tracing::info_span!("decide", aggregate = A::TYPE)
            .in_scope(|| loaded.state.handle(command))
            .map_err(CommandError::Rejected)?;
        if events.is_empty() {
            return Ok(CommandOutcome {
                stream,
                version: loaded.version,
                event_ids: Vec::new(),
                position: None,
                replayed: false,
            });
        }
        // The events carry the append span's trace context: consumers continue from there.
        let append = tracing::info_span!(
            "append",
            otel.kind = "producer",
            aggregate = A::TYPE,
            events = events.len()
        );
        let traceparent = trace::traceparent(&append);
        let batch = events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let mut metadata = metadata.clone();
                if traceparent.is_some() {
                    metadata.traceparent.clone_from(&traceparent);
                }
                let new = NewEvent::from_domain(event, metadata)?;
                Ok(match &options.idempotency_key {
                    Some(key) => new.with_id(idempotent_event_id(&stream, key, index)),
                    None => new,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(CommandError::Encode)?;
        let expected_version = ExpectedVersion::Exact(loaded.version);
        match self
            .repository
            .store
            .append(&stream, expected_version, batch)
            .instrument(append)
            .await
        {
            Ok(appended) => Ok(CommandOutcome {
                stream,
                version: appended.version,
                event_ids: appended.event_ids,
                position: Some(appended.last_position),
                replayed: false,
            }),
            Err(AppendError::Conflict {
                stream,
                expected,
                actual,
            }) => Err(CommandError::Conflict {
                stream,
                expected,
                actual,
            }),
            Err(other) => Err(CommandError::Append(other)),
        }
    }
}
