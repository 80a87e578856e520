//! The saga routes of the command service: status of one instance (with its history), pages of
//! instances by status, and the operator's retry and abort of stuck instances.
//!
//! Status, with the history, comes from each saga's status read model in one indexed read, so it
//! answers without a runner and without touching the event store.
//! Reads need `aggregates:read`; retry and abort act on the dead-letter list of sagas and need
//! `dlq:admin`, which is never granted without a credential.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use nexus_access::{AccessControl, Permission, Principal};

use super::error::ApiError;
use super::extract::{JsonBody, Path, Query};
use crate::saga::{MAX_PAGE, SagaError, SagaReader, SagaStatus};

/// Longest reason an operator may give for an abort.
const MAX_REASON_LEN: usize = 1_000;
/// Instances one page holds unless the caller asks for fewer.
const DEFAULT_PAGE: usize = 50;

/// The saga routes for the command service ([`super::CommandService::with_routes`]).
#[derive(Clone)]
pub struct SagaApi {
    sagas: Arc<BTreeMap<String, SagaReader>>,
    access: AccessControl,
}

impl std::fmt::Debug for SagaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaApi")
            .field("sagas", &self.sagas.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SagaApi {
    /// Routes over `sagas`, guarded by `access`.
    pub fn new(sagas: impl IntoIterator<Item = SagaReader>, access: AccessControl) -> Self {
        Self {
            sagas: Arc::new(
                sagas
                    .into_iter()
                    .map(|r| (r.saga().to_owned(), r))
                    .collect(),
            ),
            access,
        }
    }

    /// `GET /sagas/{saga}`, `GET /sagas/{saga}/{id}`, `POST /sagas/{saga}/{id}/retry` and
    /// `POST /sagas/{saga}/{id}/abort`.
    pub fn routes(&self) -> Router {
        let reads = Router::new()
            .route("/sagas/{saga}", get(list))
            .route("/sagas/{saga}/{id}", get(show))
            .route_layer(self.access.require(Permission::AggregatesRead));
        let operate = Router::new()
            .route("/sagas/{saga}/{id}/retry", post(retry))
            .route("/sagas/{saga}/{id}/abort", post(abort))
            .route_layer(self.access.require(Permission::DlqAdmin));
        reads.merge(operate).with_state(Arc::clone(&self.sagas))
    }

    /// The OpenAPI paths of [`SagaApi::routes`].
    pub fn openapi_paths(&self) -> Value {
        openapi(&self.sagas.keys().cloned().collect::<Vec<_>>())
    }
}

type Sagas = Arc<BTreeMap<String, SagaReader>>;

fn reader<'a>(sagas: &'a Sagas, saga: &str) -> Result<&'a SagaReader, ApiError> {
    sagas.get(saga).ok_or_else(|| {
        ApiError::UnknownId(format!(
            "this service runs no saga `{saga}`; it runs {}",
            sagas
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn saga_error(err: SagaError) -> ApiError {
    match err {
        SagaError::NotFound { .. } => ApiError::UnknownId(err.to_string()),
        SagaError::NotStuck { .. } | SagaError::Conflict { .. } => {
            ApiError::Rejected(err.to_string())
        }
        err if err.is_unavailable() => ApiError::unavailable(err),
        err => ApiError::internal(err),
    }
}

/// An instance id as the runtime makes them (a UUID), so a path never reaches the store unchecked.
fn instance(id: &str) -> Result<&str, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| ApiError::InvalidId(format!("`{id}` is not a saga instance id (a UUID)")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list(
    State(sagas): State<Sagas>,
    Path(saga): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let reader = reader(&sagas, &saga)?;
    let status = match params.status.as_deref() {
        None => None,
        Some(name) => Some(SagaStatus::parse(name).ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "`status` must be one of {}",
                SagaStatus::ALL.map(SagaStatus::as_str).join(", ")
            ))
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::InvalidParameter(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let offset = params.offset.unwrap_or(0);
    if offset > 1_000_000 {
        return Err(ApiError::InvalidParameter(
            "`offset` must be at most 1000000".into(),
        ));
    }
    let page = reader
        .list(status, limit + 1, offset)
        .await
        .map_err(saga_error)?;
    let more = page.len() > limit;
    let items: Vec<Value> = page.into_iter().take(limit).map(summary).collect();
    Ok(axum::Json(json!({
        "saga": saga,
        "items": items,
        "next_offset": more.then_some(offset + limit),
    }))
    .into_response())
}

/// What a list shows of one instance.
fn summary(doc: Value) -> Value {
    let field = |name: &str| doc.get(name).cloned().unwrap_or(Value::Null);
    json!({
        "id": field("id"),
        "status": field("status"),
        "correlation_key": field("correlation_key"),
        "definition_version": field("definition_version"),
        "current_step": field("current_step_name"),
        "reason": field("reason"),
        "started_at": field("started_at"),
        "updated_at": field("updated_at"),
        "next_due": field("next_due"),
    })
}

async fn show(
    State(sagas): State<Sagas>,
    Path((saga, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let reader = reader(&sagas, &saga)?;
    let id = instance(&id)?;
    let Some(doc) = reader.show(id).await.map_err(saga_error)? else {
        return Err(ApiError::UnknownId(format!(
            "saga `{saga}` has no instance `{id}` (or its status is not projected yet)"
        )));
    };
    Ok(axum::Json(doc).into_response())
}

async fn retry(
    State(sagas): State<Sagas>,
    Path((saga, id)): Path<(String, String)>,
    principal: Option<axum::Extension<Principal>>,
) -> Result<Response, ApiError> {
    let reader = reader(&sagas, &saga)?;
    let id = instance(&id)?;
    let actor = principal.map(|p| p.0.subject.clone());
    let state = reader.retry(id, actor).await.map_err(saga_error)?;
    Ok(
        axum::Json(json!({"id": id, "status": state.status, "version": state.version}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    reason: String,
}

async fn abort(
    State(sagas): State<Sagas>,
    Path((saga, id)): Path<(String, String)>,
    principal: Option<axum::Extension<Principal>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let reader = reader(&sagas, &saga)?;
    let id = instance(&id)?;
    let body: AbortBody = serde_json::from_slice(&body).map_err(|err| ApiError::InvalidBody {
        message: err.to_string(),
        line: err.line(),
        column: err.column(),
    })?;
    if body.reason.trim().is_empty() || body.reason.len() > MAX_REASON_LEN {
        return Err(ApiError::InvalidParameter(format!(
            "`reason` must be 1 to {MAX_REASON_LEN} bytes"
        )));
    }
    let actor = principal.map(|p| p.0.subject.clone());
    let state = reader
        .abort(id, actor, body.reason)
        .await
        .map_err(saga_error)?;
    Ok(
        axum::Json(json!({"id": id, "status": state.status, "version": state.version}))
            .into_response(),
    )
}

fn openapi(sagas: &[String]) -> Value {
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let saga = json!({"name": "saga", "in": "path", "required": true,
        "schema": {"type": "string", "enum": sagas}});
    let id = json!({"name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "format": "uuid"}});
    let statuses: Vec<&str> = SagaStatus::ALL.iter().map(|s| s.as_str()).collect();
    let acted = json!({"description": "Recorded; the runner picks it up",
        "content": {"application/json": {"schema": {"type": "object",
            "required": ["id", "status", "version"],
            "properties": {"id": {"type": "string"}, "status": {"type": "string", "enum": statuses},
                "version": {"type": "integer"}}}}}});
    let operate = |summary: &str, operation: &str, body: Option<Value>| {
        let mut op = json!({
            "summary": summary,
            "operationId": operation,
            "tags": ["sagas"],
            "parameters": [saga, id],
            "responses": {
                "200": acted,
                "400": error("Malformed id or body"),
                "401": error("No valid bearer token or API key"),
                "403": error("The caller lacks `dlq:admin`"),
                "404": error("No such saga or instance"),
                "415": error("The body is not JSON"),
                "422": error("The instance is not stuck, or changed meanwhile"),
                "503": error("The event store is unreachable")
            }
        });
        if let Some(body) = body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
        }
        json!({ "post": op })
    };
    json!({
        "/sagas/{saga}": {"get": {
            "summary": "Instances of a saga, by status, a page at a time (ordered by id)",
            "operationId": "saga_list",
            "tags": ["sagas"],
            "parameters": [
                saga,
                {"name": "status", "in": "query", "required": false,
                 "schema": {"type": "string", "enum": statuses}},
                {"name": "limit", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
                {"name": "offset", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000}}
            ],
            "responses": {
                "200": {"description": "One page; `next_offset` is set when there is more",
                    "content": {"application/json": {"schema": {"type": "object",
                        "required": ["saga", "items", "next_offset"],
                        "properties": {"saga": {"type": "string"},
                            "items": {"type": "array", "items": {"type": "object"}},
                            "next_offset": {"type": ["integer", "null"]}}}}}},
                "400": error("An unknown status, or a limit or offset out of range"),
                "401": error("No valid bearer token or API key"),
                "403": error("The caller lacks `aggregates:read`"),
                "404": error("No such saga"),
                "503": error("The status read model is unreachable")
            }
        }},
        "/sagas/{saga}/{id}": {"get": {
            "summary": "One instance: status, current step, every step with attempts and times, and its history",
            "operationId": "saga_show",
            "tags": ["sagas"],
            "parameters": [saga, id],
            "responses": {
                "200": {"description": "The instance",
                    "content": {"application/json": {"schema": {"type": "object",
                        "required": ["id", "saga", "status", "steps", "history"],
                        "properties": {"id": {"type": "string"}, "saga": {"type": "string"},
                            "status": {"type": "string", "enum": statuses},
                            "steps": {"type": "array", "items": {"type": "object"}},
                            "history": {"type": "array", "items": {"type": "object"}},
                            "history_truncated": {"type": "boolean"}}}}}},
                "400": error("The id is not a UUID"),
                "401": error("No valid bearer token or API key"),
                "403": error("The caller lacks `aggregates:read`"),
                "404": error("No such saga or instance"),
                "503": error("The status read model or the event store is unreachable")
            }
        }},
        "/sagas/{saga}/{id}/retry": operate(
            "Try the failed compensation of a stuck instance again, with a fresh retry budget",
            "saga_retry",
            None
        ),
        "/sagas/{saga}/{id}/abort": operate(
            "Give up on a stuck instance: it ends `aborted`",
            "saga_abort",
            Some(json!({"type": "object", "required": ["reason"], "additionalProperties": false,
                "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON_LEN}}}))
        ),
    })
}
