//! Temporal queries: paging by time range through the read-only history (no duplicates, no
//! gaps, pinned against concurrent appends), scan budgets with tokens even on empty pages,
//! signed tokens, state as of a time or version from the snapshot history, projection
//! rebuilds as of a time, the append-only audit log, and read-only handles on both backends.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_runtime::audit::{AuditLog, AuditOutcome, AuditRecord, SqliteAuditLog};
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::temporal::{
    AsOf, History, PartialReason, Scope, SqliteHistory, TemporalError, TemporalLimits,
    TemporalQuery, TimeRange, TokenError, TokenSigner, run_page, state_as_of,
};
use nexus_runtime::{
    CommandHandler, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Repository,
    SnapshotStore, StreamId,
};
use proptest::prelude::*;

use crate::domain::{Ledger, LedgerCommand};

const TYPES: [&str; 3] = ["Placed", "Paid", "Shipped"];

/// A store with 240 events over 6 streams of 2 aggregate types and 3 event types, appended in
/// small batches a little apart so their times differ; shared by the property cases.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    history: SqliteHistory,
    events: Vec<RecordedEvent>,
}

fn event(kind: &str, n: usize) -> NewEvent {
    NewEvent::from_json(kind, 1, format!("{{\"n\":{n}}}"), Metadata::default()).unwrap()
}

async fn fill(store: &dyn EventStore, count: usize) {
    for i in 0..count {
        let kind = if i % 3 == 0 { "order" } else { "invoice" };
        let stream = StreamId::new(kind, format!("s{}", i % 6));
        store
            .append(&stream, ExpectedVersion::Any, vec![event(TYPES[i % 3], i)])
            .await
            .unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
    store
        .read_all(nexus_runtime::LogPosition::START, 100_000)
        .await
        .unwrap()
}

fn fixture(runtime: &tokio::runtime::Runtime) -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.db");
            let store = Arc::new(EmbeddedStore::open(&path).unwrap());
            fill(store.as_ref(), 240).await;
            let events = all_events(store.as_ref()).await;
            let history = SqliteHistory::open(&path).unwrap();
            Fixture {
                _dir: dir,
                store,
                history,
                events,
            }
        })
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn limits(max_scan: usize) -> TemporalLimits {
    TemporalLimits {
        max_scan,
        ..TemporalLimits::default()
    }
}

/// Every page of `query` for `client`, following tokens; fails after `max_pages`.
async fn all_pages(
    history: &dyn History,
    signer: &TokenSigner,
    limits: &TemporalLimits,
    query: &TemporalQuery,
    max_pages: usize,
) -> Result<(Vec<RecordedEvent>, usize), TemporalError> {
    let mut token = None;
    let mut events = Vec::new();
    for pages in 1..=max_pages {
        let page = run_page(history, signer, limits, query, "client-a", token.as_deref()).await?;
        assert_eq!(page.partial, page.next_token.is_some());
        assert!(page.scanned <= limits.max_scan);
        events.extend(page.events);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok((events, pages)),
        }
    }
    panic!("more than {max_pages} pages");
}

fn expected(events: &[RecordedEvent], query: &TemporalQuery) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.recorded_at >= query.range.from && e.recorded_at < query.range.to)
        .filter(|e| query.event_types.is_empty() || query.event_types.contains(&e.event_type))
        .filter(|e| match &query.scope {
            Scope::Stream(stream) => &e.stream == stream,
            Scope::AggregateType(kind) => e.stream.aggregate_type() == kind,
            Scope::All => true,
        })
        .map(|e| e.position)
        .collect()
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        (0usize..6).prop_map(|i| {
            let kind = if i % 3 == 0 { "order" } else { "invoice" };
            Scope::Stream(StreamId::new(kind, format!("s{i}")))
        }),
        prop_oneof![Just("order"), Just("invoice")]
            .prop_map(|k| Scope::AggregateType(k.to_owned())),
        Just(Scope::All),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Paging a random range in random page sizes returns exactly what one unbounded read of
    /// the same range returns: no duplicates, no gaps, in key order.
    #[test]
    fn resumed_pages_return_exactly_the_rest(
        scope in scope(),
        a in 0usize..240,
        b in 0usize..240,
        page_size in 1usize..60,
        types in proptest::sample::subsequence(TYPES.to_vec(), 0..=3),
    ) {
        let runtime = runtime();
        let fixture = fixture(runtime);
        let times: Vec<DateTime<Utc>> = fixture.events.iter().map(|e| e.recorded_at).collect();
        let (lo, hi) = (a.min(b), a.max(b));
        let from = times[lo];
        let to = if hi + 1 < times.len() { times[hi + 1] } else { times[hi] + chrono::Duration::seconds(1) };
        prop_assume!(from < to);
        let mut event_types: Vec<String> = types.into_iter().map(str::to_owned).collect();
        if scope == Scope::All && event_types.is_empty() {
            event_types.push("Paid".to_owned());
        }
        let query = TemporalQuery { scope, range: TimeRange { from, to }, event_types, page_size: Some(page_size) };
        let signer = TokenSigner::random();
        let (paged, _) = runtime
            .block_on(all_pages(&fixture.history, &signer, &limits(10_000), &query, 1000))
            .unwrap();
        let got: Vec<u64> = paged.iter().map(|e| e.position).collect();
        let unique: HashSet<u64> = got.iter().copied().collect();
        prop_assert_eq!(unique.len(), got.len(), "duplicates");
        let mut sorted_expected = expected(&fixture.events, &query);
        let mut sorted_got = got.clone();
        sorted_expected.sort_unstable();
        sorted_got.sort_unstable();
        prop_assert_eq!(sorted_got, sorted_expected);
        let one = runtime
            .block_on(run_page(&fixture.history, &signer, &limits(10_000), &TemporalQuery { page_size: None, ..query.clone() }, "client-a", None))
            .unwrap();
        prop_assert!(!one.partial);
        prop_assert_eq!(one.events.iter().map(|e| e.position).collect::<Vec<_>>(), got);
    }
}

#[test]
fn pages_are_pinned_against_concurrent_appends() {
    let runtime = runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = EmbeddedStore::open(&path).unwrap();
        fill(&store, 60).await;
        let history = SqliteHistory::open(&path).unwrap();
        let query = TemporalQuery {
            scope: Scope::AggregateType("invoice".into()),
            range: TimeRange {
                from: Utc::now() - chrono::Duration::hours(1),
                to: Utc::now() + chrono::Duration::hours(1),
            },
            event_types: Vec::new(),
            page_size: Some(7),
        };
        let signer = TokenSigner::random();
        let limits = limits(10_000);
        let first = run_page(&history, &signer, &limits, &query, "client-a", None)
            .await
            .unwrap();
        assert!(first.partial);
        // Appends after the first page are outside the pinned window.
        fill(&store, 30).await;
        let mut events = first.events;
        let mut token = first.next_token;
        while let Some(next) = token {
            let page = run_page(&history, &signer, &limits, &query, "client-a", Some(&next))
                .await
                .unwrap();
            assert_eq!(page.as_of, first.as_of);
            events.extend(page.events);
            token = page.next_token;
        }
        let invoices_before = 60 - 20; // i % 3 != 0 of the first 60
        assert_eq!(events.len(), invoices_before);
        assert!(events.iter().all(|e| e.position <= first.as_of.0));
    });
}

#[test]
fn a_page_that_matched_nothing_but_scanned_its_limit_still_returns_a_token() {
    let runtime = runtime();
    let fixture = fixture(runtime);
    runtime.block_on(async {
        // Shipped events only, across the whole log, scanning 10 events per page: most pages
        // examine their 10 events and find few or none.
        let query = TemporalQuery {
            scope: Scope::All,
            range: TimeRange {
                from: fixture.events[0].recorded_at,
                to: Utc::now() + chrono::Duration::minutes(1),
            },
            event_types: vec!["Nothing".to_owned()],
            page_size: None,
        };
        let signer = TokenSigner::random();
        let limits = limits(10);
        let page = run_page(&fixture.history, &signer, &limits, &query, "client-a", None)
            .await
            .unwrap();
        assert_eq!(page.returned, 0);
        assert_eq!(page.scanned, 10);
        assert!(page.partial);
        assert_eq!(page.reason, Some(PartialReason::ScanLimit));
        assert!(page.next_token.is_some());
        let (events, pages) = all_pages(&fixture.history, &signer, &limits, &query, 100)
            .await
            .unwrap();
        assert!(events.is_empty());
        assert_eq!(pages, 24, "240 events, 10 per page");
    });
}

#[test]
fn ranges_over_the_limit_reversed_ranges_and_unknown_streams_are_refused() {
    let runtime = runtime();
    let fixture = fixture(runtime);
    runtime.block_on(async {
        let signer = TokenSigner::random();
        let now = Utc::now();
        let query = |from: DateTime<Utc>, to: DateTime<Utc>, scope: Scope| TemporalQuery {
            scope,
            range: TimeRange { from, to },
            event_types: Vec::new(),
            page_size: None,
        };
        let order = Scope::AggregateType("order".into());
        let too_long = query(now - chrono::Duration::days(91), now, order.clone());
        let err = run_page(
            &fixture.history,
            &signer,
            &limits(100),
            &too_long,
            "c",
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, TemporalError::RangeTooLong { limit_days: 90, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("the limit is 90 days"), "{err}");
        let exactly = query(now - chrono::Duration::days(90), now, order.clone());
        run_page(&fixture.history, &signer, &limits(100), &exactly, "c", None)
            .await
            .unwrap();
        let reversed = query(now, now - chrono::Duration::hours(1), order);
        assert!(matches!(
            run_page(
                &fixture.history,
                &signer,
                &limits(100),
                &reversed,
                "c",
                None
            )
            .await,
            Err(TemporalError::ReversedRange { .. })
        ));
        let unknown = query(
            now - chrono::Duration::hours(1),
            now,
            Scope::Stream(StreamId::new("order", "nobody")),
        );
        assert!(matches!(
            run_page(&fixture.history, &signer, &limits(100), &unknown, "c", None).await,
            Err(TemporalError::UnknownStream(_))
        ));
    });
}

#[test]
fn tokens_of_another_client_query_or_key_are_refused() {
    let runtime = runtime();
    let fixture = fixture(runtime);
    runtime.block_on(async {
        let signer = TokenSigner::random();
        let limits = limits(10);
        let query = TemporalQuery {
            scope: Scope::AggregateType("invoice".into()),
            range: TimeRange {
                from: fixture.events[0].recorded_at,
                to: Utc::now() + chrono::Duration::minutes(1),
            },
            event_types: Vec::new(),
            page_size: None,
        };
        let page = run_page(&fixture.history, &signer, &limits, &query, "client-a", None)
            .await
            .unwrap();
        let token = page.next_token.unwrap();
        let other_client = run_page(
            &fixture.history,
            &signer,
            &limits,
            &query,
            "client-b",
            Some(&token),
        )
        .await;
        assert!(matches!(
            other_client,
            Err(TemporalError::Token(TokenError::Mismatch))
        ));
        let wider = TemporalQuery {
            scope: Scope::All,
            event_types: vec!["Paid".into()],
            ..query.clone()
        };
        let other_query = run_page(
            &fixture.history,
            &signer,
            &limits,
            &wider,
            "client-a",
            Some(&token),
        )
        .await;
        assert!(matches!(
            other_query,
            Err(TemporalError::Token(TokenError::Mismatch))
        ));
        let forged = run_page(
            &fixture.history,
            &TokenSigner::random(),
            &limits,
            &query,
            "client-a",
            Some(&token),
        )
        .await;
        assert!(matches!(
            forged,
            Err(TemporalError::Token(TokenError::Invalid))
        ));
        let mut edited = token.clone().into_bytes();
        edited[3] = if edited[3] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).unwrap();
        assert!(matches!(
            run_page(
                &fixture.history,
                &signer,
                &limits,
                &query,
                "client-a",
                Some(&edited)
            )
            .await,
            Err(TemporalError::Token(TokenError::Invalid))
        ));
    });
}

#[test]
fn state_as_of_a_version_or_time_starts_from_the_nearest_earlier_snapshot() {
    let runtime = runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
        let snapshots: Arc<dyn SnapshotStore> = Arc::new(
            EmbeddedSnapshotStore::open(EmbeddedSnapshotStore::path_beside(&path)).unwrap(),
        );
        let repository =
            Repository::<Ledger>::new(Arc::clone(&store)).with_snapshots(Arc::clone(&snapshots));
        let handler = CommandHandler::new(repository.clone());
        let mut times = Vec::new();
        for amount in 1..=50i64 {
            handler
                .execute("l", &LedgerCommand::Deposit(amount), Metadata::default())
                .await
                .unwrap();
            if amount % 10 == 0 {
                repository.snapshot("l").await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            times.push(Utc::now());
        }
        let history = SqliteHistory::open(&path).unwrap();
        let limits = TemporalLimits::default();
        let expected = |version: i64| (1..=version).sum::<i64>();
        let at_35 = state_as_of::<Ledger>(
            &history,
            Some(snapshots.as_ref()),
            &limits,
            "l",
            AsOf::Version(35),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(at_35.state.balance, expected(35));
        assert_eq!(at_35.version, 35);
        assert_eq!(
            at_35.snapshot_version,
            Some(30),
            "the nearest earlier snapshot"
        );
        assert_eq!(at_35.events_folded, 5);
        let without = state_as_of::<Ledger>(&history, None, &limits, "l", AsOf::Version(35))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(without.state, at_35.state);
        assert_eq!(without.events_folded, 35);
        // Time: everything recorded before the instant taken after the 12th event.
        let at_time = state_as_of::<Ledger>(
            &history,
            Some(snapshots.as_ref()),
            &limits,
            "l",
            AsOf::Time(times[11]),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(at_time.version, 12);
        assert_eq!(at_time.state.balance, expected(12));
        assert_eq!(at_time.snapshot_version, Some(10));
        let before_anything = state_as_of::<Ledger>(
            &history,
            None,
            &limits,
            "l",
            AsOf::Time(times[0] - chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
        assert!(before_anything.is_none());
        assert!(
            state_as_of::<Ledger>(&history, None, &limits, "l", AsOf::Version(51))
                .await
                .is_err()
        );
        // A fold over the scan budget stops early and says so, at a true earlier state.
        let small = TemporalLimits {
            max_scan: 4,
            ..TemporalLimits::default()
        };
        let partial = state_as_of::<Ledger>(&history, None, &small, "l", AsOf::Version(35))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(partial.partial, Some(PartialReason::ScanLimit));
        assert_eq!(partial.version, 4);
        assert_eq!(partial.state.balance, expected(4));
    });
}

#[test]
fn the_snapshot_history_keeps_a_bounded_number_per_stream() {
    let runtime = runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = EmbeddedSnapshotStore::open(dir.path().join("s.db")).unwrap();
        let stream = StreamId::new("ledger", "x");
        let total = nexus_runtime::snapshot::SNAPSHOT_HISTORY as u64 + 10;
        for version in 1..=total {
            snapshots
                .save(&nexus_runtime::Snapshot {
                    stream: stream.clone(),
                    version,
                    schema_version: 1,
                    state: "{}".into(),
                    taken_at: Utc::now(),
                })
                .await
                .unwrap();
        }
        let newest = snapshots
            .load_at_or_before(&stream, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(newest.version, total);
        let oldest_kept = total - nexus_runtime::snapshot::SNAPSHOT_HISTORY as u64 + 1;
        let at = snapshots
            .load_at_or_before(&stream, oldest_kept)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.version, oldest_kept);
        assert!(
            snapshots
                .load_at_or_before(&stream, oldest_kept - 1)
                .await
                .unwrap()
                .is_none(),
            "older snapshots are deleted"
        );
    });
}

#[test]
fn the_read_only_history_refuses_writes_on_sqlite() {
    let runtime = runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = EmbeddedStore::open(&path).unwrap();
        fill(&store, 3).await;
        let history = SqliteHistory::open(&path).unwrap();
        for sql in [
            "INSERT INTO nexus_meta (key, value) VALUES ('x', 'y')",
            "CREATE TABLE sneaky (x INTEGER)",
            "PRAGMA query_only = OFF; INSERT INTO nexus_meta (key, value) VALUES ('x', 'y')",
        ] {
            let err = history.try_statement(sql).await.unwrap_err();
            let message = format!("{:?}", err);
            assert!(
                message.contains("read") || message.contains("ReadOnly"),
                "{sql}: {message}"
            );
        }
        assert_eq!(all_events(&store).await.len(), 3);
        assert!(SqliteHistory::open(dir.path().join("missing.db")).is_err());
        assert!(
            !dir.path().join("missing.db").exists(),
            "opening read-only creates nothing"
        );
    });
}

#[test]
fn rebuilding_a_projection_as_of_a_time_applies_only_earlier_events_into_a_new_read_model() {
    use nexus_runtime::projection::{Changes, Projection, ProjectionError, ReadModelStore};
    struct Counts;
    #[async_trait::async_trait]
    impl Projection for Counts {
        fn name(&self) -> &str {
            "counts"
        }
        async fn apply(
            &self,
            event: &RecordedEvent,
            changes: &mut Changes<'_>,
        ) -> Result<(), ProjectionError> {
            let id = event.stream.aggregate_id();
            let current = changes.get("streams", id).await?;
            let n = current.and_then(|d| d["n"].as_u64()).unwrap_or(0);
            changes.put("streams", id, serde_json::json!({ "n": n + 1 }));
            Ok(())
        }
    }
    let runtime = runtime();
    let fixture = fixture(runtime);
    runtime.block_on(async {
        let until = fixture.events[119].recorded_at + chrono::Duration::microseconds(1);
        let before: Vec<&RecordedEvent> = fixture
            .events
            .iter()
            .filter(|e| e.recorded_at < until)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let target = ReadModelStore::open(dir.path().join("counts-asof.db")).unwrap();
        let summary =
            nexus_runtime::temporal::replay_projection(&fixture.history, &Counts, until, &target)
                .await
                .unwrap();
        assert_eq!(summary.applied as usize, before.len());
        for i in 0..6 {
            let id = format!("s{i}");
            let n = before
                .iter()
                .filter(|e| e.stream.aggregate_id() == id)
                .count() as u64;
            let doc = target.get("streams", &id).await.unwrap();
            assert_eq!(doc.and_then(|d| d["n"].as_u64()).unwrap_or(0), n, "{id}");
        }
        // A second rebuild into the same read model is refused, not doubled.
        assert!(
            nexus_runtime::temporal::replay_projection(&fixture.history, &Counts, until, &target)
                .await
                .is_err()
        );
        let _ = &fixture.store;
    });
}

#[test]
fn the_audit_log_is_append_only_and_pages_in_order() {
    let runtime = runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteAuditLog::open(dir.path().join("audit.db")).unwrap();
        audit_contract(&log).await;
        for sql in [
            "UPDATE audit_temporal SET status = 200",
            "DELETE FROM audit_temporal",
        ] {
            let err = log.try_statement(sql).await.unwrap_err();
            assert!(format!("{err:?}").contains("append-only"), "{sql}: {err:?}");
        }
    });
}

pub(crate) async fn audit_contract(log: &dyn AuditLog) {
    for (i, outcome) in [
        AuditOutcome::Ok,
        AuditOutcome::Partial,
        AuditOutcome::Refused,
    ]
    .into_iter()
    .enumerate()
    {
        let id = log
            .record(&AuditRecord {
                at: Utc::now(),
                client_id: format!("token:c{i}"),
                roles: vec!["auditor".into()],
                action: "events".into(),
                query: serde_json::json!({ "scope": "type:order" }),
                scanned: 10,
                returned: i as u64,
                duration_ms: 3,
                outcome,
                reason: (outcome != AuditOutcome::Ok).then(|| "scan_limit".into()),
                status: if outcome == AuditOutcome::Refused {
                    429
                } else {
                    200
                },
            })
            .await
            .unwrap();
        assert_eq!(id, i as u64 + 1);
    }
    let page = log.page(0, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].record.client_id, "token:c0");
    let rest = log.page(page[1].id, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].record.outcome, AuditOutcome::Refused);
    assert_eq!(rest[0].record.status, 429);
    assert_eq!(rest[0].record.roles, vec!["auditor".to_owned()]);
}

#[cfg(feature = "postgres")]
mod pg {
    use nexus_runtime::audit::postgres::PostgresAuditLog;
    use nexus_runtime::temporal::PostgresHistory;

    use super::*;
    use crate::support::TestDb;

    #[test]
    fn postgres_history_pages_like_one_read_and_refuses_writes() {
        let runtime = runtime();
        runtime.block_on(async {
            let Some(db) = TestDb::create().await else {
                return;
            };
            let store = db.store().await;
            fill(store.as_ref(), 90).await;
            // Cross-aggregate reads see a commit once every older transaction on the server
            // has ended (the change-data-capture horizon): wait for that.
            let mut events = all_events(store.as_ref()).await;
            for _ in 0..600 {
                if events.len() == 90 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                events = all_events(store.as_ref()).await;
            }
            assert_eq!(events.len(), 90);
            let history = PostgresHistory::connect(&db.url, "nexus", 2).await.unwrap();
            let signer = TokenSigner::random();
            let limits = limits(10_000);
            for (scope, types) in [
                (Scope::Stream(StreamId::new("invoice", "s1")), vec![]),
                (Scope::AggregateType("order".into()), vec![]),
                (Scope::All, vec!["Paid".to_owned()]),
            ] {
                for page_size in [1, 7, 1000] {
                    let query = TemporalQuery {
                        scope: scope.clone(),
                        range: TimeRange {
                            from: events[5].recorded_at,
                            to: events[80].recorded_at,
                        },
                        event_types: types.clone(),
                        page_size: Some(page_size),
                    };
                    let (paged, _) = all_pages(&history, &signer, &limits, &query, 1000)
                        .await
                        .unwrap();
                    let mut got: Vec<u64> = paged.iter().map(|e| e.position).collect();
                    let mut want = expected(&events, &query);
                    got.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(got, want, "{scope:?} page {page_size}");
                }
            }
            let err = history
                .try_statement(
                    "INSERT INTO nexus.store_meta (key, value) VALUES ('x', 'y')",
                )
                .await
                .unwrap_err();
            assert!(format!("{err:?}").contains("read-only"), "{err:?}");
            let err = history
                .try_statement("SET TRANSACTION READ WRITE; INSERT INTO nexus.store_meta (key, value) VALUES ('x', 'y')")
                .await
                .unwrap_err();
            assert!(format!("{err:?}").contains("read"), "{err:?}");
            assert_eq!(all_events(store.as_ref()).await.len(), 90);
        });
    }

    #[test]
    fn postgres_audit_log_is_append_only() {
        let runtime = runtime();
        runtime.block_on(async {
            let Some(db) = TestDb::create().await else {
                return;
            };
            let log = PostgresAuditLog::connect(&db.url, "nexus_audit")
                .await
                .unwrap();
            audit_contract(&log).await;
            for sql in [
                "UPDATE nexus_audit.audit_temporal SET status = 200",
                "DELETE FROM nexus_audit.audit_temporal",
                "TRUNCATE nexus_audit.audit_temporal",
            ] {
                let err = log.try_statement(sql).await.unwrap_err();
                assert!(format!("{err:?}").contains("append-only"), "{sql}: {err:?}");
            }
        });
    }

    #[test]
    fn postgres_snapshot_history_serves_state_as_of() {
        use nexus_runtime::snapshot::postgres::PostgresSnapshotStore;
        let runtime = runtime();
        runtime.block_on(async {
            let Some(db) = TestDb::create().await else {
                return;
            };
            let store = db.store().await;
            let snapshots: Arc<dyn SnapshotStore> = Arc::new(
                PostgresSnapshotStore::connect(&db.url, "nexus")
                    .await
                    .unwrap(),
            );
            let repository = Repository::<Ledger>::new(Arc::clone(&store))
                .with_snapshots(Arc::clone(&snapshots));
            let handler = CommandHandler::new(repository.clone());
            for amount in 1..=25i64 {
                handler
                    .execute("l", &LedgerCommand::Deposit(amount), Metadata::default())
                    .await
                    .unwrap();
                if amount % 10 == 0 {
                    repository.snapshot("l").await.unwrap();
                }
            }
            let history = PostgresHistory::connect(&db.url, "nexus", 2).await.unwrap();
            let found = state_as_of::<Ledger>(
                &history,
                Some(snapshots.as_ref()),
                &TemporalLimits::default(),
                "l",
                AsOf::Version(15),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(found.snapshot_version, Some(10));
            assert_eq!(found.events_folded, 5);
            assert_eq!(found.state.balance, (1..=15).sum::<i64>());
        });
    }
}

#[cfg(feature = "http")]
mod http {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use nexus_runtime::http::access::{AccessControl, ApiKeyConfig, AuthConfig, digest_hex};
    use nexus_runtime::http::{QueryDashboard, TemporalApi};
    use nexus_runtime::projection::HealthRegistry;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    struct Api {
        _dir: tempfile::TempDir,
        dashboard: Router,
        commands: Router,
        audit: Arc<SqliteAuditLog>,
    }

    async fn api() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
        fill(store.as_ref(), 60).await;
        let handler = CommandHandler::new(Repository::<Ledger>::new(Arc::clone(&store)));
        for amount in 1..=3 {
            handler
                .execute("l", &LedgerCommand::Deposit(amount), Metadata::default())
                .await
                .unwrap();
        }
        let key = |id: &str, role: &str| ApiKeyConfig {
            id: id.to_owned(),
            sha256: digest_hex(&format!("secret-{id}")),
            roles: vec![role.to_owned()],
        };
        let config = AuthConfig {
            api_keys: vec![
                key("auditor", "auditor"),
                key("other", "auditor"),
                key("busy", "auditor"),
                key("reader", "reader"),
            ],
            ..AuthConfig::default()
        };
        let access = AccessControl::load(&config, dir.path()).await.unwrap();
        let audit = Arc::new(SqliteAuditLog::open(dir.path().join("audit.db")).unwrap());
        let history: Arc<dyn History> = Arc::new(SqliteHistory::open(&path).unwrap());
        let api = TemporalApi::new(history, audit.clone(), access)
            .with_limits(TemporalLimits {
                max_scan: 10,
                ..TemporalLimits::default()
            })
            .aggregate::<Ledger>();
        let dashboard = QueryDashboard::new(HealthRegistry::default())
            .with_routes(api.dashboard_routes(), api.dashboard_openapi())
            .router();
        let commands = nexus_runtime::http::CommandService::new(store)
            .with_routes(api.command_routes(), api.command_openapi())
            .router();
        Api {
            _dir: dir,
            dashboard,
            commands,
            audit,
        }
    }

    async fn get(
        router: &Router,
        uri: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value, Option<String>) {
        let mut request = Request::get(uri);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer secret-{key}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body, retry_after)
    }

    fn range() -> String {
        let from = (Utc::now() - chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let to = (Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        format!("from={}&to={}", urlencode(&from), urlencode(&to))
    }

    fn urlencode(text: &str) -> String {
        text.replace('+', "%2B").replace(':', "%3A")
    }

    /// Follows `first`'s continuation tokens through every page of `events`: the positions of
    /// all the events read, in order.
    async fn every_page(dashboard: &Router, events: &str, first: &Value) -> Vec<u64> {
        let positions_of = |page: &Value| -> Vec<u64> {
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["position"].as_u64().unwrap())
                .collect()
        };
        let mut positions = positions_of(first);
        let mut next = first["next_token"].as_str().map(str::to_owned);
        while let Some(token) = next {
            let (status, page, _) = get(
                dashboard,
                &format!("{events}&token={token}"),
                Some("auditor"),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            positions.extend(positions_of(&page));
            next = page["next_token"].as_str().map(str::to_owned);
        }
        positions
    }

    /// Asserts that the audit `page` holds an entry for every outcome the endpoints test
    /// provoked, with the caller and what was scanned; returns how many entries it holds.
    fn assert_every_outcome_audited(page: &Value) -> usize {
        let entries = page["entries"].as_array().unwrap();
        let seen = |outcome: &str, reason: Option<&str>, status: u64| {
            entries.iter().any(|e| {
                e["outcome"] == outcome
                    && reason.is_none_or(|r| e["reason"] == r)
                    && e["status"] == status
            })
        };
        assert!(seen("refused", Some("unauthenticated"), 401), "{page}");
        assert!(seen("refused", Some("forbidden"), 403), "{page}");
        assert!(seen("refused", Some("range_too_long"), 422), "{page}");
        assert!(seen("partial", Some("scan_limit"), 200), "{page}");
        assert!(seen("ok", None, 200), "{page}");
        assert!(seen("refused", Some("invalid_token"), 400), "{page}");
        assert!(seen("refused", Some("token_mismatch"), 400), "{page}");
        assert!(seen("refused", Some("rate_limited"), 429), "{page}");
        let forbidden = entries.iter().find(|e| e["status"] == 403).unwrap();
        assert_eq!(forbidden["client_id"], "key:reader");
        let partial = entries.iter().find(|e| e["outcome"] == "partial").unwrap();
        assert_eq!(partial["client_id"], "key:auditor");
        assert_eq!(partial["roles"], serde_json::json!(["auditor"]));
        assert_eq!(partial["scanned"], 10);
        entries.len()
    }

    /// Requests to `dashboard` that are refused, each naming why: 401 without a credential, 403
    /// without the permission, 422 for a range over the limit, 400 for an empty name (not a 404
    /// for the stream `/`), 404 for a stream with no events; `events` is a good query.
    async fn refusals_name_their_reason(dashboard: &Router, events: &str) {
        // 401 without a credential, 403 without the permission.
        let (status, _, _) = get(dashboard, events, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body, _) = get(dashboard, events, Some("reader")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.to_string().contains("temporal:read"), "{body}");

        // 422 naming the limit.
        let long = format!(
            "/temporal/events?aggregate_type=invoice&from={}&to={}",
            urlencode(&(Utc::now() - chrono::Duration::days(91)).to_rfc3339()),
            urlencode(&Utc::now().to_rfc3339())
        );
        let (status, body, _) = get(dashboard, &long, Some("auditor")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"], "range_too_long");
        assert_eq!(body["limit_days"], 90);

        // 400 for an empty name (not a 404 for the stream `/`), 404 for a stream with no events.
        let empty = format!("/temporal/events?aggregate_type=&aggregate_id=&{}", range());
        let (status, body, _) = get(dashboard, &empty, Some("auditor")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("`aggregate_type` is empty"),
            "{body}"
        );
        let none = format!(
            "/temporal/events?aggregate_type=invoice&aggregate_id=nobody&{}",
            range()
        );
        let (status, body, _) = get(dashboard, &none, Some("auditor")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"], "unknown_stream");
    }

    #[test]
    fn temporal_endpoints_authenticate_limit_page_and_audit_every_outcome() {
        let runtime = runtime();
        runtime.block_on(async {
            let api = api().await;
            let events = format!("/temporal/events?aggregate_type=invoice&{}", range());

            refusals_name_their_reason(&api.dashboard, &events).await;

            // Partial pages with continuation tokens, then the rest, exactly.
            let (status, first, _) = get(&api.dashboard, &events, Some("auditor")).await;
            assert_eq!(status, StatusCode::OK, "{first}");
            assert_eq!(first["partial"], true);
            assert_eq!(first["reason"], "scan_limit");
            let token = first["next_token"].as_str().unwrap().to_owned();
            let positions = every_page(&api.dashboard, &events, &first).await;
            let unique: HashSet<u64> = positions.iter().copied().collect();
            assert_eq!(unique.len(), 40, "the 40 invoice events, once each");

            // A forged or edited token, and another client's token, are refused.
            let mut edited = token.clone().into_bytes();
            edited[5] = if edited[5] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(edited).unwrap();
            let (status, body, _) = get(
                &api.dashboard,
                &format!("{events}&token={edited}"),
                Some("auditor"),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(body["error"], "invalid_token");
            let (status, body, _) = get(
                &api.dashboard,
                &format!("{events}&token={token}"),
                Some("other"),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(body["error"], "token_mismatch");

            // 429 on the 11th request within a minute, with Retry-After, keyed by client.
            for _ in 0..10 {
                let (status, _, _) = get(&api.dashboard, &events, Some("busy")).await;
                assert_eq!(status, StatusCode::OK);
            }
            let (status, body, retry_after) = get(&api.dashboard, &events, Some("busy")).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(body["error"], "rate_limited");
            let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
            assert!((1..=60).contains(&retry_after), "{retry_after}");
            let (status, _, _) = get(&api.dashboard, &events, Some("other")).await;
            assert_eq!(status, StatusCode::OK, "another client is not limited");

            // State as of a version, on the command service, through the same path.
            let (status, body, _) = get(
                &api.commands,
                "/temporal/state/ledger/l?version=2",
                Some("auditor"),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["state"]["balance"], 3);
            assert_eq!(body["version"], 2);
            let (status, _, _) = get(
                &api.commands,
                "/temporal/state/ledger/l?version=2",
                Some("reader"),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN);

            // Every outcome is in the audit log, readable with audit:read only.
            let (status, _, _) = get(&api.dashboard, "/audit/temporal", Some("reader")).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            let (status, page, _) = get(
                &api.dashboard,
                "/audit/temporal?limit=1000",
                Some("auditor"),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let entries = assert_every_outcome_audited(&page);
            let logged = api.audit.page(0, 1000).await.unwrap();
            assert!(logged.len() >= entries);

            // The OpenAPI documents describe the endpoints.
            let (_, doc, _) = get(&api.dashboard, "/openapi.json", None).await;
            assert!(doc["paths"]["/temporal/events"]["get"].is_object(), "{doc}");
            assert!(doc["paths"]["/audit/temporal"]["get"].is_object());
            let (_, doc, _) = get(&api.commands, "/openapi.json", None).await;
            assert!(doc["paths"]["/temporal/state/{aggregate}/{id}"]["get"].is_object());
        });
    }
}
