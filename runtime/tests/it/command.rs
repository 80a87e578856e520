//! The command path: load, decide, append with the expected version, and retries.

use std::sync::Arc;

use nexus_runtime::testing::AggregateTest;
use nexus_runtime::{
    CommandError, CommandHandler, EventStore, ExpectedVersion, Metadata, NewEvent, Repository,
    RetryPolicy, StreamId,
};

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
