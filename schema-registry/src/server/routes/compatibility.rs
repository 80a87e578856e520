//! Schema requests and compatibility: reading a proposed schema (with its references), preparing
//! stored versions through the cache, running the checker off the async workers, and the
//! `/compatibility/…` endpoints.

use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiResult, check_subject,
    config::policy,
    extract::{Body, Params, Path},
    find_version, ok,
};
use crate::{
    compat::{self, CheckError, Level, Prior, Referenced},
    document,
    server::{ApiError, AppState},
    storage::{SchemaReference, VersionRecord},
};

/// The most documents one schema may pull in through its references, transitively.
const MAX_REFERENCED_DOCUMENTS: usize = 64;

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SchemaRequest {
    pub(super) schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<ReferenceRequest>>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    pub(super) id: Option<Value>,
    #[serde(default)]
    pub(super) version: Option<Value>,
}

/// One entry of `references`: the name `$ref`s use and the version it stands for.
#[derive(Debug, Deserialize)]
struct ReferenceRequest {
    name: String,
    subject: String,
    /// A whole number; JSON allows `2.0` for it.
    version: serde_json::Number,
}

impl ReferenceRequest {
    /// The version as written, `-1` for the latest.
    fn version_text(&self) -> Result<String, ApiError> {
        let whole = self.version.as_i64().or_else(|| {
            self.version
                .as_f64()
                .filter(|v| v.fract() == 0.0 && v.abs() < 1e15)
                .map(|v| v as i64)
        });
        whole.map(|v| v.to_string()).ok_or_else(|| {
            ApiError::InvalidSchema(format!(
                "reference `{}`: version {} is not a whole number",
                self.name, self.version
            ))
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    properties: Option<HashMap<String, Value>>,
}

/// A validated schema from a request.
pub(super) struct Proposal {
    pub(super) canonical: String,
    pub(super) value: Value,
    pub(super) prepared: Arc<Value>,
    pub(super) references: Vec<SchemaReference>,
    pub(super) major: Option<u64>,
    pub(super) semver: Option<semver::Version>,
}

/// A `metadata.properties` entry as text (a number is read as its digits).
fn property(request: &SchemaRequest, key: &str) -> Option<String> {
    let value = request.metadata.as_ref()?.properties.as_ref()?.get(key)?;
    Some(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Checks the parts of a schema request that cost nothing to check: type and size.
fn screen(state: &AppState, request: &SchemaRequest) -> Result<(), ApiError> {
    let kind = request.schema_type.as_deref().unwrap_or("AVRO");
    if !kind.eq_ignore_ascii_case("JSON") {
        return Err(ApiError::InvalidSchema(format!(
            "schema type {kind} is not supported; this registry stores JSON schemas (send \"schemaType\": \"JSON\")"
        )));
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

/// Pins each requested reference to a live version (`-1` is the latest).
async fn pin_references(
    state: &AppState,
    requests: &[ReferenceRequest],
) -> Result<Vec<SchemaReference>, ApiError> {
    if requests.len() > MAX_REFERENCED_DOCUMENTS {
        return Err(ApiError::InvalidSchema(format!(
            "a schema may have at most {MAX_REFERENCED_DOCUMENTS} references"
        )));
    }
    let mut pinned = Vec::with_capacity(requests.len());
    for r in requests {
        if r.name.is_empty() {
            return Err(ApiError::InvalidSchema(
                "a reference needs a non-empty `name`".to_owned(),
            ));
        }
        check_subject(&r.subject)?;
        let found = find_version(state, &r.subject, &r.version_text()?, false)
            .await
            .map_err(|e| match e {
                ApiError::Storage(_) => e,
                other => ApiError::InvalidSchema(format!("reference `{}`: {other}", r.name)),
            })?;
        pinned.push(SchemaReference {
            name: r.name.clone(),
            subject: r.subject.clone(),
            version: found.version,
        });
    }
    Ok(pinned)
}

/// The documents a schema's references stand for, transitively: (name, schema text) pairs.
async fn documents(
    state: &AppState,
    references: &[SchemaReference],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut pending: Vec<SchemaReference> = references.iter().rev().cloned().collect();
    let mut found: Vec<(String, String)> = Vec::new();
    while let Some(r) = pending.pop() {
        if found.iter().any(|(name, _)| *name == r.name) {
            continue;
        }
        if found.len() == MAX_REFERENCED_DOCUMENTS {
            return Err(ApiError::InvalidSchema(format!(
                "the references pull in more than {MAX_REFERENCED_DOCUMENTS} documents"
            )));
        }
        let version = state
            .storage()
            .version(&r.subject, r.version)
            .await?
            .ok_or_else(|| {
                ApiError::InvalidSchema(format!(
                    "reference `{}`: version {} of subject '{}' no longer exists",
                    r.name, r.version, r.subject
                ))
            })?;
        pending.extend(
            state
                .storage()
                .references(version.id)
                .await?
                .into_iter()
                .rev(),
        );
        found.push((r.name, version.schema));
    }
    Ok(found)
}

/// Parses and dereferences a schema with its referenced documents (blocking).
fn prepare_text(
    text: &str,
    documents: &[(String, String)],
    limits: compat::Limits,
) -> Result<(Value, Value), ApiError> {
    let value = document::parse(text).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
    let parsed: Vec<(&str, Value)> = documents
        .iter()
        .map(|(name, text)| {
            document::parse(text)
                .map(|v| (name.as_str(), v))
                .map_err(|e| ApiError::InvalidSchema(format!("reference `{name}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let referenced: Vec<Referenced<'_>> = parsed
        .iter()
        .map(|(name, schema)| Referenced { name, schema })
        .collect();
    let prepared = compat::prepare_with(&value, &referenced, limits)
        .map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
    Ok((value, prepared))
}

/// Parses and prepares the schema of a request, off the async workers.
pub(super) async fn proposal(
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
    let references =
        pin_references(state, request.references.as_deref().unwrap_or_default()).await?;
    let docs = documents(state, &references).await?;
    let text = request.schema.clone();
    let limits = state.options().prepare_limits;
    let late = ApiError::PrepareTimeout(state.options().check_timeout);
    let (canonical, value, prepared) = off_workers(state, late, move || {
        let (value, prepared) = prepare_text(&text, &docs, limits)?;
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
        references,
        major,
        semver,
    })
}

/// A stored version to compare with.
struct Stored {
    version: u32,
    id: i64,
    major: u64,
    source: Source,
}

/// A stored schema: prepared already (from the cache), or its text and referenced documents.
enum Source {
    Cached(Arc<Value>),
    Text(String, Vec<(String, String)>),
}

/// Prepares the earlier versions and runs the checker off the async workers, under the
/// configured deadline.
pub(super) async fn run_check(
    state: &AppState,
    level: Level,
    group: bool,
    priors: &[VersionRecord],
    proposal: &Proposal,
) -> Result<compat::Verdict, ApiError> {
    let mut stored = Vec::with_capacity(priors.len());
    for v in priors {
        let source = match state.inner.prepared.get(v.id) {
            Some(hit) => Source::Cached(hit),
            None => {
                let references = state.storage().references(v.id).await?;
                Source::Text(v.schema.clone(), documents(state, &references).await?)
            }
        };
        stored.push(Stored {
            version: v.version,
            id: v.id,
            major: v.major,
            source,
        });
    }
    let proposed = Arc::clone(&proposal.prepared);
    let major = proposal.major;
    let shared = state.clone();
    let verdict = off_workers(state, ApiError::CheckTimeout, move || {
        let schemas: Vec<(u32, Arc<Value>, u64)> = stored
            .iter()
            .map(|s| Ok((s.version, prepared(&shared, s)?, s.major)))
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

/// The dereferenced schema of a stored version, from the cache when possible (blocking).
fn prepared(state: &AppState, stored: &Stored) -> Result<Arc<Value>, ApiError> {
    let (text, documents) = match &stored.source {
        Source::Cached(hit) => return Ok(Arc::clone(hit)),
        Source::Text(text, documents) => (text, documents),
    };
    if let Some(hit) = state.inner.prepared.get(stored.id) {
        return Ok(hit);
    }
    let (_, value) =
        prepare_text(text, documents, state.options().prepare_limits).map_err(|_| {
            ApiError::InvalidSchema(format!("stored schema {} can no longer be read", stored.id))
        })?;
    let value = Arc::new(value);
    state.inner.prepared.insert(stored.id, Arc::clone(&value));
    Ok(value)
}

/// The versions a proposal is compared with: under NEXUS soft-deleted versions still count
/// (a delete must not let a removed field come back); other levels read live versions only.
pub(super) fn comparable(level: Level, all: &[VersionRecord]) -> Vec<VersionRecord> {
    all.iter()
        .filter(|v| level == Level::Nexus || !v.deleted)
        .cloned()
        .collect()
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

pub(super) async fn against_all(
    state: axum::extract::State<AppState>,
    Path(subject): Path<String>,
    params: Params,
    Body(request): Body<SchemaRequest>,
) -> ApiResult {
    let proposal = proposal(&state, &request, params.flag("normalize")).await?;
    let (level, group) = policy(&state, &subject).await?;
    let all = state.storage().versions(&subject).await?;
    let verdict = run_check(&state, level, group, &comparable(level, &all), &proposal).await?;
    ok(&compatibility_body(&verdict, params.flag("verbose")))
}

pub(super) async fn against_one(
    state: axum::extract::State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
    Body(request): Body<SchemaRequest>,
) -> ApiResult {
    let proposal = proposal(&state, &request, params.flag("normalize")).await?;
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
    ok(&compatibility_body(&verdict, params.flag("verbose")))
}
