//! Temporal endpoints: events by time range on the query dashboard, an aggregate's state as of
//! a time or version on the command service, the audit log, and projection rebuilds as of a
//! time; all read through the read-only [`History`].
//!
//! Layers, outermost first: audit (records every outcome, including the 401 and 403 of the
//! access layer) → access (`temporal:read`, `audit:read`, `dlq:admin`) → the handler, which
//! applies the per-client rate limit (keyed by the principal's client id, never the address),
//! the range cap and the scan and time budgets.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use nexus_access::{AccessControl, Permission, Principal};
use serde_json::{Value, json};

use super::extract::{Path, Query};
use crate::aggregate::Aggregate;
use crate::audit::{AuditLog, AuditOutcome, AuditRecord, SqliteAuditLog};
use crate::event::StreamId;
use crate::projection::{Projection, ReadModels};
use crate::snapshot::SnapshotStore;
use crate::store::ReadError;
use crate::temporal::{
    AsOf, History, Page, RateDecision, ReplayError, Scope, SlidingWindowLimiter, SqliteHistory,
    StateError, TemporalError, TemporalLimits, TemporalQuery, TimeRange, TokenError, TokenSigner,
    replay_projection, run_page, state_as_of,
};

/// Most audit records one page returns by default.
const DEFAULT_AUDIT_PAGE: usize = 100;

/// A response that already wrote its audit record.
#[derive(Clone, Copy)]
struct Audited;

/// A refusal or failure of a temporal endpoint, rendered as the Nexus error body.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: serde_json::Map<String, Value>,
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
            retry_after: None,
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    fn read(err: &ReadError) -> Self {
        // Never the driver's message: 5xx bodies carry no internals.
        tracing::warn!(error = %crate::redact::error_chain(err), "temporal read failed");
        match err {
            ReadError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event store is unavailable; try again later",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "reading history failed",
            ),
        }
    }

    fn outcome(&self) -> AuditOutcome {
        if self.status.is_server_error() {
            AuditOutcome::Failed
        } else {
            AuditOutcome::Refused
        }
    }

    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.extend(self.details);
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<TemporalError> for Failure {
    fn from(err: TemporalError) -> Self {
        let message = err.to_string();
        match err {
            TemporalError::ReversedRange { .. } => Self::unprocessable("invalid_range", message),
            TemporalError::RangeTooLong {
                requested_days,
                limit_days,
            } => Self::unprocessable("range_too_long", message)
                .with("limit", "max_range_days")
                .with("limit_days", limit_days)
                .with("requested_days", requested_days),
            TemporalError::TooManyTypes { max, .. } => {
                Self::unprocessable("too_many_event_types", message).with("limit", max)
            }
            TemporalError::BadPageSize => Self::bad("invalid_limit", message),
            TemporalError::Token(TokenError::Expired) => {
                Self::new(StatusCode::GONE, "token_expired", message)
            }
            TemporalError::Token(TokenError::Mismatch) => Self::bad("token_mismatch", message),
            TemporalError::Token(_) => Self::bad("invalid_token", message),
            TemporalError::UnknownStream(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_stream", message)
            }
            TemporalError::Read(err) => Self::read(&err),
        }
    }
}

/// An aggregate type whose state the API can rebuild, with its types erased.
#[async_trait]
trait StateEndpoint: Send + Sync {
    async fn state(
        &self,
        api: &Inner,
        id: &str,
        at: AsOf,
    ) -> Result<Option<(Value, Value)>, StateError>;
}

struct TypedState<A>(std::marker::PhantomData<fn() -> A>);

#[async_trait]
impl<A: Aggregate> StateEndpoint for TypedState<A> {
    async fn state(
        &self,
        api: &Inner,
        id: &str,
        at: AsOf,
    ) -> Result<Option<(Value, Value)>, StateError> {
        let snapshots = api.snapshots.as_deref();
        let Some(found) =
            state_as_of::<A>(api.history.as_ref(), snapshots, &api.limits, id, at).await?
        else {
            return Ok(None);
        };
        let state = serde_json::to_value(&found.state).unwrap_or(Value::Null);
        let meta = json!({
            "version": found.version,
            "target_version": found.target_version,
            "snapshot_version": found.snapshot_version,
            "events_folded": found.events_folded,
            "as_of": found.as_of,
            "partial": found.partial.is_some(),
            "reason": found.partial.map(|r| r.as_str()),
        });
        Ok(Some((meta, state)))
    }
}

struct Inner {
    history: Arc<dyn History>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    audit: Arc<dyn AuditLog>,
    access: AccessControl,
    limits: TemporalLimits,
    signer: TokenSigner,
    limiter: SlidingWindowLimiter,
    aggregates: BTreeMap<&'static str, Arc<dyn StateEndpoint>>,
    projections: BTreeMap<String, Arc<dyn Projection>>,
    replay_models: Option<ReadModels>,
}

/// Why [`TemporalApi::embedded`] or [`TemporalApi::postgres`] could not open what it reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemporalOpenError {
    /// The store's history could not be opened read-only.
    #[error("failed to open the event store's history read-only")]
    History(#[source] crate::store::OpenError),
    /// The SQLite audit log could not be opened.
    #[error("failed to open the audit log")]
    AuditLog(#[source] crate::audit::AuditError),
    /// The PostgreSQL audit log could not be opened.
    #[error("failed to open the audit log")]
    AuditStore(#[source] crate::store::OpenError),
}

/// The temporal API: build it once per service, then take the routes a service serves.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use nexus_runtime::http::TemporalApi;
/// # fn demo(history: Arc<dyn nexus_runtime::temporal::History>,
/// #         audit: Arc<dyn nexus_runtime::audit::AuditLog>,
/// #         access: nexus_runtime::http::access::AccessControl) {
/// let api = TemporalApi::new(history, audit, access);
/// let dashboard_routes = api.dashboard_routes();
/// # }
/// ```
#[derive(Clone)]
pub struct TemporalApi {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TemporalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalApi")
            .field("limits", &self.inner.limits)
            .field(
                "aggregates",
                &self.inner.aggregates.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl TemporalApi {
    /// An API reading `history`, auditing into `audit`, authorising with `access`, with the
    /// default limits and a random token key.
    pub fn new(history: Arc<dyn History>, audit: Arc<dyn AuditLog>, access: AccessControl) -> Self {
        let limits = TemporalLimits::default();
        Self {
            inner: Arc::new(Inner {
                history,
                snapshots: None,
                audit,
                access,
                limiter: SlidingWindowLimiter::new(
                    limits.rate_limit,
                    limits.rate_window,
                    limits.max_clients,
                ),
                limits,
                signer: TokenSigner::random(),
                aggregates: BTreeMap::new(),
                projections: BTreeMap::new(),
                replay_models: None,
            }),
        }
    }

    /// An API over the embedded store at `events_db`, opened read-only, auditing into the
    /// SQLite file `audit_db` (several processes may share both).
    pub fn embedded(
        events_db: impl AsRef<std::path::Path>,
        audit_db: impl AsRef<std::path::Path>,
        access: AccessControl,
    ) -> Result<Self, TemporalOpenError> {
        let history = SqliteHistory::open(events_db).map_err(TemporalOpenError::History)?;
        let audit = SqliteAuditLog::open(audit_db).map_err(TemporalOpenError::AuditLog)?;
        Ok(Self::new(Arc::new(history), Arc::new(audit), access))
    }

    /// An API over the PostgreSQL store in `store_schema` of `url`, read in read-only
    /// transactions, auditing into `audit_schema` of the same database.
    #[cfg(feature = "postgres")]
    pub async fn postgres(
        url: &str,
        store_schema: &str,
        audit_schema: &str,
        access: AccessControl,
    ) -> Result<Self, TemporalOpenError> {
        const HISTORY_POOL: usize = 4;
        let history = crate::temporal::PostgresHistory::connect(url, store_schema, HISTORY_POOL)
            .await
            .map_err(TemporalOpenError::History)?;
        let audit = crate::audit::postgres::PostgresAuditLog::connect(url, audit_schema)
            .await
            .map_err(TemporalOpenError::AuditStore)?;
        Ok(Self::new(Arc::new(history), Arc::new(audit), access))
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configure a TemporalApi before taking its routes")
    }

    /// The same API with other limits.
    pub fn with_limits(mut self, limits: TemporalLimits) -> Self {
        let inner = self.inner_mut();
        inner.limiter =
            SlidingWindowLimiter::new(limits.rate_limit, limits.rate_window, limits.max_clients);
        inner.limits = limits;
        self
    }

    /// The same API signing continuation tokens with `signer` (share the key between replicas).
    pub fn with_signer(mut self, signer: TokenSigner) -> Self {
        self.inner_mut().signer = signer;
        self
    }

    /// State-as-of reads start from the nearest earlier snapshot in `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.inner_mut().snapshots = Some(snapshots);
        self
    }

    /// Serves the state of aggregate `A` as of a time or version.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.inner_mut()
            .aggregates
            .insert(A::TYPE, Arc::new(TypedState::<A>(std::marker::PhantomData)));
        self
    }

    /// Lets `POST /admin/projections/{name}/replay` rebuild `projection` as of a time into a
    /// separate read model of `read_models` (named `replay-{into}`).
    pub fn projection(mut self, projection: Arc<dyn Projection>, read_models: ReadModels) -> Self {
        let inner = self.inner_mut();
        inner
            .projections
            .insert(projection.name().to_owned(), projection);
        inner.replay_models = Some(read_models);
        self
    }

    /// The query dashboard's routes: `GET /temporal/events`, `GET /audit/temporal` and
    /// `POST /admin/projections/{name}/replay`.
    pub fn dashboard_routes(&self) -> Router {
        let access = &self.inner.access;
        let events = Router::new()
            .route("/temporal/events", get(events))
            .route_layer(access.require(Permission::TemporalRead));
        let audit = Router::new()
            .route("/audit/temporal", get(audit_page))
            .route_layer(access.require(Permission::AuditRead));
        let admin = Router::new()
            .route("/admin/projections/{name}/replay", post(replay))
            .route_layer(access.require(Permission::DlqAdmin));
        self.audited(events.merge(audit).merge(admin))
    }

    /// The command service's routes: `GET /temporal/state/{aggregate}/{id}`.
    pub fn command_routes(&self) -> Router {
        let state = Router::new()
            .route("/temporal/state/{aggregate}/{id}", get(state_of))
            .route_layer(self.inner.access.require(Permission::TemporalRead));
        self.audited(state)
    }

    fn audited(&self, routes: Router<Arc<Inner>>) -> Router {
        routes
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.inner),
                audit_refusals,
            ))
            .with_state(Arc::clone(&self.inner))
    }

    /// The OpenAPI paths of [`Self::dashboard_routes`].
    pub fn dashboard_openapi(&self) -> Value {
        openapi_dashboard(&self.inner.limits)
    }

    /// The OpenAPI paths of [`Self::command_routes`].
    pub fn command_openapi(&self) -> Value {
        openapi_state(&self.inner.limits)
    }
}

/// Records the outcomes no handler saw: the access layer's 401 and 403.
async fn audit_refusals(State(inner): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let headers = request.headers().clone();
    let action = action_of(request.uri().path());
    let query = json!({ "path": request.uri().path() });
    let response = next.run(request).await;
    if response.extensions().get::<Audited>().is_some() {
        return response;
    }
    let status = response.status();
    let (client_id, roles) = match inner.access.authenticate(&headers).await {
        Ok(principal) => (principal.client_id(), principal.roles),
        Err(_) => ("unauthenticated".to_owned(), Vec::new()),
    };
    let reason = match status {
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        _ => "refused",
    };
    let record = AuditRecord {
        at: Utc::now(),
        client_id,
        roles,
        action: action.to_owned(),
        query,
        scanned: 0,
        returned: 0,
        duration_ms: started.elapsed().as_millis() as u64,
        outcome: if status.is_server_error() {
            AuditOutcome::Failed
        } else {
            AuditOutcome::Refused
        },
        reason: Some(reason.to_owned()),
        status: status.as_u16(),
    };
    write_audit(&inner, &record).await;
    response
}

fn action_of(path: &str) -> &'static str {
    if path.starts_with("/temporal/events") {
        "events"
    } else if path.starts_with("/temporal/state") {
        "state"
    } else if path.starts_with("/audit") {
        "audit"
    } else {
        "replay_projection"
    }
}

async fn write_audit(inner: &Inner, record: &AuditRecord) {
    if let Err(err) = inner.audit.record(record).await {
        tracing::error!(error = %crate::redact::error_chain(&err), "failed to write an audit record");
    }
}

/// What one handler reports for its audit record.
struct Report {
    action: &'static str,
    query: Value,
    scanned: u64,
    returned: u64,
    outcome: AuditOutcome,
    reason: Option<String>,
}

/// Runs `work` for `principal`, audits the outcome, and marks the response as audited.
async fn audited<F>(
    inner: &Inner,
    principal: &Principal,
    action: &'static str,
    query: Value,
    work: F,
) -> Response
where
    F: Future<Output = Result<(Response, Report), Failure>>,
{
    let started = Instant::now();
    let (mut response, report) = match work.await {
        Ok(done) => done,
        Err(failure) => {
            let report = Report {
                action,
                query,
                scanned: 0,
                returned: 0,
                outcome: failure.outcome(),
                reason: Some(failure.code.to_owned()),
            };
            (failure.into_response(), report)
        }
    };
    let record = AuditRecord {
        at: Utc::now(),
        client_id: principal.client_id(),
        roles: principal.roles.clone(),
        action: report.action.to_owned(),
        query: report.query,
        scanned: report.scanned,
        returned: report.returned,
        duration_ms: started.elapsed().as_millis() as u64,
        outcome: report.outcome,
        reason: report.reason,
        status: response.status().as_u16(),
    };
    write_audit(inner, &record).await;
    response.extensions_mut().insert(Audited);
    response
}

fn rate_limit(inner: &Inner, principal: &Principal) -> Result<(), Failure> {
    match inner.limiter.check(&principal.client_id()) {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after } => {
            let mut failure = Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "at most {} temporal requests per {} s per client; retry in {} s",
                    inner.limits.rate_limit,
                    inner.limits.rate_window.as_secs(),
                    retry_after.as_secs().max(1)
                ),
            )
            .with("limit", inner.limits.rate_limit)
            .with("window_seconds", inner.limits.rate_window.as_secs())
            .with("retry_after_seconds", retry_after.as_secs().max(1));
            failure.retry_after = Some(retry_after);
            Err(failure)
        }
    }
}

fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, Failure> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| {
            Failure::bad(
                "invalid_time",
                format!("`{name}` must be an RFC 3339 time with a zone, like 2026-01-31T12:00:00Z: {err}"),
            )
        })
}

/// The parameters of `GET /temporal/events`.
fn events_query(
    pairs: &[(String, String)],
    limits: &TemporalLimits,
) -> Result<(TemporalQuery, Option<String>), Failure> {
    let one = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    for (key, _) in pairs {
        if !matches!(
            key.as_str(),
            "aggregate_type" | "aggregate_id" | "event_type" | "from" | "to" | "limit" | "token"
        ) {
            return Err(Failure::bad(
                "unknown_parameter",
                format!("unknown parameter `{key}`"),
            ));
        }
    }
    for name in ["aggregate_type", "aggregate_id"] {
        if one(name).is_some_and(str::is_empty) {
            return Err(Failure::bad(
                "invalid_scope",
                format!("`{name}` is empty: name one, or leave the parameter out"),
            ));
        }
    }
    let scope = match (one("aggregate_type"), one("aggregate_id")) {
        (Some(kind), Some(id)) => Scope::Stream(StreamId::new(kind, id)),
        (Some(kind), None) => Scope::AggregateType(kind.to_owned()),
        (None, None) => Scope::All,
        (None, Some(_)) => {
            return Err(Failure::bad(
                "invalid_scope",
                "`aggregate_id` needs `aggregate_type`",
            ));
        }
    };
    let event_types: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "event_type")
        .flat_map(|(_, v)| v.split(','))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if scope == Scope::All && event_types.is_empty() {
        return Err(Failure::bad(
            "invalid_scope",
            "give `aggregate_type` (and `aggregate_id`), or at least one `event_type`",
        ));
    }
    let to = match one("to") {
        Some(text) => parse_time("to", text)?,
        None => Utc::now(),
    };
    let from = match one("from") {
        Some(text) => parse_time("from", text)?,
        None => chrono::Duration::from_std(limits.max_range)
            .ok()
            .and_then(|range| to.checked_sub_signed(range))
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    };
    let page_size = one("limit")
        .map(|text| {
            text.parse::<usize>().map_err(|_| {
                Failure::bad("invalid_limit", "`limit` must be a whole number of events")
            })
        })
        .transpose()?;
    let query = TemporalQuery {
        scope,
        range: TimeRange { from, to },
        event_types,
        page_size,
    };
    Ok((query, one("token").map(str::to_owned)))
}

async fn events(
    State(inner): State<Arc<Inner>>,
    principal: Principal,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let described = json!({ "params": pairs.iter().filter(|(k, _)| k != "token").cloned().collect::<Vec<_>>(), "resumed": pairs.iter().any(|(k, _)| k == "token") });
    audited(&inner, &principal, "events", described.clone(), async {
        rate_limit(&inner, &principal)?;
        let (query, token) = events_query(&pairs, &inner.limits)?;
        let page: Page = run_page(
            inner.history.as_ref(),
            &inner.signer,
            &inner.limits,
            &query,
            &principal.client_id(),
            token.as_deref(),
        )
        .await?;
        let report = Report {
            action: "events",
            query: json!({ "query": query.describe(), "resumed": token.is_some() }),
            scanned: page.scanned as u64,
            returned: page.returned as u64,
            outcome: if page.partial {
                AuditOutcome::Partial
            } else {
                AuditOutcome::Ok
            },
            reason: page.reason.map(|r| r.as_str().to_owned()),
        };
        Ok((Json(&page).into_response(), report))
    })
    .await
}

async fn state_of(
    State(inner): State<Arc<Inner>>,
    principal: Principal,
    Path((aggregate, id)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let described = json!({ "aggregate": aggregate, "id": id, "params": params });
    audited(&inner, &principal, "state", described.clone(), async {
        rate_limit(&inner, &principal)?;
        let endpoint = inner.aggregates.get(aggregate.as_str()).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_aggregate",
                format!("this service has no aggregate `{aggregate}`"),
            )
            .with(
                "aggregates",
                inner.aggregates.keys().copied().collect::<Vec<_>>(),
            )
        })?;
        let at = match (params.get("at"), params.get("version")) {
            (Some(at), None) => AsOf::Time(parse_time("at", at)?),
            (None, Some(version)) => AsOf::Version(version.parse().map_err(|_| {
                Failure::bad("invalid_version", "`version` must be a whole number")
            })?),
            _ => {
                return Err(Failure::bad(
                    "invalid_as_of",
                    "give exactly one of `at` (an RFC 3339 time) and `version`",
                ));
            }
        };
        let found = endpoint
            .state(&inner, &id, at)
            .await
            .map_err(|err| match err {
                StateError::Read(err) => Failure::read(&err),
                err @ StateError::VersionNotReached { .. } => {
                    Failure::unprocessable("version_not_reached", err.to_string())
                }
                err => {
                    tracing::warn!(error = %crate::redact::error_chain(&err), "state-as-of failed");
                    Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "rebuilding the state failed",
                    )
                }
            })?;
        let Some((meta, state)) = found else {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "no_state",
                format!("{aggregate} `{id}` had no events at that point"),
            ));
        };
        let folded = meta["events_folded"].as_u64().unwrap_or(0);
        let partial = meta["partial"].as_bool().unwrap_or(false);
        let mut body = json!({ "aggregate": aggregate, "id": id, "state": state });
        if let (Some(body), Some(meta)) = (body.as_object_mut(), meta.as_object()) {
            body.extend(meta.clone());
        }
        let report = Report {
            action: "state",
            query: described,
            scanned: folded,
            returned: 1,
            outcome: if partial {
                AuditOutcome::Partial
            } else {
                AuditOutcome::Ok
            },
            reason: meta["reason"].as_str().map(str::to_owned),
        };
        Ok((Json(body).into_response(), report))
    })
    .await
}

async fn audit_page(
    State(inner): State<Arc<Inner>>,
    principal: Principal,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let described = json!({ "params": params });
    audited(&inner, &principal, "audit", described.clone(), async {
        let number = |name: &str, default: usize| {
            params.get(name).map_or(Ok(default), |v| {
                v.parse::<usize>().map_err(|_| {
                    Failure::bad("invalid_parameter", format!("`{name}` must be a whole number"))
                })
            })
        };
        let after = number("after", 0)? as u64;
        let limit = number("limit", DEFAULT_AUDIT_PAGE)?.clamp(1, crate::audit::MAX_AUDIT_PAGE);
        let entries = inner.audit.page(after, limit).await.map_err(|err| {
            tracing::warn!(error = %crate::redact::error_chain(&err), "reading the audit log failed");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the audit log is unavailable",
            )
        })?;
        let next_after = (entries.len() == limit).then(|| entries.last().map(|e| e.id));
        let report = Report {
            action: "audit",
            query: described,
            scanned: entries.len() as u64,
            returned: entries.len() as u64,
            outcome: AuditOutcome::Ok,
            reason: None,
        };
        let body = json!({ "entries": entries, "next_after": next_after.flatten() });
        Ok((Json(body).into_response(), report))
    })
    .await
}

/// Whether `name` is a plain read model name: what `into` may be.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

async fn replay(
    State(inner): State<Arc<Inner>>,
    principal: Principal,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let described = json!({ "projection": name, "params": params });
    audited(&inner, &principal, "replay_projection", described.clone(), async {
        let projection = inner.projections.get(&name).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_projection",
                format!("this dashboard cannot rebuild a projection `{name}`"),
            )
            .with("projections", inner.projections.keys().cloned().collect::<Vec<_>>())
        })?;
        let until = match params.get("until") {
            Some(text) => parse_time("until", text)?,
            None => return Err(Failure::bad("invalid_time", "`until` is required")),
        };
        let into = params.get("into").map_or("", String::as_str);
        if !plain_name(into) {
            return Err(Failure::bad(
                "invalid_name",
                "`into` must be 1 to 64 lowercase letters, digits, `-` or `_`",
            ));
        }
        let models = inner.replay_models.as_ref().ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, "unknown_projection", "no projections to rebuild")
        })?;
        let target_name = format!("replay-{into}");
        let target = models.open(&target_name).map_err(|err| {
            tracing::warn!(error = %crate::redact::error_chain(&err), "cannot open the replay read model");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the target read model cannot be opened",
            )
        })?;
        let summary = replay_projection(inner.history.as_ref(), projection.as_ref(), until, &target)
            .await
            .map_err(|err| match err {
                ReplayError::TargetNotEmpty(_) => Failure::new(
                    StatusCode::CONFLICT,
                    "target_not_empty",
                    format!("read model `{target_name}` already exists; pick another `into`"),
                ),
                ReplayError::Read(err) => Failure::read(&err),
                err => {
                    tracing::warn!(error = %crate::redact::error_chain(&err), "projection rebuild failed");
                    Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "rebuilding the projection failed",
                    )
                }
            })?;
        let report = Report {
            action: "replay_projection",
            query: described,
            scanned: summary.scanned,
            returned: summary.applied,
            outcome: AuditOutcome::Ok,
            reason: None,
        };
        let body = json!({ "read_model": target_name, "summary": summary });
        Ok((Json(body).into_response(), report))
    })
    .await
}

fn error_responses(limits: &TemporalLimits) -> Value {
    let error = |description: String| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    json!({
        "400": error("Malformed request, or a continuation token that is forged, edited or issued for another query or client".into()),
        "401": error("No valid bearer token or API key".into()),
        "403": error("The caller lacks the permission".into()),
        "410": error("The continuation token has expired".into()),
        "422": error(format!("A reversed range, or one over {} days (`range_too_long`, naming the limit)", limits.max_range.as_secs() / 86_400)),
        "429": {"description": format!("More than {} requests in a rolling {} s window for this client (sliding window: no rolling window ever holds more); `Retry-After` says when to retry", limits.rate_limit, limits.rate_window.as_secs()),
                "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    })
}

fn openapi_dashboard(limits: &TemporalLimits) -> Value {
    let time = |name: &str, description: &str| {
        json!({"name": name, "in": "query", "required": false, "description": description,
               "schema": {"type": "string", "format": "date-time"}})
    };
    let errors = error_responses(limits);
    let mut responses = errors.clone();
    responses["200"] = json!({
        "description": format!(
            "One page. A page that examined {} events or ran {} s stops with `partial: true`, a `reason` and a `next_token`, even if nothing matched",
            limits.max_scan, limits.max_duration.as_secs()),
        "content": {"application/json": {"schema": {"type": "object",
            "required": ["events", "partial", "scanned", "returned", "duration_ms", "as_of"],
            "properties": {
                "events": {"type": "array", "items": {"type": "object"}},
                "partial": {"type": "boolean"},
                "reason": {"enum": ["scan_limit", "time_limit"]},
                "scanned": {"type": "integer"}, "returned": {"type": "integer"},
                "duration_ms": {"type": "integer"},
                "as_of": {"type": "integer", "description": "The log position the query is pinned at"},
                "next_token": {"type": "string"}}}}}
    });
    responses["404"] =
        json!({"description": "`aggregate_id` names a stream with no events (`unknown_stream`)"});
    json!({
        "/temporal/events": {"get": {
            "summary": "Events recorded in a time range [from, to), read-only (permission temporal:read)",
            "operationId": "temporal_events",
            "tags": ["temporal"],
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "aggregate_type", "in": "query", "required": false, "schema": {"type": "string", "minLength": 1}},
                {"name": "aggregate_id", "in": "query", "required": false, "description": "One aggregate (needs aggregate_type)", "schema": {"type": "string", "minLength": 1}},
                {"name": "event_type", "in": "query", "required": false, "description": "Only these event types (repeat or comma-separate)", "schema": {"type": "string"}},
                time("from", "Inclusive start, RFC 3339 (default: `to` minus the range limit)"),
                time("to", "Exclusive end, RFC 3339 (default: now)"),
                {"name": "limit", "in": "query", "required": false, "description": format!("Events one page examines, at most {}", limits.max_scan), "schema": {"type": "integer", "minimum": 1}},
                {"name": "token", "in": "query", "required": false, "description": "`next_token` of the previous page; the other parameters must be the same", "schema": {"type": "string"}}
            ],
            "responses": responses
        }},
        "/audit/temporal": {"get": {
            "summary": "Pages through the audit log of temporal requests (permission audit:read)",
            "operationId": "audit_temporal",
            "tags": ["temporal"],
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "after", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "required": false,
                 "description": format!("Entries in the page; at most {} are returned, a larger limit is read as {0}", crate::audit::MAX_AUDIT_PAGE),
                 "schema": {"type": "integer", "minimum": 0}}
            ],
            "responses": {"200": {"description": "`entries` oldest first and `next_after` while more remain"},
                "400": errors["400"], "401": errors["401"], "403": errors["403"]}
        }},
        "/admin/projections/{name}/replay": {"post": {
            "summary": "Rebuilds a projection's read model as it stood at `until` into a separate read model `replay-{into}` (permission dlq:admin)",
            "operationId": "replay_projection",
            "tags": ["temporal"],
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "until", "in": "query", "required": true, "description": "Events recorded before this time are applied",
                 "schema": {"type": "string", "format": "date-time"}},
                {"name": "into", "in": "query", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}}
            ],
            "responses": {"200": {"description": "What the rebuild did"},
                "400": errors["400"], "401": errors["401"], "403": errors["403"],
                "404": {"description": "No such projection"},
                "409": {"description": "The target read model exists already"}}
        }}
    })
}

fn openapi_state(limits: &TemporalLimits) -> Value {
    let mut responses = error_responses(limits);
    responses["200"] = json!({"description": "The state then, with the version it includes, the snapshot it started from and how many events were folded"});
    responses["404"] = json!({"description": "Unknown aggregate type, or no events at that point"});
    json!({
        "/temporal/state/{aggregate}/{id}": {"get": {
            "summary": "An aggregate's state as of a time or a version, rebuilt read-only (permission temporal:read)",
            "operationId": "temporal_state",
            "tags": ["temporal"],
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "aggregate", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "at", "in": "query", "required": false, "description": "RFC 3339 time: everything recorded before it", "schema": {"type": "string", "format": "date-time"}},
                {"name": "version", "in": "query", "required": false, "description": "Stream version", "schema": {"type": "integer", "minimum": 1}}
            ],
            "responses": responses
        }}
    })
}
