//! The JetStream bus end to end: relay, de-duplication, fan-out, gap filling from the store,
//! and a NATS server restart in the middle of a stream.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nexus_runtime::bus::nats::{JetStreamBus, NatsOptions};
use nexus_runtime::bus::relay::Relay;
use nexus_runtime::checkpoint::EmbeddedCheckpoints;
use nexus_runtime::projection::{ProjectionRunner, RunnerOptions};
use nexus_runtime::{EventStore, LogPosition, StreamId};

use crate::projection::{Counter, append, count, event, eventually, total};
use crate::support;

fn unique_options() -> NatsOptions {
    let id = uuid::Uuid::now_v7().simple().to_string();
    NatsOptions {
        stream: format!("NEXUS_TEST_{id}"),
        subject_prefix: format!("nexus_test_{id}"),
        ..NatsOptions::default()
    }
}

async fn delete_stream(url: &str, name: &str) {
    if let Ok(client) = async_nats::connect(url).await {
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    }
}

fn relay(
    store: &Arc<dyn EventStore>,
    bus: &JetStreamBus,
    dir: &Path,
    file: &str,
) -> nexus_runtime::bus::relay::RelayHandle {
    let checkpoints = EmbeddedCheckpoints::open(dir.join(file)).unwrap();
    Relay::new(
        "relay",
        Arc::clone(store),
        bus.clone(),
        Arc::new(checkpoints),
    )
    .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_every_projection_once_in_order_per_key() {
    let Some(url) = support::service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let options = unique_options();
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    let relay = relay(&store, &bus, dir.path(), "relay.db");
    let runner = ProjectionRunner::new(
        Arc::clone(&store),
        Arc::new(bus.clone()),
        dir.path().join("rm"),
    );
    let one = runner.spawn(Counter::new("one")).unwrap();
    let two = runner.spawn(Counter::new("two")).unwrap();
    let mut writers = Vec::new();
    for w in 0..3 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                append(
                    &store,
                    &format!("k{}", (i + w) % 6),
                    vec![event(false), event(false)],
                )
                .await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for handle in [&one, &two] {
        eventually(
            handle,
            Duration::from_secs(20),
            "all 300 events",
            async |h| total(h, (0..6).map(|k| format!("k{k}"))).await == 300,
        )
        .await;
        for k in 0..6 {
            let doc = handle
                .read_model()
                .get("counts", &format!("k{k}"))
                .await
                .unwrap()
                .unwrap();
            let versions: Vec<u64> = doc["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let expected: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(versions, expected, "key k{k} in order, once each");
        }
    }
    assert_eq!(bus.stored_messages().await.unwrap(), 300);
    relay.stop().await;
    // A relay that lost its checkpoint publishes everything again: JetStream drops the duplicates.
    let again = self::relay(&store, &bus, dir.path(), "fresh-relay.db");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bus.stored_messages().await.unwrap(),
        300,
        "duplicates were dropped by message id"
    );
    again.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(total(&one, (0..6).map(|k| format!("k{k}"))).await, 300);
    one.stop().await;
    two.stop().await;
    delete_stream(&url, &options.stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_bus_lost_are_read_from_the_store() {
    let Some(url) = support::service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let options = unique_options();
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    append(&store, "gappy", (0..10).map(|_| event(false)).collect()).await;
    let all = store
        .read_stream(&StreamId::new("meter", "gappy"), 1, None)
        .await
        .unwrap();
    // Only versions 1, 2 and 10 ever reach the bus.
    bus.publish(&[all[0].clone(), all[1].clone(), all[9].clone()])
        .await
        .unwrap();
    let runner = ProjectionRunner::new(
        Arc::clone(&store),
        Arc::new(bus.clone()),
        dir.path().join("rm"),
    )
    .with_options(RunnerOptions::default());
    let handle = runner.spawn(Counter::new("gaps")).unwrap();
    eventually(&handle, Duration::from_secs(10), "all ten", async |h| {
        count(h, "gappy").await == 10
    })
    .await;
    let doc = handle
        .read_model()
        .get("counts", "gappy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        doc["versions"],
        serde_json::json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    );
    handle.stop().await;
    delete_stream(&url, &options.stream).await;
}

/// A private NATS server, so restarting it disturbs no other test.
struct PrivateNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    fn binary() -> Option<String> {
        let candidates = [
            std::env::var("NEXUS_TEST_NATS_SERVER").ok(),
            Some("/usr/sbin/nats-server".to_owned()),
            Some("/usr/bin/nats-server".to_owned()),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| Path::new(p).exists())
    }

    fn start() -> Option<Self> {
        if Self::binary().is_none() {
            support::skip("no nats-server binary (set NEXUS_TEST_NATS_SERVER)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.spawn();
        Some(nats)
    }

    fn spawn(&mut self) {
        let child = Command::new(Self::binary().expect("checked in start"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server for `pause` (SIGSTOP, then SIGCONT): connections stay open, nothing
    /// is sent.
    fn pause(&self, pause: Duration) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = |name: &str| {
            let status = Command::new("kill").args([name, &pid]).status().unwrap();
            assert!(status.success(), "kill {name} {pid}");
        };
        signal("-STOP");
        std::thread::sleep(pause);
        signal("-CONT");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let Some(mut nats) = PrivateNats::start() else {
        return;
    };
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&nats.url(), NatsOptions::default())
        .await
        .unwrap();
    let relay = relay(&store, &bus, dir.path(), "relay.db");
    let runner = ProjectionRunner::new(
        Arc::clone(&store),
        Arc::new(bus.clone()),
        dir.path().join("rm"),
    );
    let handle = runner.spawn(Counter::new("survivor")).unwrap();
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..200 {
                append(&store, &format!("k{}", i % 4), vec![event(false)]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    eventually(
        &handle,
        Duration::from_secs(20),
        "progress before the restart",
        async |h| h.health().processed >= 40,
    )
    .await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.spawn();
    writer.await.unwrap();
    eventually(
        &handle,
        Duration::from_secs(60),
        "all 200 events after the restart",
        async |h| total(h, (0..4).map(|k| format!("k{k}"))).await >= 200,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in 0..4 {
        let doc = handle
            .read_model()
            .get("counts", &format!("k{k}"))
            .await
            .unwrap()
            .unwrap();
        let versions: Vec<u64> = doc["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=50).collect::<Vec<_>>(),
            "key k{k}: nothing lost, nothing twice, in order"
        );
    }
    assert!(
        handle
            .read_model()
            .checkpoint()
            .await
            .unwrap()
            .unwrap_or(LogPosition::START)
            .position
            > 0
    );
    handle.stop().await;
    relay.stop().await;
}

/// Opens a runner on `bus` whose read models live under `dir/rm`.
fn nats_runner(
    store: &Arc<dyn EventStore>,
    bus: &JetStreamBus,
    dir: &Path,
    options: RunnerOptions,
) -> ProjectionRunner {
    ProjectionRunner::new(Arc::clone(store), Arc::new(bus.clone()), dir.join("rm"))
        .with_options(options)
}

/// The versions of stream `id` the projection applied, in the order it applied them.
async fn applied(handle: &nexus_runtime::projection::ProjectionHandle, id: &str) -> Vec<u64> {
    crate::projection::versions(handle, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_at_a_crash_are_applied_within_seconds_not_after_the_ack_wait() {
    let Some(url) = support::service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let options = unique_options();
    assert_eq!(options.ack_wait, Duration::from_secs(600));
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
    for key in &keys {
        append(&store, key, vec![event(false)]).await;
    }
    bus.publish(&store.read_all(LogPosition::START, 100).await.unwrap())
        .await
        .unwrap();
    // A slow handler: the consumer pulls the messages at once, so most are delivered to this
    // runner and not acknowledged when it dies.
    let mut slow = Counter::new("inflight");
    slow.delay = Duration::from_millis(100);
    let one_at_a_time = RunnerOptions {
        batch_size: 1,
        ..RunnerOptions::default()
    };
    let first = nats_runner(&store, &bus, dir.path(), one_at_a_time.clone())
        .spawn(slow)
        .unwrap();
    eventually(
        &first,
        Duration::from_secs(10),
        "a few applied",
        async |h| h.health().processed >= 2,
    )
    .await;
    first.abort();
    // Traffic goes on after the restart, on other streams: it must not hide the hole.
    append(&store, "after", vec![event(false)]).await;
    let head = store.head().await.unwrap();
    bus.publish(&store.read_all(LogPosition::START, 100).await.unwrap()[30..])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut steady = Counter::new("inflight");
    steady.delay = Duration::from_millis(50);
    let second = nats_runner(&store, &bus, dir.path(), one_at_a_time)
        .spawn(steady)
        .unwrap();
    eventually(
        &second,
        Duration::from_secs(3),
        "lag while the hole is being filled",
        async |h| h.health().lag_events > 0 && h.health().lag_seconds > 0.0,
    )
    .await;
    eventually(
        &second,
        Duration::from_secs(5),
        "every event on the same durable consumer within seconds",
        async |h| total(h, keys.iter().chain(["after".to_owned()].iter())).await == 31,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(6));
    for key in &keys {
        assert_eq!(applied(&second, key).await, [1], "{key}: once");
    }
    eventually(
        &second,
        Duration::from_secs(5),
        "no lag once whole",
        async |h| {
            h.health().lag_events == 0
                && h.read_model()
                    .checkpoint()
                    .await
                    .unwrap()
                    .unwrap_or_default()
                    >= head
        },
    )
    .await;
    second.stop().await;
    delete_stream(&url, &options.stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_a_read_model_lost_are_applied_again_from_the_store() {
    let Some(url) = support::service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let options = unique_options();
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    let relay = relay(&store, &bus, dir.path(), "relay.db");
    let handle = nats_runner(&store, &bus, dir.path(), RunnerOptions::default())
        .spawn(Counter::new("lossy"))
        .unwrap();
    append(&store, "l", (0..5).map(|_| event(false)).collect()).await;
    eventually(&handle, Duration::from_secs(10), "five", async |h| {
        count(h, "l").await == 5
    })
    .await;
    handle.stop().await;
    // The file as a power cut could leave it: the commits after this copy never reached disk,
    // though JetStream was told they were done.
    let file = ProjectionRunner::read_model_path(&dir.path().join("rm"), "lossy");
    let saved = dir.path().join("saved.db");
    std::fs::copy(&file, &saved).unwrap();
    let handle = nats_runner(&store, &bus, dir.path(), RunnerOptions::default())
        .spawn(Counter::new("lossy"))
        .unwrap();
    append(&store, "l", (0..5).map(|_| event(false)).collect()).await;
    eventually(&handle, Duration::from_secs(10), "ten", async |h| {
        count(h, "l").await == 10
    })
    .await;
    handle.stop().await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    std::fs::copy(&saved, &file).unwrap();
    let handle = nats_runner(&store, &bus, dir.path(), RunnerOptions::default())
        .spawn(Counter::new("lossy"))
        .unwrap();
    eventually(
        &handle,
        Duration::from_secs(5),
        "the lost commits applied again",
        async |h| count(h, "l").await == 10,
    )
    .await;
    assert_eq!(applied(&handle, "l").await, (1..=10).collect::<Vec<_>>());
    handle.stop().await;
    relay.stop().await;
    delete_stream(&url, &options.stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_store_lacks_fails_the_projection_by_name_and_stop_still_returns() {
    let Some(url) = support::service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let options = unique_options();
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    append(&store, "stray", vec![event(false)]).await;
    append(&store, "fine", vec![event(false)]).await;
    let events = store.read_all(LogPosition::START, 10).await.unwrap();
    // A stray publish: version 5 of a stream whose store ends at version 1.
    let mut stray = events[0].clone();
    stray.version = 5;
    stray.id = nexus_runtime::EventId::new();
    bus.publish(&[events[0].clone(), stray]).await.unwrap();
    let handle = nats_runner(
        &store,
        &bus,
        dir.path(),
        RunnerOptions {
            gap_wait: Duration::from_millis(300),
            ..RunnerOptions::default()
        },
    )
    .spawn(Counter::new("stray"))
    .unwrap();
    bus.publish(&events[1..]).await.unwrap();
    eventually(&handle, Duration::from_secs(10), "failing", async |h| {
        h.health().status == nexus_runtime::projection::ProjectionStatus::Failing
    })
    .await;
    let error = handle.health().last_error.unwrap_or_default();
    assert!(
        error.contains("meter-stray") && error.contains("version 5") && error.contains("version 1"),
        "the health names the stream and versions: {error}"
    );
    assert_eq!(count(&handle, "stray").await, 1);
    assert_eq!(count(&handle, "fine").await, 1, "other keys go on");
    assert!(handle.health().lag_events > 0, "the waiting event is lag");
    tokio::time::timeout(Duration::from_secs(3), handle.stop())
        .await
        .expect("stop returns while a key waits for a gap");
    delete_stream(&url, &options.stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_republishes_from_the_store_when_the_stream_lost_what_it_published() {
    let Some(url) = support::service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let options = unique_options();
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    let first = relay(&store, &bus, dir.path(), "relay.db");
    let handle = nats_runner(&store, &bus, dir.path(), RunnerOptions::default())
        .spawn(Counter::new("wiped"))
        .unwrap();
    append(&store, "w", (0..10).map(|_| event(false)).collect()).await;
    eventually(&handle, Duration::from_secs(10), "ten", async |h| {
        count(h, "w").await == 10
    })
    .await;
    first.stop().await;
    // The stream is wiped (deleted and created again empty), as a server that lost its data.
    delete_stream(&url, &options.stream).await;
    let fresh = JetStreamBus::connect(&url, options.clone()).await.unwrap();
    assert_eq!(fresh.stored_messages().await.unwrap(), 0);
    let second = relay(&store, &fresh, dir.path(), "relay.db");
    append(&store, "w", (0..5).map(|_| event(false)).collect()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fresh.stored_messages().await.unwrap() < 15 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream holds {} of 15 events",
            fresh.stored_messages().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restarting again republishes nothing: the stream holds what the checkpoint claims.
    second.stop().await;
    let third = relay(&store, &fresh, dir.path(), "relay.db");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fresh.stored_messages().await.unwrap(), 15);
    eventually(&handle, Duration::from_secs(15), "fifteen", async |h| {
        count(h, "w").await == 15
    })
    .await;
    assert_eq!(
        applied(&handle, "w").await,
        (1..=15).collect::<Vec<_>>(),
        "each once"
    );
    // A consumer that starts now on the new stream sees every event once.
    let late = nats_runner(&store, &fresh, dir.path(), RunnerOptions::default())
        .spawn(Counter::new("late"))
        .unwrap();
    eventually(&late, Duration::from_secs(10), "fifteen", async |h| {
        count(h, "w").await == 15
    })
    .await;
    assert_eq!(applied(&late, "w").await, (1..=15).collect::<Vec<_>>());
    late.stop().await;
    handle.stop().await;
    third.stop().await;
    delete_stream(&url, &options.stream).await;
}

/// A projection slower than the bus falls behind by five times `max_ack_pending`, and the
/// server goes silent for a while (paused, as an overloaded or stalled server is): the pull
/// stream misses its idle heartbeats on a connection that never dropped. The run reads on
/// instead of failing and restarting from the store, and applies every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_far_behind_reads_on_through_missed_heartbeats_without_a_restart() {
    let Some(nats) = PrivateNats::start() else {
        return;
    };
    let options = NatsOptions {
        max_ack_pending: 20,
        pull_batch: 10,
        pull_expires: Duration::from_secs(2),
        idle_heartbeat: Duration::from_millis(200),
        ..NatsOptions::default()
    };
    let (store, dir) = support::embedded();
    let bus = JetStreamBus::connect(&nats.url(), options).await.unwrap();
    let mut slow = Counter::new("laggard");
    slow.delay = Duration::from_millis(20);
    let handle = nats_runner(
        &store,
        &bus,
        dir.path(),
        RunnerOptions {
            batch_size: 10,
            ..RunnerOptions::default()
        },
    )
    .spawn(slow)
    .unwrap();
    append(&store, "warm", vec![event(false)]).await;
    bus.publish(&store.read_all(LogPosition::START, 10).await.unwrap())
        .await
        .unwrap();
    eventually(
        &handle,
        Duration::from_secs(10),
        "the first event",
        async |h| count(h, "warm").await == 1,
    )
    .await;
    let after = store.head().await.unwrap();
    for k in 0..5 {
        append(
            &store,
            &format!("k{k}"),
            (0..20).map(|_| event(false)).collect(),
        )
        .await;
    }
    bus.publish(&store.read_all(after, 500).await.unwrap())
        .await
        .unwrap();
    // Silent for five heartbeats while the projection is behind.
    nats.pause(Duration::from_secs(1));
    eventually(
        &handle,
        Duration::from_secs(30),
        "all 100 events",
        async |h| total(h, (0..5).map(|k| format!("k{k}"))).await == 100,
    )
    .await;
    for k in 0..5 {
        assert_eq!(
            applied(&handle, &format!("k{k}")).await,
            (1..=20).collect::<Vec<_>>(),
            "k{k}: once each, in order"
        );
    }
    let health = handle.health();
    assert_eq!(
        health.last_error, None,
        "the run went on without failing: {health:?}"
    );
    handle.stop().await;
}
