//! `/subjects/…`: listing, registering, looking up, reading and deleting versions.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{HeaderMap, header},
};
use serde_json::json;

use super::{
    ApiResult, check_subject,
    compatibility::{Proposal, SchemaRequest, comparable, proposal, run_check},
    config::{ensure_writable, policy},
    extract::{Body, Params, Path},
    find_version, ok,
    schemas::raw_schema,
    version_json,
};
use crate::{
    server::{ApiError, AppState},
    storage::{NewVersion, StorageError, VersionRecord},
};

/// How long a registration keeps retrying after losing a race for the next version number to
/// another registry process (registrations in one process wait for each other instead).
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

/// Per-subject write locks, so registrations of one subject run one at a time in a process.
///
/// The map holds a weak entry per subject with a registration in flight, and forgets it when the
/// last one finishes: it is bounded by the requests in flight, not by the number of subjects.
#[derive(Default)]
pub(in crate::server) struct SubjectLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl SubjectLocks {
    async fn lock(&self, subject: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.retain(|_, lock| lock.strong_count() > 0);
            match locks.get(subject).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(subject.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// How many subjects have an entry.
    #[cfg(test)]
    pub(in crate::server) fn len(&self) -> usize {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, lock| lock.strong_count() > 0);
        locks.len()
    }
}

pub(super) async fn list(State(state): State<AppState>, params: Params) -> ApiResult {
    let mut subjects = state.storage().subjects(params.flag("deleted")).await?;
    if let Some(prefix) = params.get("subjectPrefix").filter(|p| *p != ":*:") {
        subjects.retain(|s| s.starts_with(prefix));
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

pub(super) async fn versions(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    params: Params,
) -> ApiResult {
    let versions = live_versions(&state, &subject, params.flag("deleted")).await?;
    ok(&json!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>()
    ))
}

pub(super) async fn version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let v = find_version(&state, &subject, &version, params.flag("deleted")).await?;
    ok(&version_json(&state, &v).await?)
}

pub(super) async fn version_schema(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let v = find_version(&state, &subject, &version, params.flag("deleted")).await?;
    Ok(raw_schema(&v.schema))
}

/// The ids of the schemas whose references name this version.
pub(super) async fn referenced_by(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let v = find_version(&state, &subject, &version, true).await?;
    ok(&json!(
        state.storage().referenced_by(&subject, v.version).await?
    ))
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

/// The semantic version of a new version: the one asked for (checked), or the next minor of its line.
fn semver_for(proposal: &Proposal, major: u64, all: &[VersionRecord]) -> Result<String, ApiError> {
    let existing: Vec<semver::Version> = all
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

/// The version of the subject that already has the proposed schema, with the same references.
async fn existing_version(
    state: &AppState,
    live: &[VersionRecord],
    proposal: &Proposal,
) -> Result<Option<VersionRecord>, ApiError> {
    for v in live.iter().filter(|v| v.schema == proposal.canonical) {
        if state.storage().references(v.id).await? == proposal.references {
            return Ok(Some(v.clone()));
        }
    }
    Ok(None)
}

pub(super) async fn register(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    params: Params,
    headers: HeaderMap,
    Body(request): Body<SchemaRequest>,
) -> ApiResult {
    check_subject(&subject)?;
    if request.id.is_some() || request.version.is_some() {
        return Err(ApiError::NotPermitted(
            "a schema id or version may only be chosen by the caller in IMPORT mode, which this registry does not offer".to_owned(),
        ));
    }
    let proposal = proposal(&state, &request, params.flag("normalize")).await?;
    let who = registered_by(&headers);
    // Registrations of one subject wait for each other here rather than race in storage.
    let _turn = state.inner.subject_locks.lock(&subject).await;
    let deadline = Instant::now() + REGISTER_DEADLINE;
    loop {
        let all = state.storage().versions(&subject).await?;
        let live: Vec<VersionRecord> = all.iter().filter(|v| !v.deleted).cloned().collect();
        // Registering a schema the subject already has returns the existing version.
        if let Some(existing) = existing_version(&state, &live, &proposal).await? {
            return ok(&version_json(&state, &existing).await?);
        }
        ensure_writable(&state, &subject).await?;
        let limit = state.options().max_versions_per_subject;
        if all.len() >= limit {
            return Err(ApiError::NotPermitted(format!(
                "subject `{subject}` has reached the limit of {limit} versions; delete old versions permanently or start a new subject"
            )));
        }
        let (level, group) = policy(&state, &subject).await?;
        let verdict = run_check(&state, level, group, &comparable(level, &all), &proposal).await?;
        if !verdict.is_compatible() {
            return Err(ApiError::Incompatible {
                subject,
                violations: verdict.violations,
            });
        }
        let semver = semver_for(&proposal, verdict.major, &all)?;
        let new = NewVersion {
            subject: subject.clone(),
            expected_last: all.last().map_or(0, |v| v.version),
            schema: proposal.canonical.clone(),
            major: verdict.major,
            semver,
            registered_by: who.clone(),
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            references: proposal.references.clone(),
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
                return ok(&version_json(&state, &stored).await?);
            }
            // Another registry process took the number: re-read and check again.
            Err(StorageError::Conflict { .. }) if Instant::now() < deadline => {}
            Err(StorageError::Conflict { .. }) => return Err(ApiError::Contended(subject)),
            Err(e) => return Err(e.into()),
        }
    }
}

pub(super) async fn lookup(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    params: Params,
    Body(request): Body<SchemaRequest>,
) -> ApiResult {
    let proposal = proposal(&state, &request, params.flag("normalize")).await?;
    let versions = live_versions(&state, &subject, params.flag("deleted")).await?;
    if let Some(v) = existing_version(&state, &versions, &proposal).await? {
        return ok(&version_json(&state, &v).await?);
    }
    let same_value = versions.iter().rev().find(|v| {
        serde_json::from_str::<serde_json::Value>(&v.schema)
            .ok()
            .as_ref()
            == Some(&proposal.value)
    });
    match same_value {
        Some(v) => ok(&version_json(&state, v).await?),
        None => Err(ApiError::SchemaNotFound(
            "not found in this subject".to_owned(),
        )),
    }
}

/// Refuses to delete a version other schemas refer to.
async fn ensure_unreferenced(
    state: &AppState,
    subject: &str,
    version: u32,
) -> Result<(), ApiError> {
    if state
        .storage()
        .referenced_by(subject, version)
        .await?
        .is_empty()
    {
        Ok(())
    } else {
        Err(ApiError::ReferenceExists {
            subject: subject.to_owned(),
            version,
        })
    }
}

pub(super) async fn delete_subject(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    params: Params,
) -> ApiResult {
    ensure_writable(&state, &subject).await?;
    let all = state.storage().versions(&subject).await?;
    if all.is_empty() {
        return Err(ApiError::SubjectNotFound(subject));
    }
    for v in &all {
        ensure_unreferenced(&state, &subject, v.version).await?;
    }
    if params.flag("permanent") {
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

pub(super) async fn delete_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    ensure_writable(&state, &subject).await?;
    let target = find_version(&state, &subject, &version, true).await?;
    ensure_unreferenced(&state, &subject, target.version).await?;
    if params.flag("permanent") {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SubjectLocks;

    #[tokio::test]
    async fn one_registration_per_subject_at_a_time_and_no_entry_left_behind() {
        let locks = Arc::new(SubjectLocks::default());
        let first = locks.lock("a").await;
        let other = locks.lock("b").await;
        assert_eq!(locks.len(), 2);
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { drop(locks.lock("a").await) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a second writer of `a` waits");
        drop(first);
        waiting.await.expect("second writer ran");
        drop(other);
        assert_eq!(
            locks.len(),
            0,
            "the map is bounded by the writers in flight"
        );
    }
}
