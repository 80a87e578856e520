//! The endpoints: Confluent's subjects, schemas, compatibility, config and mode resources
//! (one module each), plus `/health`, `/metrics` and `/openapi.json`.
//!
//! Wire rules every handler follows: query strings are read leniently (unknown parameters
//! ignored, booleans case-insensitive, so Python's `False` works), request bodies are read as
//! JSON whatever their content type, every path works with and without a trailing slash, and
//! every JSON answer carries `schemaType: "JSON"` and the registry media type. The extractors
//! in [`extract`] turn every rejection into an [`ApiError`] once.

mod compatibility;
mod config;
mod extract;
mod schemas;
mod subjects;

pub(super) use subjects::SubjectLocks;

use std::time::Instant;

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use serde_json::{Value, json};

use super::{ApiError, AppState, sr_json};
use crate::storage::{SchemaReference, VersionRecord};

/// The OpenAPI description of this API.
const OPENAPI: &str = include_str!("../openapi.json");

type ApiResult = Result<Response, ApiError>;

/// Adds a route under its path and the same path with a trailing slash.
fn both(router: Router<AppState>, path: &str, methods: MethodRouter<AppState>) -> Router<AppState> {
    router
        .route(path, methods.clone())
        .route(&format!("{path}/"), methods)
}

pub(super) fn router(state: AppState) -> Router {
    let body_limit = state.options().max_schema_bytes.saturating_mul(2) + 64 * 1024;
    let routes: [(&str, MethodRouter<AppState>); 22] = [
        ("/subjects", get(subjects::list)),
        (
            "/subjects/{subject}",
            post(subjects::lookup).delete(subjects::delete_subject),
        ),
        (
            "/subjects/{subject}/versions",
            get(subjects::versions).post(subjects::register),
        ),
        (
            "/subjects/{subject}/versions/{version}",
            get(subjects::version).delete(subjects::delete_version),
        ),
        (
            "/subjects/{subject}/versions/{version}/schema",
            get(subjects::version_schema),
        ),
        (
            "/subjects/{subject}/versions/{version}/referencedby",
            get(subjects::referenced_by),
        ),
        ("/schemas/ids/{id}", get(schemas::by_id)),
        ("/schemas/ids/{id}/schema", get(schemas::raw)),
        ("/schemas/ids/{id}/versions", get(schemas::versions)),
        ("/schemas/ids/{id}/subjects", get(schemas::subjects)),
        (
            "/schemas/ids/{id}/referencedby",
            get(schemas::referenced_by),
        ),
        ("/schemas/types", get(schemas::types)),
        (
            "/compatibility/subjects/{subject}/versions",
            post(compatibility::against_all),
        ),
        (
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility::against_one),
        ),
        (
            "/config",
            get(config::get_global)
                .put(config::put_global)
                .delete(config::delete_global),
        ),
        (
            "/config/{subject}",
            get(config::get_subject)
                .put(config::put_subject)
                .delete(config::delete_subject),
        ),
        (
            "/mode",
            get(config::get_global_mode).put(config::put_global_mode),
        ),
        (
            "/mode/{subject}",
            get(config::get_subject_mode)
                .put(config::put_subject_mode)
                .delete(config::delete_subject_mode),
        ),
        ("/contexts", get(contexts)),
        ("/health", get(health)),
        ("/metrics", get(metrics_text)),
        ("/openapi.json", get(openapi)),
    ];
    let mut router = Router::new().route("/", get(root));
    for (path, methods) in routes {
        router = both(router, path, methods);
    }
    router
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(unmatched)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Logs each request and records its metrics.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .inner
        .metrics
        .request(&method, &route, status, elapsed);
    tracing::info!(target: "nexus::registry", %method, %path, status, micros = elapsed.as_micros() as u64, "request");
    response
}

/// Unknown paths answer 404 with the JSON error body (clients probe `/associations/…` and fall back on 404).
async fn unmatched(State(state): State<AppState>, request: Request) -> ApiError {
    tracing::info!(target: "nexus::registry", method = %request.method(), path = %request.uri().path(), status = 404, "request");
    state.inner.metrics.request(
        request.method().as_str(),
        "unmatched",
        404,
        std::time::Duration::ZERO,
    );
    ApiError::RouteNotFound
}

fn check_subject(subject: &str) -> Result<(), ApiError> {
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return Err(ApiError::InvalidSubject(format!("{subject:?}")));
    }
    Ok(())
}

/// A version path segment: a number in 1..=2^31-1, or `latest` / `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionRef {
    Latest,
    Number(u32),
}

fn parse_version(text: &str) -> Result<VersionRef, ApiError> {
    if text.eq_ignore_ascii_case("latest") || text == "-1" {
        return Ok(VersionRef::Latest);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionRef::Number(n)),
        _ => Err(ApiError::InvalidVersion(text.to_owned())),
    }
}

fn references_json(references: &[SchemaReference]) -> Value {
    json!(
        references
            .iter()
            .map(|r| json!({"name": r.name, "subject": r.subject, "version": r.version}))
            .collect::<Vec<_>>()
    )
}

/// A version as Confluent answers it, with the references of its schema.
async fn version_json(state: &AppState, v: &VersionRecord) -> Result<Value, ApiError> {
    let references = state.storage().references(v.id).await?;
    Ok(json!({
        "subject": v.subject,
        "version": v.version,
        "id": v.id,
        "schemaType": "JSON",
        "schema": v.schema,
        "references": references_json(&references),
        "metadata": {"properties": {"major_version": v.major.to_string(), "semver": v.semver}},
        "ts": v.created_at_ms,
        "registeredBy": v.registered_by,
        "deleted": v.deleted,
    }))
}

fn ok(body: &Value) -> ApiResult {
    Ok(sr_json(StatusCode::OK, body))
}

/// One version of a subject; 40401 when the subject has no version at all (live ones only
/// unless `include_deleted`), 40402 when it has others.
async fn find_version(
    state: &AppState,
    subject: &str,
    version: &str,
    include_deleted: bool,
) -> Result<VersionRecord, ApiError> {
    let wanted = parse_version(version)?;
    let found = match wanted {
        VersionRef::Latest => state.storage().latest(subject).await?,
        VersionRef::Number(n) => state
            .storage()
            .version(subject, n)
            .await?
            .filter(|v| include_deleted || !v.deleted),
    };
    if let Some(v) = found {
        return Ok(v);
    }
    let any = state.storage().latest(subject).await?.is_some()
        || (include_deleted && !state.storage().versions(subject).await?.is_empty());
    if any {
        Err(ApiError::VersionNotFound {
            subject: subject.to_owned(),
            version: version.to_owned(),
        })
    } else {
        Err(ApiError::SubjectNotFound(subject.to_owned()))
    }
}

async fn root() -> ApiResult {
    ok(&json!({}))
}

async fn contexts() -> ApiResult {
    ok(&json!(["."]))
}

async fn health(State(state): State<AppState>) -> Response {
    match state.storage().ping().await {
        Ok(()) => sr_json(StatusCode::OK, &json!({"status": "UP"})),
        Err(e) => {
            tracing::error!(error = %e, "registry health check failed");
            sr_json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error_code": 50001, "message": "storage is unavailable"}),
            )
        }
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
