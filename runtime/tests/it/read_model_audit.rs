//! The audit log of read-model changes, on SQLite files and on PostgreSQL tables: each change
//! with the event behind it and the document before and after, refused rewrites, a tampered
//! entry found at its seq, retention by whole segments, rebuilds recorded, and the page bound.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_runtime::projection::{
    AuditEntry, AuditKind, AuditRetention, Changes, Projection, ProjectionError, ProjectionHandle,
    ReadModelStore, Retention, RunnerOptions,
};
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use serde_json::{Value, json};

use crate::projection::{Backend, Setup, eventually, on_each_backend};

/// `{"set": n}` writes document `{"n": n}` of its aggregate; `{"drop": true}` deletes it.
struct Ledger;

#[async_trait]
impl Projection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let payload: Value = serde_json::from_str(event.payload.get())?;
        let id = event.stream.aggregate_id();
        if payload["drop"] == json!(true) {
            changes.delete("docs", id);
        } else {
            changes.put("docs", id, json!({ "n": payload["set"] }));
        }
        Ok(())
    }
}

fn set(n: i64) -> NewEvent {
    NewEvent::from_json(
        "Set",
        1,
        json!({ "set": n }).to_string(),
        Metadata::correlated(format!("corr-{n}")),
    )
    .unwrap()
}

fn drop_it() -> NewEvent {
    NewEvent::from_json(
        "Dropped",
        1,
        json!({ "drop": true }).to_string(),
        Metadata::correlated("corr-drop"),
    )
    .unwrap()
}

async fn append(store: &Arc<dyn EventStore>, id: &str, events: Vec<NewEvent>) {
    store
        .append(&StreamId::new("meter", id), ExpectedVersion::Any, events)
        .await
        .unwrap();
}

/// Waits until the projection has applied `version` of `meter/{id}`.
async fn applied(handle: &ProjectionHandle, id: &str, version: u64) {
    let stream = StreamId::new("meter", id);
    eventually(
        handle,
        Duration::from_secs(10),
        &format!("meter/{id}@{version}"),
        async |h| h.read_model().stream_version(&stream).await.unwrap() >= version,
    )
    .await;
}

/// Every entry of a document's history, page by page.
async fn history(store: &ReadModelStore, id: &str) -> Vec<AuditEntry> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_history("docs", id, after, 100).await.unwrap();
        entries.extend(page.entries);
        match page.next_after {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

fn options(batch_size: usize) -> RunnerOptions {
    RunnerOptions {
        batch_size,
        ..RunnerOptions::default()
    }
}

/// Runs raw SQL on the read model's database as another client would (on PostgreSQL with the
/// read models' schema first on the search path).
async fn raw(setup: &Setup, sql: &str) -> Result<u64, String> {
    #[cfg(feature = "postgres")]
    if let Some(db) = &setup.db {
        let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let sql = format!("SET search_path TO nexus_read_models; {sql}");
        return match client.batch_execute(&sql).await {
            Ok(()) => Ok(0),
            Err(err) => Err(err
                .as_db_error()
                .map_or_else(|| err.to_string(), |e| e.message().to_owned())),
        };
    }
    let path = setup
        .runner
        .read_models()
        .open("ledger")
        .unwrap()
        .path()
        .unwrap()
        .to_path_buf();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(sql)
        .map(|()| 0)
        .map_err(|e| e.to_string())
}

on_each_backend!(
    history_records_each_change_with_its_event_before_and_after,
    the_database_refuses_rewrites_and_verify_finds_a_tampered_entry,
    retention_removes_whole_old_segments_and_the_chain_still_verifies,
    a_rebuild_is_recorded_and_earlier_history_stays,
    a_history_page_holds_at_most_the_bound,
    automatic_retention_removes_whole_old_segments_and_records_each_prune,
);

/// A runner configured with retention prunes by itself: complete segments go, each prune is
/// an entry of the chain, the chain still verifies, and the newest entries stay.
async fn automatic_retention_removes_whole_old_segments_and_records_each_prune(backend: Backend) {
    let options = RunnerOptions {
        audit_retention: Some(AuditRetention {
            keep: Duration::ZERO,
            segment: 5,
            every: Duration::from_millis(20),
        }),
        ..options(1)
    };
    let Some(setup) = Setup::new(backend, options).await else {
        return;
    };
    append(&setup.store, "a", (1..=12).map(set).collect()).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 12).await;
    // Entries 1 to 10 make two whole segments; the prunes append entries of their own.
    eventually(
        &handle,
        Duration::from_secs(10),
        "retention to remove entries 1 to 10",
        async |h| h.read_model().audit_verify().await.unwrap().first_seq > Some(10),
    )
    .await;
    handle.stop().await;
    let store = setup.reopen("ledger").await;
    let verified = store.audit_verify().await.unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    let (first, last) = (verified.first_seq.unwrap(), verified.last_seq.unwrap());
    // Whole segments only, and each prune appended an entry recording it: 12 changes and at
    // least one prune (this projection appends nothing else).
    assert_eq!((first - 1) % 5, 0, "{verified:?}");
    assert!(last > 12, "{verified:?}");
    assert_eq!(verified.entries_checked, last - first + 1, "{verified:?}");
}

async fn history_records_each_change_with_its_event_before_and_after(backend: Backend) {
    let Some(setup) = Setup::new(backend, options(256)).await else {
        return;
    };
    append(&setup.store, "a", vec![set(1), set(2), set(2), drop_it()]).await;
    append(&setup.store, "b", vec![set(7)]).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 4).await;
    applied(&handle, "b", 1).await;
    let stored = setup
        .store
        .read_stream(&StreamId::new("meter", "a"), 1, None)
        .await
        .unwrap();

    let store = setup.reopen("ledger").await;
    let entries = history(&store, "a").await;
    // Three changes: the second `set(2)` wrote what was already there.
    let summary: Vec<(Option<Value>, Option<Value>, u64)> = entries
        .iter()
        .map(|e| {
            assert_eq!(e.kind, AuditKind::Change);
            assert_eq!(e.projection, "ledger");
            assert_eq!(e.collection.as_deref(), Some("docs"));
            assert_eq!(e.id.as_deref(), Some("a"));
            (
                e.before.clone(),
                e.after.clone(),
                e.cause.as_ref().unwrap().version,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, Some(json!({"n": 1})), 1),
            (Some(json!({"n": 1})), Some(json!({"n": 2})), 2),
            (Some(json!({"n": 2})), None, 4),
        ]
    );
    for (entry, version) in entries.iter().zip([1usize, 2, 4]) {
        let cause = entry.cause.as_ref().unwrap();
        let event = &stored[version - 1];
        assert_eq!(cause.event_id, event.id.to_string());
        assert_eq!(cause.event_type, event.event_type);
        assert_eq!(
            (cause.aggregate_type.as_str(), cause.aggregate_id.as_str()),
            ("meter", "a")
        );
        assert_eq!(cause.position, event.position);
        assert_eq!(cause.correlation_id, event.metadata.correlation_id);
        assert!(entry.at <= Utc::now() && entry.at > Utc::now() - chrono::Duration::minutes(1));
    }
    let other = history(&store, "b").await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].after, Some(json!({"n": 7})));
    assert!(history(&store, "nobody").await.is_empty());

    let report = store.audit_verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries_checked, 4);
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(4)));
    handle.stop().await;
}

async fn the_database_refuses_rewrites_and_verify_finds_a_tampered_entry(backend: Backend) {
    let Some(setup) = Setup::new(backend, options(1)).await else {
        return;
    };
    append(&setup.store, "a", vec![set(1), set(2), set(3)]).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 3).await;
    handle.stop().await;

    for statement in [
        "UPDATE audit_log SET after = NULL WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 1",
        "DELETE FROM audit_log",
    ] {
        let refused = raw(&setup, statement).await.unwrap_err();
        assert!(refused.contains("append-only"), "{statement}: {refused}");
    }
    match backend {
        Backend::Sqlite => {
            let refused = raw(
                &setup,
                "INSERT OR REPLACE INTO audit_log (seq, projection, kind, at, hash) \
                 VALUES (2, 'ledger', 'change', 0, x'00')",
            )
            .await
            .unwrap_err();
            assert!(refused.contains("append-only"), "{refused}");
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let refused = raw(&setup, "TRUNCATE audit_log").await.unwrap_err();
            assert!(refused.contains("append-only"), "{refused}");
        }
    }
    let store = setup.reopen("ledger").await;
    assert!(store.audit_verify().await.unwrap().is_intact());

    // Someone able to bypass the trigger rewrites entry 2.
    let bypass = match backend {
        Backend::Sqlite => {
            "DROP TRIGGER audit_log_is_append_only_update; \
             UPDATE audit_log SET after = '{\"n\":20}' WHERE seq = 2;"
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only_rows; \
             UPDATE audit_log SET after = '{\"n\":20}' WHERE seq = 2;"
        }
    };
    raw(&setup, bypass).await.unwrap();
    let report = store.audit_verify().await.unwrap();
    let broken = report.broken.clone().expect("the rewrite is found");
    assert_eq!(broken.seq, 2, "{report:?}");
    assert_eq!(report.entries_checked, 1);
    assert_eq!(history(&store, "a").await[1].after, Some(json!({"n": 20})));
}

/// The `at` of entry `seq` of document `a`.
async fn at_of(store: &ReadModelStore, seq: u64) -> DateTime<Utc> {
    let entries = history(store, "a").await;
    entries.iter().find(|e| e.seq == seq).unwrap().at
}

async fn retention_removes_whole_old_segments_and_the_chain_still_verifies(backend: Backend) {
    // One event per commit, so entries have distinct times.
    let Some(setup) = Setup::new(backend, options(1)).await else {
        return;
    };
    append(&setup.store, "a", (1..=25).map(set).collect()).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 25).await;
    handle.stop().await;
    let store = setup.reopen("ledger").await;

    // Entries 1 to 14 are older than entry 15: only the first whole segment of 10 goes.
    let older_than = at_of(&store, 15).await;
    assert!(at_of(&store, 14).await < older_than);
    let report = store
        .audit_prune(Retention {
            older_than,
            segment: 10,
        })
        .await
        .unwrap();
    assert_eq!((report.removed, report.range), (10, Some((1, 10))));
    assert_eq!(report.entry, Some(26));
    let verified = store.audit_verify().await.unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(
        (verified.first_seq, verified.last_seq),
        (Some(11), Some(26))
    );
    assert_eq!(verified.entries_checked, 16);

    // Nothing is old enough: nothing goes, nothing is recorded.
    let none = store
        .audit_prune(Retention {
            older_than: older_than - chrono::Duration::hours(1),
            segment: 10,
        })
        .await
        .unwrap();
    assert_eq!((none.removed, none.entry), (0, None));

    // Everything is old, but entries 21 to 26 do not fill a segment: they stay.
    let report = store
        .audit_prune(Retention {
            older_than: Utc::now() + chrono::Duration::hours(1),
            segment: 10,
        })
        .await
        .unwrap();
    assert_eq!((report.removed, report.range), (10, Some((11, 20))));
    assert_eq!(report.entry, Some(27));
    let verified = store.audit_verify().await.unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(
        (verified.first_seq, verified.last_seq),
        (Some(21), Some(27))
    );

    // The history says what retention removed; the permit is gone with its transaction.
    let entries = history(&store, "a").await;
    assert_eq!(entries.first().map(|e| e.seq), Some(21));
    let prune = entries.last().unwrap();
    assert_eq!(prune.kind, AuditKind::Prune);
    assert_eq!(prune.detail.as_ref().unwrap()["removed_from"], json!(11));
    assert_eq!(prune.detail.as_ref().unwrap()["removed_to"], json!(20));
    let refused = raw(&setup, "DELETE FROM audit_log WHERE seq = 21")
        .await
        .unwrap_err();
    assert!(refused.contains("append-only"), "{refused}");
}

async fn a_rebuild_is_recorded_and_earlier_history_stays(backend: Backend) {
    let Some(setup) = Setup::new(backend, options(256)).await else {
        return;
    };
    append(&setup.store, "a", vec![set(1), set(2)]).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 2).await;
    handle.stop().await;
    let store = setup.reopen("ledger").await;
    let before = history(&store, "a").await;
    assert_eq!(before.len(), 2);

    // The read model is wiped for a rebuild: documents, versions and checkpoint.
    let wipe = match backend {
        Backend::Sqlite => {
            "DELETE FROM documents; DELETE FROM stream_versions; DELETE FROM checkpoint;"
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            "DELETE FROM documents; DELETE FROM stream_versions; DELETE FROM checkpoints;"
        }
    };
    raw(&setup, wipe).await.unwrap();
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 2).await;
    append(&setup.store, "a", vec![set(3)]).await;
    applied(&handle, "a", 3).await;
    handle.stop().await;

    let after = history(&store, "a").await;
    assert_eq!(&after[..2], &before[..], "earlier history is not rewritten");
    let kinds: Vec<AuditKind> = after.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            AuditKind::Change,
            AuditKind::Change,
            AuditKind::Rebuild,
            AuditKind::Change,
            AuditKind::Change,
            AuditKind::Change,
        ]
    );
    let rebuild = &after[2];
    assert_eq!(rebuild.detail.as_ref().unwrap()["from"], json!(0));
    assert!(rebuild.detail.as_ref().unwrap()["previous_checkpoint"].as_u64() >= Some(2));
    // The rebuild applies the events again onto an empty read model.
    assert_eq!(after[3].before, None);
    assert_eq!(after[3].after, Some(json!({"n": 1})));
    assert_eq!(after[5].after, Some(json!({"n": 3})));
    assert!(store.audit_verify().await.unwrap().is_intact());

    // A plain restart (no rebuild) records nothing.
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 3).await;
    handle.stop().await;
    assert_eq!(history(&store, "a").await.len(), 6);
}

async fn a_history_page_holds_at_most_the_bound(backend: Backend) {
    use nexus_runtime::projection::store::audit::MAX_HISTORY_PAGE;
    let Some(setup) = Setup::new(backend, options(256)).await else {
        return;
    };
    let changes = MAX_HISTORY_PAGE as i64 + 1;
    append(&setup.store, "a", (1..=changes).map(set).collect()).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", changes as u64).await;
    handle.stop().await;
    let store = setup.reopen("ledger").await;

    let first = store
        .audit_history("docs", "a", 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(first.entries.len(), MAX_HISTORY_PAGE);
    assert_eq!(first.next_after, Some(MAX_HISTORY_PAGE as u64));
    let rest = store
        .audit_history("docs", "a", MAX_HISTORY_PAGE as u64, usize::MAX)
        .await
        .unwrap();
    assert_eq!(rest.entries.len(), 1);
    assert_eq!(rest.next_after, None);
    let exact = store
        .audit_history("docs", "a", 1, MAX_HISTORY_PAGE)
        .await
        .unwrap();
    assert_eq!(
        (exact.entries.len(), exact.next_after),
        (MAX_HISTORY_PAGE, None)
    );
    let smallest = store.audit_history("docs", "a", 0, 0).await.unwrap();
    assert_eq!((smallest.entries.len(), smallest.next_after), (1, Some(1)));
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_served_over_http_with_audit_read_only() {
    use axum::http::StatusCode;
    use nexus_runtime::http::QueryDashboard;

    use crate::support::http::{access, send, token};

    let Some(setup) = Setup::new(Backend::Sqlite, options(256)).await else {
        return;
    };
    append(&setup.store, "a", vec![set(1), drop_it()]).await;
    let handle = setup.runner.spawn(Ledger).unwrap();
    applied(&handle, "a", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let app = QueryDashboard::new(setup.runner.health())
        .with_access(access(dir.path()).await)
        .read_model(&handle)
        .router();
    let uri = "/audit/read-models/ledger/docs/a";
    let (auditor, reader) = (token("auditor"), token("reader"));

    let (status, _) = send(&app, "GET", uri, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(&app, "GET", uri, Some(&reader), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = send(&app, "GET", uri, Some(&auditor), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["projection"], "ledger");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["after"], json!({"n": 1}));
    assert_eq!(entries[0]["cause"]["event_type"], "Set");
    assert_eq!(entries[0]["cause"]["correlation_id"], "corr-1");
    assert_eq!(entries[1]["before"], json!({"n": 1}));
    assert_eq!(entries[1]["after"], Value::Null);
    assert_eq!(entries[1]["cause"]["version"], 2);
    assert_eq!(body["next_after"], Value::Null);

    let (_, first) = send(&app, "GET", &format!("{uri}?limit=1"), Some(&auditor), None).await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 1);
    assert_eq!(first["next_after"], 1);
    let (_, rest) = send(&app, "GET", &format!("{uri}?after=1"), Some(&auditor), None).await;
    assert_eq!(rest["entries"][0]["seq"], 2);

    use nexus_runtime::projection::store::audit::MAX_HISTORY_PAGE;
    for bad in [
        format!("{uri}?limit={}", MAX_HISTORY_PAGE + 1),
        format!("{uri}?limit=0"),
        format!("{uri}?after=-1"),
        format!("{uri}?since=1"),
    ] {
        let (status, body) = send(&app, "GET", &bad, Some(&auditor), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = send(
        &app,
        "GET",
        &format!("{uri}?limit={MAX_HISTORY_PAGE}"),
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(
        &app,
        "GET",
        "/audit/read-models/nope/docs/a",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, doc) = send(&app, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let path = &doc["paths"]["/audit/read-models/{projection}/{collection}/{id}"]["get"];
    assert_eq!(path["operationId"], "read_model_audit_history", "{doc}");
    handle.stop().await;
}
