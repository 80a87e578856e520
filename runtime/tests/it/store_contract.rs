//! The `EventStore` contract: one suite, run against the embedded store and PostgreSQL.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nexus_runtime::event::partition_of;
use nexus_runtime::store::subscribe;
use nexus_runtime::{
    AppendError, EventId, EventStore, ExpectedVersion, LogPosition, Metadata, NewEvent, ReadError,
    StreamId,
};

fn event(n: u32) -> NewEvent {
    NewEvent::from_json(
        "Happened",
        1,
        format!(r#"{{"n":{n}}}"#),
        Metadata::correlated("corr-1"),
    )
    .expect("valid JSON")
}

fn events(range: std::ops::Range<u32>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn stream(id: &str) -> StreamId {
    StreamId::new("thing", id)
}

async fn appends_and_reads_back_in_order(store: Arc<dyn EventStore>) {
    let s = stream("a");
    let first = store
        .append(&s, ExpectedVersion::NoStream, events(0..3))
        .await
        .unwrap();
    assert_eq!(first.version, 3);
    assert_eq!(first.event_ids.len(), 3);
    assert!(first.first_position < first.last_position);
    let second = store
        .append(&s, ExpectedVersion::Exact(3), events(3..5))
        .await
        .unwrap();
    assert_eq!(second.version, 5);
    let read = store.read_stream(&s, 1, None).await.unwrap();
    let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    let ns: Vec<serde_json::Value> = read
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e.payload.get()).unwrap()["n"].clone())
        .collect();
    assert_eq!(ns, (0..5).map(serde_json::Value::from).collect::<Vec<_>>());
    let e = &read[0];
    assert_eq!(e.stream, s);
    assert_eq!(e.event_type, "Happened");
    assert_eq!(e.schema_version, 1);
    assert_eq!(e.metadata.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(e.partition, partition_of("a", store.partition_count()));
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(5));
    let window = store.read_stream(&s, 2, Some(3)).await.unwrap();
    assert_eq!(window.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
}

async fn rejects_stale_expected_version_with_actual(store: Arc<dyn EventStore>) {
    let s = stream("b");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    let err = store
        .append(&s, ExpectedVersion::Exact(1), events(2..3))
        .await
        .unwrap_err();
    match err {
        AppendError::Conflict {
            actual, expected, ..
        } => {
            assert_eq!(actual, 2);
            assert_eq!(expected, ExpectedVersion::Exact(1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let err = store
        .append(&s, ExpectedVersion::NoStream, events(2..3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict { actual: 2, .. }),
        "{err:?}"
    );
    let err = store
        .append(&s, ExpectedVersion::Exact(7), events(2..3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict { actual: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is at version 2, expected 7"),
        "{err}"
    );
    let unknown = stream("never");
    let err = store
        .append(&unknown, ExpectedVersion::Exact(3), events(0..1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict { actual: 0, .. }),
        "{err:?}"
    );
    let any = store
        .append(&s, ExpectedVersion::Any, events(2..3))
        .await
        .unwrap();
    assert_eq!(any.version, 3);
    assert_eq!(store.read_stream(&s, 1, None).await.unwrap().len(), 3);
}

async fn retried_append_with_same_ids_is_idempotent(store: Arc<dyn EventStore>) {
    let s = stream("c");
    let batch = events(0..3);
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(!first.idempotent_replay);
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::Exact(0),
    ] {
        let again = store.append(&s, expected, batch.clone()).await.unwrap();
        assert!(again.idempotent_replay);
        assert_eq!(again.version, first.version);
        assert_eq!(again.event_ids, first.event_ids);
        assert_eq!(again.last_position, first.last_position);
    }
    assert_eq!(store.read_stream(&s, 1, None).await.unwrap().len(), 3);
    // The same id with other content is not a retry.
    let mut changed = batch[0].clone();
    changed.payload = serde_json::value::RawValue::from_string(r#"{"n":99}"#.into()).unwrap();
    let err = store
        .append(&s, ExpectedVersion::Any, vec![changed])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::DuplicateEventId { .. }),
        "{err:?}"
    );
    assert_eq!(store.read_stream(&s, 1, None).await.unwrap().len(), 3);
}

async fn failed_batch_writes_nothing(store: Arc<dyn EventStore>) {
    let s = stream("d");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..1))
        .await
        .unwrap();
    let mut batch = events(1..4);
    batch[2] =
        NewEvent::from_json("Happened", 1, r#"{"bad":"\u0000"}"#, Metadata::default()).unwrap();
    let err = store
        .append(&s, ExpectedVersion::Exact(1), batch)
        .await
        .unwrap_err();
    match &err {
        AppendError::InvalidEvent { index, reason, .. } => {
            assert_eq!(*index, 2);
            assert!(reason.contains("NUL"), "{reason}");
        }
        other => panic!("expected an invalid event, got {other:?}"),
    }
    // A batch that repeats an id inside itself fails whole, too.
    let one = event(5);
    let err = store
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![event(4), one.clone(), one],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::DuplicateEventId { .. }),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(1));
    assert_eq!(store.read_stream(&s, 1, None).await.unwrap().len(), 1);
}

async fn rejects_bad_batches_with_clear_errors(store: Arc<dyn EventStore>) {
    let s = stream("e");
    let err = store
        .append(&s, ExpectedVersion::Any, Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::BatchSize { len: 0, .. }),
        "{err:?}"
    );
    let err = store
        .append(&s, ExpectedVersion::Any, events(0..10_001))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::BatchSize {
                len: 10_001,
                max: 10_000
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("1 to 10000 events, got 10001"),
        "{err}"
    );
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![NewEvent::from_json("Big", 1, big, Metadata::default()).unwrap()],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::InvalidEvent { index: 0, .. }),
        "{err:?}"
    );
    let mut unnamed = event(0);
    unnamed.event_type = String::new();
    let err = store
        .append(&s, ExpectedVersion::Any, vec![unnamed])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("event type is empty"), "{err}");
    let err = store
        .append(
            &StreamId::new("thing", ""),
            ExpectedVersion::Any,
            events(0..1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::InvalidStream { .. }), "{err:?}");
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
}

async fn unknown_stream_is_not_found(store: Arc<dyn EventStore>) {
    let s = stream("missing");
    let err = store.read_stream(&s, 1, None).await.unwrap_err();
    assert!(
        matches!(err, ReadError::StreamNotFound(ref id) if *id == s),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "stream `thing-missing` does not exist");
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
    let err = store
        .read_stream_between(&s, Utc::now() - chrono::Duration::hours(1), Utc::now(), 10)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::StreamNotFound(_)), "{err:?}");
    // A known stream read past its end is empty, not missing.
    store
        .append(&stream("short"), ExpectedVersion::NoStream, events(0..1))
        .await
        .unwrap();
    assert!(
        store
            .read_stream(&stream("short"), 5, None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn reads_payloads_for_rebuilding_state(store: Arc<dyn EventStore>) {
    let s = stream("folded");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..4))
        .await
        .unwrap();
    // Another stream's events never show up in this one's payloads.
    store
        .append(&stream("other"), ExpectedVersion::NoStream, events(10..12))
        .await
        .unwrap();
    let all = store.read_payloads(&s, 1).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(all.iter().all(|p| p.event_type == "Happened"));
    let ns: Vec<serde_json::Value> = all
        .iter()
        .map(|p| serde_json::from_str::<serde_json::Value>(&p.payload).unwrap()["n"].clone())
        .collect();
    assert_eq!(ns, (0..4).map(serde_json::Value::from).collect::<Vec<_>>());
    let tail = store.read_payloads(&s, 3).await.unwrap();
    assert_eq!(tail.iter().map(|p| p.version).collect::<Vec<_>>(), [3, 4]);
    assert!(store.read_payloads(&s, 5).await.unwrap().is_empty());
    assert!(
        store
            .read_payloads(&stream("never"), 1)
            .await
            .unwrap()
            .is_empty(),
        "a stream without events has no payloads, which is not an error"
    );
}

async fn visits_payloads_in_order_until_told_to_stop(store: Arc<dyn EventStore>) {
    let s = stream("visited");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..5))
        .await
        .unwrap();
    store
        .append(&stream("beside"), ExpectedVersion::NoStream, events(10..12))
        .await
        .unwrap();
    let mut seen = Vec::new();
    store
        .visit_payloads(&s, 2, &mut |p| {
            let n = serde_json::from_str::<serde_json::Value>(p.payload).unwrap()["n"].clone();
            seen.push((p.version, p.event_type.to_owned(), n));
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        (2..=5)
            .map(|v| (v, "Happened".to_owned(), serde_json::Value::from(v - 1)))
            .collect::<Vec<_>>()
    );
    // Breaking stops the read: nothing after the break is handed over.
    let mut versions = Vec::new();
    store
        .visit_payloads(&s, 1, &mut |p| {
            versions.push(p.version);
            if versions.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert_eq!(versions, [1, 2]);
    // The store is still usable after a read stopped half way.
    assert_eq!(store.read_payloads(&s, 1).await.unwrap().len(), 5);
    let mut none = 0;
    store
        .visit_payloads(&stream("never-visited"), 1, &mut |_| {
            none += 1;
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(none, 0, "a stream without events visits nothing");
}

/// A batch whose first id is new but a later one is stored (in another stream of the same
/// partition) is refused as a duplicate and stores nothing, while the appends issued with it
/// succeed.
async fn batch_reusing_a_later_id_fails_alone(store: Arc<dyn EventStore>) {
    let bad = stream("reuser");
    let partitions = store.partition_count();
    let owner = (0..)
        .map(|k| stream(&format!("owner-{k}")))
        .find(|s| s.partition(partitions) == bad.partition(partitions))
        .expect("some stream shares the partition");
    let taken = event(99);
    store
        .append(&owner, ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .unwrap();
    let mut reusing = events(0..2);
    reusing.push(taken.clone());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    &stream(&format!("bystander-{i}")),
                    ExpectedVersion::NoStream,
                    events(0..2),
                )
                .await
        }));
    }
    let refused = store.append(&bad, ExpectedVersion::NoStream, reusing).await;
    match refused {
        Err(AppendError::DuplicateEventId {
            id,
            stream: stored_in,
        }) => {
            assert_eq!(id, taken.id);
            assert_eq!(stored_in, owner);
        }
        other => panic!("expected a duplicate event id, got {other:?}"),
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().version, 2);
    }
    assert_eq!(store.stream_version(&bad).await.unwrap(), None);
}

async fn finds_events_of_a_stream_by_id(store: Arc<dyn EventStore>) {
    let s = stream("found");
    let appended = store
        .append(&s, ExpectedVersion::NoStream, events(0..3))
        .await
        .unwrap();
    let other = store
        .append(
            &stream("elsewhere"),
            ExpectedVersion::NoStream,
            events(0..1),
        )
        .await
        .unwrap();
    let wanted = [
        appended.event_ids[2],
        EventId::new(),
        appended.event_ids[0],
        other.event_ids[0],
    ];
    let found = store.find_events(&s, &wanted).await.unwrap();
    assert_eq!(found.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(found[0].id, appended.event_ids[0]);
    assert_eq!(found[0].metadata.correlation_id.as_deref(), Some("corr-1"));
    assert!(
        store
            .find_events(&stream("nobody"), &wanted)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn reads_a_stream_within_a_time_range(store: Arc<dyn EventStore>) {
    let s = stream("timed");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let middle = Utc::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    store
        .append(&s, ExpectedVersion::Exact(2), events(2..5))
        .await
        .unwrap();
    let early = store
        .read_stream_between(&s, middle - chrono::Duration::hours(1), middle, 100)
        .await
        .unwrap();
    assert_eq!(early.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    let late = store
        .read_stream_between(&s, middle, Utc::now() + chrono::Duration::seconds(1), 100)
        .await
        .unwrap();
    assert_eq!(
        late.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let limited = store
        .read_stream_between(&s, middle, Utc::now() + chrono::Duration::seconds(1), 2)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    let err = store
        .read_stream_between(&s, Utc::now(), middle, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::InvalidRange(_)), "{err:?}");
}

async fn global_log_reads_every_event_once_in_order(store: Arc<dyn EventStore>) {
    for (i, id) in ["x", "y", "z"].into_iter().enumerate() {
        store
            .append(
                &stream(id),
                ExpectedVersion::NoStream,
                events(0..(i as u32 + 2)),
            )
            .await
            .unwrap();
    }
    // Events become readable in the global log once every transaction that could commit
    // before them has finished, so page until all nine have shown up.
    let mut seen = Vec::new();
    let mut after = LogPosition::START;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 9 events readable",
            seen.len()
        );
        let page = store.read_all(after, 2).await.unwrap();
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        after = page.last().unwrap().log_position();
        seen.extend(page);
    }
    assert!(
        store.read_all(after, 10).await.unwrap().is_empty(),
        "nothing after the last event"
    );
    assert_eq!(seen.len(), 2 + 3 + 4);
    let positions: Vec<LogPosition> = seen.iter().map(|e| e.log_position()).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "log order is strictly increasing");
    let ids: HashSet<EventId> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), seen.len(), "no event twice");
    assert_eq!(store.head().await.unwrap(), *positions.last().unwrap());
}

async fn subscription_delivers_commits_as_they_happen(store: Arc<dyn EventStore>) {
    store
        .append(&stream("before"), ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    let mut subscription = subscribe(Arc::clone(&store), LogPosition::START);
    for expected in 1..=2 {
        let e = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.version, expected);
    }
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..20 {
                store
                    .append(&stream("live"), ExpectedVersion::Exact(i), events(0..1))
                    .await
                    .unwrap();
            }
        })
    };
    for expected in 1..=20 {
        let e = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("a committed event reaches the subscriber")
            .unwrap();
        assert_eq!(e.stream, stream("live"));
        assert_eq!(e.version, expected);
    }
    writer.await.unwrap();
    // Resuming from a position skips nothing and repeats nothing.
    let resume_at = subscription.position();
    store
        .append(&stream("after"), ExpectedVersion::NoStream, events(0..1))
        .await
        .unwrap();
    let mut resumed = subscribe(Arc::clone(&store), resume_at);
    let e = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.stream, stream("after"));
}

async fn racing_writers_get_one_winner_per_version(store: Arc<dyn EventStore>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 15;
    let s = stream("contended");
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0;
            while won.len() < PER_TASK {
                let version = store.stream_version(&s).await.unwrap().unwrap_or(0);
                let e = event(task as u32);
                let id = e.id;
                match store
                    .append(&s, ExpectedVersion::Exact(version), vec![e])
                    .await
                {
                    Ok(result) => {
                        assert_eq!(result.version, version + 1);
                        won.push((result.version, id));
                    }
                    Err(AppendError::Conflict { actual, .. }) => {
                        assert!(actual > version, "a conflict reports a newer version");
                        conflicts += 1;
                    }
                    Err(other) => panic!("unexpected error: {other:?}"),
                }
            }
            (won, conflicts)
        }));
    }
    let mut winners = Vec::new();
    for handle in handles {
        let (won, _conflicts) = handle.await.unwrap();
        winners.extend(won);
    }
    winners.sort();
    let stored = store.read_stream(&s, 1, None).await.unwrap();
    assert_eq!(
        stored.len(),
        TASKS * PER_TASK,
        "every acknowledged append is stored, nothing else"
    );
    for (expected_version, (event, (won_version, won_id))) in (1..).zip(stored.iter().zip(&winners))
    {
        assert_eq!(event.version, expected_version, "no gaps, no duplicates");
        assert_eq!(*won_version, expected_version, "one winner per version");
        assert_eq!(event.id, *won_id, "the winner's event is the one stored");
    }
}

/// Appends issued together (so that a group-committing store takes them as one group) each get
/// their own answer: successes on fresh streams, a conflict naming its stream with the actual
/// version, an idempotent replay, a duplicate id, and appends to one stream in order.
async fn concurrent_mixed_appends_get_their_own_results(store: Arc<dyn EventStore>) {
    let conflicted = stream("mixed-conflict");
    let replayed = stream("mixed-replay");
    let shared = stream("mixed-shared");
    store
        .append(&conflicted, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    let stored = events(0..2);
    let first = store
        .append(&replayed, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();
    let reused = vec![event(5).with_id(first.event_ids[0])];
    let mut calls = Vec::new();
    for n in 0..12 {
        calls.push((
            stream(&format!("mixed-fresh-{n}")),
            ExpectedVersion::NoStream,
            events(0..(n % 3 + 1) as u32),
        ));
    }
    calls.insert(
        3,
        (conflicted.clone(), ExpectedVersion::Exact(0), events(9..10)),
    );
    calls.insert(
        6,
        (replayed.clone(), ExpectedVersion::Exact(0), stored.clone()),
    );
    calls.insert(8, (replayed.clone(), ExpectedVersion::Any, reused));
    for n in 0..5u32 {
        calls.insert(
            2 * n as usize,
            (shared.clone(), ExpectedVersion::Any, events(n..n + 1)),
        );
    }
    let results = futures::future::join_all(
        calls
            .iter()
            .map(|(s, expected, batch)| store.append(s, *expected, batch.clone())),
    )
    .await;
    let mut shared_versions = Vec::new();
    for ((s, _, batch), result) in calls.iter().zip(results) {
        if s == &conflicted {
            match result {
                Err(AppendError::Conflict { stream, actual, .. }) => {
                    assert_eq!(stream, conflicted);
                    assert_eq!(actual, 2);
                }
                other => panic!("expected a conflict, got {other:?}"),
            }
        } else if s == &replayed && batch.len() == 2 {
            let result = result.unwrap();
            assert!(result.idempotent_replay);
            assert_eq!(result.version, first.version);
            assert_eq!(result.last_position, first.last_position);
        } else if s == &replayed {
            assert!(
                matches!(result, Err(AppendError::DuplicateEventId { .. })),
                "{result:?}"
            );
        } else if s == &shared {
            let result = result.unwrap();
            assert!(!result.idempotent_replay);
            shared_versions.push(result.version);
        } else {
            let result = result.unwrap();
            assert_eq!(result.version, batch.len() as u64, "{s}");
            let read = store.read_stream(s, 1, None).await.unwrap();
            assert_eq!(
                read.iter().map(|e| e.id).collect::<Vec<_>>(),
                result.event_ids
            );
        }
    }
    shared_versions.sort_unstable();
    assert_eq!(
        shared_versions,
        [1, 2, 3, 4, 5],
        "one stream's appends in order"
    );
    assert_eq!(store.stream_version(&conflicted).await.unwrap(), Some(2));
    assert_eq!(store.stream_version(&replayed).await.unwrap(), Some(2));
    assert_eq!(store.stream_version(&shared).await.unwrap(), Some(5));
}

/// One operation of a generated concurrent batch.
#[derive(Debug, Clone)]
struct MixedOp {
    stream: usize,
    expected: Option<u64>,
    len: u32,
    resend: Option<usize>,
}

fn mixed_op() -> impl proptest::strategy::Strategy<Value = MixedOp> {
    use proptest::prelude::*;
    (
        0..3usize,
        proptest::option::of(0..4u64),
        1..4u32,
        proptest::option::weighted(0.25, 0..16usize),
    )
        .prop_map(|(stream, expected, len, resend)| MixedOp {
            stream,
            expected,
            len,
            resend,
        })
}

/// Generated concurrent batches of appends with any, exact and stale expectations and resent
/// batches: every acknowledged append is stored once at the versions it was told, nothing of a
/// refused one is stored, versions have no gaps, and each event is in the global log once.
async fn concurrent_mixed_batches_keep_every_invariant(store: Arc<dyn EventStore>) {
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(mixed_op(), 2..16);
    for case in 0..12 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let streams: Vec<StreamId> = (0..3)
            .map(|s| stream(&format!("prop-{case}-{s}")))
            .collect();
        let mut batches: Vec<Vec<NewEvent>> = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let resend = op
                .resend
                .filter(|&j| j < index && ops[j].stream == op.stream);
            batches.push(match resend {
                Some(j) => batches[j].clone(),
                None => events(0..op.len),
            });
        }
        let results = futures::future::join_all(ops.iter().zip(&batches).map(|(op, batch)| {
            let expected = op
                .expected
                .map_or(ExpectedVersion::Any, ExpectedVersion::Exact);
            store.append(&streams[op.stream], expected, batch.clone())
        }))
        .await;
        let mut owned = HashSet::new();
        let mut acknowledged = vec![Vec::new(); 3];
        for ((op, batch), result) in ops.iter().zip(&batches).zip(results) {
            match result {
                Ok(done) => {
                    let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
                    assert_eq!(done.event_ids, ids, "case {case}: {op:?}");
                    if !done.idempotent_replay {
                        for id in &ids {
                            assert!(owned.insert(*id), "case {case}: {id} acknowledged twice");
                        }
                        acknowledged[op.stream].push((done.version, ids));
                    }
                }
                Err(AppendError::Conflict {
                    stream: s,
                    expected,
                    actual,
                }) => {
                    assert_eq!(
                        s, streams[op.stream],
                        "case {case}: the conflict names its stream"
                    );
                    assert_ne!(expected.required(), Some(actual), "case {case}");
                }
                Err(other) => panic!("case {case}: unexpected {other:?} for {op:?}"),
            }
        }
        for (s, acks) in streams.iter().zip(&acknowledged) {
            let stored = match store.read_stream(s, 1, None).await {
                Ok(stored) => stored,
                Err(ReadError::StreamNotFound(_)) => Vec::new(),
                Err(other) => panic!("{other:?}"),
            };
            let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
            assert_eq!(
                versions,
                (1..=stored.len() as u64).collect::<Vec<_>>(),
                "case {case}: gaps"
            );
            let mut expected_ids = vec![None; stored.len()];
            for (version, ids) in acks {
                let first = *version as usize - ids.len();
                for (offset, id) in ids.iter().enumerate() {
                    expected_ids[first + offset] = Some(*id);
                }
            }
            let stored_ids: Vec<Option<EventId>> = stored.iter().map(|e| Some(e.id)).collect();
            assert_eq!(
                stored_ids, expected_ids,
                "case {case}: only acknowledged events, where told"
            );
        }
    }
    let mut seen = HashSet::new();
    let mut after = LogPosition::START;
    loop {
        let page = store.read_all(after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.log_position();
        for event in &page {
            assert!(seen.insert(event.id), "{} is in the log twice", event.id);
        }
    }
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, _dir) = crate::support::embedded();
                    super::$test(store).await;
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(db) = crate::support::TestDb::create().await else { return };
                    super::$test(db.store().await).await;
                }
            )*
        }
    };
}

contract!(
    appends_and_reads_back_in_order,
    rejects_stale_expected_version_with_actual,
    retried_append_with_same_ids_is_idempotent,
    failed_batch_writes_nothing,
    rejects_bad_batches_with_clear_errors,
    unknown_stream_is_not_found,
    reads_payloads_for_rebuilding_state,
    visits_payloads_in_order_until_told_to_stop,
    batch_reusing_a_later_id_fails_alone,
    finds_events_of_a_stream_by_id,
    reads_a_stream_within_a_time_range,
    global_log_reads_every_event_once_in_order,
    subscription_delivers_commits_as_they_happen,
    racing_writers_get_one_winner_per_version,
    concurrent_mixed_appends_get_their_own_results,
    concurrent_mixed_batches_keep_every_invariant,
);

/// Appends issued together on PostgreSQL share one transaction: their events carry one
/// transaction id (the `commit` of a recorded event), so they cost one commit.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_concurrent_appends_as_one_group() {
    let Some(db) = crate::support::TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let streams: Vec<StreamId> = (0..32).map(|n| stream(&format!("group-{n}"))).collect();
    let results = futures::future::join_all(
        streams
            .iter()
            .map(|s| store.append(s, ExpectedVersion::NoStream, events(0..1))),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Readers see a commit once no older transaction of the server (other tests too) runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = store.read_all(LogPosition::START, 100).await.unwrap();
        if log.len() == 32 || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(log.len(), 32);
    let commits: HashSet<u64> = log.iter().map(|e| e.commit).collect();
    assert!(
        commits.len() < 32,
        "32 concurrent appends took {} transactions",
        commits.len()
    );
}

/// The embedded store's log is copied back into the database file in the background: after
/// many commits the file holds the events, not only the write-ahead log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_checkpoints_its_log_in_the_background() {
    let (store, dir) = crate::support::embedded();
    let file = dir.path().join("events.db");
    let before = std::fs::metadata(&file).unwrap().len();
    for n in 0..600 {
        store
            .append(
                &stream(&format!("s-{n}")),
                ExpectedVersion::NoStream,
                events(0..1),
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::metadata(&file).unwrap().len();
        if now > before * 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {now} bytes (from {before}): nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.head().await.unwrap().position, 600);
}

/// The embedded store's writer queue is bounded: while the writer thread cannot commit, at most
/// `queue_capacity` appends wait in it and further callers wait for room; all complete after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_writer_queue_holds_at_most_its_capacity() {
    use nexus_runtime::store::embedded::{EmbeddedOptions, EmbeddedStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let options = EmbeddedOptions {
        queue_capacity: 4,
        ..EmbeddedOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open_with(&path, options).unwrap());
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut appends = Vec::new();
    for n in 0..10 {
        let store = Arc::clone(&store);
        appends.push(tokio::spawn(async move {
            store
                .append(
                    &stream(&format!("queued-{n}")),
                    ExpectedVersion::NoStream,
                    events(0..1),
                )
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.queued_appends(),
        4,
        "the queue holds its capacity, no more"
    );
    assert!(appends.iter().all(|a| !a.is_finished()));
    blocker.execute_batch("COMMIT").unwrap();
    for append in appends {
        append.await.unwrap().unwrap();
    }
    assert_eq!(store.queued_appends(), 0);
}

/// The embedded store keeps at most `readers` read connections, however many reads run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reader_pool_stays_within_its_bound() {
    use nexus_runtime::store::embedded::{EmbeddedOptions, EmbeddedStore};
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        readers: 2,
        ..EmbeddedOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open_with(dir.path().join("events.db"), options).unwrap());
    let s = stream("pooled");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..20))
        .await
        .unwrap();
    let reads = (0..32).map(|_| {
        let store = Arc::clone(&store);
        let s = s.clone();
        tokio::spawn(async move { store.read_stream(&s, 1, None).await.unwrap().len() })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap(), 20);
    }
    let connections = store.reader_connections();
    assert!(connections <= 2, "{connections} read connections");
}

const OPEN_CHILD: &str = "NEXUS_TEST_OPEN_STORE_AT";

/// A generated project's command service and query dashboard open the same new SQLite file at
/// the same moment. Six processes do it at once, ten times over, and every one opens the store
/// (before the fix, one would fail: `UNIQUE constraint failed: nexus_meta.key`), with one
/// partition count recorded. Each child is this test binary running this test alone.
#[test]
fn a_store_opened_by_several_processes_at_once_is_created_once() {
    use nexus_runtime::store::embedded::EmbeddedStore;
    if let Some(path) = std::env::var_os(OPEN_CHILD) {
        EmbeddedStore::open(&path).expect("open the store");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..10 {
        let path = dir.path().join(format!("events-{round}.db"));
        let children: Vec<_> = (0..6)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "store_contract::a_store_opened_by_several_processes_at_once_is_created_once",
                        "--test-threads=1",
                        "--nocapture",
                    ])
                    .env(OPEN_CHILD, &path)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: a process failed to open the store: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let counts: i64 = conn
            .query_row(
                "SELECT count(*) FROM nexus_meta WHERE key = 'partitions'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(counts, 1, "round {round}");
    }
}

/// A commit made through another store on the same file (as another process makes it: its own
/// writer, its own connections) wakes this store's subscribers through the log watch, well
/// before the 250 ms fallback poll would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_commits_of_another_writer_wake_subscribers_at_once() {
    use nexus_runtime::store::embedded::EmbeddedStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let writer = EmbeddedStore::open(&path).unwrap();
    let reader: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
    let mut subscription = subscribe(Arc::clone(&reader), LogPosition::START);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let tail = tokio::spawn(async move {
        while let Ok(event) = subscription.next().await {
            if seen_tx
                .send((event.version, std::time::Instant::now()))
                .is_err()
            {
                return;
            }
        }
    });
    let s = stream("elsewhere");
    for round in 0..5u32 {
        // Idle long enough for the subscription to back off to its slowest poll.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let started = std::time::Instant::now();
        writer
            .append(
                &s,
                ExpectedVersion::Exact(round.into()),
                events(round..round + 1),
            )
            .await
            .unwrap();
        let (version, at) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        let latency = at.saturating_duration_since(started);
        assert_eq!(version, u64::from(round) + 1);
        assert!(
            latency < Duration::from_millis(100),
            "round {round}: the commit took {latency:?} to reach the other store's subscriber"
        );
    }
    tail.abort();
}

/// `INSERT OR REPLACE` would delete the event it collides with without firing the DELETE
/// trigger: the embedded store rejects it, whichever unique key it collides on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_rejects_insert_or_replace_over_an_event() {
    let (store, dir) = crate::support::embedded();
    store
        .append(&stream("kept"), ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let columns = "event_id, aggregate_type, aggregate_id, version, partition, event_type, \
                   schema_version, payload, metadata, recorded_at";
    for (what, sql) in [
        (
            "same position",
            format!(
                "INSERT OR REPLACE INTO events (position, {columns}) \
                 VALUES (1, randomblob(16), 'other', 'x', 1, 0, 'Forged', 1, '{{}}', '{{}}', 0)"
            ),
        ),
        (
            "same stream version",
            format!(
                "INSERT OR REPLACE INTO events ({columns}) SELECT randomblob(16), aggregate_type, \
                 aggregate_id, version, partition, 'Forged', 1, '{{}}', '{{}}', 0 FROM events WHERE position = 2"
            ),
        ),
        (
            "same event id",
            format!(
                "INSERT OR REPLACE INTO events ({columns}) SELECT event_id, 'other', 'y', 1, 0, \
                 'Forged', 1, '{{}}', '{{}}', 0 FROM events WHERE position = 1"
            ),
        ),
        (
            "REPLACE INTO",
            format!(
                "REPLACE INTO events (position, {columns}) \
                 VALUES (2, randomblob(16), 'other', 'z', 1, 0, 'Forged', 1, '{{}}', '{{}}', 0)"
            ),
        ),
    ] {
        let err = conn.execute(&sql, []).expect_err(what);
        assert!(
            err.to_string().contains("events are immutable"),
            "{what}: {err}"
        );
    }
    let forged: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE event_type = 'Forged'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(forged, 0);
    let read = store.read_stream(&stream("kept"), 1, None).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(store.head().await.unwrap().position, 2);
}
