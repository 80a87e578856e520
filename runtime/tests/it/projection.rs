//! Projections: exactly-once application across crashes, retries with backoff, dead letters,
//! redrive, per-key order, isolation between projections, and rebuilds; the read-model tests
//! run once with SQLite files and once with PostgreSQL tables (feature `postgres`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::bus::{BusConsumer, EventBus};
use nexus_runtime::projection::{
    Changes, DeadLetterMode, DeadLetterStatus, Projection, ProjectionError, ProjectionHandle,
    ProjectionRunner, ProjectionStatus, ReadModelError, ReadModelStore, ReadModels, RedriveFilter,
    RetrySchedule, RunnerOptions,
};
use nexus_runtime::{
    EventStore, ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId,
};
use serde_json::json;

use crate::support;

/// Counts events per stream and remembers the order of versions it applied.
pub(crate) struct Counter {
    pub(crate) name: String,
    /// Events whose payload has `"poison": true` fail while this is false.
    pub(crate) healthy: Arc<AtomicBool>,
    pub(crate) attempts: Arc<Mutex<Vec<(String, u64, Instant)>>>,
    pub(crate) delay: Duration,
    pub(crate) panic_on_poison: bool,
}

impl Counter {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            healthy: Arc::new(AtomicBool::new(false)),
            attempts: Arc::new(Mutex::new(Vec::new())),
            delay: Duration::ZERO,
            panic_on_poison: false,
        }
    }
}

#[async_trait]
impl Projection for Counter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let id = event.stream.aggregate_id().to_owned();
        self.attempts
            .lock()
            .unwrap()
            .push((id.clone(), event.version, Instant::now()));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let payload: serde_json::Value = serde_json::from_str(event.payload.get())?;
        if payload["poison"] == json!(true) && !self.healthy.load(Ordering::SeqCst) {
            if self.panic_on_poison {
                panic!("poisoned event {}", event.version);
            }
            return Err(ProjectionError::new(format!(
                "cannot digest event {}",
                event.version
            )));
        }
        let mut doc = changes
            .get("counts", &id)
            .await?
            .unwrap_or_else(|| json!({"count": 0, "versions": []}));
        doc["count"] = json!(doc["count"].as_u64().unwrap_or(0) + 1);
        doc["versions"]
            .as_array_mut()
            .expect("versions array")
            .push(json!(event.version));
        changes.put("counts", &id, doc);
        Ok(())
    }
}

pub(crate) fn event(poison: bool) -> NewEvent {
    NewEvent::from_json(
        "Ticked",
        1,
        json!({"poison": poison}).to_string(),
        Metadata::default(),
    )
    .unwrap()
}

pub(crate) async fn append(store: &Arc<dyn EventStore>, id: &str, events: Vec<NewEvent>) {
    store
        .append(&StreamId::new("meter", id), ExpectedVersion::Any, events)
        .await
        .unwrap();
}

/// Waits until `check` holds on the projection's read model, or fails after `timeout`.
pub(crate) async fn eventually(
    handle: &ProjectionHandle,
    timeout: Duration,
    what: &str,
    check: impl AsyncFn(&ProjectionHandle) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check(handle).await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            handle.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn count(handle: &ProjectionHandle, id: &str) -> u64 {
    handle
        .read_model()
        .get("counts", id)
        .await
        .unwrap()
        .map_or(0, |d| d["count"].as_u64().unwrap())
}

/// The sum of the counts of `ids`.
pub(crate) async fn total(
    handle: &ProjectionHandle,
    ids: impl IntoIterator<Item = impl AsRef<str>>,
) -> u64 {
    let mut sum = 0;
    for id in ids {
        sum += count(handle, id.as_ref()).await;
    }
    sum
}

pub(crate) async fn versions(handle: &ProjectionHandle, id: &str) -> Vec<u64> {
    handle
        .read_model()
        .get("counts", id)
        .await
        .unwrap()
        .map_or_else(Vec::new, |d| {
            d["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        })
}

async fn dead_letters(handle: &ProjectionHandle) -> usize {
    handle.read_model().dead_letters().await.unwrap().len()
}

fn fast_retries() -> RunnerOptions {
    RunnerOptions {
        retry: RetrySchedule {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_retries: 5,
        },
        redrive_poll: Duration::from_millis(20),
        ..RunnerOptions::default()
    }
}

fn runner(
    store: &Arc<dyn EventStore>,
    dir: &tempfile::TempDir,
    options: RunnerOptions,
) -> ProjectionRunner {
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(store)));
    ProjectionRunner::new(Arc::clone(store), bus, dir.path().join("read-models"))
        .with_options(options)
}

/// Where a test keeps its read models.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

/// An embedded event store and a runner whose read models live on one backend.
pub(crate) struct Setup {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) runner: ProjectionRunner,
    pub(crate) _dir: tempfile::TempDir,
    #[cfg(feature = "postgres")]
    pub(crate) db: Option<support::TestDb>,
}

impl Setup {
    /// `None` (the test is skipped) when the backend's server is not configured.
    pub(crate) async fn new(backend: Backend, options: RunnerOptions) -> Option<Self> {
        let (store, dir) = support::embedded();
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
        match backend {
            Backend::Sqlite => Some(Self {
                runner: ProjectionRunner::with_read_models(
                    Arc::clone(&store),
                    bus,
                    ReadModels::sqlite(dir.path().join("read-models")),
                )
                .with_options(options),
                store,
                _dir: dir,
                #[cfg(feature = "postgres")]
                db: None,
            }),
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let db = support::TestDb::create().await?;
                let read_models =
                    ReadModels::postgres(&db.url, ReadModels::DEFAULT_POSTGRES_SCHEMA)
                        .await
                        .expect("the PostgreSQL read models open");
                let runner =
                    ProjectionRunner::with_read_models(Arc::clone(&store), bus, read_models)
                        .with_options(options);
                Some(Self {
                    store,
                    runner,
                    _dir: dir,
                    db: Some(db),
                })
            }
        }
    }

    /// The read model of `name` opened afresh, as another process (`nexus dlq`) would.
    pub(crate) async fn reopen(&self, name: &str) -> ReadModelStore {
        #[cfg(feature = "postgres")]
        if let Some(db) = &self.db {
            return ReadModels::postgres(&db.url, ReadModels::DEFAULT_POSTGRES_SCHEMA)
                .await
                .unwrap()
                .open(name)
                .unwrap();
        }
        match self.runner.read_models().open(name) {
            Ok(store) => store,
            Err(err) => panic!("reopen {name}: {err}"),
        }
    }
}

/// Runs a test taking a [`Backend`] once on SQLite and once on PostgreSQL (feature `postgres`).
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(super::Backend::Sqlite).await;
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(super::Backend::Postgres).await;
            }
        }
    )*};
}
pub(crate) use on_each_backend;

on_each_backend!(
    applies_every_event_once_across_a_crash,
    a_poison_event_is_dead_lettered_after_exactly_five_retries_with_backoff,
    a_redriven_dead_letter_is_applied_once_the_handler_is_fixed,
    park_mode_holds_a_key_in_order_until_redriven,
    redriving_one_letter_does_not_unpark_its_stream_nor_apply_anything_twice,
    redrives_of_one_stream_apply_in_version_order_in_skip_mode,
    list_filters_by_fields_and_pages_in_id_order,
    the_read_cache_never_serves_a_document_older_than_an_applied_version,
);

/// Readers race a writer: each reads a stream's applied version from the database (what
/// `wait_for` waits on), then the document and a list through the cache; neither may be older.
async fn the_read_cache_never_serves_a_document_older_than_an_applied_version(backend: Backend) {
    let Some(setup) = Setup::new(backend, RunnerOptions::default()).await else {
        return;
    };
    let handle = setup.runner.spawn(Counter::new("cached")).unwrap();
    let read_model = handle.read_model().clone();
    let stats = read_model
        .cache_stats()
        .expect("a runner's read model has a cache");
    const STREAMS: usize = 8;
    const ROUNDS: usize = 60;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader in 0..2 {
        let (read_model, done) = (read_model.clone(), Arc::clone(&done));
        readers.push(tokio::spawn(async move {
            let mut checks = 0u64;
            let mut i = reader;
            while !done.load(Ordering::SeqCst) {
                i = (i + 1) % STREAMS;
                let id = format!("m-{i}");
                let applied = read_model
                    .stream_version(&StreamId::new("meter", &id))
                    .await
                    .unwrap();
                let count = read_model
                    .get("counts", &id)
                    .await
                    .unwrap()
                    .map_or(0, |doc| doc["count"].as_u64().unwrap());
                assert!(
                    count >= applied,
                    "{id}: cached count {count} < applied {applied}"
                );
                let applied = read_model
                    .stream_version(&StreamId::new("meter", "m-0"))
                    .await
                    .unwrap();
                let listed = read_model.list("counts", &[], 100, 0).await.unwrap();
                let count = listed
                    .iter()
                    .find(|(id, _)| id == "m-0")
                    .map_or(0, |(_, doc)| doc["count"].as_u64().unwrap());
                assert!(count >= applied, "listed count {count} < applied {applied}");
                checks += 1;
            }
            checks
        }));
    }
    for _ in 0..ROUNDS {
        for i in 0..STREAMS {
            append(&setup.store, &format!("m-{i}"), vec![event(false)]).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually(
        &handle,
        Duration::from_secs(30),
        "every event applied",
        async |h| {
            h.read_model()
                .stream_version(&StreamId::new("meter", format!("m-{}", STREAMS - 1)))
                .await
                .unwrap()
                == ROUNDS as u64
        },
    )
    .await;
    // Once quiet, reads are answered from the cache with the final state.
    for _ in 0..3 {
        let doc = read_model.get("counts", "m-0").await.unwrap().unwrap();
        assert_eq!(doc["count"], json!(ROUNDS));
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.unwrap() > 0, "a reader made no check");
    }
    assert!(
        stats.hits() >= 2,
        "hits {} misses {}",
        stats.hits(),
        stats.misses()
    );
    assert!(stats.misses() > 0);
}

async fn applies_every_event_once_across_a_crash(backend: Backend) {
    let Some(setup) = Setup::new(
        backend,
        RunnerOptions {
            batch_size: 16,
            ..RunnerOptions::default()
        },
    )
    .await
    else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let writer = {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            for round in 0..100 {
                for id in ["a", "b", "c", "d"] {
                    append(&store, id, vec![event(false), event(false)]).await;
                }
                if round % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let first = runner.spawn(Counter::new("counts")).unwrap();
    eventually(
        &first,
        Duration::from_secs(10),
        "some progress",
        async |h| count(h, "a").await > 20,
    )
    .await;
    // Crash mid-stream: whatever was not committed is lost with the task.
    first.abort();
    writer.await.unwrap();
    let second = runner.spawn(Counter::new("counts")).unwrap();
    eventually(
        &second,
        Duration::from_secs(20),
        "all 800 events",
        async |h| total(h, ["a", "b", "c", "d"]).await >= 800,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in ["a", "b", "c", "d"] {
        assert_eq!(
            count(&second, id).await,
            200,
            "stream {id}: every event applied exactly once"
        );
        assert_eq!(
            versions(&second, id).await,
            (1..=200).collect::<Vec<_>>(),
            "stream {id}: in order"
        );
    }
    assert!(second.read_model().checkpoint().await.unwrap().is_some());
    second.stop().await;
}

async fn a_poison_event_is_dead_lettered_after_exactly_five_retries_with_backoff(backend: Backend) {
    let options = fast_retries();
    let schedule = options.retry;
    let Some(setup) = Setup::new(backend, options).await else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let counter = Counter::new("poison");
    let attempts = Arc::clone(&counter.attempts);
    let handle = runner.spawn(counter).unwrap();
    append(store, "sick", vec![event(false), event(true), event(false)]).await;
    append(store, "well", vec![event(false)]).await;
    eventually(
        &handle,
        Duration::from_secs(10),
        "the dead letter",
        async |h| dead_letters(h).await == 1 && count(h, "sick").await == 2,
    )
    .await;
    let attempts = attempts.lock().unwrap().clone();
    let poisoned: Vec<Instant> = attempts
        .iter()
        .filter(|(id, v, _)| id == "sick" && *v == 2)
        .map(|(_, _, at)| *at)
        .collect();
    assert_eq!(poisoned.len(), 6, "one attempt and exactly five retries");
    for (retry, pair) in poisoned.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let expected = schedule.delay(retry as u32 + 1);
        assert!(
            gap >= expected,
            "retry {} came after {gap:?}, before its {expected:?} backoff",
            retry + 1
        );
        assert!(
            gap < expected + Duration::from_millis(250),
            "retry {} came late: {gap:?}",
            retry + 1
        );
    }
    // Another key kept flowing while `sick` waited, and `sick` continued after the dead letter.
    let well_at = attempts.iter().find(|(id, _, _)| id == "well").unwrap().2;
    assert!(
        well_at < *poisoned.last().unwrap(),
        "the other key was not held back"
    );
    assert_eq!(
        versions(&handle, "sick").await,
        [1, 3],
        "the key continues past its dead letter, in order"
    );
    let letter = &handle.read_model().dead_letters().await.unwrap()[0];
    assert_eq!(letter.event.version, 2);
    assert_eq!(letter.event.stream, StreamId::new("meter", "sick"));
    assert_eq!(letter.attempts, 6);
    assert_eq!(letter.status, DeadLetterStatus::Dead);
    assert!(
        letter.error.contains("cannot digest event 2"),
        "{}",
        letter.error
    );
    assert!(
        letter.event.payload.get().contains("poison"),
        "the full envelope is kept"
    );
    let shown = handle.read_model().dead_letter(letter.id).await.unwrap();
    assert_eq!(shown.event.id, letter.event.id);
    assert_eq!(handle.health().dead_letters, 1);
    handle.stop().await;
}

async fn a_redriven_dead_letter_is_applied_once_the_handler_is_fixed(backend: Backend) {
    let Some(setup) = Setup::new(backend, fast_retries()).await else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let counter = Counter::new("redrive");
    let healthy = Arc::clone(&counter.healthy);
    let handle = runner.spawn(counter).unwrap();
    append(store, "r", vec![event(true)]).await;
    eventually(
        &handle,
        Duration::from_secs(10),
        "the dead letter",
        async |h| dead_letters(h).await == 1,
    )
    .await;
    healthy.store(true, Ordering::SeqCst);
    // The request comes from another handle on the same read model, as `nexus dlq` sends it.
    let elsewhere = setup.reopen("redrive").await;
    let id = elsewhere.dead_letters().await.unwrap()[0].id;
    assert_eq!(
        elsewhere
            .request_redrive(&RedriveFilter::Id(id))
            .await
            .unwrap(),
        1
    );
    eventually(&handle, Duration::from_secs(5), "the redrive", async |h| {
        count(h, "r").await == 1
    })
    .await;
    eventually(
        &handle,
        Duration::from_secs(5),
        "an empty queue",
        async |h| dead_letters(h).await == 0,
    )
    .await;
    let err = elsewhere
        .request_redrive(&RedriveFilter::Id(id))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("no dead letter with id {id}"));
    let err = elsewhere.dead_letter(id).await.unwrap_err();
    assert_eq!(err.to_string(), format!("no dead letter with id {id}"));
    handle.stop().await;
}

async fn park_mode_holds_a_key_in_order_until_redriven(backend: Backend) {
    let options = RunnerOptions {
        dead_letter: DeadLetterMode::Park,
        ..fast_retries()
    };
    let Some(setup) = Setup::new(backend, options).await else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let counter = Counter::new("park");
    let healthy = Arc::clone(&counter.healthy);
    let handle = runner.spawn(counter).unwrap();
    append(
        store,
        "p",
        vec![event(false), event(true), event(false), event(false)],
    )
    .await;
    append(store, "q", vec![event(false)]).await;
    eventually(&handle, Duration::from_secs(10), "parking", async |h| {
        dead_letters(h).await == 3
    })
    .await;
    assert_eq!(versions(&handle, "p").await, [1]);
    assert_eq!(count(&handle, "q").await, 1, "other keys are not parked");
    let statuses: Vec<_> = handle
        .read_model()
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .map(|l| (l.event.version, l.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (2, DeadLetterStatus::Dead),
            (3, DeadLetterStatus::Parked),
            (4, DeadLetterStatus::Parked)
        ]
    );
    healthy.store(true, Ordering::SeqCst);
    handle
        .read_model()
        .request_redrive(&RedriveFilter::Stream(StreamId::new("meter", "p")))
        .await
        .unwrap();
    eventually(
        &handle,
        Duration::from_secs(5),
        "the redriven key",
        async |h| count(h, "p").await == 4,
    )
    .await;
    assert_eq!(
        versions(&handle, "p").await,
        [1, 2, 3, 4],
        "redriven in order"
    );
    append(store, "p", vec![event(false)]).await;
    eventually(
        &handle,
        Duration::from_secs(5),
        "the key moving again",
        async |h| count(h, "p").await == 5,
    )
    .await;
    handle.stop().await;
}

/// The id of the dead letter of `stream` at `version`.
async fn letter_id(read_model: &ReadModelStore, stream: &str, version: u64) -> i64 {
    read_model
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .find(|l| l.event.stream.aggregate_id() == stream && l.event.version == version)
        .unwrap_or_else(|| panic!("a dead letter for {stream} v{version}"))
        .id
}

async fn redriving_one_letter_does_not_unpark_its_stream_nor_apply_anything_twice(
    backend: Backend,
) {
    let options = RunnerOptions {
        dead_letter: DeadLetterMode::Park,
        ..fast_retries()
    };
    let Some(setup) = Setup::new(backend, options).await else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let counter = Counter::new("park1");
    let healthy = Arc::clone(&counter.healthy);
    let handle = runner.spawn(counter).unwrap();
    append(store, "p", vec![event(true), event(false), event(false)]).await;
    eventually(&handle, Duration::from_secs(10), "parking", async |h| {
        dead_letters(h).await == 3
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    let elsewhere = setup.reopen("park1").await;
    // A newer letter alone waits for the older one: nothing is applied out of order.
    let third = letter_id(&elsewhere, "p", 3).await;
    elsewhere
        .request_redrive(&RedriveFilter::Id(third))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(versions(&handle, "p").await, Vec::<u64>::new());
    assert_eq!(dead_letters(&handle).await, 3);
    // The head letter goes, and what was parked behind it follows in order.
    let first = letter_id(&elsewhere, "p", 1).await;
    elsewhere
        .request_redrive(&RedriveFilter::Id(first))
        .await
        .unwrap();
    append(store, "p", vec![event(false)]).await;
    eventually(
        &handle,
        Duration::from_secs(10),
        "the stream drained",
        async |h| dead_letters(h).await == 0 && count(h, "p").await == 4,
    )
    .await;
    elsewhere
        .request_redrive(&RedriveFilter::All)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        versions(&handle, "p").await,
        [1, 2, 3, 4],
        "each once, in stream order"
    );
    handle.stop().await;
}

async fn redrives_of_one_stream_apply_in_version_order_in_skip_mode(backend: Backend) {
    let Some(setup) = Setup::new(backend, fast_retries()).await else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let counter = Counter::new("skip1");
    let healthy = Arc::clone(&counter.healthy);
    let handle = runner.spawn(counter).unwrap();
    append(store, "s", vec![event(true), event(true), event(false)]).await;
    eventually(&handle, Duration::from_secs(10), "two letters", async |h| {
        dead_letters(h).await == 2 && count(h, "s").await == 1
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    let elsewhere = setup.reopen("skip1").await;
    let second = letter_id(&elsewhere, "s", 2).await;
    elsewhere
        .request_redrive(&RedriveFilter::Id(second))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        versions(&handle, "s").await,
        [3],
        "version 2 waits for version 1"
    );
    let first = letter_id(&elsewhere, "s", 1).await;
    elsewhere
        .request_redrive(&RedriveFilter::Id(first))
        .await
        .unwrap();
    eventually(
        &handle,
        Duration::from_secs(5),
        "both redriven",
        async |h| dead_letters(h).await == 0 && count(h, "s").await == 3,
    )
    .await;
    assert_eq!(versions(&handle, "s").await, [3, 1, 2]);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_reads_the_queue_a_page_at_a_time_and_drains_more_than_a_page() {
    let (store, dir) = support::embedded();
    let options = RunnerOptions {
        redrive_page: 3,
        ..fast_retries()
    };
    let handle = runner(&store, &dir, options.clone())
        .spawn(Counter::new("paged"))
        .unwrap();
    for k in 0..10 {
        append(&store, &format!("k{k}"), vec![event(true)]).await;
    }
    eventually(&handle, Duration::from_secs(10), "ten letters", async |h| {
        dead_letters(h).await == 10
    })
    .await;
    handle.stop().await;
    // A restart counts the queue instead of loading it.
    let counter = Counter::new("paged");
    counter.healthy.store(true, Ordering::SeqCst);
    let handle = runner(&store, &dir, options).spawn(counter).unwrap();
    eventually(&handle, Duration::from_secs(5), "the count", async |h| {
        h.health().dead_letters == 10
    })
    .await;
    handle
        .read_model()
        .request_redrive(&RedriveFilter::All)
        .await
        .unwrap();
    eventually(&handle, Duration::from_secs(10), "every page", async |h| {
        dead_letters(h).await == 0
    })
    .await;
    assert_eq!(total(&handle, (0..10).map(|k| format!("k{k}"))).await, 10);
    assert_eq!(handle.health().dead_letters, 0);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_from_the_lowest_event_not_yet_applied() {
    let (store, dir) = support::embedded();
    let options = RunnerOptions {
        retry: RetrySchedule {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(60),
            max_retries: 5,
        },
        ..RunnerOptions::default()
    };
    let handle = runner(&store, &dir, options)
        .spawn(Counter::new("hole"))
        .unwrap();
    append(&store, "stuck", vec![event(true)]).await;
    for k in 0..5 {
        append(&store, &format!("k{k}"), vec![event(false)]).await;
    }
    eventually(&handle, Duration::from_secs(5), "later events", async |h| {
        total(h, (0..5).map(|k| format!("k{k}"))).await == 5
    })
    .await;
    eventually(
        &handle,
        Duration::from_secs(3),
        "the hole as lag",
        async |h| {
            let health = h.health();
            health.lag_events == 6 && health.lag_seconds > 0.0 && health.last_position == 6
        },
    )
    .await;
    assert_eq!(
        handle
            .read_model()
            .checkpoint()
            .await
            .unwrap()
            .unwrap_or_default()
            .position,
        0,
        "the checkpoint stays below the hole"
    );
    handle.stop().await;
}

/// Redrive against arbitrary interleavings of failures, redrives and new events: every event
/// is applied exactly once, and in park mode in stream order.
mod redrive_interleavings {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use nexus_runtime::StreamId;
    use nexus_runtime::projection::{DeadLetterMode, RedriveFilter, RetrySchedule, RunnerOptions};
    use proptest::prelude::*;

    use super::{Counter, append, dead_letters, event, runner, versions};
    use crate::support;

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            stream: u8,
            poison: bool,
        },
        /// Flips whether poisoned events fail.
        Toggle,
        RedriveOne(u8),
        RedriveStream(u8),
        RedriveAll,
        Pause(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..3u8, any::<bool>()).prop_map(|(stream, poison)| Op::Append { stream, poison }),
            2 => Just(Op::Toggle),
            2 => any::<u8>().prop_map(Op::RedriveOne),
            1 => (0..3u8).prop_map(Op::RedriveStream),
            1 => Just(Op::RedriveAll),
            2 => (0..20u8).prop_map(Op::Pause),
        ]
    }

    async fn run(mode: DeadLetterMode, ops: Vec<Op>) {
        let (store, dir) = support::embedded();
        let options = RunnerOptions {
            dead_letter: mode,
            retry: RetrySchedule {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
                max_retries: 1,
            },
            redrive_poll: Duration::from_millis(5),
            batch_size: 4,
            ..RunnerOptions::default()
        };
        let counter = Counter::new("interleaved");
        let healthy = Arc::clone(&counter.healthy);
        let handle = runner(&store, &dir, options).spawn(counter).unwrap();
        let read_model = handle.read_model().clone();
        let mut appended = [0u64; 3];
        for op in ops {
            match op {
                Op::Append { stream, poison } => {
                    append(&store, &format!("s{stream}"), vec![event(poison)]).await;
                    appended[usize::from(stream)] += 1;
                }
                Op::Toggle => {
                    healthy.fetch_xor(true, Ordering::SeqCst);
                }
                Op::RedriveOne(n) => {
                    let letters = read_model.dead_letters().await.unwrap();
                    if !letters.is_empty() {
                        let id = letters[usize::from(n) % letters.len()].id;
                        // It may have been redriven meanwhile.
                        let _ = read_model.request_redrive(&RedriveFilter::Id(id)).await;
                    }
                }
                Op::RedriveStream(stream) => {
                    read_model
                        .request_redrive(&RedriveFilter::Stream(StreamId::new(
                            "meter",
                            format!("s{stream}"),
                        )))
                        .await
                        .unwrap();
                }
                Op::RedriveAll => {
                    read_model
                        .request_redrive(&RedriveFilter::All)
                        .await
                        .unwrap();
                }
                Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
            }
        }
        healthy.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            read_model
                .request_redrive(&RedriveFilter::All)
                .await
                .unwrap();
            let mut done = dead_letters(&handle).await == 0;
            for (stream, n) in appended.iter().enumerate() {
                done &= versions(&handle, &format!("s{stream}")).await.len() as u64 >= *n;
            }
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "did not drain: {:?}",
                handle.health()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Anything applied twice would show up now.
        tokio::time::sleep(Duration::from_millis(30)).await;
        for (stream, n) in appended.iter().enumerate() {
            let applied = versions(&handle, &format!("s{stream}")).await;
            let mut sorted = applied.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (1..=*n).collect::<Vec<_>>(),
                "s{stream}: every event exactly once (applied {applied:?})"
            );
            if mode == DeadLetterMode::Park {
                assert_eq!(applied, sorted, "s{stream}: in stream order");
            }
        }
        handle.stop().await;
    }

    fn check(mode: DeadLetterMode, ops: Vec<Op>) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(mode, ops));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 12,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn park_mode(ops in proptest::collection::vec(op(), 1..24)) {
            check(DeadLetterMode::Park, ops);
        }

        #[test]
        fn skip_mode(ops in proptest::collection::vec(op(), 1..24)) {
            check(DeadLetterMode::Skip, ops);
        }
    }
}

/// Puts the event's `doc` under its aggregate id in `collection`, or deletes it on `"delete": true`.
struct Documents;

#[async_trait]
impl Projection for Documents {
    fn name(&self) -> &str {
        "documents"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let payload: serde_json::Value = serde_json::from_str(event.payload.get())?;
        let collection = payload["collection"].as_str().unwrap_or("items");
        let id = event.stream.aggregate_id();
        if payload["delete"] == json!(true) {
            changes.delete(collection, id);
        } else {
            changes.put(collection, id, payload["doc"].clone());
        }
        Ok(())
    }
}

fn document(collection: &str, doc: serde_json::Value) -> NewEvent {
    NewEvent::from_json(
        "Documented",
        1,
        json!({"collection": collection, "doc": doc}).to_string(),
        Metadata::default(),
    )
    .unwrap()
}

/// Documents `d00` to `d23` of `items` (`status` open or closed in turn, `n` = i % 5, `flag` on
/// odd ones, `customer.name` of three, `tag` null below 5 and `x` from 20, missing between),
/// `d24` written and deleted, and `b`, `B`, `a`, `_` in `other`: 30 events.
async fn seed_items_and_others(store: &Arc<dyn EventStore>) {
    let names = ["ada", "bob", "cy"];
    for i in 0..25 {
        let mut doc = json!({
            "status": if i % 2 == 0 { "open" } else { "closed" },
            "n": i % 5,
            "flag": i % 2 == 1,
            "customer": {"name": names[i % 3]},
        });
        if i < 5 {
            doc["tag"] = serde_json::Value::Null;
        } else if i >= 20 {
            doc["tag"] = json!("x");
        }
        append(store, &format!("d{i:02}"), vec![document("items", doc)]).await;
    }
    let deletion = NewEvent::from_json(
        "Deleted",
        1,
        json!({"collection": "items", "delete": true}).to_string(),
        Metadata::default(),
    )
    .unwrap();
    append(store, "d24", vec![deletion]).await;
    for id in ["b", "B", "a", "_"] {
        append(store, id, vec![document("other", json!({"id": id}))]).await;
    }
}

async fn list_filters_by_fields_and_pages_in_id_order(backend: Backend) {
    let Some(setup) = Setup::new(backend, RunnerOptions::default()).await else {
        return;
    };
    let (store, runner) = (&setup.store, &setup.runner);
    let handle = runner.spawn(Documents).unwrap();
    seed_items_and_others(store).await;
    eventually(
        &handle,
        Duration::from_secs(10),
        "every document",
        async |h| h.health().processed == 30,
    )
    .await;
    let read_model = handle.read_model();
    let ids = async |filters: &[(&str, serde_json::Value)], limit, offset| -> Vec<String> {
        let filters: Vec<(String, serde_json::Value)> = filters
            .iter()
            .map(|(f, v)| ((*f).to_owned(), v.clone()))
            .collect();
        read_model
            .list("items", &filters, limit, offset)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    let page = |range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("d{i:02}")).collect()
    };
    assert_eq!(ids(&[], 10, 0).await, page(0..10), "the first page");
    assert_eq!(ids(&[], 10, 10).await, page(10..20), "the second page");
    assert_eq!(
        ids(&[], 10, 20).await,
        page(20..24),
        "the last page, d24 deleted"
    );
    assert_eq!(ids(&[("status", json!("open"))], 100, 0).await.len(), 12);
    assert_eq!(
        ids(&[("n", json!(3))], 100, 0).await,
        ["d03", "d08", "d13", "d18", "d23"]
    );
    assert_eq!(
        ids(&[("status", json!("open")), ("n", json!(3))], 100, 0).await,
        ["d08", "d18"]
    );
    assert_eq!(
        ids(&[("status", json!("open")), ("n", json!(3))], 1, 1).await,
        ["d18"],
        "filters and pages together"
    );
    assert_eq!(
        ids(&[("customer.name", json!("ada"))], 100, 0).await.len(),
        8
    );
    assert_eq!(ids(&[("flag", json!(true))], 100, 0).await.len(), 12);
    assert_eq!(
        ids(&[("tag", serde_json::Value::Null)], 100, 0).await.len(),
        20,
        "null matches a JSON null or a missing field"
    );
    assert_eq!(ids(&[("tag", json!("x"))], 100, 0).await, page(20..24));
    assert!(
        ids(&[("n", json!("3"))], 100, 0).await.is_empty(),
        "a string does not equal a number"
    );
    assert!(
        ids(&[("customer.name", json!("nobody"))], 100, 0)
            .await
            .is_empty()
    );
    let other: Vec<String> = read_model
        .list("other", &[], 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(other, ["B", "_", "a", "b"], "ids in byte order");
    for field in ["bad field!", "a..b", "", "x' OR '1'='1", "n)--"] {
        let err = read_model
            .list("items", &[(field.into(), json!(1))], 10, 0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReadModelError::InvalidField(ref f) if f == field),
            "{field}: {err}"
        );
    }
    assert_eq!(
        read_model.get("items", "d07").await.unwrap().unwrap()["n"],
        2
    );
    assert_eq!(read_model.get("items", "d24").await.unwrap(), None);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_projection_does_not_stop_or_slow_the_others() {
    let (store, dir) = support::embedded();
    let runner = runner(&store, &dir, fast_retries());
    let mut bad = Counter::new("panicky");
    bad.panic_on_poison = true;
    let good = runner.spawn(Counter::new("steady")).unwrap();
    let bad = runner.spawn(bad).unwrap();
    for i in 0..50 {
        append(&store, &format!("k{}", i % 5), vec![event(i % 7 == 0)]).await;
    }
    // `steady` also fails on poison (it is never healthy), but does not panic; count the rest.
    eventually(
        &good,
        Duration::from_secs(10),
        "the steady projection",
        async |h| h.health().processed == 50,
    )
    .await;
    eventually(
        &bad,
        Duration::from_secs(10),
        "the panicking projection",
        async |h| h.health().processed == 50,
    )
    .await;
    let letters = bad.read_model().dead_letters().await.unwrap();
    assert_eq!(letters.len(), 8);
    assert!(
        letters[0].error.contains("panicked"),
        "{}",
        letters[0].error
    );
    assert!(
        bad.health().is_healthy(),
        "a panic in a handler is a failed event, not a dead worker"
    );
    good.stop().await;
    bad.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_projection_does_not_hold_back_a_fast_one() {
    let (store, dir) = support::embedded();
    let runner = runner(&store, &dir, RunnerOptions::default());
    let mut slow = Counter::new("slow");
    slow.delay = Duration::from_millis(20);
    let slow = runner.spawn(slow).unwrap();
    let fast = runner.spawn(Counter::new("fast")).unwrap();
    let events = (0..100).map(|_| event(false)).collect();
    append(&store, "s", events).await;
    eventually(
        &fast,
        Duration::from_secs(5),
        "the fast projection",
        async |h| count(h, "s").await == 100,
    )
    .await;
    assert!(
        count(&slow, "s").await < 100,
        "the slow one is still behind: {}",
        count(&slow, "s").await
    );
    assert!(slow.health().lag_events > 0 || slow.health().processed < 100);
    slow.stop().await;
    fast.stop().await;
}

/// Takes `n` deliveries from `consumer` and returns their log positions.
async fn positions(consumer: &mut Box<dyn BusConsumer>, n: usize) -> Vec<u64> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the consumer reads");
        seen.push(delivery.event.position);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_consumers_share_the_log_tail_and_each_see_every_event_once_in_order() {
    let (store, _dir) = support::embedded();
    let bus = InProcessBus::new(Arc::clone(&store));
    // Two consumers at the head, reading while the log grows past what the shared tail keeps.
    let mut head = Vec::new();
    for name in ["a", "b"] {
        let mut consumer = bus.consumer(name, LogPosition::START).await.unwrap();
        head.push(tokio::spawn(async move {
            positions(&mut consumer, 6_000).await
        }));
    }
    for i in 0..60 {
        let events = (0..100).map(|_| event(false)).collect();
        append(&store, &format!("k{}", i % 7), events).await;
    }
    let all: Vec<u64> = (1..=6_000).collect();
    for task in head {
        assert_eq!(task.await.unwrap(), all);
    }
    // A consumer from the start is behind the shared tail and reads the store until it joins;
    // one from the middle starts inside it.
    let mut behind = bus.consumer("c", LogPosition::START).await.unwrap();
    assert_eq!(positions(&mut behind, 6_000).await, all);
    let middle = LogPosition {
        commit: 5_500,
        position: 5_500,
    };
    let mut inside = bus.consumer("d", middle).await.unwrap();
    assert_eq!(
        positions(&mut inside, 500).await,
        (5_501..=6_000).collect::<Vec<_>>()
    );
    // Both are at the head now, and see new commits like the others.
    append(&store, "k0", vec![event(false)]).await;
    assert_eq!(positions(&mut behind, 1).await, vec![6_001]);
    assert_eq!(positions(&mut inside, 1).await, vec![6_001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_from_position_zero_gives_the_same_read_model() {
    let (store, dir) = support::embedded();
    let runner = runner(&store, &dir, RunnerOptions::default());
    for i in 0..60 {
        append(&store, &format!("k{}", i % 6), vec![event(false)]).await;
    }
    let handle = runner.spawn(Counter::new("rebuild")).unwrap();
    eventually(
        &handle,
        Duration::from_secs(5),
        "the first build",
        async |h| h.health().processed == 60,
    )
    .await;
    let before = handle
        .read_model()
        .list("counts", &[], 100, 0)
        .await
        .unwrap();
    let path = handle
        .read_model()
        .path()
        .expect("a SQLite read model")
        .to_path_buf();
    handle.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let rebuilt = runner.spawn(Counter::new("rebuild")).unwrap();
    eventually(&rebuilt, Duration::from_secs(5), "the rebuild", async |h| {
        h.health().processed == 60
    })
    .await;
    let after = rebuilt
        .read_model()
        .list("counts", &[], 100, 0)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(before.len(), 6);
    let filtered = rebuilt
        .read_model()
        .list("counts", &[("count".into(), json!(10))], 100, 0)
        .await
        .unwrap();
    assert_eq!(filtered.len(), 6);
    let err = rebuilt
        .read_model()
        .list("counts", &[("bad field!".into(), json!(1))], 10, 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid filter field"), "{err}");
    rebuilt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_status_position_and_retries() {
    let (store, dir) = support::embedded();
    let options = RunnerOptions {
        retry: RetrySchedule {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(60),
            max_retries: 5,
        },
        ..RunnerOptions::default()
    };
    let runner = runner(&store, &dir, options);
    let handle = runner.spawn(Counter::new("health")).unwrap();
    append(&store, "h", vec![event(false), event(true)]).await;
    eventually(
        &handle,
        Duration::from_secs(5),
        "a retrying key",
        async |h| h.health().retrying_keys == 1,
    )
    .await;
    let health = runner.health().get("health").expect("registered");
    assert_eq!(health.status, ProjectionStatus::Retrying);
    assert!(health.last_position >= 1);
    assert!(
        health
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot digest")
    );
    handle.stop().await;
    assert_eq!(
        runner.health().get("health").unwrap().status,
        ProjectionStatus::Stopped
    );
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoint_reports_each_projection() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let (store, dir) = support::embedded();
    let runner = runner(&store, &dir, RunnerOptions::default());
    let handle = runner.spawn(Counter::new("served")).unwrap();
    append(&store, "x", vec![event(false)]).await;
    eventually(&handle, Duration::from_secs(5), "one event", async |h| {
        h.health().processed == 1
    })
    .await;
    let app = nexus_runtime::http::health_router(runner.health());
    let get = |uri: &str| {
        axum::http::Request::get(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let response = app.clone().oneshot(get("/health")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["projections"][0]["name"], "served");
    assert_eq!(body["projections"][0]["status"], "running");
    let response = app
        .clone()
        .oneshot(get("/health/projections/served"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .clone()
        .oneshot(get("/health/projections/nope"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    handle.stop().await;
    let response = app.oneshot(get("/health")).await.unwrap();
    assert_eq!(response.status(), 503, "a stopped projection is unhealthy");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_commit_applies_nothing_twice() {
    let Some(setup) = Setup::new(
        Backend::Postgres,
        RunnerOptions {
            batch_size: 4,
            ..RunnerOptions::default()
        },
    )
    .await
    else {
        return;
    };
    let db = setup
        .db
        .as_ref()
        .expect("a PostgreSQL setup has its database");
    let handle = setup.runner.spawn(Counter::new("killed")).unwrap();
    let writer = {
        let store = Arc::clone(&setup.store);
        tokio::spawn(async move {
            for i in 0..600 {
                append(&store, &format!("k{}", i % 4), vec![event(false)]).await;
                if i % 4 == 3 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    // Terminate read-model connections inside a write transaction (they hold a transaction
    // id): documents, versions and checkpoint are half-sent or waiting for COMMIT.
    let admin = db.client().await;
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while killed < 3 && Instant::now() < deadline {
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND backend_xid IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        let now: i64 = row.get(0);
        if now > 0 {
            killed += now;
            // Let the runner restart (its backoff doubles with each failure) before the next one.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(killed > 0, "no connection was caught inside a commit");
    writer.await.unwrap();
    let ids = ["k0", "k1", "k2", "k3"];
    eventually(
        &handle,
        Duration::from_secs(30),
        "all 600 events",
        async |h| total(h, ids).await >= 600,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in ids {
        assert_eq!(
            versions(&handle, id).await,
            (1..=150).collect::<Vec<_>>(),
            "stream {id}: each event once, in order, after {killed} killed commits"
        );
    }
    handle.stop().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_share_the_postgres_tables_but_not_their_rows() {
    let Some(setup) = Setup::new(Backend::Postgres, fast_retries()).await else {
        return;
    };
    let one = setup.runner.spawn(Counter::new("one")).unwrap();
    let two = setup.runner.spawn(Counter::new("two")).unwrap();
    append(&setup.store, "x", vec![event(false), event(true)]).await;
    for handle in [&one, &two] {
        eventually(handle, Duration::from_secs(10), "both events", async |h| {
            h.health().processed == 2
        })
        .await;
    }
    assert_eq!(count(&one, "x").await, 1);
    assert_eq!(dead_letters(&one).await, 1);
    one.stop().await;
    // Rebuild `one` from scratch: its rows go, `two` keeps its own.
    let client = setup.db.as_ref().unwrap().client().await;
    for table in [
        "documents",
        "stream_versions",
        "checkpoints",
        "dead_letters",
    ] {
        client
            .execute(
                &format!("DELETE FROM nexus_read_models.{table} WHERE projection = $1"),
                &[&"one"],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        setup.reopen("one").await.get("counts", "x").await.unwrap(),
        None
    );
    assert_eq!(count(&two, "x").await, 1);
    assert_eq!(dead_letters(&two).await, 1);
    assert_eq!(
        two.read_model()
            .checkpoint()
            .await
            .unwrap()
            .map(|c| c.position),
        Some(2)
    );
    let rebuilt = setup.runner.spawn(Counter::new("one")).unwrap();
    eventually(
        &rebuilt,
        Duration::from_secs(10),
        "the rebuild",
        async |h| count(h, "x").await == 1 && dead_letters(h).await == 1,
    )
    .await;
    rebuilt.stop().await;
    two.stop().await;
    let err = ReadModels::postgres(&setup.db.as_ref().unwrap().url, "Bad-Schema")
        .await
        .unwrap_err();
    assert!(matches!(err, ReadModelError::Config(_)), "{err}");
}
