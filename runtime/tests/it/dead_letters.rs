//! Dead letters over HTTP on the query dashboard: pages at the bound, one letter, redrive of one
//! letter applied by the running projection, and access control (`dlq:admin`); the console's
//! `GET /access/me`; read-model collections listed up to a bound.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::StatusCode;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::{Console, QueryDashboard};
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, ProjectionHandle, ProjectionRunner, ReadModels,
    RetrySchedule, RunnerOptions,
};
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use serde_json::{Value, json};

use crate::support;
use crate::support::http::{Caller, access};

/// The dashboard's largest page of dead letters.
const MAX_PAGE: usize = 200;

/// Writes `{"n": …}` into the event's `collection`; refuses events marked `fail` while `down`.
struct Flaky {
    down: Arc<AtomicBool>,
}

#[async_trait]
impl Projection for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let payload: Value = event.decode()?;
        if payload["fail"] == true && self.down.load(Ordering::SeqCst) {
            return Err(ProjectionError::new("the downstream is down"));
        }
        let collection = payload["collection"].as_str().unwrap_or("done").to_owned();
        changes.put(
            &collection,
            event.stream.aggregate_id(),
            json!({"n": payload["n"]}),
        );
        Ok(())
    }
}

async fn append(store: &Arc<dyn EventStore>, id: &str, payload: Value) {
    let event =
        NewEvent::from_json("Thing", 1, payload.to_string(), Metadata::correlated("c")).unwrap();
    store
        .append(
            &StreamId::new("thing", id),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .unwrap();
}

/// A runner whose [`Flaky`] projection (down while `down` holds) has dead-lettered `letters`
/// events (`t0`, `t1`, … of `thing`, payload `n`) and written collections `a`, `b` and `c`;
/// its read models live under `dir`.
async fn flaky_with_letters(
    store: &Arc<dyn EventStore>,
    dir: &Path,
    down: &Arc<AtomicBool>,
    letters: usize,
) -> (ProjectionRunner, ProjectionHandle) {
    let runner = ProjectionRunner::with_read_models(
        Arc::clone(store),
        Arc::new(InProcessBus::new(Arc::clone(store))),
        ReadModels::sqlite(dir.join("read-models")),
    )
    .with_options(RunnerOptions {
        retry: RetrySchedule {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            max_retries: 1,
        },
        redrive_poll: Duration::from_millis(50),
        ..RunnerOptions::default()
    });
    let flaky = runner
        .spawn(Flaky {
            down: Arc::clone(down),
        })
        .unwrap();
    for n in 0..letters {
        append(store, &format!("t{n}"), json!({"n": n, "fail": true})).await;
    }
    for collection in ["a", "b", "c"] {
        append(store, collection, json!({"collection": collection})).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while flaky.read_model().dead_letter_count().await.unwrap() < letters as u64 {
        assert!(Instant::now() < deadline, "the letters did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (runner, flaky)
}

/// Reads the `letters` (more than a page) at `base` as `admin` sees them: pages of at most
/// MAX_PAGE letters, in id order, resumed with `next_after`; 50 without a limit. Returns them all.
async fn every_letter(admin: &Caller<'_>, base: &str, letters: usize) -> Vec<Value> {
    let (status, body) = admin.get(&format!("{base}?limit={}", MAX_PAGE + 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, first) = admin.get(&format!("{base}?limit={MAX_PAGE}")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["total"], letters);
    let page = first["letters"].as_array().unwrap();
    assert_eq!(page.len(), MAX_PAGE);
    let ids: Vec<i64> = page.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in id order");
    assert_eq!(first["next_after"], ids[MAX_PAGE - 1]);
    let (_, rest) = admin
        .get(&format!("{base}?after={}", ids[MAX_PAGE - 1]))
        .await;
    assert_eq!(rest["next_after"], Value::Null);
    let rest = rest["letters"].as_array().unwrap();
    assert_eq!(rest.len(), letters - MAX_PAGE);
    let (_, default) = admin.get(base).await;
    assert_eq!(default["letters"].as_array().unwrap().len(), 50);
    page.iter().chain(rest).cloned().collect()
}

/// Waits until letter `id` (of `t0`) is applied and gone, and the letter of stream
/// `thing/t1` too: `letters - 2` remain.
async fn until_redriven(
    flaky: &ProjectionHandle,
    admin: &Caller<'_>,
    base: &str,
    id: i64,
    letters: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = admin.get(&format!("{base}/{id}")).await;
        let applied = flaky.read_model().get("done", "t0").await.unwrap();
        if status == StatusCode::NOT_FOUND && applied.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the redriven letter was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = admin.get(base).await.1["total"].as_u64().unwrap();
    while total != letters as u64 - 2 {
        assert!(
            Instant::now() < deadline,
            "the stream's letter was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        total = admin.get(base).await.1["total"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_page_at_the_bound_redrive_over_http_and_need_dlq_admin() {
    let (store, _guard) = support::embedded();
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let letters = MAX_PAGE + 3;
    let (runner, flaky) = flaky_with_letters(&store, dir.path(), &down, letters).await;
    let app = QueryDashboard::new(runner.health())
        .with_access(access(dir.path()).await)
        .read_model(&flaky)
        .with_console(Console::new())
        .router();
    let anonymous = Caller::anonymous(&app);
    let (admin, reader) = (
        Caller::with_role(&app, "admin"),
        Caller::with_role(&app, "reader"),
    );
    let base = "/admin/projections/flaky/dead-letters";

    // Only dlq:admin sees the queue; anonymous callers are asked for a credential.
    let (status, _) = anonymous.get(base).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = reader.get(base).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = reader
        .post(&format!("{base}/redrive"), Some(json!({"all": true})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let every = every_letter(&admin, base, letters).await;

    // One letter, with its event, error and attempts: `t0`'s (letters of different keys are
    // dead-lettered in whichever order their retries ran out, so it need not be the first id).
    let id = every
        .iter()
        .find(|l| l["event"]["stream"]["aggregate_id"] == "t0")
        .and_then(|l| l["id"].as_i64())
        .expect("t0 is dead-lettered");
    let (status, letter) = admin.get(&format!("{base}/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{letter}");
    assert_eq!(letter["error"], "the downstream is down");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["event"]["payload"]["n"], 0);
    let (status, _) = admin.get(&format!("{base}/999999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Redrive: exactly one target; an unknown letter is a 404; a redriven letter is applied.
    for bad in [
        json!({}),
        json!({"all": true, "id": null}),
        json!({"stream": "thing"}),
        json!({"all": false}),
    ] {
        let (status, body) = admin
            .post(&format!("{base}/redrive"), Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = admin
        .post(&format!("{base}/redrive"), Some(json!({"id": 999999})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    down.store(false, Ordering::SeqCst);
    let (status, body) = admin
        .post(&format!("{base}/redrive"), Some(json!({"id": id})))
        .await;
    assert_eq!(
        (status, body["marked"].clone()),
        (StatusCode::OK, json!(1)),
        "{body}"
    );
    let (status, body) = admin
        .post(
            &format!("{base}/redrive"),
            Some(json!({"stream": "thing/t1"})),
        )
        .await;
    assert_eq!(
        (status, body["marked"].clone()),
        (StatusCode::OK, json!(1)),
        "{body}"
    );
    until_redriven(&flaky, &admin, base, id, letters).await;

    // What the console asks first: who the caller is and what it may do.
    let (status, me) = reader.get("/access/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "operator");
    let permissions = me["permissions"].as_array().unwrap();
    assert!(permissions.contains(&json!("read-models:read")));
    assert!(!permissions.contains(&json!("dlq:admin")));
    let (status, _) = Caller::with_auth(&app, "Bearer not-a-token")
        .get("/access/me")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Collections: listed up to the bound asked for, in byte order.
    let store = flaky.read_model();
    assert_eq!(store.collections(2).await.unwrap(), ["a", "b"]);
    assert_eq!(
        store.collections(100).await.unwrap(),
        ["a", "b", "c", "done"]
    );
    let (_, listed) = admin.get("/read-models").await;
    assert_eq!(
        listed["projections"][0]["collections"],
        json!(["a", "b", "c", "done"])
    );
    flaky.stop().await;
}
