//! The command service: accepts commands for registered aggregates over HTTP.
//!
//! `POST /commands/{aggregate}/{id}` with the command as JSON runs it through the aggregate's
//! [`CommandHandler`]. `If-Match: "<version>"` decides against the version the caller saw (a
//! stale one is a 409, never retried); without it a conflict is retried by the handler's policy.
//! `traceparent`, `X-Correlation-Id` and `X-Causation-Id` go into the events' metadata.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use schemars::{JsonSchema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use nexus_access::{AccessControl, Permission};

use super::access::OriginPolicy;
use super::correlation::{
    CAUSATION_ID, CORRELATION_ID, MAX_ID_LEN, TRACEPARENT, trace_id, valid_id,
};
use super::error::ApiError;
use super::extract::{BodyLimits, JsonBody, Path};
use super::openapi::OpenApi;
use crate::command::LoadError;
use crate::event::{EventId, Metadata};
use crate::snapshot::SnapshotError;
use crate::store::{AppendError, ReadError};
use crate::{
    Aggregate, CommandError, CommandHandler, EventStore, ExecuteOptions, Repository, SnapshotStore,
};

/// Header carrying the id of the message that caused the command.
/// Header making a command safe to send again.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header set on the answer to a repeated idempotent command.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 255;

/// Builds the command service's router from the aggregates it serves.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use nexus_runtime::http::CommandService;
/// # fn demo<A: nexus_runtime::Aggregate>(store: Arc<dyn nexus_runtime::EventStore>)
/// # where A::Command: serde::de::DeserializeOwned + schemars::JsonSchema {
/// let app = CommandService::new(store).aggregate::<A>().router();
/// # }
/// ```
pub struct CommandService {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    endpoints: BTreeMap<&'static str, Arc<dyn Endpoint>>,
    title: String,
    limits: BodyLimits,
    origins: OriginPolicy,
    access: AccessControl,
    extra: Vec<(Router, Value)>,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService")
            .field("aggregates", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CommandService {
    /// A service appending to `store`, with no aggregates yet.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        crate::telemetry::ensure_recorder();
        Self {
            store,
            snapshots: None,
            endpoints: BTreeMap::new(),
            title: "command-service".to_owned(),
            limits: BodyLimits::default(),
            origins: OriginPolicy::new(),
            access: AccessControl::open(),
            extra: Vec::new(),
        }
    }

    /// Which hosts, origins and body media types the service accepts (default: IP addresses and
    /// `localhost`, same-origin writes, JSON), against DNS rebinding and cross-site writes.
    pub fn with_origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origins = policy;
        self
    }

    /// Who may call: `commands:write` for commands, `aggregates:read` for state (default
    /// [`AccessControl::open`]: anonymous callers may do both, nothing that always needs a
    /// credential).
    pub fn with_access(mut self, access: AccessControl) -> Self {
        self.access = access;
        self
    }

    /// How large a command body may be and how long it may take to arrive (default 1 MiB, 10 s).
    pub fn with_body_limits(mut self, limits: BodyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves `routes` too (for instance [`super::TemporalApi::command_routes`]), documented
    /// by `openapi_paths` (`{"/path": {...}}`) in the service's OpenAPI document.
    pub fn with_routes(mut self, routes: Router, openapi_paths: Value) -> Self {
        self.extra.push((routes, openapi_paths));
        self
    }

    /// Loads aggregates registered after this call from `snapshots` first.
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// The service's name in its OpenAPI document and metrics (default `command-service`).
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Serves aggregate `A` under `/commands/{A::TYPE}/{id}` with the default handler.
    pub fn aggregate<A>(self) -> Self
    where
        A: Aggregate,
        A::Command: DeserializeOwned + JsonSchema,
    {
        let mut repository = Repository::<A>::new(Arc::clone(&self.store));
        if let Some(snapshots) = &self.snapshots {
            repository = repository.with_snapshots(Arc::clone(snapshots));
        }
        self.handler(CommandHandler::new(repository))
    }

    /// Serves aggregate `A` through `handler` (for a custom retry policy or repository).
    pub fn handler<A>(mut self, handler: CommandHandler<A>) -> Self
    where
        A: Aggregate,
        A::Command: DeserializeOwned + JsonSchema,
    {
        self.endpoints.insert(A::TYPE, Arc::new(Typed { handler }));
        self
    }

    /// The router: the command routes plus `/health`, `/metrics` and `/openapi.json`.
    pub fn router(self) -> Router {
        let openapi = self.openapi();
        let state = Arc::new(Shared {
            store: self.store,
            endpoints: self.endpoints,
        });
        let mut routes = Router::new()
            .route(
                "/commands/{aggregate}/{id}",
                post(execute).route_layer(self.access.require(Permission::CommandsWrite)),
            )
            .route(
                "/aggregates/{aggregate}/{id}",
                get(state_of).route_layer(self.access.require(Permission::AggregatesRead)),
            )
            .route("/health", get(health))
            .with_state(state);
        for (extra, _) in self.extra {
            routes = routes.merge(extra);
        }
        super::with_service_routes(routes, &self.title, openapi, self.limits, self.origins)
    }

    fn openapi(&self) -> Value {
        let mut doc = OpenApi::new(
            &self.title,
            "Accepts commands for the aggregates of this service and appends their events.",
        );
        doc.store_health();
        let mut generator = OpenApi::generator();
        for (aggregate, endpoint) in &self.endpoints {
            let schema = endpoint.command_schema(&mut generator);
            doc.command_paths(aggregate, schema);
        }
        for (_, paths) in &self.extra {
            doc.extra_paths(paths);
        }
        doc.finish(generator)
    }
}

struct Shared {
    store: Arc<dyn EventStore>,
    endpoints: BTreeMap<&'static str, Arc<dyn Endpoint>>,
}

impl Shared {
    fn endpoint(&self, aggregate: &str) -> Result<&Arc<dyn Endpoint>, ApiError> {
        self.endpoints
            .get(aggregate)
            .ok_or_else(|| ApiError::UnknownAggregate {
                name: aggregate.to_owned(),
                known: self.endpoints.keys().map(|k| (*k).to_owned()).collect(),
            })
    }
}

/// What a successful command returns.
#[derive(Debug, Serialize)]
struct Executed {
    aggregate: &'static str,
    id: String,
    version: u64,
    event_ids: Vec<EventId>,
    position: Option<u64>,
    correlation_id: Option<String>,
    replayed: bool,
}

/// One aggregate type behind the service, with its types erased.
#[async_trait]
trait Endpoint: Send + Sync {
    async fn execute(
        &self,
        id: &str,
        body: &[u8],
        metadata: Metadata,
        options: ExecuteOptions,
    ) -> Result<Executed, ApiError>;

    async fn state(&self, id: &str) -> Result<(u64, Value), ApiError>;

    fn command_schema(&self, generator: &mut SchemaGenerator) -> Value;
}

struct Typed<A: Aggregate> {
    handler: CommandHandler<A>,
}

#[async_trait]
impl<A> Endpoint for Typed<A>
where
    A: Aggregate,
    A::Command: DeserializeOwned + JsonSchema,
{
    async fn execute(
        &self,
        id: &str,
        body: &[u8],
        metadata: Metadata,
        mut options: ExecuteOptions,
    ) -> Result<Executed, ApiError> {
        let command: A::Command =
            serde_json::from_slice(body).map_err(|err| ApiError::InvalidCommand {
                aggregate: A::TYPE.to_owned(),
                message: err.to_string(),
                line: err.line(),
                column: err.column(),
            })?;
        if options.idempotency_key.is_some() {
            options.fingerprint = Some(fingerprint(body));
        }
        let correlation_id = metadata.correlation_id.clone();
        match self
            .handler
            .execute_with(id, &command, metadata, &options)
            .await
        {
            Ok(done) => Ok(Executed {
                aggregate: A::TYPE,
                id: id.to_owned(),
                version: done.version,
                event_ids: done.event_ids,
                position: done.position,
                correlation_id,
                replayed: done.replayed,
            }),
            Err(err) => Err(command_error(err)),
        }
    }

    async fn state(&self, id: &str) -> Result<(u64, Value), ApiError> {
        let loaded = self
            .handler
            .repository()
            .load(id)
            .await
            .map_err(load_error)?;
        if loaded.version == 0 {
            return Err(ApiError::UnknownId(format!(
                "{} `{id}` has no events",
                A::TYPE
            )));
        }
        let state = serde_json::to_value(&loaded.state).map_err(ApiError::internal)?;
        Ok((loaded.version, state))
    }

    fn command_schema(&self, generator: &mut SchemaGenerator) -> Value {
        generator.subschema_for::<A::Command>().to_value()
    }
}

fn command_error<E: std::error::Error + 'static>(err: CommandError<E>) -> ApiError {
    match err {
        CommandError::Rejected(reason) => ApiError::Rejected(reason.to_string()),
        CommandError::Conflict {
            stream,
            expected,
            actual,
        } => ApiError::Conflict {
            stream: stream.to_string(),
            expected: expected.required(),
            actual,
        },
        CommandError::Load(err) => load_error(err),
        err @ CommandError::IdempotencyKeyReused { .. } => {
            ApiError::IdempotencyKeyReused(err.to_string())
        }
        CommandError::Encode(err) => ApiError::internal(err),
        CommandError::Append(err) => append_error(err),
    }
}

fn append_error(err: AppendError) -> ApiError {
    match err {
        AppendError::Unavailable(_) => ApiError::unavailable(err),
        AppendError::InvalidStream { .. } => ApiError::InvalidId(err.to_string()),
        AppendError::InvalidEvent { .. } | AppendError::BatchSize { .. } => {
            ApiError::InvalidEvent(err.to_string())
        }
        _ => ApiError::internal(err),
    }
}

fn load_error(err: LoadError) -> ApiError {
    match &err {
        LoadError::Read {
            source: ReadError::Unavailable(_),
            ..
        }
        | LoadError::Snapshot {
            source: SnapshotError::Unavailable(_),
            ..
        } => ApiError::unavailable(err),
        _ => ApiError::internal(err),
    }
}

async fn execute(
    State(shared): State<Arc<Shared>>,
    Path((aggregate, id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let endpoint = shared.endpoint(&aggregate)?;
    let options = ExecuteOptions {
        expected: if_match(&headers)?,
        idempotency_key: id_header(&headers, IDEMPOTENCY_KEY, MAX_KEY_LEN)?,
        fingerprint: None,
    };
    let metadata = metadata_from(&headers)?;
    let done = endpoint.execute(&id, &body, metadata, options).await?;
    let mut response = Json(&done).into_response();
    let headers = response.headers_mut();
    if done.replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", done.version)) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(value) = done
        .correlation_id
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert(CORRELATION_ID, value);
    }
    Ok(response)
}

async fn state_of(
    State(shared): State<Arc<Shared>>,
    Path((aggregate, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let endpoint = shared.endpoint(&aggregate)?;
    let (version, state) = endpoint.state(&id).await?;
    let mut response = Json(json!({
        "aggregate": aggregate,
        "id": id,
        "version": version,
        "state": state,
    }))
    .into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match shared.store.head().await {
        Ok(head) => Json(json!({ "status": "ok", "head": head })).into_response(),
        Err(err) => {
            // The body says nothing internal; the cause goes to the log.
            tracing::error!(cause = %crate::redact::error_chain(&err), "event store health check failed");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "message": "the event store is unreachable" }),
                ),
            )
                .into_response()
        }
    }
}

/// The version in `If-Match: "<n>"` (weak tags and bare numbers accepted), if present.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let tag = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    tag.parse::<u64>().map(Some).map_err(|_| {
        ApiError::InvalidHeader(format!(
            "If-Match must be the aggregate version as an entity tag, like \"3\"; got `{text}`"
        ))
    })
}

/// Event metadata from the request's tracing headers.
fn metadata_from(headers: &HeaderMap) -> Result<Metadata, ApiError> {
    let mut metadata = Metadata::default();
    if let Some(traceparent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
        // An invalid traceparent is ignored, as W3C Trace Context asks: a new trace starts.
        if let Some(trace_id) = trace_id(traceparent) {
            metadata.correlation_id = Some(trace_id.to_owned());
            metadata.traceparent = Some(traceparent.to_owned());
        }
    }
    if let Some(id) = id_header(headers, CORRELATION_ID, MAX_ID_LEN)? {
        metadata.correlation_id = Some(id);
    }
    metadata.causation_id = id_header(headers, CAUSATION_ID, MAX_ID_LEN)?;
    Ok(metadata)
}

fn id_header(headers: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let valid = value.to_str().ok().filter(|v| valid_id(v, max));
    match valid {
        Some(id) => Ok(Some(id.to_owned())),
        None => Err(ApiError::InvalidHeader(format!(
            "{name} must be 1 to {max} visible ASCII characters"
        ))),
    }
}

/// What identifies a command request: a UUIDv5 of its body as canonical JSON (keys sorted, no
/// insignificant whitespace), so the same command sent with other formatting is the same request.
fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<Value>(body)
        .map(|value| sorted(value).to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &canonical).to_string()
}

/// `value` with every object's keys in order, whatever order the map type keeps.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_formatting_and_key_order_but_not_content() {
        let a = fingerprint(br#"{"type": "Open", "title": "x"}"#);
        assert_eq!(a, fingerprint(br#"{"title":"x","type":"Open"}"#));
        assert_ne!(a, fingerprint(br#"{"type": "Open", "title": "y"}"#));
    }

    #[test]
    fn if_match_reads_strong_weak_and_bare_versions() {
        let with = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
            if_match(&headers)
        };
        assert_eq!(with("\"3\"").unwrap(), Some(3));
        assert_eq!(with("W/\"4\"").unwrap(), Some(4));
        assert_eq!(with("5").unwrap(), Some(5));
        assert_eq!(with("\"abc\"").unwrap_err().code(), "invalid_header");
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
    }
}
