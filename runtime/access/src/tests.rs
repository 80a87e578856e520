//! The access layer over HTTP: 401/403 shapes, token checks, JWKS rotation and cooldown, API
//! keys and the bind rules.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{AccessControl, AuthConfig, ErrorStyle, Permission, Principal, api_key};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
const ISSUER: &str = "nexus-test";
const AUDIENCE: &str = "nexus";
const ED_A: &[u8] = include_bytes!("tests/keys/ed-a.pk8.der");
const ED_B: &[u8] = include_bytes!("tests/keys/ed-b.pk8.der");
const RSA: &[u8] = include_bytes!("tests/keys/rsa.pkcs1.der");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(roles: &[&str]) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "nbf": now() - 5, "exp": now() + 300, "roles": roles})
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn ed(kid: &str, der: &[u8], roles: &[&str]) -> String {
    signed(
        Algorithm::EdDSA,
        kid,
        &EncodingKey::from_ed_der(der),
        &claims(roles),
    )
}

fn base_config(dir: &Path) -> AuthConfig {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    AuthConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        hs256_secret_file: Some("secret".into()),
        ..AuthConfig::default()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn access(config: &AuthConfig, dir: &Path) -> AccessControl {
    AccessControl::load(config, dir)
        .await
        .unwrap()
        .for_bind(loopback(), false)
        .unwrap()
}

fn app(access: &AccessControl) -> Router {
    let who = |p: Principal| async move { p.client_id() };
    let temporal = Router::new()
        .route("/temporal", get(who))
        .route_layer(access.require(Permission::TemporalRead));
    let models = Router::new()
        .route("/read-models", get(who))
        .route_layer(access.require(Permission::ReadModelsRead));
    temporal.merge(models)
}

async fn call(
    app: &Router,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, body, challenge)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn history_needs_a_credential_and_the_permission() {
    let dir = tempfile::tempdir().unwrap();
    let access = access(&base_config(dir.path()), dir.path()).await;
    let app = app(&access);

    let (status, body, challenge) = call(&app, "/temporal", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="nexus""#));
    assert_eq!(body["error"], "unauthenticated");
    assert!(
        body["message"].as_str().unwrap().contains("temporal:read"),
        "{body}"
    );

    let reader = bearer(&hs256(&claims(&["reader"])));
    let (status, body, challenge) = call(&app, "/temporal", Some(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(challenge, None);
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["permission"], "temporal:read");
    assert_eq!(body["message"], "missing permission `temporal:read`");

    let auditor = format!("bearer {}", hs256(&claims(&["auditor"])));
    let (status, body, _) = call(&app, "/temporal", Some(&auditor)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "token:alice");

    // Open on loopback without configuration of `anonymous`.
    let (status, body, _) = call(&app, "/read-models", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!("anonymous")));
}

#[tokio::test]
async fn unknown_routes_stay_404_even_with_a_bad_token() {
    let dir = tempfile::tempdir().unwrap();
    let access = access(&base_config(dir.path()), dir.path()).await;
    let (status, _, _) = call(&app(&access), "/nowhere", Some("Bearer x.y.z")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_invalid_token() {
    let dir = tempfile::tempdir().unwrap();
    let access = access(&base_config(dir.path()), dir.path()).await;
    let app = app(&access);
    let with = |key: &str, value: Value| {
        let mut c = claims(&["admin"]);
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = claims(&["admin"]);
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let cases = [
        ("expired", hs256(&with("exp", json!(now() - 600)))),
        ("not yet valid", hs256(&with("nbf", json!(now() + 600)))),
        ("wrong audience", hs256(&with("aud", json!("other")))),
        ("wrong issuer", hs256(&with("iss", json!("evil")))),
        ("no audience", hs256(&without("aud"))),
        ("no nbf", hs256(&without("nbf"))),
        ("no subject", hs256(&without("sub"))),
        (
            "other secret",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(&["admin"]),
                &EncodingKey::from_secret(b"another-secret-another-secret-another").unwrap(),
            )
            .unwrap(),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (case, token) in cases {
        let (status, body, challenge) = call(&app, "/read-models", Some(&bearer(&token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer realm="nexus", error="invalid_token""#),
            "{case}"
        );
    }
    let (status, _, _) = call(&app, "/read-models", Some("Basic YWxpY2U6c2VjcmV0")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tests/keys/rsa.jwks.json"),
        dir.path().join("jwks.json"),
    )
    .unwrap();
    let config = AuthConfig {
        jwks_file: Some("jwks.json".into()),
        ..base_config(dir.path())
    };
    let access = access(&config, dir.path()).await;
    let app = app(&access);
    let rsa = signed(
        Algorithm::RS256,
        "rsa",
        &EncodingKey::from_rsa_der(RSA),
        &claims(&["auditor"]),
    );
    assert_eq!(
        call(&app, "/temporal", Some(&bearer(&rsa))).await.0,
        StatusCode::OK
    );

    // The classic confusion: the public key's bytes as an HMAC secret, `alg: HS256`, its `kid`.
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("jwks.json")).unwrap()).unwrap();
    let public = jwks["keys"][0]["n"].as_str().unwrap().as_bytes().to_vec();
    let forged = signed(
        Algorithm::HS256,
        "rsa",
        &EncodingKey::from_secret(&public).unwrap(),
        &claims(&["admin"]),
    );
    let (status, body, _) = call(&app, "/temporal", Some(&bearer(&forged))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("algorithm"),
        "{body}"
    );
}

/// A JWKS endpoint whose document the test swaps, counting fetches; 500 while `failing`.
#[derive(Clone, Default)]
struct IssuerStub {
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl IssuerStub {
    async fn serve(&self) -> String {
        let stub = self.clone();
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                let stub = stub.clone();
                async move {
                    stub.fetches.fetch_add(1, Ordering::SeqCst);
                    if stub.failing.load(Ordering::SeqCst) {
                        return Err(StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    Ok(stub.document.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/jwks.json")
    }

    fn publish(&self, kid: &str) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/tests/keys/{kid}.jwks.json"));
        *self.document.lock().unwrap() = std::fs::read_to_string(path).unwrap();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_document_is_read_up_to_its_size_limit_and_refused_past_it() {
    use crate::jwks::{Jwks, JwksError, JwksSource, MAX_JWKS_BYTES};
    let stub = IssuerStub::default();
    let url = stub.serve().await;
    let jwks = Jwks::new(
        JwksSource::Url(url.parse().unwrap()),
        vec![Algorithm::EdDSA],
        std::collections::BTreeMap::new(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let pad_to = |len: usize| {
        stub.publish("ed-a");
        let mut document = stub.document.lock().unwrap();
        let padding = len - document.len();
        document.push_str(&" ".repeat(padding));
    };
    pad_to(MAX_JWKS_BYTES);
    assert_eq!(
        jwks.load().await.unwrap(),
        1,
        "a document of exactly the limit"
    );
    pad_to(MAX_JWKS_BYTES + 1);
    assert!(
        matches!(jwks.load().await, Err(JwksError::Invalid(reason)) if reason.contains("bytes")),
        "one byte over the limit"
    );
}

#[tokio::test]
async fn a_rotated_jwks_key_is_picked_up_without_restart_within_the_cooldown() {
    let stub = IssuerStub::default();
    stub.publish("ed-a");
    let url = stub.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let config = AuthConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        jwks_url: Some(url),
        jwks_cooldown_secs: 1,
        ..AuthConfig::default()
    };
    let access = access(&config, dir.path()).await;
    let app = app(&access);
    assert_eq!(stub.fetches(), 1, "fetched once at start");
    let token_a = bearer(&ed("ed-a", ED_A, &["auditor"]));
    assert_eq!(
        call(&app, "/temporal", Some(&token_a)).await.0,
        StatusCode::OK
    );
    assert_eq!(stub.fetches(), 1, "a known kid needs no fetch");

    // The issuer rotates to ed-b; within the cooldown of the start-up fetch the new kid waits.
    stub.publish("ed-b");
    let token_b = bearer(&ed("ed-b", ED_B, &["auditor"]));
    assert_eq!(
        call(&app, "/temporal", Some(&token_b)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(stub.fetches(), 1, "no fetch inside the cooldown");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(&app, "/temporal", Some(&token_b)).await.0,
        StatusCode::OK
    );
    assert_eq!(stub.fetches(), 2, "one fetch for the unknown kid");

    // A flood of made-up kids costs at most one fetch per cooldown.
    for i in 0..20 {
        let forged = bearer(&ed(&format!("made-up-{i}"), ED_B, &["admin"]));
        assert_eq!(
            call(&app, "/temporal", Some(&forged)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(stub.fetches(), 2);

    // A failed refresh keeps the last good keys.
    stub.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = bearer(&ed("made-up", ED_B, &["admin"]));
    assert_eq!(
        call(&app, "/temporal", Some(&unknown)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(stub.fetches(), 3);
    assert_eq!(
        call(&app, "/temporal", Some(&token_b)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn jwks_keys_outside_the_allowed_algorithms_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tests/keys/ed-a.jwks.json"),
        dir.path().join("jwks.json"),
    )
    .unwrap();
    let config = AuthConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        jwks_file: Some("jwks.json".into()),
        jwks_algorithms: vec![Algorithm::RS256],
        ..AuthConfig::default()
    };
    let access = access(&config, dir.path()).await;
    let token = bearer(&ed("ed-a", ED_A, &["auditor"]));
    assert_eq!(
        call(&app(&access), "/temporal", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn api_keys_authenticate_by_digest_in_any_header_or_as_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key = api_key::generate_api_key().unwrap();
    let config = AuthConfig {
        api_keys: vec![crate::ApiKeyConfig {
            id: "ci".to_owned(),
            sha256: api_key::digest_hex(&key),
            roles: vec!["auditor".to_owned()],
        }],
        ..AuthConfig::default()
    };
    let access = access(&config, dir.path()).await;
    let app = app(&access);
    let (status, body, _) = call(&app, "/temporal", Some(&bearer(&key))).await;
    assert_eq!((status, body), (StatusCode::OK, json!("key:ci")));
    let response = app
        .clone()
        .oneshot(
            Request::get("/temporal")
                .header("x-api-key", &key)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // As Confluent's clients send it: HTTP Basic with the key's id as user, the key as password.
    let basic = |user_info: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_info)
        )
    };
    let (status, body, _) = call(&app, "/temporal", Some(&basic(&format!("ci:{key}")))).await;
    assert_eq!((status, body), (StatusCode::OK, json!("key:ci")));
    for wrong in [
        format!("other:{key}"),
        "ci:nexus_wrong".to_owned(),
        "no-colon".to_owned(),
    ] {
        let (status, body, _) = call(&app, "/temporal", Some(&basic(&wrong))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}: {body}");
    }
    let (status, body, _) = call(&app, "/temporal", Some(&bearer("nexus_wrong"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Tokens are not accepted when only API keys are configured.
    let (status, _, _) = call(
        &app,
        "/temporal",
        Some(&bearer(&hs256(&claims(&["admin"])))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn non_loopback_binds_need_credentials_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let bare = AccessControl::load(&AuthConfig::default(), dir.path())
        .await
        .unwrap();
    let error = bare.clone().for_bind(public, false).unwrap_err();
    assert!(error.to_string().contains("--insecure"), "{error}");
    let insecure = bare.for_bind(public, true).unwrap();
    assert_eq!(insecure.anonymous_permissions(), &Permission::open());

    // With credentials, a public bind is closed to anonymous callers unless configured.
    let configured = AccessControl::load(&base_config(dir.path()), dir.path())
        .await
        .unwrap()
        .for_bind(public, false)
        .unwrap();
    assert!(configured.anonymous_permissions().is_empty());
    let (status, _, challenge) = call(&app(&configured), "/read-models", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.is_some());
}

#[tokio::test]
async fn anonymous_config_cannot_open_history() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuthConfig {
        anonymous: Some(vec![Permission::TemporalRead]),
        ..base_config(dir.path())
    };
    let error = AccessControl::load(&config, dir.path()).await.unwrap_err();
    assert!(error.to_string().contains("temporal:read"), "{error}");
}

#[tokio::test]
async fn the_registry_style_speaks_confluent_and_rules_pick_by_route() {
    let access = AccessControl::open().with_error_style(ErrorStyle::Confluent);
    let rule = |method: &Method, route: &str| match (method, route) {
        (&Method::DELETE, _) => Some(Permission::RegistryAdmin),
        (_, "/health") => None,
        _ => Some(Permission::RegistryRead),
    };
    let app = Router::new()
        .route(
            "/subjects",
            get(|| async { "[]" }).delete(|| async { "gone" }),
        )
        .route("/health", get(|| async { "ok" }))
        .route_layer(access.require_by(rule));
    assert_eq!(call(&app, "/subjects", None).await.0, StatusCode::OK);
    assert_eq!(call(&app, "/health", None).await.0, StatusCode::OK);
    let response = app
        .clone()
        .oneshot(Request::delete("/subjects").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/vnd.schemaregistry.v1+json"
    );
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["error_code"], 40101);
    assert!(body["message"].as_str().unwrap().contains("registry:admin"));
}

#[tokio::test]
async fn a_principal_extractor_without_the_layer_fails_closed() {
    let app: Router = Router::new().route("/x", get(|p: Principal| async move { p.subject }));
    assert_eq!(call(&app, "/x", None).await.0, StatusCode::UNAUTHORIZED);
}

#[test]
fn issued_tokens_verify() {
    let roles = vec!["auditor".to_owned()];
    let token = crate::issue_hs256(
        SECRET.as_bytes(),
        &crate::TokenRequest {
            issuer: ISSUER,
            audience: AUDIENCE,
            subject: "dev",
            roles: &roles,
            roles_claim: "roles",
            ttl: Duration::from_secs(60),
            kid: None,
        },
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let access = access(&base_config(dir.path()), dir.path()).await;
        let (status, body, _) = call(&app(&access), "/temporal", Some(&bearer(&token))).await;
        assert_eq!((status, body), (StatusCode::OK, json!("token:dev")));
    });
    assert!(
        crate::issue_hs256(
            b"short",
            &crate::TokenRequest {
                issuer: ISSUER,
                audience: AUDIENCE,
                subject: "dev",
                roles: &roles,
                roles_claim: "roles",
                ttl: Duration::from_secs(60),
                kid: None,
            }
        )
        .is_err()
    );
}

/// A burst of clients the server has not accepted yet waits in the listen backlog instead of
/// having SYNs dropped (a dropped SYN is retried after the kernel's 1 s initial timeout, so a
/// connect that finishes well within it was queued at once). With `TcpListener::bind`'s 128,
/// the 130th client waits a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_queues_a_burst_of_clients_it_has_not_accepted_yet() {
    let listener = crate::listen(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let burst = 600;
    assert!(burst < crate::LISTEN_BACKLOG as usize);
    let connects: Vec<_> = (0..burst)
        .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)))
        .collect();
    let connected = tokio::time::timeout(Duration::from_millis(800), async {
        let mut streams = Vec::new();
        for connect in connects {
            streams.push(connect.await.unwrap().unwrap());
        }
        streams
    })
    .await
    .expect("every client of the burst is queued without a SYN retry");
    assert_eq!(connected.len(), burst);
    // The server accepts them all afterwards, in its own time.
    for _ in 0..burst {
        listener.accept().await.unwrap();
    }
}
