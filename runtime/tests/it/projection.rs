//! Projections: exactly-once application across crashes, retries with backoff, dead letters,
//! redrive, per-key order, isolation between projections, and rebuilds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::projection::{
    Changes, DeadLetterMode, DeadLetterStatus, Projection, ProjectionError, ProjectionHandle,
    ProjectionRunner, ProjectionStatus, RedriveFilter, RetrySchedule, RunnerOptions,
};
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
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
    check: impl Fn(&ProjectionHandle) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check(handle) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            handle.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn count(handle: &ProjectionHandle, id: &str) -> u64 {
    handle
        .read_model()
        .get("counts", id)
        .unwrap()
        .map_or(0, |d| d["count"].as_u64().unwrap())
}

fn versions(handle: &ProjectionHandle, id: &str) -> Vec<u64> {
    handle
        .read_model()
        .get("counts", id)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_every_event_once_across_a_crash() {
    let (store, dir) = support::embedded();
    let runner = runner(
        &store,
        &dir,
        RunnerOptions {
            batch_size: 16,
            ..RunnerOptions::default()
        },
    );
    let writer = {
        let store = Arc::clone(&store);
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
    eventually(&first, Duration::from_secs(10), "some progress", |h| {
        count(h, "a") > 20
    })
    .await;
    // Crash mid-stream: whatever was not committed is lost with the task.
    first.abort();
    writer.await.unwrap();
    let second = runner.spawn(Counter::new("counts")).unwrap();
    eventually(&second, Duration::from_secs(20), "all 800 events", |h| {
        ["a", "b", "c", "d"]
            .iter()
            .map(|id| count(h, id))
            .sum::<u64>()
            >= 800
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in ["a", "b", "c", "d"] {
        assert_eq!(
            count(&second, id),
            200,
            "stream {id}: every event applied exactly once"
        );
        assert_eq!(
            versions(&second, id),
            (1..=200).collect::<Vec<_>>(),
            "stream {id}: in order"
        );
    }
    assert!(second.read_model().checkpoint().unwrap().is_some());
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_after_exactly_five_retries_with_backoff() {
    let (store, dir) = support::embedded();
    let options = fast_retries();
    let schedule = options.retry;
    let runner = runner(&store, &dir, options);
    let counter = Counter::new("poison");
    let attempts = Arc::clone(&counter.attempts);
    let handle = runner.spawn(counter).unwrap();
    append(
        &store,
        "sick",
        vec![event(false), event(true), event(false)],
    )
    .await;
    append(&store, "well", vec![event(false)]).await;
    eventually(&handle, Duration::from_secs(10), "the dead letter", |h| {
        h.read_model().dead_letters().unwrap().len() == 1 && count(h, "sick") == 2
    })
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
        versions(&handle, "sick"),
        [1, 3],
        "the key continues past its dead letter, in order"
    );
    let letter = &handle.read_model().dead_letters().unwrap()[0];
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
    assert_eq!(handle.health().dead_letters, 1);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_letter_is_applied_once_the_handler_is_fixed() {
    let (store, dir) = support::embedded();
    let runner = runner(&store, &dir, fast_retries());
    let counter = Counter::new("redrive");
    let healthy = Arc::clone(&counter.healthy);
    let handle = runner.spawn(counter).unwrap();
    append(&store, "r", vec![event(true)]).await;
    eventually(&handle, Duration::from_secs(10), "the dead letter", |h| {
        h.read_model().dead_letters().unwrap().len() == 1
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    let id = handle.read_model().dead_letters().unwrap()[0].id;
    assert_eq!(
        handle
            .read_model()
            .request_redrive(&RedriveFilter::Id(id))
            .unwrap(),
        1
    );
    eventually(&handle, Duration::from_secs(5), "the redrive", |h| {
        count(h, "r") == 1
    })
    .await;
    eventually(&handle, Duration::from_secs(5), "an empty queue", |h| {
        h.read_model().dead_letters().unwrap().is_empty()
    })
    .await;
    let err = handle
        .read_model()
        .request_redrive(&RedriveFilter::Id(id))
        .unwrap_err();
    assert_eq!(err.to_string(), format!("no dead letter with id {id}"));
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_mode_holds_a_key_in_order_until_redriven() {
    let (store, dir) = support::embedded();
    let runner = runner(
        &store,
        &dir,
        RunnerOptions {
            dead_letter: DeadLetterMode::Park,
            ..fast_retries()
        },
    );
    let counter = Counter::new("park");
    let healthy = Arc::clone(&counter.healthy);
    let handle = runner.spawn(counter).unwrap();
    append(
        &store,
        "p",
        vec![event(false), event(true), event(false), event(false)],
    )
    .await;
    append(&store, "q", vec![event(false)]).await;
    eventually(&handle, Duration::from_secs(10), "parking", |h| {
        h.read_model().dead_letters().unwrap().len() == 3
    })
    .await;
    assert_eq!(versions(&handle, "p"), [1]);
    assert_eq!(count(&handle, "q"), 1, "other keys are not parked");
    let statuses: Vec<_> = handle
        .read_model()
        .dead_letters()
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
        .unwrap();
    eventually(&handle, Duration::from_secs(5), "the redriven key", |h| {
        count(h, "p") == 4
    })
    .await;
    assert_eq!(versions(&handle, "p"), [1, 2, 3, 4], "redriven in order");
    append(&store, "p", vec![event(false)]).await;
    eventually(
        &handle,
        Duration::from_secs(5),
        "the key moving again",
        |h| count(h, "p") == 5,
    )
    .await;
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
        |h| h.health().processed == 50,
    )
    .await;
    eventually(
        &bad,
        Duration::from_secs(10),
        "the panicking projection",
        |h| h.health().processed == 50,
    )
    .await;
    let letters = bad.read_model().dead_letters().unwrap();
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
    eventually(&fast, Duration::from_secs(5), "the fast projection", |h| {
        count(h, "s") == 100
    })
    .await;
    assert!(
        count(&slow, "s") < 100,
        "the slow one is still behind: {}",
        count(&slow, "s")
    );
    assert!(slow.health().lag_events > 0 || slow.health().processed < 100);
    slow.stop().await;
    fast.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_from_position_zero_gives_the_same_read_model() {
    let (store, dir) = support::embedded();
    let runner = runner(&store, &dir, RunnerOptions::default());
    for i in 0..60 {
        append(&store, &format!("k{}", i % 6), vec![event(false)]).await;
    }
    let handle = runner.spawn(Counter::new("rebuild")).unwrap();
    eventually(&handle, Duration::from_secs(5), "the first build", |h| {
        h.health().processed == 60
    })
    .await;
    let before = handle.read_model().list("counts", &[], 100, 0).unwrap();
    let path = handle.read_model().path().to_path_buf();
    handle.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let rebuilt = runner.spawn(Counter::new("rebuild")).unwrap();
    eventually(&rebuilt, Duration::from_secs(5), "the rebuild", |h| {
        h.health().processed == 60
    })
    .await;
    let after = rebuilt.read_model().list("counts", &[], 100, 0).unwrap();
    assert_eq!(before, after);
    assert_eq!(before.len(), 6);
    let filtered = rebuilt
        .read_model()
        .list("counts", &[("count".into(), json!(10))], 100, 0)
        .unwrap();
    assert_eq!(filtered.len(), 6);
    let err = rebuilt
        .read_model()
        .list("counts", &[("bad field!".into(), json!(1))], 10, 0)
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
    eventually(&handle, Duration::from_secs(5), "a retrying key", |h| {
        h.health().retrying_keys == 1
    })
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
    eventually(&handle, Duration::from_secs(5), "one event", |h| {
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
