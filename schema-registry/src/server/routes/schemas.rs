//! `/schemas/…`: schemas by global id, where they are used, and the supported types.

use std::collections::BTreeSet;

use axum::{extract::State, http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{
    ApiResult,
    extract::{Params, Path},
    ok, references_json,
};
use crate::server::{ApiError, AppState, sr_json};

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

/// A stored schema text as a JSON document (the text itself when it does not parse).
pub(super) fn raw_schema(text: &str) -> Response {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()));
    sr_json(StatusCode::OK, &value)
}

pub(super) async fn by_id(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let (numeric, text) = schema_text(&state, &id).await?;
    let references = state.storage().references(numeric).await?;
    ok(&json!({"schema": text, "schemaType": "JSON", "references": references_json(&references)}))
}

pub(super) async fn raw(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let (_, text) = schema_text(&state, &id).await?;
    Ok(raw_schema(&text))
}

pub(super) async fn versions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let (numeric, _) = schema_text(&state, &id).await?;
    let usages = state.storage().usages(numeric).await?;
    let deleted = params.flag("deleted");
    ok(&json!(
        usages
            .iter()
            .filter(|u| deleted || !u.deleted)
            .map(|u| json!({"subject": u.subject, "version": u.version}))
            .collect::<Vec<_>>()
    ))
}

pub(super) async fn subjects(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let (numeric, _) = schema_text(&state, &id).await?;
    let usages = state.storage().usages(numeric).await?;
    let deleted = params.flag("deleted");
    let mut subjects: Vec<&str> = usages
        .iter()
        .filter(|u| deleted || !u.deleted)
        .map(|u| u.subject.as_str())
        .collect();
    subjects.dedup();
    ok(&json!(subjects))
}

/// The ids of the schemas that refer to any version using this schema id.
pub(super) async fn referenced_by(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    let (numeric, _) = schema_text(&state, &id).await?;
    let mut ids = BTreeSet::new();
    for usage in state.storage().usages(numeric).await? {
        ids.extend(
            state
                .storage()
                .referenced_by(&usage.subject, usage.version)
                .await?,
        );
    }
    ok(&json!(ids))
}

pub(super) async fn types() -> ApiResult {
    ok(&json!(["JSON"]))
}
