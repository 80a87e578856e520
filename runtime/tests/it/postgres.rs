//! Guarantees specific to the PostgreSQL store: immutability enforced by the database,
//! change-data-capture that never skips a late commit, partitioning, and connection loss.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nexus_runtime::store::OpenError;
use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};
use nexus_runtime::store::subscribe;
use nexus_runtime::{
    AppendError, EventStore, ExpectedVersion, LogPosition, Metadata, NewEvent, StreamId,
};

use crate::support::TestDb;

fn event(n: u32) -> NewEvent {
    NewEvent::from_json(
        "Happened",
        1,
        format!(r#"{{"n":{n}}}"#),
        Metadata::default(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_cannot_rewrite_history() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let stream = StreamId::new("thing", "immutable");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    let client = db.client().await;
    let partition = stream.partition(store.partition_count());
    for statement in [
        "UPDATE nexus.events SET payload = '{}'::jsonb".to_owned(),
        "DELETE FROM nexus.events".to_owned(),
        "TRUNCATE nexus.events".to_owned(),
        format!("UPDATE nexus.events_p{partition} SET event_type = 'Rewritten'"),
        format!("DELETE FROM nexus.events_p{partition}"),
        format!("TRUNCATE nexus.events_p{partition}"),
    ] {
        let err = client
            .batch_execute(&statement)
            .await
            .expect_err(&statement);
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(
            message.contains("events are immutable"),
            "{statement}: {message}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM nexus.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_the_partition_of_their_aggregate() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store_with(8).await;
    let client = db.client().await;
    for id in ["a", "b", "c", "d", "e"] {
        let stream = StreamId::new("thing", id);
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event(0)])
            .await
            .unwrap();
        let table: String = client
            .query_one(
                "SELECT tableoid::regclass::text FROM nexus.events WHERE aggregate_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(table, format!("nexus.events_p{}", stream.partition(8)));
    }
    let partitions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'nexus.events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 8);
    drop(store);
    let options = PostgresOptions {
        partitions: 4,
        ..PostgresOptions::default()
    };
    let err = PostgresStore::connect_with(&db.url, options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::PartitionMismatch {
                stored: 8,
                configured: 4
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_apply_migrations_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b, c) = tokio::join!(db.store_with(4), db.store_with(4), db.store_with(4));
    drop((a, b, c));
    let client = db.client().await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM nexus.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("the migrations folder")
        .count();
    assert_eq!(applied as usize, migrations, "each migration applied once");
}

/// Inserts one event the way an append does, inside an open transaction.
async fn insert_in(tx: &tokio_postgres::Transaction<'_>, id: &str) -> i64 {
    tx.query_one(
        "INSERT INTO nexus.events (partition, event_id, aggregate_type, aggregate_id, version, \
         event_type, schema_version, payload, metadata) \
         VALUES ($1, gen_random_uuid(), 'thing', $2, 1, 'Happened', 1, '{}', '{}') RETURNING global_position",
        &[&(StreamId::new("thing", id).partition(4) as i16), &id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Collects events until `count` have arrived (or 10 s pass), then checks nothing more comes.
///
/// The visibility horizon is cluster-wide, so a slow transaction elsewhere on the server (another
/// test's `CREATE DATABASE`) may hold delivery back for a while: wait generously.
async fn collect(
    subscription: &mut nexus_runtime::store::Subscription,
    count: usize,
) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < count {
        let Ok(next) = tokio::time::timeout_at(deadline, subscription.next()).await else {
            break;
        };
        let e = next.unwrap();
        seen.push((e.stream.aggregate_id().to_owned(), e.position));
    }
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await {
        panic!("an event beyond the expected {count}: {extra:?}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_with_a_lower_position_is_not_skipped() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let mut subscription = subscribe(Arc::clone(&store), LogPosition::START);
    let mut first = db.client().await;
    let mut second = db.client().await;
    let t1 = first.transaction().await.unwrap();
    let low = insert_in(&t1, "early").await;
    let t2 = second.transaction().await.unwrap();
    let high = insert_in(&t2, "late").await;
    assert!(low < high);
    // The higher position commits first; a position-based reader would deliver it and move past `low`.
    t2.commit().await.unwrap();
    store
        .append(
            &StreamId::new("thing", "poke"),
            ExpectedVersion::NoStream,
            vec![event(0)],
        )
        .await
        .unwrap();
    let before = collect(&mut subscription, 0).await;
    assert!(
        before.is_empty(),
        "nothing is delivered past a transaction still in flight: {before:?}"
    );
    t1.commit().await.unwrap();
    let after = collect(&mut subscription, 3).await;
    let ids: Vec<&str> = after.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["early", "late", "poke"],
        "every event once, in transaction order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transaction_that_writes_later_is_not_skipped() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let mut subscription = subscribe(Arc::clone(&store), LogPosition::START);
    let mut older = db.client().await;
    let mut younger = db.client().await;
    // `older` takes its transaction id first but writes last (a higher position).
    let t_old = older.transaction().await.unwrap();
    t_old
        .execute("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    let t_young = younger.transaction().await.unwrap();
    let low = insert_in(&t_young, "young").await;
    let high = insert_in(&t_old, "old").await;
    assert!(low < high);
    t_young.commit().await.unwrap();
    assert!(collect(&mut subscription, 0).await.is_empty());
    t_old.commit().await.unwrap();
    let seen = collect(&mut subscription, 2).await;
    let ids: HashSet<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(seen.len(), 2);
    assert_eq!(ids, HashSet::from(["young", "old"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing_acknowledged_and_duplicate_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let stream = StreamId::new("thing", "survivor");
    const APPENDS: u64 = 150;
    let writer = {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tokio::spawn(async move {
            for version in 0..APPENDS {
                let batch = vec![event(version as u32), event(version as u32)];
                // A retry after a lost connection resends the same event ids, so an append that
                // did commit before the connection died is recognised, not duplicated.
                loop {
                    match store
                        .append(&stream, ExpectedVersion::Exact(version * 2), batch.clone())
                        .await
                    {
                        Ok(result) => {
                            assert_eq!(result.version, version * 2 + 2);
                            break;
                        }
                        Err(AppendError::Unavailable(_)) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(other) => panic!("unexpected error: {other:?}"),
                    }
                }
            }
        })
    };
    let killer = db.client().await;
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(40)).await;
        kills += killer
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .len();
    }
    writer.await.unwrap();
    assert!(kills > 0, "the test killed connections");
    let stored = store.read_stream(&stream, 1, None).await.unwrap();
    assert_eq!(stored.len() as u64, APPENDS * 2);
    for (expected, e) in (1..).zip(&stored) {
        assert_eq!(e.version, expected);
    }
    let ids: HashSet<_> = stored.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_every_pooled_connection_died_reaches_a_fresh_one() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let stream = StreamId::new("thing", "pooled");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    // Concurrent reads leave several connections in the pool.
    let reads = (0..4).map(|_| store.read_stream(&stream, 1, None));
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap().len(), 1);
    }
    let killer = db.client().await;
    let killed = killer
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .len();
    assert!(killed >= 2, "the pool held {killed} connections");
    let stored = store
        .read_stream(&stream, 1, None)
        .await
        .expect("a read after the kill");
    assert_eq!(stored.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_gives_a_typed_error_and_nothing_half_written() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let stream = StreamId::new("thing", "down");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    db.go_away().await;
    let err = store
        .append(&stream, ExpectedVersion::Exact(1), vec![event(1), event(2)])
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::Unavailable(_)), "{err:?}");
    assert_eq!(err.to_string(), "event store is unavailable");
    let err = store.read_stream(&stream, 1, None).await.unwrap_err();
    assert!(
        matches!(err, nexus_runtime::ReadError::Unavailable(_)),
        "{err:?}"
    );
    db.come_back().await;
    let stored = store.read_stream(&stream, 1, None).await.unwrap();
    assert_eq!(stored.len(), 1, "the failed append left nothing behind");
    let ok = store
        .append(&stream, ExpectedVersion::Exact(1), vec![event(1)])
        .await
        .unwrap();
    assert_eq!(ok.version, 2);
}

/// What README.md tells operators to grant the role the services run under: read and insert
/// events, nothing else on the event log (the owner runs the migrations).
fn service_role_grants(role: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA nexus TO {role}; \
         GRANT SELECT, INSERT ON nexus.events TO {role}; \
         GRANT USAGE ON SEQUENCE nexus.events_position_seq TO {role}; \
         GRANT SELECT ON nexus.store_meta, nexus.schema_migrations TO {role};"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_runs_under_a_role_that_may_only_insert_and_select_events() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The owner migrates.
    let owner = db.store().await;
    let stream = StreamId::new("thing", "restricted");
    owner
        .append(&stream, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let role = format!("nexus_svc_{}", uuid::Uuid::now_v7().simple());
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; {}",
            service_role_grants(&role)
        ))
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test URL names its user");
    let result = async {
        let store = PostgresStore::connect_with(
            &url,
            PostgresOptions {
                partitions: 4,
                ..PostgresOptions::default()
            },
        )
        .await
        .expect("the service role opens a migrated store");
        store
            .append(&stream, ExpectedVersion::Exact(1), vec![event(2)])
            .await
            .expect("the service role appends");
        assert_eq!(store.read_stream(&stream, 1, None).await.unwrap().len(), 2);
        // Change capture shows a commit once no older transaction of the cluster is still
        // open, and other tests hold some open for a while: wait for it, within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let seen = store.read_all(LogPosition::START, 10).await.unwrap().len();
            if seen == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the service role reads {seen} of 2 events through change capture"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for statement in [
            "UPDATE nexus.events SET event_type = 'Rewritten'",
            "DELETE FROM nexus.events",
            "TRUNCATE nexus.events",
            "ALTER TABLE nexus.events DISABLE TRIGGER USER",
            "SET session_replication_role = replica",
        ] {
            let err = client.batch_execute(statement).await.expect_err(statement);
            let message = err
                .as_db_error()
                .map(|e| e.message().to_owned())
                .unwrap_or_default();
            assert!(
                message.contains("permission denied") || message.contains("must be owner"),
                "{statement}: {message}"
            );
        }
    }
    .await;
    let _ = admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    result
}
