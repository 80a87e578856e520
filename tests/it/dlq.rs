//! `nexus dlq`: listing, showing and redriving a projection's dead letters from the command line.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, ProjectionRunner, ReadModels, RetrySchedule,
    RunnerOptions,
};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};

use crate::support::{TestDb, nexus};

struct Refuses;

#[async_trait]
impl Projection for Refuses {
    fn name(&self) -> &str {
        "refuser"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        _: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        Err(ProjectionError::new(format!(
            "refusing {}",
            event.event_type
        )))
    }
}

/// Where the projection under test keeps its read model.
enum Backend<'a> {
    Sqlite,
    Postgres(&'a str),
}

fn dead_letter_in(dir: &std::path::Path) {
    dead_letter_with(dir, &Backend::Sqlite);
}

fn dead_letter_with(dir: &std::path::Path, backend: &Backend<'_>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store: Arc<dyn EventStore> =
            Arc::new(EmbeddedStore::open(dir.join("events.db")).unwrap());
        let options = RunnerOptions {
            retry: RetrySchedule {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                max_retries: 5,
            },
            ..RunnerOptions::default()
        };
        let bus = Arc::new(InProcessBus::new(Arc::clone(&store)));
        let read_models = match backend {
            Backend::Sqlite => ReadModels::sqlite(dir.join("read-models")),
            Backend::Postgres(url) => {
                ReadModels::postgres(url, ReadModels::DEFAULT_POSTGRES_SCHEMA)
                    .await
                    .unwrap()
            }
        };
        let runner = ProjectionRunner::with_read_models(Arc::clone(&store), bus, read_models)
            .with_options(options);
        let handle = runner.spawn(Refuses).unwrap();
        let event =
            NewEvent::from_json("Odd", 1, r#"{"x":1}"#, Metadata::correlated("c-1")).unwrap();
        store
            .append(
                &StreamId::new("thing", "t1"),
                ExpectedVersion::NoStream,
                vec![event],
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handle.read_model().dead_letters().await.unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no dead letter");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle.stop().await;
    });
}

fn dlq(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    nexus()
        .arg("dlq")
        .args(args)
        .arg("--read-models")
        .arg(dir.join("read-models"))
        .output()
        .expect("run nexus")
}

#[test]
fn dlq_lists_shows_and_redrives_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    dead_letter_in(dir.path());

    let listed = dlq(dir.path(), &["list", "refuser", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let letters: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1);
    assert_eq!(letters[0]["attempts"], 6);
    assert_eq!(letters[0]["status"], "dead");
    assert_eq!(letters[0]["error"], "refusing Odd");
    let id = letters[0]["id"].as_i64().unwrap();

    let shown = dlq(dir.path(), &["show", "refuser", &id.to_string()]);
    assert!(shown.status.success());
    let letter: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(letter["event"]["metadata"]["correlation_id"], "c-1");
    assert_eq!(letter["event"]["stream"]["aggregate_id"], "t1");

    let human = dlq(dir.path(), &["list", "refuser"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("thing-t1 v1 Odd"), "{text}");

    let redrive = dlq(dir.path(), &["redrive", "refuser", "--all", "--json"]);
    assert!(redrive.status.success());
    let marked: serde_json::Value = serde_json::from_slice(&redrive.stdout).unwrap();
    assert_eq!(marked["marked"], 1);

    let vague = dlq(dir.path(), &["redrive", "refuser"]);
    assert_eq!(vague.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&vague.stderr).contains("--id N, --stream TYPE/ID or --all"));

    let missing = dlq(dir.path(), &["show", "refuser", "999"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter with id 999"));

    let unknown = dlq(dir.path(), &["list", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no read model for projection `nobody`")
    );
}

#[test]
fn dlq_reads_and_redrives_dead_letters_kept_in_postgres() {
    let Some(db) = TestDb::create_blocking() else {
        return;
    };
    let url = db.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    dead_letter_with(dir.path(), &Backend::Postgres(&url));
    let run = |args: &[&str]| {
        nexus()
            .arg("dlq")
            .args(args)
            .args(["--postgres-url", &url])
            .output()
            .expect("run nexus")
    };

    let listed = run(&["list", "refuser", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let letters: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    assert_eq!(letters[0]["error"], "refusing Odd");
    let redrive = run(&["redrive", "refuser", "--all", "--json"]);
    assert!(
        redrive.status.success(),
        "{}",
        String::from_utf8_lossy(&redrive.stderr)
    );
    let marked: serde_json::Value = serde_json::from_slice(&redrive.stdout).unwrap();
    assert_eq!(marked["marked"], 1);
    let other = run(&["list", "someone-else", "--json"]);
    assert!(other.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&other.stdout).unwrap(),
        serde_json::json!([])
    );
}
