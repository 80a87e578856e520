//! The audit history of read-model documents over HTTP, on the query dashboard:
//! `GET /audit/read-models/{projection}/{collection}/{id}` pages through which event changed
//! what and when (permission `audit:read`), the same call `nexus audit history` makes
//! ([`ReadModelStore::audit_history`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use nexus_access::{AccessControl, Permission};

use super::error::ApiError;
use super::extract::{Path, Query};
use super::query::read_model_error;
use crate::projection::ReadModelStore;
use crate::projection::store::audit::MAX_HISTORY_PAGE;

/// Entries one page holds when the request does not say.
pub(crate) const DEFAULT_PAGE: usize = 100;

type Stores = Arc<BTreeMap<String, ReadModelStore>>;

/// The route, behind `audit:read`.
pub(crate) fn routes(
    read_models: &BTreeMap<String, ReadModelStore>,
    access: &AccessControl,
) -> Router {
    Router::new()
        .route(
            "/audit/read-models/{projection}/{collection}/{id}",
            get(history),
        )
        .route_layer(access.require(Permission::AuditRead))
        .with_state(Arc::new(read_models.clone()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn history(
    State(stores): State<Stores>,
    Path((projection, collection, id)): Path<(String, String, String)>,
    Query(params): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let store = stores
        .get(&projection)
        .ok_or_else(|| ApiError::UnknownProjection {
            name: projection.clone(),
            known: stores.keys().cloned().collect(),
        })?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::InvalidParameter(format!(
            "limit must be 1 to {MAX_HISTORY_PAGE}, got {limit}"
        )));
    }
    let page = store
        .audit_history(&collection, &id, params.after.unwrap_or(0), limit)
        .await
        .map_err(read_model_error)?;
    Ok(Json(json!({
        "projection": projection,
        "collection": collection,
        "id": id,
        "entries": page.entries,
        "next_after": page.next_after,
    })))
}

/// The OpenAPI paths of [`routes`].
pub(crate) fn openapi(projections: &[String]) -> Value {
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let text = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    let nullable = |kind: &str| json!({"type": [kind, "null"]});
    let cause = json!({"type": ["object", "null"],
        "required": ["event_id", "event_type", "aggregate_type", "aggregate_id", "version", "position", "correlation_id"],
        "properties": {
            "event_id": {"type": "string"}, "event_type": {"type": "string"},
            "aggregate_type": {"type": "string"}, "aggregate_id": {"type": "string"},
            "version": {"type": "integer"}, "position": {"type": "integer"},
            "correlation_id": nullable("string")}});
    let entry = json!({"type": "object",
        "required": ["seq", "projection", "kind", "collection", "id", "before", "after", "cause", "at", "detail", "hash"],
        "properties": {
            "seq": {"type": "integer", "description": "The entry's number in the projection's chain"},
            "projection": {"type": "string"},
            "kind": {"enum": ["change", "rebuild", "prune"]},
            "collection": nullable("string"),
            "id": nullable("string"),
            "before": {"description": "The document before the change; null when it did not exist"},
            "after": {"description": "The document after the change; null for a deletion"},
            "cause": cause,
            "at": {"type": "string", "format": "date-time"},
            "detail": {"description": "For a rebuild or prune: what happened"},
            "hash": {"type": "string", "description": "SHA-256 (hex) chained to the previous entry"}}});
    json!({
        "/audit/read-models/{projection}/{collection}/{id}": {"get": {
            "summary": "A document's audit history: each change with the event that caused it, the document before and after, and the rebuilds and prunes since its first change, oldest first (permission audit:read)",
            "operationId": "read_model_audit_history",
            "tags": ["audit"],
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "projection", "in": "path", "required": true,
                 "schema": {"type": "string", "enum": projections}},
                text("collection"),
                text("id"),
                {"name": "after", "in": "query", "required": false, "description": "`next_after` of the previous page",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_PAGE, "default": DEFAULT_PAGE}}],
            "responses": {
                "200": {"description": "`entries` and `next_after` while more remain",
                    "content": {"application/json": {"schema": {"type": "object",
                        "required": ["projection", "collection", "id", "entries", "next_after"],
                        "properties": {"projection": {"type": "string"}, "collection": {"type": "string"},
                            "id": {"type": "string"},
                            "entries": {"type": "array", "items": entry},
                            "next_after": nullable("integer")}}}}},
                "400": error("A bad `after` or `limit`"),
                "401": error("No valid bearer token or API key"),
                "403": error("The caller lacks audit:read"),
                "404": error("No such projection"),
                "503": error("The read model is unreachable")
            }
        }}
    })
}
