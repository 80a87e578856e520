//! Access control on the command service and the query dashboard: 401 with
//! `WWW-Authenticate` without a credential, 403 naming the missing permission, open health.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use nexus_runtime::http::access::{AccessControl, AuthConfig, TokenRequest, issue_hs256};
use nexus_runtime::http::{CommandService, QueryDashboard};
use nexus_runtime::projection::HealthRegistry;
use nexus_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support;

const SECRET: &str = "an-access-test-secret-of-more-than-32-bytes";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Lamp {
    on: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type")]
enum LampCommand {
    Switch,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum LampEvent {
    Switched,
}

impl DomainEvent for LampEvent {
    fn event_type(&self) -> &'static str {
        "Switched"
    }
}

impl Aggregate for Lamp {
    const TYPE: &'static str = "lamp";
    type Command = LampCommand;
    type Event = LampEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, _: &LampCommand) -> Result<Vec<LampEvent>, Self::Error> {
        Ok(vec![LampEvent::Switched])
    }

    fn apply(&mut self, _: &LampEvent) {
        self.on = !self.on;
    }
}

/// Tokens are required for everything but health: no anonymous permissions.
async fn access(dir: &std::path::Path) -> AccessControl {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let config = AuthConfig {
        issuer: Some("nexus-test".to_owned()),
        audience: Some("nexus".to_owned()),
        hs256_secret_file: Some("secret".into()),
        anonymous: Some(Vec::new()),
        ..AuthConfig::default()
    };
    AccessControl::load(&config, dir)
        .await
        .unwrap()
        .for_bind("127.0.0.1:0".parse().unwrap(), false)
        .unwrap()
}

fn token(role: &str) -> String {
    let roles = [role.to_owned()];
    let token = issue_hs256(
        SECRET.as_bytes(),
        &TokenRequest {
            issuer: "nexus-test",
            audience: "nexus",
            subject: "tester",
            roles: &roles,
            roles_claim: "roles",
            ttl: Duration::from_secs(60),
            kid: None,
        },
    )
    .unwrap();
    format!("Bearer {token}")
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        challenge,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn request(method: &str, uri: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let body = if method == "POST" {
        Body::from(json!({"type": "Switch"}).to_string())
    } else {
        Body::empty()
    };
    builder.body(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_service_answers_401_and_403_naming_the_permission() {
    let (store, _guard) = support::embedded();
    let dir = tempfile::tempdir().unwrap();
    let app = CommandService::new(Arc::clone(&store))
        .with_access(access(dir.path()).await)
        .aggregate::<Lamp>()
        .router();

    let (status, challenge, body) = send(&app, request("POST", "/commands/lamp/1", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="nexus""#));
    assert_eq!(body["error"], "unauthenticated");

    let reader = token("reader");
    let (status, _, body) = send(&app, request("POST", "/commands/lamp/1", Some(&reader))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["permission"], "commands:write");

    let writer = token("writer");
    let (status, _, body) = send(&app, request("POST", "/commands/lamp/1", Some(&writer))).await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, _, body) = send(&app, request("GET", "/aggregates/lamp/1", Some(&reader))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = send(&app, request("GET", "/aggregates/lamp/1", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Health stays open, unknown routes stay 404 whatever the credential.
    assert_eq!(
        send(&app, request("GET", "/health", None)).await.0,
        StatusCode::OK
    );
    let (status, _, _) = send(&app, request("GET", "/nowhere", Some("Bearer a.b.c"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_dashboard_answers_401_and_403_naming_the_permission() {
    let dir = tempfile::tempdir().unwrap();
    let app = QueryDashboard::new(HealthRegistry::default())
        .with_access(access(dir.path()).await)
        .router();
    let (status, challenge, _) = send(&app, request("GET", "/read-models", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.is_some());
    let (status, _, body) =
        send(&app, request("GET", "/read-models", Some(&token("nobody")))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["permission"], "read-models:read");
    let (status, _, _) = send(&app, request("GET", "/read-models", Some(&token("reader")))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, request("GET", "/", Some(&token("reader")))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_access_configuration_loopback_stays_open_for_commands() {
    let (store, _guard) = support::embedded();
    let app = CommandService::new(Arc::clone(&store))
        .aggregate::<Lamp>()
        .router();
    let (status, _, body) = send(&app, request("POST", "/commands/lamp/1", None)).await;
    assert!(status.is_success(), "{status}: {body}");
}
