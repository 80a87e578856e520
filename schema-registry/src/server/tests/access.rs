//! The registry behind the shared access layer: Confluent-shaped 401 and 403, and the
//! permission each route needs.

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use nexus_access::{AccessControl, ApiKeyConfig, AuthConfig, digest_hex};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{Registry, order, registry_with};
use crate::server::{Options, permission_for};

const READER: &str = "nexus_reader_key";
const WRITER: &str = "nexus_writer_key";
const ADMIN: &str = "nexus_admin_key";

async fn guarded() -> Registry {
    let key = |id: &str, secret: &str, role: &str| ApiKeyConfig {
        id: id.to_owned(),
        sha256: digest_hex(secret),
        roles: vec![role.to_owned()],
    };
    let config = AuthConfig {
        api_keys: vec![
            key("reader", READER, "reader"),
            key("writer", WRITER, "writer"),
            key("admin", ADMIN, "admin"),
        ],
        ..AuthConfig::default()
    };
    let access = AccessControl::load(&config, std::path::Path::new("."))
        .await
        .expect("access")
        .for_bind("0.0.0.0:8082".parse().expect("addr"), false)
        .expect("bind");
    registry_with(Options {
        access: Some(access),
        ..Options::default()
    })
}

async fn send(
    registry: &Registry,
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let response = registry
        .app
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("text").to_owned());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        challenge,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn each_route_needs_its_permission_and_refusals_speak_confluent() {
    let registry = guarded().await;
    let schema = json!({"schemaType": "JSON", "schema": order(json!({"id": {"type": "string"}})).to_string()});

    let (status, challenge, body) = send(&registry, Method::GET, "/subjects", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="nexus""#));
    assert_eq!(body["error_code"], 40101);
    assert_eq!(body.as_object().expect("object").len(), 2);

    let (status, _, body) = send(
        &registry,
        Method::POST,
        "/subjects/orders/versions",
        Some(READER),
        Some(schema.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error_code"], 40301);
    assert!(
        body["message"]
            .as_str()
            .expect("text")
            .contains("registry:write")
    );

    let (status, _, body) = send(
        &registry,
        Method::POST,
        "/subjects/orders/versions",
        Some(WRITER),
        Some(schema),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = send(&registry, Method::GET, "/subjects", Some(READER), None).await;
    assert_eq!(status, StatusCode::OK);

    let level = json!({"compatibility": "NONE"});
    let (status, _, body) = send(
        &registry,
        Method::PUT,
        "/config",
        Some(WRITER),
        Some(level.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .expect("text")
            .contains("registry:admin")
    );
    let (status, _, _) = send(
        &registry,
        Method::DELETE,
        "/subjects/orders",
        Some(WRITER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&registry, Method::PUT, "/config", Some(ADMIN), Some(level)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &registry,
        Method::DELETE,
        "/subjects/orders",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Health stays open; unknown paths stay 404.
    assert_eq!(
        send(&registry, Method::GET, "/health", None, None).await.0,
        StatusCode::OK
    );
    let (status, _, _) = send(&registry, Method::GET, "/nowhere", Some("bad"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn admin_covers_configuration_modes_and_deletes() {
    use nexus_access::Permission::*;
    let cases = [
        (Method::GET, "/config", Some(RegistryRead)),
        (Method::PUT, "/config/{subject}", Some(RegistryAdmin)),
        (Method::DELETE, "/config", Some(RegistryAdmin)),
        (Method::PUT, "/mode", Some(RegistryAdmin)),
        (Method::GET, "/mode/{subject}", Some(RegistryRead)),
        (
            Method::DELETE,
            "/subjects/{subject}/versions/{version}",
            Some(RegistryAdmin),
        ),
        (
            Method::POST,
            "/subjects/{subject}/versions",
            Some(RegistryWrite),
        ),
        (Method::POST, "/subjects/{subject}", Some(RegistryRead)),
        (
            Method::POST,
            "/compatibility/subjects/{subject}/versions",
            Some(RegistryRead),
        ),
        (Method::GET, "/metrics", None),
    ];
    for (method, route, expected) in cases {
        assert_eq!(permission_for(&method, route), expected, "{method} {route}");
    }
}

#[tokio::test]
async fn web_pages_cannot_register_rebind_or_post_without_a_json_type() {
    let r = super::registry();
    let body = json!({"schema": "{\"type\":\"object\"}", "schemaType": "JSON"}).to_string();
    let post = |extra: &[(header::HeaderName, &str)]| {
        let mut request = Request::post("/subjects/web/versions");
        for (name, value) in extra {
            request = request.header(name, *value);
        }
        request.body(Body::from(body.clone())).expect("request")
    };
    let answer = |request: Request<Body>| async {
        let response = r.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        (status, body)
    };
    let json_type = (
        header::CONTENT_TYPE,
        "application/vnd.schemaregistry.v1+json",
    );
    // A page of another site, posting with a form-compatible type or cross-site.
    let (status, body) = answer(post(&[(header::CONTENT_TYPE, "text/plain")])).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body["error_code"].is_number(),
        "Confluent's error shape: {body}"
    );
    let (status, _) = answer(post(&[
        json_type.clone(),
        (header::ORIGIN, "https://evil.example"),
    ]))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = answer(post(&[
        json_type.clone(),
        (
            header::HeaderName::from_static("sec-fetch-site"),
            "cross-site",
        ),
    ]))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // DNS rebinding: a name that resolves to 127.0.0.1 but is not the registry's.
    let (status, _) = answer(post(&[
        json_type.clone(),
        (header::HOST, "rebind.evil.example:8082"),
    ]))
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    // Nothing of the refused requests was stored; the registry's own clients still register.
    assert_eq!(r.get("/subjects").await.body, json!([]));
    for media_type in [
        "application/vnd.schemaregistry.v1+json",
        "application/json",
        "application/octet-stream",
    ] {
        let (status, body) = answer(post(&[
            (header::CONTENT_TYPE, media_type),
            (header::HOST, "localhost:8082"),
        ]))
        .await;
        assert_eq!(status, StatusCode::OK, "{media_type}: {body}");
    }
}
