//! The command service and the query dashboard over HTTP, on the embedded store.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use std::time::Duration;

use nexus_runtime::http::access::OriginPolicy;
use nexus_runtime::http::{
    BodyLimits, CommandService, QueryDashboard, QueryLimits, ServeOptions, serve_with,
};
use nexus_runtime::projection::{Changes, Projection, ProjectionError, ProjectionRunner};
use nexus_runtime::{Aggregate, DomainEvent, EventStore, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::support;

/// A ticket that is opened, commented on and closed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ticket {
    open: bool,
    title: String,
    comments: u32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
enum TicketCommand {
    Open { title: String },
    Comment { text: String },
    Close,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum TicketEvent {
    Opened { title: String },
    Commented { text: String },
    Closed,
}

impl DomainEvent for TicketEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::Commented { .. } => "Commented",
            Self::Closed => "Closed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TicketError {
    #[error("the ticket is already open")]
    AlreadyOpen,
    #[error("the ticket is not open")]
    NotOpen,
}

impl Aggregate for Ticket {
    const TYPE: &'static str = "ticket";
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = TicketError;

    fn handle(&self, command: &TicketCommand) -> Result<Vec<TicketEvent>, TicketError> {
        match command {
            TicketCommand::Open { .. } if self.open => Err(TicketError::AlreadyOpen),
            TicketCommand::Open { title } => Ok(vec![TicketEvent::Opened {
                title: title.clone(),
            }]),
            _ if !self.open => Err(TicketError::NotOpen),
            TicketCommand::Comment { text } => {
                Ok(vec![TicketEvent::Commented { text: text.clone() }])
            }
            TicketCommand::Close => Ok(vec![TicketEvent::Closed]),
        }
    }

    fn apply(&mut self, event: &TicketEvent) {
        match event {
            TicketEvent::Opened { title } => {
                self.open = true;
                self.title.clone_from(title);
            }
            TicketEvent::Commented { .. } => self.comments += 1,
            TicketEvent::Closed => self.open = false,
        }
    }
}

/// Keeps one `tickets` document per ticket.
struct Tickets;

#[async_trait]
impl Projection for Tickets {
    fn name(&self) -> &str {
        "tickets"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let id = event.stream.aggregate_id().to_owned();
        let mut doc = changes
            .get("tickets", &id)
            .await?
            .unwrap_or_else(|| json!({ "comments": 0 }));
        match event.decode::<TicketEvent>()? {
            TicketEvent::Opened { title } => {
                doc["title"] = json!(title);
                doc["status"] = json!("open");
            }
            TicketEvent::Commented { .. } => {
                doc["comments"] = json!(doc["comments"].as_u64().unwrap_or(0) + 1);
            }
            TicketEvent::Closed => doc["status"] = json!("closed"),
        }
        changes.put("tickets", &id, doc);
        Ok(())
    }
}

fn commands(store: &Arc<dyn EventStore>) -> Router {
    CommandService::new(Arc::clone(store))
        .aggregate::<Ticket>()
        .router()
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Response<Body>) {
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status(), response)
}

async fn json_of(response: Response<Body>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(&bytes)))
}

fn post(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_appends_and_answers_with_version_ids_and_etag() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    let (status, response) = call(
        &app,
        post(
            "/commands/ticket/t-1",
            json!({"type": "Open", "title": "printer on fire"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body = json_of(response).await;
    assert_eq!(body["aggregate"], "ticket");
    assert_eq!(body["id"], "t-1");
    assert_eq!(body["version"], 1);
    assert_eq!(body["event_ids"].as_array().unwrap().len(), 1);
    assert!(body["position"].as_u64().is_some());

    let (status, _) = call(
        &app,
        post(
            "/commands/ticket/t-1",
            json!({"type": "Comment", "text": "still burning"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, response) = call(&app, get("/aggregates/ticket/t-1")).await;
    assert_eq!(status, StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["state"]["comments"], 1);
    assert_eq!(body["state"]["title"], "printer on fire");
    let events = store
        .read_stream(&StreamId::new("ticket", "t-1"), 1, None)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_status_a_code_and_a_message_and_store_nothing() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);

    // Malformed JSON: 400 with the location.
    let request = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .body(Body::from("{\"type\": \"Open\", \"title\": "))
        .unwrap();
    let (status, response) = call(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = json_of(response).await;
    assert_eq!(body["error"], "invalid_command");
    assert_eq!(body["line"], 1);
    assert!(
        body["message"].as_str().unwrap().contains("ticket"),
        "{body}"
    );

    // An unknown command type and an unknown field: 400.
    for bad in [
        json!({"type": "Reopen"}),
        json!({"type": "Open", "title": "x", "extra": 1}),
    ] {
        let (status, response) = call(&app, post("/commands/ticket/t-1", bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json_of(response).await["error"], "invalid_command");
    }

    // A domain rule: 422 with the aggregate's reason.
    let (status, response) =
        call(&app, post("/commands/ticket/t-2", json!({"type": "Close"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json_of(response).await;
    assert_eq!(body["error"], "rejected");
    assert_eq!(body["message"], "the ticket is not open");

    // An aggregate the service does not serve: 404 listing the ones it does.
    let (status, response) = call(&app, post("/commands/invoice/i-1", json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(response).await["aggregates"], json!(["ticket"]));

    // Unknown ids read as 404, and a malformed If-Match as 400.
    let (status, _) = call(&app, get("/aggregates/ticket/t-9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let request = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("if-match", "\"soon\"")
        .body(Body::from(
            json!({"type": "Open", "title": "x"}).to_string(),
        ))
        .unwrap();
    let (status, response) = call(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(response).await["error"], "invalid_header");

    assert_eq!(
        store.head().await.unwrap().position,
        0,
        "nothing was appended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_is_a_409_with_the_actual_version() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    for body in [
        json!({"type": "Open", "title": "t"}),
        json!({"type": "Comment", "text": "a"}),
    ] {
        let (status, _) = call(&app, post("/commands/ticket/t-1", body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let stale = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("if-match", "\"1\"")
        .body(Body::from(json!({"type": "Close"}).to_string()))
        .unwrap();
    let (status, response) = call(&app, stale).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let body = json_of(response).await;
    assert_eq!(body["error"], "conflict");
    assert_eq!(
        (body["expected"].clone(), body["actual"].clone()),
        (json!(1), json!(2))
    );

    let current = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("if-match", "\"2\"")
        .body(Body::from(json!({"type": "Close"}).to_string()))
        .unwrap();
    let (status, response) = call(&app, current).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(response).await["version"], 3);
}

fn keyed(key: &str, body: Value) -> Request<Body> {
    Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_again_with_its_idempotency_key_is_applied_once() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    let (status, first) = call(&app, keyed("k-open", json!({"type": "Open", "title": "t"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = json_of(first).await;
    let (status, _) = call(
        &app,
        keyed("k-comment", json!({"type": "Comment", "text": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The answer to the first was lost; the client sends it again, formatted differently.
    let (status, again) = call(&app, keyed("k-open", json!({"title": "t", "type": "Open"}))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a replay, not the aggregate's `already open`"
    );
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again = json_of(again).await;
    assert_eq!(again["event_ids"], first["event_ids"]);
    assert_eq!(
        again["version"], 1,
        "the version the first attempt answered with"
    );
    assert_eq!(again["replayed"], true);

    // The same key for another command is refused; a command without a key is not affected.
    let (status, reused) = call(
        &app,
        keyed("k-open", json!({"type": "Open", "title": "other"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_of(reused).await["error"], "idempotency_key_reused");
    let events = store
        .read_stream(&StreamId::new("ticket", "t-1"), 1, None)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "each keyed command stored its events once");
    assert_eq!(events[0].metadata.extra["idempotency"]["key"], "k-open");

    // Racing duplicates: one set of events, every caller gets the same ids.
    let mut racers = Vec::new();
    for _ in 0..4 {
        let app = app.clone();
        racers.push(tokio::spawn(async move {
            let (status, response) = call(
                &app,
                keyed("k-race", json!({"type": "Comment", "text": "race"})),
            )
            .await;
            (status, json_of(response).await)
        }));
    }
    let mut ids = Vec::new();
    for racer in racers {
        let (status, body) = racer.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["event_ids"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let events = store
        .read_stream(&StreamId::new("ticket", "t-1"), 1, None)
        .await
        .unwrap();
    assert_eq!(events.len(), 3, "the raced comment is stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_reach_the_event_metadata() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .header("x-causation-id", "msg-7")
        .body(Body::from(
            json!({"type": "Open", "title": "t"}).to_string(),
        ))
        .unwrap();
    let (status, response) = call(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        response.headers()["x-correlation-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the trace id correlates when no correlation id is sent"
    );
    let request = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("x-correlation-id", "checkout-42")
        .body(Body::from(json!({"type": "Close"}).to_string()))
        .unwrap();
    let (status, _) = call(&app, request).await;
    assert_eq!(status, StatusCode::OK);

    let events = store
        .read_stream(&StreamId::new("ticket", "t-1"), 1, None)
        .await
        .unwrap();
    assert_eq!(events[0].metadata.traceparent.as_deref(), Some(traceparent));
    assert_eq!(
        events[0].metadata.correlation_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(events[0].metadata.causation_id.as_deref(), Some("msg-7"));
    assert_eq!(
        events[1].metadata.correlation_id.as_deref(),
        Some("checkout-42")
    );
    assert_eq!(events[1].metadata.traceparent, None);

    let request = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("x-correlation-id", "has spaces")
        .body(Body::from(
            json!({"type": "Open", "title": "t"}).to_string(),
        ))
        .unwrap();
    let (status, _) = call(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_service_exposes_health_metrics_and_openapi() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    let (status, _) = call(
        &app,
        post(
            "/commands/ticket/m-1",
            json!({"type": "Open", "title": "t"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, response) = call(&app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(response).await["status"], "ok");

    let (status, response) = call(&app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for needle in [
        "nexus_commands_total{aggregate=\"ticket\",outcome=\"ok\"}",
        // A classic histogram with explicit buckets, never a summary.
        "nexus_command_duration_seconds_bucket{aggregate=\"ticket\",outcome=\"ok\",le=\"0.001\"}",
        "nexus_live_per_second{series=\"commands\"}",
        "nexus_events_appended_total{aggregate=\"ticket\"}",
        "nexus_http_requests_total{",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    let (status, response) = call(&app, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json_of(response).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let command = &doc["paths"]["/commands/ticket/{id}"]["post"];
    assert!(command["responses"]["409"].is_object());
    assert_all_refs_resolve(&doc, &doc);
    let schema = serde_json::to_string(&command["requestBody"]).unwrap();
    let resolved = serde_json::to_string(&doc["components"]).unwrap();
    assert!(
        schema.contains("TicketCommand") && resolved.contains("Comment"),
        "the command schema is published: {schema}"
    );
}

/// Every `$ref` in `value` points at something in `doc`.
fn assert_all_refs_resolve(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target.strip_prefix('#').expect("a local $ref");
                assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
            }
            map.values().for_each(|v| assert_all_refs_resolve(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| assert_all_refs_resolve(doc, v)),
        _ => {}
    }
}

/// Opens tickets `t-0` to `t-4` through `app` and closes the even ones: the answer to the last
/// command (closing `t-4`).
async fn open_five_closing_the_even_ones(app: &Router) -> Value {
    let mut last = Value::Null;
    for n in 0..5 {
        let (status, response) = call(
            app,
            post(
                &format!("/commands/ticket/t-{n}"),
                json!({"type": "Open", "title": format!("ticket {n}")}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        if n % 2 == 0 {
            let (status, response) = call(
                app,
                post(&format!("/commands/ticket/t-{n}"), json!({"type": "Close"})),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            last = json_of(response).await;
        } else {
            let _ = json_of(response).await;
        }
    }
    last
}

/// Unknown projections and ids are 404s, bad filters and parameters 400s, each with its code.
async fn assert_bad_reads_are_refused_with_their_code(dashboard: &Router) {
    for (uri, expected, code) in [
        (
            "/read-models/nope/tickets",
            StatusCode::NOT_FOUND,
            "unknown_projection",
        ),
        (
            "/read-models/tickets/tickets/t-99",
            StatusCode::NOT_FOUND,
            "unknown_id",
        ),
        (
            "/read-models/tickets/tickets?bad%20field=1",
            StatusCode::BAD_REQUEST,
            "invalid_filter",
        ),
        (
            "/read-models/tickets/tickets?limit=5000",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
        (
            "/read-models/tickets/tickets?wait_for=t-4",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
    ] {
        let (status, response) = call(dashboard, get(uri)).await;
        assert_eq!(status, expected, "{uri}");
        assert_eq!(json_of(response).await["error"], code, "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_read_models_with_filters_pages_and_read_your_writes() {
    let (store, dir) = support::embedded();
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
    let runner = ProjectionRunner::new(Arc::clone(&store), bus, dir.path().join("read-models"));
    let tickets = runner.spawn(Tickets).unwrap();
    let dashboard = QueryDashboard::new(runner.health())
        .read_model(&tickets)
        .router();
    let app = commands(&store);

    let last = open_five_closing_the_even_ones(&app).await;
    // Read your writes: wait until the projection has applied what the command answered.
    let wait = format!("ticket/t-4@{}", last["version"]);
    let (status, response) = call(
        &dashboard,
        get(&format!("/read-models/tickets/tickets/t-4?wait_for={wait}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(response).await["status"], "closed");

    let (status, response) = call(
        &dashboard,
        get("/read-models/tickets/tickets?status=closed&wait_for=ticket/t-4@2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let page = json_of(response).await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t-0", "t-2", "t-4"]);

    let (status, response) = call(&dashboard, get("/read-models/tickets/tickets?limit=2")).await;
    assert_eq!(status, StatusCode::OK);
    let page = json_of(response).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_offset"], 2);
    let (_, response) = call(
        &dashboard,
        get("/read-models/tickets/tickets?limit=2&offset=4"),
    )
    .await;
    assert_eq!(json_of(response).await["next_offset"], Value::Null);

    // A version that never comes: 503 after the wait, saying how far the model is.
    let (status, response) = call(
        &dashboard,
        get("/read-models/tickets/tickets/t-4?wait_for=ticket/t-4@9&wait_ms=50"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(response).await;
    assert_eq!(
        (body["applied"].clone(), body["wanted"].clone()),
        (json!(2), json!(9))
    );

    assert_bad_reads_are_refused_with_their_code(&dashboard).await;

    let (status, response) = call(&dashboard, get("/read-models")).await;
    assert_eq!(status, StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["projections"][0]["name"], "tickets");
    assert_eq!(body["projections"][0]["health"]["status"], "running");
    let (status, response) = call(&dashboard, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json_of(response).await;
    assert!(doc["paths"]["/read-models/{projection}/{collection}"].is_object());
    assert_all_refs_resolve(&doc, &doc);
    let (status, response) = call(&dashboard, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    let page = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&page).contains("tickets"));
    let (status, _) = call(&dashboard, get("/health/projections/tickets")).await;
    assert_eq!(status, StatusCode::OK);

    tickets.stop().await;
}

/// A `tracing` writer that keeps everything logged, to look for a cause in the log.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A store that stops answering: the database refuses connections and every session is killed.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "current_thread")]
async fn a_5xx_body_carries_no_internal_cause_which_is_logged_with_the_correlation_id() {
    let Some(db) = support::TestDb::create().await else {
        return;
    };
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = db.store().await;
    let app = commands(&store);
    let (status, _) = call(
        &app,
        post(
            "/commands/ticket/t-1",
            json!({"type": "Open", "title": "t"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let name = db.name().to_owned();
    db.go_away().await;

    let request = Request::post("/commands/ticket/t-1")
        .header("content-type", "application/json")
        .header("x-correlation-id", "corr-5xx-test")
        .body(Body::from(
            json!({"type": "Comment", "text": "x"}).to_string(),
        ))
        .unwrap();
    let (status, response) = call(&app, request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-correlation-id"], "corr-5xx-test");
    let body = json_of(response).await;
    assert_eq!(body["error"], "unavailable");
    let text = body.to_string();
    for internal in [name.as_str(), "FATAL", "db error", "connection", "postgres"] {
        assert!(!text.contains(internal), "`{internal}` in the body: {text}");
    }
    let (status, response) = call(&app, get("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = json_of(response).await.to_string();
    assert!(!text.contains(&name) && !text.contains("FATAL"), "{text}");

    let logged = log.text();
    let line = logged
        .lines()
        .find(|l| l.contains("request failed"))
        .unwrap_or_else(|| panic!("the cause is not logged:\n{logged}"));
    assert!(line.contains("corr-5xx-test"), "{line}");
    assert!(line.contains("unavailable"), "{line}");
    db.come_back().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_paths_get_json_errors_and_bounded_metric_labels() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    for (request, expected, code) in [
        (get("/nope"), StatusCode::NOT_FOUND, "route_not_found"),
        (
            Request::builder()
                .method("FROBNICATE")
                .uri("/commands/ticket/t-1")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            post("/commands/ticket/%FF%FE", json!({"type": "Close"})),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
    ] {
        let uri = request.uri().clone();
        let (status, response) = call(&app, request).await;
        assert_eq!(status, expected, "{uri}");
        assert!(response.headers().contains_key("x-correlation-id"));
        assert_eq!(json_of(response).await["error"], code, "{uri}");
    }
    let (_, response) = call(&app, get("/metrics")).await;
    let metrics = response.into_body().collect().await.unwrap().to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains(r#"method="OTHER""#), "{metrics}");
    assert!(!metrics.contains("FROBNICATE"), "{metrics}");
    assert!(!metrics.contains("/nope"), "{metrics}");
}

/// Serves `router` on a free local port within `options`; the server stops when the test ends.
async fn serve_local(router: Router, options: ServeOptions) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with(
        listener,
        router,
        options,
        std::future::pending(),
    ));
    addr
}

/// Reads until the server closes the connection (or `within` passes): what it sent, and whether
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_byte_by_byte_or_nothing_is_cut_off() {
    let (store, _dir) = support::embedded();
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let addr = serve_local(commands(&store), options).await;

    // Slowloris: a header that never ends, one byte every 50 ms.
    let started = std::time::Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a byte-by-byte client kept its connection");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    trickle.abort();

    // A connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection was kept");

    // A normal client is served.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut client, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let (store, _dir) = support::embedded();
    let options = ServeOptions {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(30),
    };
    let addr = serve_local(commands(&store), options).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut third, Duration::from_millis(500)).await;
    assert_eq!(
        answer, "",
        "the third connection was served beyond the cap of 2"
    );

    drop(first);
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_or_too_slow_gets_413_or_408() {
    let (store, _dir) = support::embedded();
    let limits = BodyLimits {
        max_bytes: 1024,
        read_timeout: Duration::from_millis(300),
    };
    let app = CommandService::new(Arc::clone(&store))
        .aggregate::<Ticket>()
        .with_body_limits(limits)
        .router();

    let big = json!({"type": "Open", "title": "x".repeat(2000)});
    let (status, response) = call(&app, post("/commands/ticket/t-1", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = json_of(response).await;
    assert_eq!(
        (body["error"].clone(), body["limit"].clone()),
        (json!("body_too_large"), json!(1024))
    );
    // At the limit exactly, the command is read.
    let title = "x".repeat(1024 - r#"{"type":"Open","title":""}"#.len());
    let exact = json!({"type": "Open", "title": title});
    assert_eq!(exact.to_string().len(), 1024);
    let (status, _) = call(&app, post("/commands/ticket/t-1", exact)).await;
    assert_eq!(status, StatusCode::OK);

    let addr = serve_local(app, ServeOptions::default()).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /commands/ticket/t-2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 40\r\n\r\n{\"type\":",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let (answer, _) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        store
            .read_stream(&StreamId::new("ticket", "t-2"), 1, None)
            .await
            .is_err(),
        "a command with a half-sent body was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_beyond_the_cap_get_503_and_wait_ms_beyond_the_maximum_400() {
    let (store, dir) = support::embedded();
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
    let runner = ProjectionRunner::new(Arc::clone(&store), bus, dir.path().join("read-models"));
    let tickets = runner.spawn(Tickets).unwrap();
    let limits = QueryLimits {
        max_waiters: 2,
        max_wait: Duration::from_secs(5),
    };
    let dashboard = QueryDashboard::new(runner.health())
        .read_model(&tickets)
        .with_limits(limits)
        .router();

    let never = "/read-models/tickets/tickets?wait_for=ticket/t-1@99&wait_ms=1500";
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let dashboard = dashboard.clone();
            tokio::spawn(async move { call(&dashboard, get(never)).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, response) = call(&dashboard, get(never)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = json_of(response).await;
    assert_eq!(
        (body["error"].clone(), body["limit"].clone()),
        (json!("too_many_waiters"), json!(2))
    );
    for waiter in waiting {
        assert_eq!(waiter.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // The waiters are done: a new one may wait again.
    let (status, response) = call(
        &dashboard,
        get("/read-models/tickets/tickets?wait_for=ticket/t-1@99&wait_ms=10"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(response).await["error"], "not_applied_yet");

    let (status, response) = call(
        &dashboard,
        get("/read-models/tickets/tickets?wait_for=ticket/t-1@1&wait_ms=5001"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = json_of(response).await;
    assert_eq!(body["error"], "invalid_parameter");
    assert!(
        body["message"].as_str().unwrap().contains("0 to 5000"),
        "{body}"
    );
    tickets.stop().await;
}

fn command_with(headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut request = Request::post("/commands/ticket/t-1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

/// A command that opens ticket `t-1`, and the content type of JSON.
const OPEN: &str = r#"{"type": "Open", "title": "t"}"#;
const JSON: (&str, &str) = ("content-type", "application/json");

/// A write the command service refuses: its headers, its body, the status and the error code.
type RefusedWrite = (
    Vec<(&'static str, &'static str)>,
    &'static str,
    StatusCode,
    &'static str,
);

/// Writes a web page could send that the command service refuses.
fn refused_writes() -> Vec<RefusedWrite> {
    let (open, json) = (OPEN, JSON);
    vec![
        // A simple (preflight-free) cross-site POST: text/plain or a form.
        (
            vec![("content-type", "text/plain")],
            open,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            vec![("content-type", "application/x-www-form-urlencoded")],
            "type=Open",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            vec![],
            open,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        // DNS rebinding: the page's own name in Host.
        (
            vec![json, ("host", "attacker.example:8080")],
            open,
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_host",
        ),
        // A write from another site.
        (
            vec![
                json,
                ("host", "127.0.0.1:8080"),
                ("origin", "http://attacker.example"),
            ],
            open,
            StatusCode::FORBIDDEN,
            "cross_site",
        ),
        (
            vec![
                json,
                ("host", "127.0.0.1:8080"),
                ("sec-fetch-site", "cross-site"),
            ],
            open,
            StatusCode::FORBIDDEN,
            "cross_site",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_write_rebind_or_post_non_json() {
    let (store, _dir) = support::embedded();
    let app = commands(&store);
    let open = OPEN;
    let json = JSON;
    for (headers, body, expected, code) in refused_writes() {
        let (status, response) = call(&app, command_with(&headers, body)).await;
        assert_eq!(status, expected, "{headers:?}");
        assert_eq!(json_of(response).await["error"], code, "{headers:?}");
    }
    assert!(
        store
            .read_stream(&StreamId::new("ticket", "t-1"), 1, None)
            .await
            .is_err(),
        "a refused request stored events"
    );
    // The service's own pages, programs and configured names and origins are served.
    let app = CommandService::new(Arc::clone(&store))
        .aggregate::<Ticket>()
        .with_origin_policy(
            OriginPolicy::new()
                .allow_host("orders.internal")
                .allow_origin("http://localhost:5173"),
        )
        .router();
    let (status, _) = call(
        &app,
        command_with(
            &[
                json,
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            open,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for headers in [
        vec![
            json,
            ("host", "orders.internal:8080"),
            ("origin", "http://localhost:5173"),
        ],
        vec![
            ("content-type", "application/json; charset=utf-8"),
            ("host", "localhost:8080"),
        ],
    ] {
        let (status, response) = call(
            &app,
            command_with(&headers, r#"{"type": "Comment", "text": "x"}"#),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{headers:?}: {}",
            json_of(response).await
        );
    }
    // Reads from any page are allowed, but only under an allowed host.
    let read = Request::get("/aggregates/ticket/t-1")
        .header("host", "127.0.0.1:8080")
        .header("origin", "http://attacker.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, read).await.0, StatusCode::OK);
    let rebound = Request::get("/aggregates/ticket/t-1")
        .header("host", "attacker.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, rebound).await.0, StatusCode::MISDIRECTED_REQUEST);
}

/// Every filter shape is its own SQL text: a client sending ever new combinations must not grow
/// the prepared-statement cache of the read model's connections.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_shapes_do_not_grow_the_postgres_statement_cache() {
    use nexus_runtime::projection::ReadModels;
    use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};

    let Some(db) = support::TestDb::create().await else {
        return;
    };
    let options = PostgresOptions {
        pool_size: 2,
        committers: 1,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&db.url, options).await.unwrap();
    let read_models = ReadModels::postgres_with_pool(store.pool().clone(), "rm")
        .await
        .unwrap();
    let tickets = read_models.open("tickets").unwrap();
    for n in 1..=12 {
        for nulls in 0..4u32 {
            let filters: Vec<(String, Value)> = (0..n)
                .map(|i| {
                    let value = if nulls & (1 << (i % 2)) != 0 {
                        Value::Null
                    } else {
                        json!(i)
                    };
                    (format!("f{i}"), value)
                })
                .collect();
            tickets.list("tickets", &filters, 10, 0).await.unwrap();
        }
    }
    let first = store.pool().get().await.unwrap();
    let second = store.pool().get().await.unwrap();
    let cached = first.statement_cache.size() + second.statement_cache.size();
    // The fixed statements plus at most 7 filter shapes per connection.
    assert!(cached <= 2 * (8 + 7), "{cached} statements cached");
}

/// Untrusted input, generated: command bodies and the dashboard's query strings never get a
/// 5xx or a panic, and every refusal is a 4xx with a code and a message.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// A body: arbitrary bytes, or JSON-looking text built from command pieces.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("\"type\":".to_owned()),
            Just("\"Open\"".to_owned()),
            Just("\"Comment\"".to_owned()),
            Just("\"title\":".to_owned()),
            Just(",".to_owned()),
            Just("[".to_owned()),
            Just("null".to_owned()),
            Just("1e999".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat().into_bytes()),
        ]
    }

    /// A query string: reserved names and field names with arbitrary values, percent-encoded.
    fn query() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("limit".to_owned()),
            Just("offset".to_owned()),
            Just("wait_for".to_owned()),
            Just("wait_ms".to_owned()),
            Just("status".to_owned()),
            Just("a.b.c".to_owned()),
            "[ -~]{0,8}",
        ];
        let value = prop_oneof![
            "[0-9]{0,22}",
            Just("-1".to_owned()),
            Just("ticket/t-1@1".to_owned()),
            Just("\"quoted\"".to_owned()),
            Just("null".to_owned()),
            "\\PC{0,12}",
        ];
        proptest::collection::vec((key, value), 0..6).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    async fn assert_no_5xx(app: &Router, request: Request<Body>, what: &str) {
        let (status, response) = call(app, request).await;
        assert!(
            !status.is_server_error()
                || status == StatusCode::SERVICE_UNAVAILABLE && what.contains("wait_for"),
            "{status} for {what}"
        );
        if status.is_client_error() {
            let body = json_of(response).await;
            assert!(
                body["error"].is_string() && body["message"].is_string(),
                "{body} for {what}"
            );
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 96,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn command_bodies_get_200_or_a_clear_4xx(bodies in proptest::collection::vec(body(), 1..8)) {
            runtime().block_on(async {
                let (store, _dir) = support::embedded();
                let app = commands(&store);
                for body in bodies {
                    let request = Request::post("/commands/ticket/t-1")
                        .header("content-type", "application/json")
                        .body(Body::from(body.clone()))
                        .unwrap();
                    assert_no_5xx(&app, request, &String::from_utf8_lossy(&body)).await;
                }
            });
        }

        #[test]
        fn dashboard_query_strings_get_200_or_a_clear_4xx(queries in proptest::collection::vec(query(), 1..8)) {
            runtime().block_on(async {
                let (store, dir) = support::embedded();
                let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
                let runner = ProjectionRunner::new(Arc::clone(&store), bus, dir.path().join("read-models"));
                let tickets = runner.spawn(Tickets).unwrap();
                let dashboard = QueryDashboard::new(runner.health())
                    .read_model(&tickets)
                    .with_limits(QueryLimits { max_waiters: 4, max_wait: Duration::from_millis(50) })
                    .router();
                for query in queries {
                    for path in ["/read-models/tickets/tickets", "/read-models/tickets/tickets/t-1"] {
                        let uri = format!("{path}?{query}");
                        let Ok(request) = Request::get(uri.as_str()).body(Body::empty()) else {
                            continue;
                        };
                        assert_no_5xx(&dashboard, request, &uri).await;
                    }
                }
                tickets.stop().await;
            });
        }
    }
}
