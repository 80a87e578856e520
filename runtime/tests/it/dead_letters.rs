//! Dead letters over HTTP on the query dashboard: pages at the bound, one letter, redrive of one
//! letter applied by the running projection, and access control (`dlq:admin`); the console's
//! `GET /access/me`; read-model collections listed up to a bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::access::{AccessControl, AuthConfig, TokenRequest, issue_hs256};
use nexus_runtime::http::{Console, QueryDashboard};
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, ProjectionRunner, ReadModels, RetrySchedule,
    RunnerOptions,
};
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support;

const SECRET: &str = "a-dead-letter-test-secret-of-more-than-32-bytes";
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

pub(crate) async fn access(dir: &std::path::Path) -> AccessControl {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let config = AuthConfig {
        issuer: Some("nexus-test".to_owned()),
        audience: Some("nexus".to_owned()),
        hs256_secret_file: Some("secret".into()),
        ..AuthConfig::default()
    };
    AccessControl::load(&config, dir).await.unwrap()
}

pub(crate) fn token(role: &str) -> String {
    let roles = [role.to_owned()];
    let token = issue_hs256(
        SECRET.as_bytes(),
        &TokenRequest {
            issuer: "nexus-test",
            audience: "nexus",
            subject: "operator",
            roles: &roles,
            roles_claim: "roles",
            ttl: Duration::from_secs(60),
            kid: None,
        },
    )
    .unwrap();
    format!("Bearer {token}")
}

pub(crate) async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    let body = match body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_page_at_the_bound_redrive_over_http_and_need_dlq_admin() {
    let (store, _guard) = support::embedded();
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let runner = ProjectionRunner::with_read_models(
        Arc::clone(&store),
        Arc::new(InProcessBus::new(Arc::clone(&store))),
        ReadModels::sqlite(dir.path().join("read-models")),
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
            down: Arc::clone(&down),
        })
        .unwrap();
    let letters = MAX_PAGE + 3;
    for n in 0..letters {
        append(&store, &format!("t{n}"), json!({"n": n, "fail": true})).await;
    }
    for collection in ["a", "b", "c"] {
        append(&store, collection, json!({"collection": collection})).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while flaky.read_model().dead_letter_count().await.unwrap() < letters as u64 {
        assert!(Instant::now() < deadline, "the letters did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let app = QueryDashboard::new(runner.health())
        .with_access(access(dir.path()).await)
        .read_model(&flaky)
        .with_console(Console::new())
        .router();
    let (admin, reader) = (token("admin"), token("reader"));
    let base = "/admin/projections/flaky/dead-letters";

    // Only dlq:admin sees the queue; anonymous callers are asked for a credential.
    let (status, _) = send(&app, "GET", base, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(&app, "GET", base, Some(&reader), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(
        &app,
        "POST",
        &format!("{base}/redrive"),
        Some(&reader),
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Pages: at most MAX_PAGE letters, in id order, resumed with next_after.
    let (status, body) = send(
        &app,
        "GET",
        &format!("{base}?limit={}", MAX_PAGE + 1),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, first) = send(
        &app,
        "GET",
        &format!("{base}?limit={MAX_PAGE}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["total"], letters);
    let page = first["letters"].as_array().unwrap();
    assert_eq!(page.len(), MAX_PAGE);
    let ids: Vec<i64> = page.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in id order");
    assert_eq!(first["next_after"], ids[MAX_PAGE - 1]);
    let (_, rest) = send(
        &app,
        "GET",
        &format!("{base}?after={}", ids[MAX_PAGE - 1]),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(rest["letters"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_after"], Value::Null);
    let (_, default) = send(&app, "GET", base, Some(&admin), None).await;
    assert_eq!(default["letters"].as_array().unwrap().len(), 50);

    // One letter, with its event, error and attempts: `t0`'s (letters of different keys are
    // dead-lettered in whichever order their retries ran out, so it need not be the first id).
    let id = page
        .iter()
        .chain(rest["letters"].as_array().unwrap())
        .find(|l| l["event"]["stream"]["aggregate_id"] == "t0")
        .and_then(|l| l["id"].as_i64())
        .expect("t0 is dead-lettered");
    let (status, letter) = send(&app, "GET", &format!("{base}/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{letter}");
    assert_eq!(letter["error"], "the downstream is down");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["event"]["payload"]["n"], 0);
    let (status, _) = send(&app, "GET", &format!("{base}/999999"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Redrive: exactly one target; an unknown letter is a 404; a redriven letter is applied.
    for bad in [
        json!({}),
        json!({"all": true, "id": null}),
        json!({"stream": "thing"}),
        json!({"all": false}),
    ] {
        let (status, body) = send(
            &app,
            "POST",
            &format!("{base}/redrive"),
            Some(&admin),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = send(
        &app,
        "POST",
        &format!("{base}/redrive"),
        Some(&admin),
        Some(json!({"id": 999999})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    down.store(false, Ordering::SeqCst);
    let (status, body) = send(
        &app,
        "POST",
        &format!("{base}/redrive"),
        Some(&admin),
        Some(json!({"id": id})),
    )
    .await;
    assert_eq!(
        (status, body["marked"].clone()),
        (StatusCode::OK, json!(1)),
        "{body}"
    );
    let (status, body) = send(
        &app,
        "POST",
        &format!("{base}/redrive"),
        Some(&admin),
        Some(json!({"stream": "thing/t1"})),
    )
    .await;
    assert_eq!(
        (status, body["marked"].clone()),
        (StatusCode::OK, json!(1)),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = send(&app, "GET", &format!("{base}/{id}"), Some(&admin), None).await;
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
    let (_, after) = send(&app, "GET", base, Some(&admin), None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = after["total"].as_u64().unwrap();
    while total != letters as u64 - 2 {
        assert!(
            Instant::now() < deadline,
            "the stream's letter was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        total = send(&app, "GET", base, Some(&admin), None).await.1["total"]
            .as_u64()
            .unwrap();
    }

    // What the console asks first: who the caller is and what it may do.
    let (status, me) = send(&app, "GET", "/access/me", Some(&reader), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "operator");
    let permissions = me["permissions"].as_array().unwrap();
    assert!(permissions.contains(&json!("read-models:read")));
    assert!(!permissions.contains(&json!("dlq:admin")));
    let (status, _) = send(&app, "GET", "/access/me", Some("Bearer not-a-token"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Collections: listed up to the bound asked for, in byte order.
    let store = flaky.read_model();
    assert_eq!(store.collections(2).await.unwrap(), ["a", "b"]);
    assert_eq!(
        store.collections(100).await.unwrap(),
        ["a", "b", "c", "done"]
    );
    let (_, listed) = send(&app, "GET", "/read-models", Some(&admin), None).await;
    assert_eq!(
        listed["projections"][0]["collections"],
        json!(["a", "b", "c", "done"])
    );
    flaky.stop().await;
}
