//! Dead letters over HTTP, on the query dashboard: list a projection's queue a page at a time,
//! inspect one letter, and redrive one letter, a stream or all of them (permission `dlq:admin`).
//!
//! Redrive is the same call `nexus dlq redrive` makes ([`ReadModelStore::request_redrive`]):
//! it marks letters, and the running projection picks them up within its redrive poll, applying
//! each only when it is the oldest of its stream. A letter that applies leaves the queue; one
//! that fails again returns to it with one more attempt.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use nexus_access::{AccessControl, Permission};

use super::error::ApiError;
use super::extract::{Json as JsonBody, Path, Query};
use super::query::read_model_error;
use crate::event::StreamId;
use crate::projection::{ReadModelStore, RedriveFilter};

/// Letters one page holds when the request does not say.
pub(crate) const DEFAULT_PAGE: usize = 50;
/// Largest page.
pub(crate) const MAX_PAGE: usize = 200;
/// Longest `stream` a redrive request may name (aggregate type, `/`, id).
const MAX_STREAM_LEN: usize = 512;

type Stores = Arc<BTreeMap<String, ReadModelStore>>;

/// The routes, behind `dlq:admin`.
pub(crate) fn routes(
    read_models: &BTreeMap<String, ReadModelStore>,
    access: &AccessControl,
) -> Router {
    Router::new()
        .route("/admin/projections/{name}/dead-letters", get(list))
        .route(
            "/admin/projections/{name}/dead-letters/redrive",
            post(redrive),
        )
        .route("/admin/projections/{name}/dead-letters/{id}", get(one))
        .route_layer(access.require(Permission::DlqAdmin))
        .with_state(Arc::new(read_models.clone()))
}

fn store<'a>(stores: &'a Stores, name: &str) -> Result<&'a ReadModelStore, ApiError> {
    stores.get(name).ok_or_else(|| ApiError::UnknownProjection {
        name: name.to_owned(),
        known: stores.keys().cloned().collect(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    after: Option<i64>,
    limit: Option<usize>,
}

async fn list(
    State(stores): State<Stores>,
    Path(name): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&stores, &name)?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidParameter(format!(
            "limit must be 1 to {MAX_PAGE}, got {limit}"
        )));
    }
    let after = params.after.unwrap_or(0).max(0);
    // One more than asked tells whether a next page exists.
    let mut letters = store
        .dead_letter_page(after, limit + 1)
        .await
        .map_err(read_model_error)?;
    let more = letters.len() > limit;
    letters.truncate(limit);
    let next_after = more.then(|| letters.last().map(|l| l.id)).flatten();
    let total = store.dead_letter_count().await.map_err(read_model_error)?;
    Ok(Json(json!({
        "projection": name,
        "total": total,
        "letters": letters,
        "next_after": next_after,
    })))
}

async fn one(
    State(stores): State<Stores>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&stores, &name)?;
    match store.dead_letter(id).await {
        Ok(letter) => Ok(Json(json!(letter))),
        Err(crate::projection::ReadModelError::NoSuchDeadLetter(id)) => Err(ApiError::UnknownId(
            format!("projection `{name}` has no dead letter {id}"),
        )),
        Err(err) => Err(read_model_error(err)),
    }
}

/// What to redrive, from a body holding exactly one of `id`, `stream` or `"all": true` (read
/// by hand, so that anything else, even a `null` beside the one key, is refused as documented).
fn redrive_filter(body: &Value) -> Result<RedriveFilter, ApiError> {
    let invalid = || {
        ApiError::InvalidParameter(
            "give exactly one of `id` (a dead letter), `stream` (`order/o-1`) or `\"all\": true`"
                .to_owned(),
        )
    };
    let Some(object) = body.as_object().filter(|o| o.len() == 1) else {
        return Err(invalid());
    };
    match object.iter().next() {
        Some((key, value)) if key == "id" => {
            value.as_i64().map(RedriveFilter::Id).ok_or_else(invalid)
        }
        Some((key, Value::String(stream))) if key == "stream" => {
            let (kind, id) = stream.split_once('/').ok_or_else(invalid)?;
            if kind.is_empty() || id.is_empty() || stream.chars().count() > MAX_STREAM_LEN {
                return Err(ApiError::InvalidParameter(format!(
                    "`stream` must look like `order/o-1` (aggregate type/id, at most {MAX_STREAM_LEN} characters)"
                )));
            }
            Ok(RedriveFilter::Stream(StreamId::new(kind, id)))
        }
        Some((key, Value::Bool(true))) if key == "all" => Ok(RedriveFilter::All),
        _ => Err(invalid()),
    }
}

async fn redrive(
    State(stores): State<Stores>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&stores, &name)?;
    let filter = redrive_filter(&body)?;
    match store.request_redrive(&filter).await {
        Ok(marked) => Ok(Json(json!({ "projection": name, "marked": marked }))),
        Err(crate::projection::ReadModelError::NoSuchDeadLetter(id)) => Err(ApiError::UnknownId(
            format!("projection `{name}` has no dead letter {id}"),
        )),
        Err(err) => Err(read_model_error(err)),
    }
}

/// The OpenAPI paths of [`routes`].
pub(crate) fn openapi(projections: &[String]) -> Value {
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let name = json!({"name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "enum": projections}});
    let refusals = |mut responses: Value| {
        responses["401"] = error("No valid bearer token or API key");
        responses["403"] = error("The caller lacks dlq:admin");
        responses["404"] = error("No such projection (or dead letter)");
        responses
    };
    let letter = json!({"type": "object",
        "required": ["id", "event", "error", "attempts", "first_failed_at", "last_failed_at", "status"],
        "properties": {
            "id": {"type": "integer"},
            "event": {"type": "object", "description": "The full event: stream, version, position, type, payload and metadata"},
            "error": {"type": "string"},
            "attempts": {"type": "integer"},
            "first_failed_at": {"type": "string", "format": "date-time"},
            "last_failed_at": {"type": "string", "format": "date-time"},
            "status": {"enum": ["dead", "parked", "redrive"]}}});
    json!({
        "/admin/projections/{name}/dead-letters": {"get": {
            "summary": "A page of a projection's dead-letter queue, in id order (permission dlq:admin)",
            "operationId": "dead_letters",
            "tags": ["dead letters"],
            "security": [{"bearer": []}],
            "parameters": [name,
                {"name": "after", "in": "query", "required": false, "description": "`next_after` of the previous page",
                 "schema": {"type": "integer"}},
                {"name": "limit", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}}],
            "responses": refusals(json!({
                "200": {"description": "`letters`, the queue's `total` and `next_after` while more remain",
                    "content": {"application/json": {"schema": {"type": "object",
                        "required": ["projection", "total", "letters", "next_after"],
                        "properties": {"projection": {"type": "string"}, "total": {"type": "integer"},
                            "letters": {"type": "array", "items": letter.clone()},
                            "next_after": {"type": ["integer", "null"]}}}}}},
                "400": error("A bad `after` or `limit`"),
                "503": error("The read model is unreachable")
            }))
        }},
        "/admin/projections/{name}/dead-letters/{id}": {"get": {
            "summary": "One dead letter: its event with payload and metadata, the last error, attempts and times (permission dlq:admin)",
            "operationId": "dead_letter",
            "tags": ["dead letters"],
            "security": [{"bearer": []}],
            "parameters": [name, {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": refusals(json!({
                "200": {"description": "The dead letter", "content": {"application/json": {"schema": letter}}},
                "400": error("The id is not a whole number"),
                "503": error("The read model is unreachable")
            }))
        }},
        "/admin/projections/{name}/dead-letters/redrive": {"post": {
            "summary": "Asks the running projection to process dead letters again: one (`id`), a stream's (`stream`) or all (`all: true`); each applies only when it is the oldest of its stream, and one that fails again returns to the queue (permission dlq:admin)",
            "operationId": "redrive_dead_letters",
            "tags": ["dead letters"],
            "security": [{"bearer": []}],
            "parameters": [name],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [
                {"type": "object", "required": ["id"], "additionalProperties": false,
                 "properties": {"id": {"type": "integer"}}},
                {"type": "object", "required": ["stream"], "additionalProperties": false,
                 "properties": {"stream": {"type": "string", "pattern": "^[^/]+/[\\s\\S]+$", "maxLength": MAX_STREAM_LEN}}},
                {"type": "object", "required": ["all"], "additionalProperties": false,
                 "properties": {"all": {"const": true}}}]}}}},
            "responses": refusals(json!({
                "200": {"description": "How many letters were marked for redrive",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["projection", "marked"],
                        "properties": {"projection": {"type": "string"}, "marked": {"type": "integer"}}}}}},
                "400": error("Not exactly one of `id`, `stream`, `all`, or a malformed body"),
                "408": error("The body did not arrive in time"),
                "413": error("The body is too large"),
                "415": error("The body is not JSON"),
                "503": error("The read model is unreachable")
            }))
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(body: Value) -> Result<RedriveFilter, String> {
        redrive_filter(&body).map_err(|e| e.code().to_owned())
    }

    #[test]
    fn a_redrive_names_exactly_one_target() {
        assert_eq!(filter(json!({"id": 3})), Ok(RedriveFilter::Id(3)));
        assert_eq!(
            filter(json!({"stream": "order/o-1"})),
            Ok(RedriveFilter::Stream(StreamId::new("order", "o-1")))
        );
        assert_eq!(filter(json!({"all": true})), Ok(RedriveFilter::All));
        for body in [
            json!({}),
            json!({"all": false}),
            json!({"id": 3, "all": true}),
            json!({"id": 3, "stream": "order/o-1"}),
            json!({"stream": "order"}),
            json!({"stream": "/o-1"}),
            json!({"stream": "order/"}),
            json!({"stream": format!("order/{}", "x".repeat(MAX_STREAM_LEN))}),
            json!({"all": true, "id": null}),
            json!({"id": "3"}),
            json!([{"id": 3}]),
        ] {
            assert_eq!(
                filter(body.clone()),
                Err("invalid_parameter".to_owned()),
                "{body}"
            );
        }
        let longest = format!("o/{}", "é".repeat(MAX_STREAM_LEN - 2));
        assert!(filter(json!({ "stream": longest })).is_ok());
    }
}
