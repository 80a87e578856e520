//! Snapshots: load from snapshot + tail equals a full replay, versioning, and the manager's triggers.

use std::sync::Arc;
use std::time::Duration;

use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::{
    Aggregate, CommandHandler, EventStore, Metadata, Repository, RetryPolicy, Snapshot,
    SnapshotManager, SnapshotPolicy, SnapshotStore, StreamId,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::domain::{Ledger, LedgerCommand, LedgerEvent};
use crate::support;

fn snapshots_beside(dir: &tempfile::TempDir) -> Arc<dyn SnapshotStore> {
    let path = EmbeddedSnapshotStore::path_beside(&dir.path().join("events.db"));
    Arc::new(EmbeddedSnapshotStore::open(path).unwrap())
}

fn command() -> impl Strategy<Value = LedgerCommand> {
    prop_oneof![
        (1i64..100).prop_map(LedgerCommand::Deposit),
        (1i64..150).prop_map(LedgerCommand::Withdraw),
        "[a-z]{0,6}".prop_map(LedgerCommand::Note),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Snapshots taken at random points, loaded with their tails, give exactly the state of a
    /// full replay (a snapshot that applied events twice, or skipped one, fails this).
    #[test]
    fn snapshot_plus_tail_equals_full_replay(
        commands in proptest::collection::vec(command(), 1..40),
        snapshot_points in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let (store, dir) = support::embedded();
            let snapshots = snapshots_beside(&dir);
            let repository = Repository::<Ledger>::new(Arc::clone(&store)).with_snapshots(Arc::clone(&snapshots));
            let handler = CommandHandler::new(repository.clone()).with_retry(RetryPolicy::never());
            for (command, snap) in commands.iter().zip(&snapshot_points) {
                let _ = handler.execute("p", command, Metadata::default()).await;
                if *snap {
                    repository.snapshot("p").await.unwrap();
                }
                let via_snapshot = repository.load("p").await.unwrap();
                let replayed = repository.load_from_events("p").await.unwrap();
                assert_eq!(&via_snapshot.state, &replayed.state);
                assert_eq!(via_snapshot.version, replayed.version);
                if *snap && replayed.version > 0 {
                    assert_eq!(via_snapshot.snapshot_version, Some(replayed.version));
                    assert_eq!(via_snapshot.events_applied, 0);
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_store_is_a_separate_file() {
    let (store, dir) = support::embedded();
    let snapshots = snapshots_beside(&dir);
    let repository = Repository::<Ledger>::new(store).with_snapshots(snapshots);
    let handler = CommandHandler::new(repository.clone());
    handler
        .execute("f", &LedgerCommand::Deposit(3), Metadata::default())
        .await
        .unwrap();
    let taken = repository.snapshot("f").await.unwrap().expect("a snapshot");
    assert_eq!(taken.version, 1);
    assert!(dir.path().join("events.snapshots.db").exists());
    let events_db = rusqlite_tables(&dir.path().join("events.db"));
    assert!(
        !events_db.iter().any(|t| t.contains("snapshot")),
        "{events_db:?}"
    );
}

fn rusqlite_tables(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap();
    stmt.query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The same ledger with a reshaped state (schema version 2): the balance now lives in cents.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct LedgerV2 {
    cents: i64,
    entries: u32,
}

impl Aggregate for LedgerV2 {
    const TYPE: &'static str = "ledger";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = crate::domain::LedgerError;

    fn handle(&self, _: &LedgerCommand) -> Result<Vec<LedgerEvent>, Self::Error> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Deposited { amount } => self.cents += amount * 100,
            LedgerEvent::Withdrawn { amount } => self.cents -= amount * 100,
            _ => {}
        }
        self.entries += 1;
    }
}

/// A V2 that knows how to upcast V1 snapshots.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct LedgerV2Upcasting(LedgerV2);

impl Aggregate for LedgerV2Upcasting {
    const TYPE: &'static str = "ledger";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = crate::domain::LedgerError;

    fn handle(&self, _: &LedgerCommand) -> Result<Vec<LedgerEvent>, Self::Error> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &LedgerEvent) {
        self.0.apply(event);
    }

    fn upcast_snapshot(version: u32, state: serde_json::Value) -> Option<serde_json::Value> {
        if version != 1 {
            return None;
        }
        Some(serde_json::json!({
            "cents": state["balance"].as_i64()? * 100,
            "entries": state["entries"].as_array()?.len() + state["notes"].as_array()?.len(),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_snapshot_is_upcast_or_rebuilt_never_misread() {
    let (store, dir) = support::embedded();
    let snapshots = snapshots_beside(&dir);
    let v1 = Repository::<Ledger>::new(Arc::clone(&store)).with_snapshots(Arc::clone(&snapshots));
    let handler = CommandHandler::new(v1.clone());
    for amount in [5, 7] {
        handler
            .execute("v", &LedgerCommand::Deposit(amount), Metadata::default())
            .await
            .unwrap();
    }
    v1.snapshot("v").await.unwrap().expect("v1 snapshot");
    handler
        .execute("v", &LedgerCommand::Withdraw(2), Metadata::default())
        .await
        .unwrap();

    let expected = LedgerV2 {
        cents: 1000,
        entries: 3,
    };
    let plain =
        Repository::<LedgerV2>::new(Arc::clone(&store)).with_snapshots(Arc::clone(&snapshots));
    let loaded = plain.load("v").await.unwrap();
    assert_eq!(loaded.state, expected);
    assert_eq!(
        loaded.snapshot_version, None,
        "a v1 snapshot without an upcaster is ignored"
    );

    let upcasting = Repository::<LedgerV2Upcasting>::new(Arc::clone(&store))
        .with_snapshots(Arc::clone(&snapshots));
    let loaded = upcasting.load("v").await.unwrap();
    assert_eq!(loaded.state.0, expected);
    assert_eq!(
        loaded.snapshot_version,
        Some(2),
        "the upcast v1 snapshot is used"
    );
    assert_eq!(loaded.events_applied, 1);

    // A snapshot that does not deserialise is ignored too.
    snapshots
        .save(&Snapshot {
            stream: StreamId::new("ledger", "v"),
            version: 3,
            schema_version: 1,
            state: r#"{"balance":"not a number"}"#.into(),
            taken_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let loaded = v1.load("v").await.unwrap();
    assert_eq!(loaded.state.balance, 10);
    assert_eq!(loaded.snapshot_version, None);
}

async fn wait_for_snapshot(
    snapshots: &Arc<dyn SnapshotStore>,
    stream: &StreamId,
    version: u64,
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = snapshots.load(stream).await.unwrap()
            && s.version >= version
        {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot of {stream} at version {version} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn manager_snapshots_by_event_count(
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let policy = SnapshotPolicy {
        every_events: Some(5),
        max_tail_bytes: None,
        max_age: None,
    };
    let manager = SnapshotManager::new(Arc::clone(&store), Arc::clone(&snapshots))
        .register::<Ledger>(policy)
        .spawn();
    let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
    for _ in 0..4 {
        handler
            .execute("counted", &LedgerCommand::Deposit(1), Metadata::default())
            .await
            .unwrap();
    }
    let stream = StreamId::new("ledger", "counted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        snapshots.load(&stream).await.unwrap().is_none(),
        "4 events stay below the threshold"
    );
    handler
        .execute("counted", &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    let snapshot = wait_for_snapshot(&snapshots, &stream, 5).await;
    let state: Ledger = serde_json::from_str(&snapshot.state).unwrap();
    assert_eq!(state.balance, 5);
    assert_eq!(state.entries.len(), 5, "each event applied exactly once");
    assert!(manager.snapshots_taken() >= 1);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_snapshots_by_event_count_embedded() {
    let (store, dir) = support::embedded();
    manager_snapshots_by_event_count(store, snapshots_beside(&dir)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_snapshots_by_event_count_postgres() {
    use nexus_runtime::snapshot::postgres::PostgresSnapshotStore;
    let Some(db) = support::TestDb::create().await else {
        return;
    };
    let store = db.store_with(4).await;
    let snapshots = PostgresSnapshotStore::with_pool(store.pool().clone(), store.schema());
    manager_snapshots_by_event_count(store, Arc::new(snapshots)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_snapshots_by_size_and_by_age() {
    let (store, dir) = support::embedded();
    let snapshots = snapshots_beside(&dir);
    let policy = SnapshotPolicy {
        every_events: None,
        max_tail_bytes: Some(2_000),
        max_age: Some(Duration::from_secs(1)),
    };
    let manager = SnapshotManager::new(Arc::clone(&store), Arc::clone(&snapshots))
        .register::<Ledger>(policy)
        .spawn();
    let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
    // Size: one large note passes the byte threshold at once.
    handler
        .execute(
            "big",
            &LedgerCommand::Note("x".repeat(3_000)),
            Metadata::default(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    wait_for_snapshot(&snapshots, &StreamId::new("ledger", "big"), 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "size trigger acts at once"
    );
    // Age: a small event, then the time threshold passes.
    handler
        .execute("old", &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    let snapshot = wait_for_snapshot(&snapshots, &StreamId::new("ledger", "old"), 1).await;
    assert_eq!(snapshot.version, 1);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_resumes_from_its_checkpoint() {
    let (store, dir) = support::embedded();
    let snapshots = snapshots_beside(&dir);
    let policy = SnapshotPolicy {
        every_events: Some(3),
        max_tail_bytes: None,
        max_age: None,
    };
    let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
    let manager = SnapshotManager::new(Arc::clone(&store), Arc::clone(&snapshots))
        .register::<Ledger>(policy)
        .spawn();
    for _ in 0..3 {
        handler
            .execute("r", &LedgerCommand::Deposit(1), Metadata::default())
            .await
            .unwrap();
    }
    wait_for_snapshot(&snapshots, &StreamId::new("ledger", "r"), 3).await;
    manager.stop().await;
    let saved = snapshots
        .load_checkpoint("snapshot-manager")
        .await
        .unwrap()
        .expect("checkpoint");
    assert!(saved.position >= 3);
    // Events appended while the manager was down are seen after the restart.
    for _ in 0..3 {
        handler
            .execute("r", &LedgerCommand::Deposit(1), Metadata::default())
            .await
            .unwrap();
    }
    let manager = SnapshotManager::new(Arc::clone(&store), Arc::clone(&snapshots))
        .register::<Ledger>(policy)
        .spawn();
    wait_for_snapshot(&snapshots, &StreamId::new("ledger", "r"), 6).await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_remembers_at_most_max_tracked_streams_and_still_snapshots_by_count() {
    let (store, dir) = support::embedded();
    let snapshots = snapshots_beside(&dir);
    let policy = SnapshotPolicy {
        every_events: Some(3),
        max_tail_bytes: None,
        max_age: None,
    };
    let manager = SnapshotManager::new(Arc::clone(&store), Arc::clone(&snapshots))
        .register::<Ledger>(policy)
        .with_max_tracked(8)
        .spawn();
    let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
    // Two events on the first stream, then 50 other streams push it out of the manager's memory.
    for _ in 0..2 {
        handler
            .execute("first", &LedgerCommand::Deposit(1), Metadata::default())
            .await
            .unwrap();
    }
    for n in 0..50 {
        handler
            .execute(
                &format!("s-{n}"),
                &LedgerCommand::Deposit(1),
                Metadata::default(),
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while manager.tracked_streams() < 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        manager.tracked_streams(),
        8,
        "the bound holds at 51 streams"
    );
    // The forgotten stream is picked up from its snapshot state: its third event still
    // triggers the count threshold.
    handler
        .execute("first", &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    wait_for_snapshot(&snapshots, &StreamId::new("ledger", "first"), 3).await;
    assert!(manager.tracked_streams() <= 8);
    manager.stop().await;
}
