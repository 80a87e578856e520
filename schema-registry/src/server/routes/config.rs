//! `/config` and `/mode`: the compatibility level and the write mode, global and per subject.
//!
//! A server started with a locked level ([`crate::server::Options::locked_level`]) applies it to
//! every subject and refuses requests to set another one.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiResult, check_subject,
    extract::{Body, Params, Path},
    ok,
};
use crate::{
    compat::{self, Level},
    server::{ApiError, AppState},
    storage::{ConfigRecord, GLOBAL, Mode, UnknownMode},
};

/// The mode a request names.
fn requested_mode(name: &str) -> Result<Mode, ApiError> {
    name.parse()
        .map_err(|e: UnknownMode| ApiError::InvalidMode(e.to_string()))
}

/// The level and grouping in force for a subject.
pub(super) async fn policy(state: &AppState, subject: &str) -> Result<(Level, bool), ApiError> {
    let config = match state.storage().config(subject).await? {
        Some(c) => Some(c),
        None => state.storage().config(GLOBAL).await?,
    };
    let default = state.options().default_level;
    let (level, group) = match config {
        Some(c) => (
            c.compatibility,
            c.compatibility_group.as_deref() == Some("major_version"),
        ),
        None => (default, false),
    };
    Ok((state.options().locked_level.unwrap_or(level), group))
}

async fn mode(state: &AppState, subject: &str) -> Result<Mode, ApiError> {
    let stored = match state.storage().mode(subject).await? {
        Some(m) => Some(m),
        None => state.storage().mode(GLOBAL).await?,
    };
    Ok(stored.unwrap_or(Mode::ReadWrite))
}

pub(super) async fn ensure_writable(state: &AppState, subject: &str) -> Result<(), ApiError> {
    let mode = mode(state, subject).await?;
    if mode != Mode::ReadWrite {
        return Err(ApiError::NotPermitted(format!(
            "subject `{subject}` is in {mode} mode"
        )));
    }
    Ok(())
}

fn config_json(config: &ConfigRecord) -> Value {
    let mut body = json!({"compatibilityLevel": config.compatibility.as_str()});
    if let Some(group) = &config.compatibility_group {
        body["compatibilityGroup"] = json!(group);
    }
    body
}

/// A stored configuration as it applies: the locked level replaces the stored one.
fn in_force(state: &AppState, mut config: ConfigRecord) -> ConfigRecord {
    if let Some(locked) = state.options().locked_level {
        config.compatibility = locked;
    }
    config
}

async fn effective_global(state: &AppState) -> Result<ConfigRecord, ApiError> {
    let stored = state
        .storage()
        .config(GLOBAL)
        .await?
        .unwrap_or_else(|| ConfigRecord {
            compatibility: state.options().default_level,
            compatibility_group: None,
        });
    Ok(in_force(state, stored))
}

pub(super) async fn get_global(State(state): State<AppState>) -> ApiResult {
    ok(&config_json(&effective_global(&state).await?))
}

pub(super) async fn get_subject(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    params: Params,
) -> ApiResult {
    check_subject(&subject)?;
    match state.storage().config(&subject).await? {
        Some(config) => ok(&config_json(&in_force(&state, config))),
        None if params.flag("defaultToGlobal") => {
            ok(&config_json(&effective_global(&state).await?))
        }
        None => Err(ApiError::SubjectConfigNotFound(subject)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfigRequest {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
    compatibility_group: Option<String>,
}

async fn put_config(state: &AppState, subject: &str, request: ConfigRequest) -> ApiResult {
    let name = request
        .compatibility
        .or(request.compatibility_level)
        .ok_or_else(|| {
            ApiError::InvalidCompatibility("the body has no `compatibility`".to_owned())
        })?;
    let level: Level = name
        .parse()
        .map_err(|e: compat::UnknownLevel| ApiError::InvalidCompatibility(e.to_string()))?;
    if let Some(locked) = state.options().locked_level
        && level != locked
    {
        return Err(ApiError::NotPermitted(format!(
            "the compatibility level is locked to {locked} on this registry"
        )));
    }
    let config = ConfigRecord {
        compatibility: level,
        compatibility_group: request.compatibility_group.filter(|g| !g.is_empty()),
    };
    state.storage().put_config(subject, config.clone()).await?;
    let mut answer = json!({"compatibility": config.compatibility.as_str()});
    if let Some(group) = config.compatibility_group {
        answer["compatibilityGroup"] = json!(group);
    }
    ok(&answer)
}

pub(super) async fn put_global(
    State(state): State<AppState>,
    Body(request): Body<ConfigRequest>,
) -> ApiResult {
    put_config(&state, GLOBAL, request).await
}

pub(super) async fn put_subject(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    Body(request): Body<ConfigRequest>,
) -> ApiResult {
    check_subject(&subject)?;
    put_config(&state, &subject, request).await
}

pub(super) async fn delete_global(State(state): State<AppState>) -> ApiResult {
    let previous = effective_global(&state).await?;
    state.storage().delete_config(GLOBAL).await?;
    ok(&config_json(&previous))
}

pub(super) async fn delete_subject(
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> ApiResult {
    check_subject(&subject)?;
    match state.storage().delete_config(&subject).await? {
        Some(previous) => ok(&config_json(&in_force(&state, previous))),
        None => Err(ApiError::SubjectConfigNotFound(subject)),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ModeRequest {
    mode: String,
}

pub(super) async fn get_global_mode(State(state): State<AppState>) -> ApiResult {
    ok(&json!({"mode": mode(&state, GLOBAL).await?.as_str()}))
}

pub(super) async fn put_global_mode(
    State(state): State<AppState>,
    Body(request): Body<ModeRequest>,
) -> ApiResult {
    let mode = requested_mode(&request.mode)?;
    state.storage().put_mode(GLOBAL, mode).await?;
    ok(&json!({"mode": mode.as_str()}))
}

pub(super) async fn get_subject_mode(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    params: Params,
) -> ApiResult {
    check_subject(&subject)?;
    match state.storage().mode(&subject).await? {
        Some(mode) => ok(&json!({"mode": mode.as_str()})),
        None if params.flag("defaultToGlobal") => {
            ok(&json!({"mode": mode(&state, GLOBAL).await?.as_str()}))
        }
        None => Err(ApiError::SubjectModeNotFound(subject)),
    }
}

pub(super) async fn put_subject_mode(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    Body(request): Body<ModeRequest>,
) -> ApiResult {
    check_subject(&subject)?;
    let mode = requested_mode(&request.mode)?;
    state.storage().put_mode(&subject, mode).await?;
    ok(&json!({"mode": mode.as_str()}))
}

pub(super) async fn delete_subject_mode(
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> ApiResult {
    check_subject(&subject)?;
    match state.storage().delete_mode(&subject).await? {
        Some(previous) => ok(&json!({"mode": previous.as_str()})),
        None => Err(ApiError::SubjectModeNotFound(subject)),
    }
}
