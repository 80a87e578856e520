//! The command path: load, decide, append with the expected version, and retries.

use std::sync::Arc;

use nexus_runtime::testing::AggregateTest;
use nexus_runtime::{
    CommandError, CommandHandler, EventStore, ExpectedVersion, Metadata, NewEvent, Repository,
    RetryPolicy, StreamId,
};

use nexus_runtime::upcast::Upcasters;

use crate::domain::{Ledger, LedgerCommand, LedgerError, LedgerEvent};
use crate::support;

#[test]
fn ledger_accepts_and_rejects_commands() {
    AggregateTest::<Ledger>::given([LedgerEvent::Deposited { amount: 10 }])
        .when(LedgerCommand::Withdraw(4))
        .then([LedgerEvent::Withdrawn { amount: 4 }]);
    AggregateTest::<Ledger>::given([LedgerEvent::Deposited { amount: 3 }])
        .when(LedgerCommand::Withdraw(4))
        .then_err(|e| {
            *e == LedgerError::Insufficient {
                balance: 3,
                amount: 4,
            }
        });
    AggregateTest::<Ledger>::given([LedgerEvent::Closed])
        .when(LedgerCommand::Deposit(1))
        .then_err(|e| *e == LedgerError::Closed);
    let state = AggregateTest::<Ledger>::given_no_history()
        .when(LedgerCommand::Deposit(5))
        .then([LedgerEvent::Deposited { amount: 5 }]);
    assert_eq!(state.balance, 5);
    AggregateTest::<Ledger>::given([LedgerEvent::Deposited { amount: 1 }])
        .when(LedgerCommand::Close)
        .then([LedgerEvent::Closed]);
}

#[test]
#[should_panic(expected = "the command emitted other events than expected")]
fn harness_fails_when_events_differ() {
    AggregateTest::<Ledger>::given_no_history()
        .when(LedgerCommand::Deposit(5))
        .then([LedgerEvent::Deposited { amount: 6 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executes_commands_and_returns_versions_and_event_ids() {
    let (store, _dir) = support::embedded();
    let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
    let first = handler
        .execute(
            "acc-1",
            &LedgerCommand::Deposit(10),
            Metadata::correlated("req-1"),
        )
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.event_ids.len(), 1);
    let second = handler
        .execute("acc-1", &LedgerCommand::Withdraw(3), Metadata::default())
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    assert!(second.position > first.position);

    let stream = StreamId::new("ledger", "acc-1");
    let stored = store.read_stream(&stream, 1, None).await.unwrap();
    assert_eq!(stored[0].id, first.event_ids[0]);
    assert_eq!(stored[0].event_type, "Deposited");
    assert_eq!(stored[0].metadata.correlation_id.as_deref(), Some("req-1"));
    assert!(
        stored[1].metadata.correlation_id.is_some(),
        "a correlation id is generated when the caller gave none"
    );
    let loaded = handler.repository().load("acc-1").await.unwrap();
    assert_eq!(loaded.state.balance, 7);
    assert_eq!(loaded.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_command_stores_nothing() {
    let (store, _dir) = support::embedded();
    let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
    let err = handler
        .execute("acc-2", &LedgerCommand::Withdraw(1), Metadata::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(LedgerError::Insufficient { .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        store
            .stream_version(&StreamId::new("ledger", "acc-2"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_caller_version_is_a_conflict_with_the_actual_version() {
    let (store, _dir) = support::embedded();
    let handler = CommandHandler::new(Repository::<Ledger>::new(store));
    handler
        .execute("acc-3", &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    handler
        .execute("acc-3", &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    let err = handler
        .execute_at("acc-3", 1, &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap_err();
    match err {
        CommandError::Conflict {
            actual, expected, ..
        } => {
            assert_eq!(actual, 2);
            assert_eq!(expected, ExpectedVersion::Exact(1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let ok = handler
        .execute_at("acc-3", 2, &LedgerCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    assert_eq!(ok.version, 3);
}

async fn concurrent_commands(store: Arc<dyn EventStore>, retry: RetryPolicy) -> (usize, usize) {
    let handler =
        CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store))).with_retry(retry);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut conflicts) = (0, 0);
            for _ in 0..10 {
                match handler
                    .execute("shared", &LedgerCommand::Deposit(1), Metadata::default())
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(CommandError::Conflict { .. }) => conflicts += 1,
                    Err(other) => panic!("unexpected error: {other:?}"),
                }
            }
            (ok, conflicts)
        }));
    }
    let (mut ok, mut conflicts) = (0, 0);
    for task in tasks {
        let (o, c) = task.await.unwrap();
        ok += o;
        conflicts += c;
    }
    let loaded = handler.repository().load("shared").await.unwrap();
    assert_eq!(
        loaded.state.balance, ok as i64,
        "every acknowledged command counted once"
    );
    assert_eq!(loaded.version, ok as u64);
    (ok, conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_resolves_version_conflicts() {
    let (store, _dir) = support::embedded();
    let retry = RetryPolicy {
        max_attempts: 100,
        backoff: std::time::Duration::from_micros(200),
    };
    let (ok, conflicts) = concurrent_commands(store, retry).await;
    assert_eq!((ok, conflicts), (60, 0));
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_conflicts_reach_the_caller_and_nothing_is_lost() {
    let Some(db) = support::TestDb::create().await else {
        return;
    };
    let (ok, conflicts) = concurrent_commands(db.store().await, RetryPolicy::never()).await;
    assert_eq!(ok + conflicts, 60);
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_does_not_decode_fails_the_load_with_its_location() {
    let (store, _dir) = support::embedded();
    let stream = StreamId::new("ledger", "odd");
    let alien =
        NewEvent::from_json("Alien", 1, r#"{"type":"Alien"}"#, Metadata::default()).unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![alien])
        .await
        .unwrap();
    let err = Repository::<Ledger>::new(store)
        .load("odd")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("event 1 of stream `ledger-odd` (Alien) does not decode"),
        "{text}"
    );
}

/// A deposit stored at schema version 1 (`cents`) loads as today's `Deposited { amount }`
/// through an upcaster; without it, the load fails where the old event is.
async fn old_events_load_through_their_upcasters(store: Arc<dyn EventStore>) {
    let stream = StreamId::new("ledger", "old");
    let v1 = NewEvent::from_json(
        "Deposited",
        1,
        r#"{"type":"Deposited","cents":1250}"#,
        Metadata::default(),
    )
    .unwrap();
    let current =
        NewEvent::from_domain(&LedgerEvent::Deposited { amount: 3 }, Metadata::default()).unwrap();
    assert_eq!(
        current.schema_version, 1,
        "the fixture assumes v1 is current"
    );
    // Stored as v0: the shape before `amount`.
    let v0 = NewEvent {
        schema_version: 0,
        ..v1
    };
    store
        .append(&stream, ExpectedVersion::NoStream, vec![v0, current])
        .await
        .unwrap();
    let upcasters = Upcasters::new().step("Deposited", 0, |mut v| {
        let cents = v["cents"].take().as_i64().ok_or("no cents")?;
        Ok(serde_json::json!({"type": "Deposited", "amount": cents / 100}))
    });
    let loaded = Repository::<Ledger>::new(Arc::clone(&store))
        .with_upcasters(upcasters)
        .load("old")
        .await
        .unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (15, 2));
    let err = Repository::<Ledger>::new(store)
        .load("old")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("event 1 of stream `ledger-old`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_load_through_their_upcasters_embedded() {
    let (store, _dir) = support::embedded();
    old_events_load_through_their_upcasters(store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_load_through_their_upcasters_postgres() {
    let Some(db) = support::TestDb::create().await else {
        return;
    };
    old_events_load_through_their_upcasters(db.store().await).await;
}

/// Counts the event ids a store is asked to find, delegating everything to an inner store.
struct CountingFinds {
    inner: Arc<dyn EventStore>,
    ids_looked_up: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EventStore for CountingFinds {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<nexus_runtime::store::AppendResult, nexus_runtime::AppendError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<nexus_runtime::RecordedEvent>, nexus_runtime::ReadError> {
        self.inner.read_stream(stream, from, to).await
    }
    async fn read_stream_between(
        &self,
        stream: &StreamId,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<nexus_runtime::RecordedEvent>, nexus_runtime::ReadError> {
        self.inner
            .read_stream_between(stream, from, to, limit)
            .await
    }
    async fn find_events(
        &self,
        stream: &StreamId,
        ids: &[nexus_runtime::EventId],
    ) -> Result<Vec<nexus_runtime::RecordedEvent>, nexus_runtime::ReadError> {
        self.ids_looked_up
            .fetch_add(ids.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.find_events(stream, ids).await
    }
    async fn stream_version(
        &self,
        stream: &StreamId,
    ) -> Result<Option<u64>, nexus_runtime::ReadError> {
        self.inner.stream_version(stream).await
    }
    async fn read_all(
        &self,
        after: nexus_runtime::LogPosition,
        limit: usize,
    ) -> Result<Vec<nexus_runtime::RecordedEvent>, nexus_runtime::ReadError> {
        self.inner.read_all(after, limit).await
    }
    async fn head(&self) -> Result<nexus_runtime::LogPosition, nexus_runtime::ReadError> {
        self.inner.head().await
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes()
    }
    fn partition_count(&self) -> u16 {
        self.inner.partition_count()
    }
}

/// A new command with an idempotency key looks up one event id (its first) to learn that it
/// is not a retry, not every id it could have stored; a retry still finds all it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_command_checks_one_id_before_deciding() {
    let (inner, _dir) = support::embedded();
    let store = Arc::new(CountingFinds {
        inner,
        ids_looked_up: std::sync::atomic::AtomicUsize::new(0),
    });
    let handler = CommandHandler::new(Repository::<Ledger>::new(
        Arc::clone(&store) as Arc<dyn EventStore>
    ));
    let options = nexus_runtime::ExecuteOptions {
        idempotency_key: Some("key-1".into()),
        ..nexus_runtime::ExecuteOptions::default()
    };
    let first = handler
        .execute_with(
            "acc-idem",
            &LedgerCommand::Deposit(3),
            Metadata::correlated("req"),
            &options,
        )
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(
        store
            .ids_looked_up
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a new command looks up its first event id only"
    );
    let again = handler
        .execute_with(
            "acc-idem",
            &LedgerCommand::Deposit(3),
            Metadata::correlated("req"),
            &options,
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.event_ids, first.event_ids);
    assert_eq!(again.version, first.version);
}
