//! Storage conformance: one suite, run against the embedded SQLite backend and against PostgreSQL.

use std::sync::Arc;

use nexus_schema_registry::compat::Level;
use nexus_schema_registry::storage::{
    ConfigRecord, GLOBAL, Mode, NewVersion, SchemaReference, Storage, StorageError,
    postgres::PostgresStorage, sqlite::SqliteStorage,
};

fn new_version(subject: &str, expected_last: u32, schema: &str) -> NewVersion {
    NewVersion {
        subject: subject.to_owned(),
        expected_last,
        schema: schema.to_owned(),
        major: 1,
        semver: format!("1.{expected_last}.0"),
        registered_by: "tester".to_owned(),
        created_at_ms: 1_700_000_000_000 + i64::from(expected_last),
        references: Vec::new(),
    }
}

async fn same_schema_text_gets_one_id_across_subjects(s: &dyn Storage) {
    let (a, va) = s
        .insert_version(new_version("a", 0, r#"{"type":"string"}"#))
        .await
        .expect("insert a");
    let (b, vb) = s
        .insert_version(new_version("b", 0, r#"{"type":"string"}"#))
        .await
        .expect("insert b");
    assert_eq!(a, b);
    assert_eq!((va, vb), (1, 1));
    let (c, _) = s
        .insert_version(new_version("b", 1, r#"{"type":"integer"}"#))
        .await
        .expect("insert c");
    assert_ne!(a, c);
    assert_eq!(
        s.schema_id(r#"{"type":"string"}"#).await.expect("id"),
        Some(a)
    );
    assert_eq!(
        s.schema(a).await.expect("schema").as_deref(),
        Some(r#"{"type":"string"}"#)
    );
    let usages = s.usages(a).await.expect("usages");
    assert_eq!(
        usages
            .iter()
            .map(|u| (u.subject.as_str(), u.version))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 1)]
    );
}

async fn version_records_round_trip(s: &dyn Storage) {
    s.insert_version(new_version("rt", 0, r#"{"title":"x"}"#))
        .await
        .expect("insert");
    let v = s.version("rt", 1).await.expect("read").expect("present");
    assert_eq!(v.subject, "rt");
    assert_eq!(v.version, 1);
    assert_eq!(v.major, 1);
    assert_eq!(v.semver, "1.0.0");
    assert_eq!(v.registered_by, "tester");
    assert_eq!(v.created_at_ms, 1_700_000_000_000);
    assert!(!v.deleted);
    assert_eq!(s.latest("rt").await.expect("latest"), Some(v.clone()));
    assert_eq!(s.versions("rt").await.expect("versions"), vec![v]);
    assert_eq!(s.version("rt", 2).await.expect("read"), None);
    assert_eq!(s.latest("missing").await.expect("read"), None);
}

async fn stale_expected_version_is_a_conflict_and_stores_nothing(s: &dyn Storage) {
    s.insert_version(new_version("c", 0, r#"{"minimum":1}"#))
        .await
        .expect("first");
    let err = s
        .insert_version(new_version("c", 0, r#"{"minimum":2}"#))
        .await
        .expect_err("stale expectation must fail");
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");
    assert_eq!(s.versions("c").await.expect("versions").len(), 1);
    assert_eq!(
        s.schema_id(r#"{"minimum":2}"#).await.expect("id"),
        None,
        "no orphan schema row"
    );
}

async fn concurrent_registrations_take_distinct_numbers_and_one_id(s: Arc<dyn Storage>) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            // Each task retries like the server does: re-read the last version, then insert.
            loop {
                let last = s
                    .versions("race")
                    .await
                    .expect("versions")
                    .last()
                    .map_or(0, |v| v.version);
                match s
                    .insert_version(new_version("race", last, r#"{"type":"boolean"}"#))
                    .await
                {
                    Ok(done) => return done,
                    Err(StorageError::Conflict { .. }) => continue,
                    Err(e) => panic!("unexpected error: {e:?}"),
                }
            }
        }));
    }
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    for t in tasks {
        let (id, v) = t.await.expect("task");
        ids.push(id);
        versions.push(v);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one id for one schema text");
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=8).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
}

async fn deletes_follow_soft_then_permanent_order(s: &dyn Storage) {
    for i in 0..3 {
        s.insert_version(new_version("d", i, &format!(r#"{{"maxLength":{i}}}"#)))
            .await
            .expect("insert");
    }
    assert_eq!(
        s.hard_delete("d", Some(2)).await.expect("hard"),
        Vec::<u32>::new(),
        "not soft-deleted yet"
    );
    assert_eq!(s.soft_delete("d", Some(2)).await.expect("soft"), vec![2]);
    assert_eq!(
        s.soft_delete("d", Some(2)).await.expect("soft again"),
        Vec::<u32>::new()
    );
    assert_eq!(
        s.latest("d").await.expect("latest").map(|v| v.version),
        Some(3)
    );
    assert!(
        s.version("d", 2)
            .await
            .expect("read")
            .expect("still there")
            .deleted
    );
    assert_eq!(s.hard_delete("d", Some(2)).await.expect("hard"), vec![2]);
    assert_eq!(s.version("d", 2).await.expect("read"), None);
    assert_eq!(
        s.soft_delete("d", None).await.expect("soft all"),
        vec![1, 3]
    );
    assert!(
        !s.subjects(false)
            .await
            .expect("subjects")
            .contains(&"d".to_owned())
    );
    assert!(
        s.subjects(true)
            .await
            .expect("subjects")
            .contains(&"d".to_owned())
    );
    // Numbering continues after a soft delete.
    let (_, v) = s
        .insert_version(new_version("d", 3, r#"{"maxLength":9}"#))
        .await
        .expect("insert");
    assert_eq!(v, 4);
    s.soft_delete("d", None).await.expect("soft all");
    s.put_config(
        "d",
        ConfigRecord {
            compatibility: Level::Full,
            compatibility_group: None,
        },
    )
    .await
    .expect("config");
    assert_eq!(
        s.hard_delete("d", None).await.expect("hard all"),
        vec![1, 3, 4]
    );
    assert_eq!(
        s.config("d").await.expect("config"),
        None,
        "permanent delete drops the subject config"
    );
    // A permanent delete resets numbering.
    let (_, v) = s
        .insert_version(new_version("d", 0, r#"{"maxLength":1}"#))
        .await
        .expect("insert");
    assert_eq!(v, 1);
}

async fn config_and_mode_are_per_subject_with_a_global_entry(s: &dyn Storage) {
    assert_eq!(s.config(GLOBAL).await.expect("config"), None);
    let full = ConfigRecord {
        compatibility: Level::Full,
        compatibility_group: Some("major_version".into()),
    };
    s.put_config(GLOBAL, full.clone()).await.expect("put");
    s.put_config(
        "cfg",
        ConfigRecord {
            compatibility: Level::None,
            compatibility_group: None,
        },
    )
    .await
    .expect("put");
    assert_eq!(s.config(GLOBAL).await.expect("config"), Some(full.clone()));
    assert_eq!(
        s.config("cfg")
            .await
            .expect("config")
            .map(|c| c.compatibility),
        Some(Level::None)
    );
    assert_eq!(
        s.delete_config("cfg")
            .await
            .expect("delete")
            .map(|c| c.compatibility),
        Some(Level::None)
    );
    assert_eq!(s.delete_config("cfg").await.expect("delete"), None);
    s.put_mode(GLOBAL, Mode::ReadOnly).await.expect("mode");
    s.put_mode(GLOBAL, Mode::ReadWrite).await.expect("mode");
    assert_eq!(s.mode(GLOBAL).await.expect("mode"), Some(Mode::ReadWrite));
    assert_eq!(s.delete_mode("nothing").await.expect("mode"), None);
    s.ping().await.expect("ping");
}

async fn references_are_part_of_a_schema_and_point_back(s: &dyn Storage) {
    let (base, _) = s
        .insert_version(new_version("ref-base", 0, r#"{"type":"object"}"#))
        .await
        .expect("base");
    let reference = SchemaReference {
        name: "base.json".to_owned(),
        subject: "ref-base".to_owned(),
        version: 1,
    };
    let text = r#"{"$ref":"base.json"}"#;
    let (plain, _) = s
        .insert_version(new_version("ref-plain", 0, text))
        .await
        .expect("plain");
    let mut with = new_version("ref-user", 0, text);
    with.references = vec![reference.clone()];
    let (id, _) = s.insert_version(with).await.expect("with references");
    assert_ne!(id, plain, "the same text with references is another schema");
    assert_ne!(id, base);
    assert_eq!(
        s.references(id).await.expect("refs"),
        std::slice::from_ref(&reference)
    );
    assert!(s.references(plain).await.expect("refs").is_empty());
    assert_eq!(s.referenced_by("ref-base", 1).await.expect("by"), [id]);
    // Registering it again in another subject reuses the id and its references.
    let mut again = new_version("ref-other", 0, text);
    again.references = vec![reference];
    assert_eq!(s.insert_version(again).await.expect("again").0, id);
    assert_eq!(s.referenced_by("ref-base", 1).await.expect("by"), [id]);
    assert!(s.referenced_by("ref-base", 2).await.expect("by").is_empty());
}

async fn conformance(s: Arc<dyn Storage>) {
    references_are_part_of_a_schema_and_point_back(s.as_ref()).await;
    same_schema_text_gets_one_id_across_subjects(s.as_ref()).await;
    version_records_round_trip(s.as_ref()).await;
    stale_expected_version_is_a_conflict_and_stores_nothing(s.as_ref()).await;
    concurrent_registrations_take_distinct_numbers_and_one_id(Arc::clone(&s)).await;
    deletes_follow_soft_then_permanent_order(s.as_ref()).await;
    config_and_mode_are_per_subject_with_a_global_entry(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_storage_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SqliteStorage::open(dir.path().join("registry.db")).expect("open");
    conformance(Arc::new(storage)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_storage_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.db");
    let id = {
        let s = SqliteStorage::open(&path).expect("open");
        s.insert_version(new_version("keep", 0, r#"{"type":"null"}"#))
            .await
            .expect("insert")
            .0
    };
    let s = SqliteStorage::open(&path).expect("reopen");
    assert_eq!(
        s.latest("keep").await.expect("latest").map(|v| v.id),
        Some(id)
    );
}

use nexus_test_support::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_storage_passes_the_conformance_suite() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let storage = PostgresStorage::connect_with(db.config())
        .await
        .expect("connect");
    conformance(Arc::new(storage)).await;
}

#[tokio::test]
async fn postgres_storage_reports_an_unreachable_server_as_unavailable() {
    // Port 1 on loopback refuses connections.
    let err = PostgresStorage::connect("postgres://postgres@127.0.0.1:1/none")
        .await
        .expect_err("must fail");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
}

/// 50 clients register 50 different compatible schemas to one subject at once: each succeeds,
/// and the versions are 1..=50 without gaps.
async fn fifty_parallel_registrations_all_succeed(storage: Arc<dyn Storage>) {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use nexus_schema_registry::server::{AppState, Options, app};
    use tower::ServiceExt;

    let router = app(AppState::new(storage, Options::default()));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let router = router.clone();
        // Distinct texts that are compatible with each other in any order.
        let schema = serde_json::json!({"type": "object", "title": format!("writer {i}")});
        let body =
            serde_json::json!({"schema": schema.to_string(), "schemaType": "JSON"}).to_string();
        tasks.push(tokio::spawn(async move {
            let response = router
                .oneshot(
                    Request::post("/subjects/crowd/versions")
                        .header("content-type", "application/vnd.schemaregistry.v1+json")
                        .body(Body::from(body))
                        .expect("request"),
                )
                .await
                .expect("infallible");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            v["version"].as_u64().expect("version")
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.expect("task"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=50).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_registry_serves_fifty_parallel_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStorage::open(dir.path().join("r.db")).expect("open");
    fifty_parallel_registrations_all_succeed(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_registry_serves_fifty_parallel_writers() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let s = PostgresStorage::connect_with(db.config())
        .await
        .expect("connect");
    fifty_parallel_registrations_all_succeed(Arc::new(s)).await;
}
