//! The endpoints: Confluent's subjects, schemas, compatibility, config and mode resources,
//! plus `/health`, `/metrics` and `/openapi.json`.
//!
//! Wire rules every handler follows: query strings are read leniently (unknown parameters
//! ignored, booleans case-insensitive, so Python's `False` works), request bodies are read as
//! JSON whatever their content type, and every JSON answer carries `schemaType: "JSON"` and
//! the registry media type.

use std::{collections::HashMap, sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{MatchedPath, Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, sr_json};
use crate::{
    compat::{self, CheckError, Level, Prior},
    document,
    storage::{ConfigRecord, GLOBAL, NewVersion, StorageError, VersionRecord},
};

/// The OpenAPI description of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// How many times a registration retries after losing a race for the next version number.
const REGISTER_ATTEMPTS: usize = 8;

/// The modes a registry or subject can be in.
const MODES: [&str; 3] = ["READWRITE", "READONLY", "READONLY_OVERRIDE"];

type Params = HashMap<String, String>;
type ApiResult = Result<Response, ApiError>;

pub(super) fn router(state: AppState) -> Router {
    let body_limit = state.options().max_schema_bytes.saturating_mul(2) + 64 * 1024;
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_raw_schema))
        .route("/schemas/ids/{id}/versions", get(schema_versions))
        .route("/schemas/ids/{id}/subjects", get(schema_subjects))
        .route("/schemas/types", get(schema_types))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_one),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(get_global_mode).put(put_global_mode))
        .route("/mode/", get(get_global_mode).put(put_global_mode))
        .route(
            "/mode/{subject}",
            get(get_subject_mode)
                .put(put_subject_mode)
                .delete(delete_subject_mode),
        )
        .route("/contexts", get(contexts))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
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

fn flag(params: &Params, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn params(query: Result<Query<Params>, axum::extract::rejection::QueryRejection>) -> Params {
    query.map(|Query(p)| p).unwrap_or_default()
}

fn body<T: for<'de> Deserialize<'de>>(
    bytes: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::BodyTooLarge { limit },
        other => ApiError::MalformedRequest(other.body_text()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedRequest(e.to_string()))
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

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    version: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    properties: Option<HashMap<String, Value>>,
}

/// A validated schema from a request.
struct Proposal {
    canonical: String,
    value: Value,
    prepared: Arc<Value>,
    major: Option<u64>,
    semver: Option<semver::Version>,
}

fn property(request: &SchemaRequest, key: &str) -> Option<String> {
    let value = request.metadata.as_ref()?.properties.as_ref()?.get(key)?;
    Some(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Checks the parts of a schema request that cost nothing to check: type, references, size.
fn screen(state: &AppState, request: &SchemaRequest) -> Result<(), ApiError> {
    let kind = request.schema_type.as_deref().unwrap_or("AVRO");
    if !kind.eq_ignore_ascii_case("JSON") {
        return Err(ApiError::InvalidSchema(format!(
            "schema type {kind} is not supported; this registry stores JSON schemas (send \"schemaType\": \"JSON\")"
        )));
    }
    if request.references.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::InvalidSchema(
            "schema references are not supported; inline the referenced definitions under `$defs`"
                .to_owned(),
        ));
    }
    let limit = state.options().max_schema_bytes;
    if request.schema.len() > limit {
        return Err(ApiError::SchemaTooLarge {
            size: request.schema.len(),
            limit,
        });
    }
    Ok(())
}

/// Runs CPU-bound work on the blocking pool under the configured deadline, so no schema can
/// hold an async worker (the registry shares its process with other services in `nexus up`).
///
/// `late` is the error when the deadline passes first.
async fn off_workers<T: Send + 'static>(
    state: &AppState,
    late: ApiError,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(state.options().check_timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(panicked)) => {
            tracing::error!(error = %panicked, "registry preparation or check panicked");
            Err(ApiError::CheckTimeout)
        }
        Err(_) => Err(late),
    }
}

/// Parses and prepares the schema of a request, off the async workers.
async fn proposal(
    state: &AppState,
    request: &SchemaRequest,
    normalize: bool,
) -> Result<Proposal, ApiError> {
    screen(state, request)?;
    let major = property(request, "major_version")
        .map(|m| {
            m.trim().parse::<u64>().map_err(|_| {
                ApiError::InvalidSchema(format!(
                    "metadata.properties.major_version `{m}` is not a whole number"
                ))
            })
        })
        .transpose()?;
    let semver = property(request, "semver")
        .map(|v| {
            semver::Version::parse(v.trim()).map_err(|e| {
                ApiError::InvalidSchema(format!(
                    "metadata.properties.semver `{v}` is not a semantic version: {e}"
                ))
            })
        })
        .transpose()?;
    let text = request.schema.clone();
    let limits = state.options().prepare_limits;
    let late = ApiError::PrepareTimeout(state.options().check_timeout);
    let (canonical, value, prepared) = off_workers(state, late, move || {
        let value = document::parse(&text).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
        let prepared = compat::prepare_with(&value, &[], limits)
            .map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
        Ok((
            document::canonical(&text, &value, normalize),
            value,
            prepared,
        ))
    })
    .await?;
    Ok(Proposal {
        canonical,
        value,
        prepared: Arc::new(prepared),
        major,
        semver,
    })
}

fn version_json(v: &VersionRecord) -> Value {
    json!({
        "subject": v.subject,
        "version": v.version,
        "id": v.id,
        "schemaType": "JSON",
        "schema": v.schema,
        "references": [],
        "metadata": {"properties": {"major_version": v.major.to_string(), "semver": v.semver}},
        "ts": v.created_at_ms,
        "registeredBy": v.registered_by,
        "deleted": v.deleted,
    })
}

fn ok(body: &Value) -> ApiResult {
    Ok(sr_json(StatusCode::OK, body))
}

async fn root() -> ApiResult {
    ok(&json!({}))
}

async fn list_subjects(
    State(state): State<AppState>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    let mut subjects = state.storage().subjects(flag(&params, "deleted")).await?;
    if let Some(prefix) = params.get("subjectPrefix").filter(|p| p.as_str() != ":*:") {
        subjects.retain(|s| s.starts_with(prefix.as_str()));
    }
    ok(&json!(subjects))
}

/// The subject's versions, live ones only unless `include_deleted`; 40401 when none.
async fn live_versions(
    state: &AppState,
    subject: &str,
    include_deleted: bool,
) -> Result<Vec<VersionRecord>, ApiError> {
    let versions: Vec<VersionRecord> = state
        .storage()
        .versions(subject)
        .await?
        .into_iter()
        .filter(|v| include_deleted || !v.deleted)
        .collect();
    if versions.is_empty() {
        return Err(ApiError::SubjectNotFound(subject.to_owned()));
    }
    Ok(versions)
}

async fn list_versions(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    let versions = live_versions(&state, &subject, flag(&params, "deleted")).await?;
    ok(&json!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>()
    ))
}

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
    match found {
        Some(v) => Ok(v),
        None => {
            let any = state.storage().versions(subject).await?;
            if any.iter().all(|v| v.deleted && !include_deleted) {
                Err(ApiError::SubjectNotFound(subject.to_owned()))
            } else {
                Err(ApiError::VersionNotFound {
                    subject: subject.to_owned(),
                    version: version.to_owned(),
                })
            }
        }
    }
}

async fn get_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    let v = find_version(&state, &subject, &version, flag(&params, "deleted")).await?;
    ok(&version_json(&v))
}

fn raw_schema(text: &str) -> Response {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()));
    sr_json(StatusCode::OK, &value)
}

async fn get_version_schema(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    let v = find_version(&state, &subject, &version, flag(&params, "deleted")).await?;
    Ok(raw_schema(&v.schema))
}

async fn referenced_by(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    find_version(&state, &subject, &version, true).await?;
    // References are not supported, so no schema refers to another.
    ok(&json!([]))
}

fn registered_by(headers: &HeaderMap) -> String {
    if let Some(who) = headers
        .get("x-nexus-registered-by")
        .and_then(|v| v.to_str().ok())
    {
        return who.trim().to_owned();
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| decode_base64(b64.trim()))
        .and_then(|creds| creds.split(':').next().map(str::to_owned))
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "anonymous".to_owned())
}

fn decode_base64(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The level and grouping in force for a subject.
async fn policy(state: &AppState, subject: &str) -> Result<(Level, bool), ApiError> {
    let config = match state.storage().config(subject).await? {
        Some(c) => Some(c),
        None => state.storage().config(GLOBAL).await?,
    };
    Ok(match config {
        Some(c) => (
            c.compatibility
                .parse()
                .unwrap_or(state.options().default_level),
            c.compatibility_group.as_deref() == Some("major_version"),
        ),
        None => (state.options().default_level, false),
    })
}

async fn mode(state: &AppState, subject: &str) -> Result<String, ApiError> {
    Ok(match state.storage().mode(subject).await? {
        Some(m) => m,
        None => state
            .storage()
            .mode(GLOBAL)
            .await?
            .unwrap_or_else(|| "READWRITE".to_owned()),
    })
}

async fn ensure_writable(state: &AppState, subject: &str) -> Result<(), ApiError> {
    let mode = mode(state, subject).await?;
    if mode.starts_with("READONLY") {
        return Err(ApiError::NotPermitted(format!(
            "subject `{subject}` is in {mode} mode"
        )));
    }
    Ok(())
}

/// The dereferenced schema of a stored version, from the cache when possible (blocking).
fn prepared(state: &AppState, id: i64, text: &str) -> Result<Arc<Value>, ApiError> {
    if let Some(hit) = state.inner.prepared.get(id) {
        return Ok(hit);
    }
    let limits = state.options().prepare_limits;
    let value = document::parse(text)
        .ok()
        .and_then(|v| compat::prepare_with(&v, &[], limits).ok())
        .ok_or_else(|| {
            ApiError::InvalidSchema(format!("stored schema {id} can no longer be read"))
        })?;
    let value = Arc::new(value);
    state.inner.prepared.insert(id, Arc::clone(&value));
    Ok(value)
}

/// Prepares the earlier versions and runs the checker off the async workers, under the
/// configured deadline.
async fn run_check(
    state: &AppState,
    level: Level,
    group: bool,
    priors: &[VersionRecord],
    proposal: &Proposal,
) -> Result<compat::Verdict, ApiError> {
    let stored: Vec<(u32, i64, String, u64)> = priors
        .iter()
        .map(|v| (v.version, v.id, v.schema.clone(), v.major))
        .collect();
    let proposed = Arc::clone(&proposal.prepared);
    let major = proposal.major;
    let shared = state.clone();
    let verdict = off_workers(state, ApiError::CheckTimeout, move || {
        let schemas: Vec<(u32, Arc<Value>, u64)> = stored
            .iter()
            .map(|(version, id, text, major)| Ok((*version, prepared(&shared, *id, text)?, *major)))
            .collect::<Result<_, ApiError>>()?;
        let priors: Vec<Prior<'_>> = schemas
            .iter()
            .map(|(version, schema, major)| Prior {
                version: *version,
                schema,
                major: *major,
            })
            .collect();
        compat::check(level, &priors, &proposed, major, group)
            .map_err(|e: CheckError| ApiError::InvalidSchema(e.to_string()))
    })
    .await?;
    state.inner.metrics.check(verdict.is_compatible());
    Ok(verdict)
}

/// The semantic version of a new version: the one asked for (checked), or the next minor of its line.
fn semver_for(proposal: &Proposal, major: u64, live: &[VersionRecord]) -> Result<String, ApiError> {
    let existing: Vec<semver::Version> = live
        .iter()
        .filter_map(|v| semver::Version::parse(&v.semver).ok())
        .collect();
    match &proposal.semver {
        Some(wanted) => {
            if wanted.major != major {
                return Err(ApiError::InvalidSchema(format!(
                    "metadata.properties.semver {wanted} does not match major version {major}"
                )));
            }
            if let Some(higher) = existing
                .iter()
                .filter(|v| v.major == major)
                .find(|v| *v >= wanted)
            {
                return Err(ApiError::InvalidSchema(format!(
                    "metadata.properties.semver {wanted} must be greater than the existing {higher}"
                )));
            }
            Ok(wanted.to_string())
        }
        None => Ok(existing
            .iter()
            .filter(|v| v.major == major)
            .max()
            .map_or_else(
                || semver::Version::new(major, 0, 0),
                |v| semver::Version::new(major, v.minor + 1, 0),
            )
            .to_string()),
    }
}

async fn register(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    check_subject(&subject)?;
    let params = params(query);
    let request: SchemaRequest = body(bytes, state.options().max_schema_bytes)?;
    if request.id.is_some() || request.version.is_some() {
        return Err(ApiError::NotPermitted(
            "a schema id or version may only be chosen by the caller in IMPORT mode, which this registry does not offer".to_owned(),
        ));
    }
    let proposal = proposal(&state, &request, flag(&params, "normalize")).await?;
    let who = registered_by(&headers);
    for _ in 0..REGISTER_ATTEMPTS {
        let all = state.storage().versions(&subject).await?;
        let live: Vec<VersionRecord> = all.iter().filter(|v| !v.deleted).cloned().collect();
        // Registering a schema the subject already has returns the existing version.
        if let Some(existing) = live.iter().find(|v| v.schema == proposal.canonical) {
            return ok(&version_json(existing));
        }
        ensure_writable(&state, &subject).await?;
        let (level, group) = policy(&state, &subject).await?;
        let verdict = run_check(&state, level, group, &live, &proposal).await?;
        if !verdict.is_compatible() {
            return Err(ApiError::Incompatible {
                subject,
                violations: verdict.violations,
            });
        }
        let semver = semver_for(&proposal, verdict.major, &live)?;
        let new = NewVersion {
            subject: subject.clone(),
            expected_last: all.last().map_or(0, |v| v.version),
            schema: proposal.canonical.clone(),
            major: verdict.major,
            semver,
            registered_by: who.clone(),
            created_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        match state.storage().insert_version(new).await {
            Ok((_, version)) => {
                state.inner.metrics.registration();
                let stored = state
                    .storage()
                    .version(&subject, version)
                    .await?
                    .ok_or_else(|| ApiError::VersionNotFound {
                        subject: subject.clone(),
                        version: version.to_string(),
                    })?;
                tracing::info!(target: "nexus::registry", subject = %subject, version, id = stored.id, by = %who, "registered schema");
                return ok(&version_json(&stored));
            }
            Err(StorageError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Contended(subject))
}

async fn lookup(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let params = params(query);
    let request: SchemaRequest = body(bytes, state.options().max_schema_bytes)?;
    let proposal = proposal(&state, &request, flag(&params, "normalize")).await?;
    let versions = live_versions(&state, &subject, flag(&params, "deleted")).await?;
    let found = versions
        .iter()
        .rev()
        .find(|v| v.schema == proposal.canonical)
        .or_else(|| {
            versions.iter().rev().find(|v| {
                serde_json::from_str::<Value>(&v.schema).ok().as_ref() == Some(&proposal.value)
            })
        });
    match found {
        Some(v) => ok(&version_json(v)),
        None => Err(ApiError::SchemaNotFound(
            "not found in this subject".to_owned(),
        )),
    }
}

async fn delete_subject(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    ensure_writable(&state, &subject).await?;
    let all = state.storage().versions(&subject).await?;
    if all.is_empty() {
        return Err(ApiError::SubjectNotFound(subject));
    }
    if flag(&params, "permanent") {
        if all.iter().any(|v| !v.deleted) {
            return Err(ApiError::SubjectNotSoftDeleted(subject));
        }
        let removed = state.storage().hard_delete(&subject, None).await?;
        return ok(&json!(removed));
    }
    if all.iter().all(|v| v.deleted) {
        return Err(ApiError::SubjectSoftDeleted(subject));
    }
    let deleted = state.storage().soft_delete(&subject, None).await?;
    ok(&json!(deleted))
}

async fn delete_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    ensure_writable(&state, &subject).await?;
    let permanent = flag(&params, "permanent");
    let target = find_version(&state, &subject, &version, permanent).await?;
    if permanent {
        if !target.deleted {
            return Err(ApiError::VersionNotSoftDeleted {
                subject,
                version: target.version,
            });
        }
        state
            .storage()
            .hard_delete(&subject, Some(target.version))
            .await?;
    } else {
        if target.deleted {
            return Err(ApiError::VersionSoftDeleted {
                subject,
                version: target.version,
            });
        }
        state
            .storage()
            .soft_delete(&subject, Some(target.version))
            .await?;
    }
    ok(&json!(target.version))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::SchemaNotFound(id.to_owned()))
}

async fn schema_text(state: &AppState, id: &str) -> Result<(i64, String), ApiError> {
    let numeric = parse_id(id)?;
    match state.storage().schema(numeric).await? {
        Some(text) => Ok((numeric, text)),
        None => Err(ApiError::SchemaNotFound(id.to_owned())),
    }
}

async fn get_schema(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let (_, text) = schema_text(&state, &id).await?;
    ok(&json!({"schema": text, "schemaType": "JSON", "references": []}))
}

async fn get_raw_schema(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let (_, text) = schema_text(&state, &id).await?;
    Ok(raw_schema(&text))
}

async fn schema_versions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    let (numeric, _) = schema_text(&state, &id).await?;
    let usages = state.storage().usages(numeric).await?;
    let deleted = flag(&params, "deleted");
    ok(&json!(
        usages
            .iter()
            .filter(|u| deleted || !u.deleted)
            .map(|u| json!({"subject": u.subject, "version": u.version}))
            .collect::<Vec<_>>()
    ))
}

async fn schema_subjects(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    let (numeric, _) = schema_text(&state, &id).await?;
    let usages = state.storage().usages(numeric).await?;
    let deleted = flag(&params, "deleted");
    let mut subjects: Vec<&str> = usages
        .iter()
        .filter(|u| deleted || !u.deleted)
        .map(|u| u.subject.as_str())
        .collect();
    subjects.dedup();
    ok(&json!(subjects))
}

async fn schema_types() -> ApiResult {
    ok(&json!(["JSON"]))
}

fn compatibility_body(verdict: &compat::Verdict, verbose: bool) -> Value {
    if verbose {
        json!({
            "is_compatible": verdict.is_compatible(),
            "messages": verdict.violations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "violations": verdict.violations,
        })
    } else {
        json!({"is_compatible": verdict.is_compatible()})
    }
}

async fn check_all(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let params = params(query);
    let request: SchemaRequest = body(bytes, state.options().max_schema_bytes)?;
    let proposal = proposal(&state, &request, flag(&params, "normalize")).await?;
    let live: Vec<VersionRecord> = state
        .storage()
        .versions(&subject)
        .await?
        .into_iter()
        .filter(|v| !v.deleted)
        .collect();
    let (level, group) = policy(&state, &subject).await?;
    let verdict = run_check(&state, level, group, &live, &proposal).await?;
    ok(&compatibility_body(&verdict, flag(&params, "verbose")))
}

async fn check_one(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let params = params(query);
    let request: SchemaRequest = body(bytes, state.options().max_schema_bytes)?;
    let proposal = proposal(&state, &request, flag(&params, "normalize")).await?;
    let target = find_version(&state, &subject, &version, false).await?;
    let (level, group) = policy(&state, &subject).await?;
    // Against one named version, the transitive levels reduce to their plain form.
    let level = match level {
        Level::BackwardTransitive => Level::Backward,
        Level::ForwardTransitive => Level::Forward,
        Level::FullTransitive => Level::Full,
        other => other,
    };
    let verdict = run_check(&state, level, group, &[target], &proposal).await?;
    ok(&compatibility_body(&verdict, flag(&params, "verbose")))
}

fn config_json(config: &ConfigRecord) -> Value {
    let mut body = json!({"compatibilityLevel": config.compatibility});
    if let Some(group) = &config.compatibility_group {
        body["compatibilityGroup"] = json!(group);
    }
    body
}

async fn effective_global(state: &AppState) -> Result<ConfigRecord, ApiError> {
    Ok(state
        .storage()
        .config(GLOBAL)
        .await?
        .unwrap_or_else(|| ConfigRecord {
            compatibility: state.options().default_level.as_str().to_owned(),
            compatibility_group: None,
        }))
}

async fn get_global_config(State(state): State<AppState>) -> ApiResult {
    ok(&config_json(&effective_global(&state).await?))
}

async fn get_subject_config(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    match state.storage().config(&subject).await? {
        Some(config) => ok(&config_json(&config)),
        None if flag(&params, "defaultToGlobal") => {
            ok(&config_json(&effective_global(&state).await?))
        }
        None => Err(ApiError::SubjectConfigNotFound(subject)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRequest {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
    compatibility_group: Option<String>,
}

async fn put_config(
    state: &AppState,
    subject: &str,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let request: ConfigRequest = body(bytes, state.options().max_schema_bytes)?;
    let name = request
        .compatibility
        .or(request.compatibility_level)
        .ok_or_else(|| {
            ApiError::InvalidCompatibility("the body has no `compatibility`".to_owned())
        })?;
    let level: Level = name
        .parse()
        .map_err(|e: compat::UnknownLevel| ApiError::InvalidCompatibility(e.to_string()))?;
    let config = ConfigRecord {
        compatibility: level.as_str().to_owned(),
        compatibility_group: request.compatibility_group.filter(|g| !g.is_empty()),
    };
    state.storage().put_config(subject, config.clone()).await?;
    let mut answer = json!({"compatibility": config.compatibility});
    if let Some(group) = config.compatibility_group {
        answer["compatibilityGroup"] = json!(group);
    }
    ok(&answer)
}

async fn put_global_config(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    put_config(&state, GLOBAL, bytes).await
}

async fn put_subject_config(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    check_subject(&subject)?;
    put_config(&state, &subject, bytes).await
}

async fn delete_global_config(State(state): State<AppState>) -> ApiResult {
    let previous = effective_global(&state).await?;
    state.storage().delete_config(GLOBAL).await?;
    ok(&config_json(&previous))
}

async fn delete_subject_config(
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> ApiResult {
    match state.storage().delete_config(&subject).await? {
        Some(previous) => ok(&config_json(&previous)),
        None => Err(ApiError::SubjectConfigNotFound(subject)),
    }
}

#[derive(Debug, Deserialize)]
struct ModeRequest {
    mode: String,
}

fn parse_mode(bytes: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let request: ModeRequest = body(bytes, usize::MAX)?;
    let mode = request.mode.trim().to_ascii_uppercase();
    if !MODES.contains(&mode.as_str()) {
        return Err(ApiError::InvalidMode(format!(
            "`{}` is not supported (expected one of {})",
            request.mode,
            MODES.join(", ")
        )));
    }
    Ok(mode)
}

async fn get_global_mode(State(state): State<AppState>) -> ApiResult {
    ok(&json!({"mode": mode(&state, GLOBAL).await?}))
}

async fn put_global_mode(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mode = parse_mode(bytes)?;
    state.storage().put_mode(GLOBAL, &mode).await?;
    ok(&json!({"mode": mode}))
}

async fn get_subject_mode(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let params = params(query);
    match state.storage().mode(&subject).await? {
        Some(mode) => ok(&json!({"mode": mode})),
        None if flag(&params, "defaultToGlobal") => {
            ok(&json!({"mode": mode(&state, GLOBAL).await?}))
        }
        None => Err(ApiError::SubjectModeNotFound(subject)),
    }
}

async fn put_subject_mode(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    check_subject(&subject)?;
    let mode = parse_mode(bytes)?;
    state.storage().put_mode(&subject, &mode).await?;
    ok(&json!({"mode": mode}))
}

async fn delete_subject_mode(
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> ApiResult {
    match state.storage().delete_mode(&subject).await? {
        Some(previous) => ok(&json!({"mode": previous})),
        None => Err(ApiError::SubjectModeNotFound(subject)),
    }
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
