//! The query dashboard: serves projections' read models over REST, with their health.
//!
//! Reads go to each projection's own read model (never to the event store) through its async
//! API, which keeps blocking work (SQLite) off the request tasks. `wait_for=<aggregate>/<id>@<n>`
//! lets a client read its own write: the request waits until the projection has applied
//! version `n` of that stream (the version the command service answered with).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use nexus_access::{AccessControl, Permission};

use super::access::OriginPolicy;
use super::error::ApiError;
use super::extract::{Path, Query};
use super::openapi::OpenApi;
use crate::event::StreamId;
use crate::projection::{HealthRegistry, ProjectionHandle, ReadModelError, ReadModelStore};
use crate::search::SearchLimits;
#[cfg(feature = "search")]
use crate::search::{SearchError, SearchRequest};
use crate::telemetry::live;

/// Documents per page when the request does not say.
const DEFAULT_LIMIT: usize = 100;
/// Largest page.
const MAX_LIMIT: usize = 1000;
/// How long `wait_for` waits when `wait_ms` is not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// Most collection names `/read-models` lists per projection.
const MAX_COLLECTIONS: usize = 100;
/// How often a waiting read looks at the read model again.
const WAIT_POLL: Duration = Duration::from_millis(5);

/// Builds the query dashboard's router from the projections it serves.
///
/// ```no_run
/// # use nexus_runtime::http::QueryDashboard;
/// # use nexus_runtime::projection::{ProjectionHandle, ProjectionRunner};
/// # fn demo(runner: &ProjectionRunner, orders: &ProjectionHandle) {
/// let app = QueryDashboard::new(runner.health()).read_model(orders).router();
/// # }
/// ```
#[derive(Debug)]
pub struct QueryDashboard {
    health: HealthRegistry,
    read_models: BTreeMap<String, ReadModelStore>,
    title: String,
    limits: QueryLimits,
    origins: OriginPolicy,
    access: AccessControl,
    extra: Vec<(Router, Value)>,
    notifications: Option<(crate::notify::NotificationHub, super::NotifyOptions)>,
    #[cfg(feature = "search")]
    searches: BTreeMap<String, Arc<crate::search::SearchIndex>>,
    search_limits: SearchLimits,
    console: Option<super::Console>,
}

/// Bounds on the dashboard's read-your-writes waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Most requests waiting with `wait_for` at once (default 256); one more is answered 503
    /// `too_many_waiters` with `Retry-After`, since each waiter polls its read model.
    pub max_waiters: usize,
    /// Largest `wait_ms` accepted (default 30 s); a larger one is a 400.
    pub max_wait: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_waiters: 256,
            max_wait: Duration::from_secs(30),
        }
    }
}

impl QueryDashboard {
    /// A dashboard reporting the health in `health`, serving no read model yet.
    pub fn new(health: HealthRegistry) -> Self {
        crate::telemetry::ensure_recorder();
        Self {
            health,
            read_models: BTreeMap::new(),
            title: "query-dashboard".to_owned(),
            limits: QueryLimits::default(),
            origins: OriginPolicy::new(),
            access: AccessControl::open(),
            extra: Vec::new(),
            notifications: None,
            #[cfg(feature = "search")]
            searches: BTreeMap::new(),
            search_limits: SearchLimits::default(),
            console: None,
        }
    }

    /// Serves notifications of `hub` (the one the projections' runner publishes to) over
    /// WebSocket (`/notifications/ws`) and SSE (`/notifications/sse`), with the JavaScript
    /// client at `/notifications/client.js`; subscriptions need `read-models:read`.
    pub fn with_notifications(
        mut self,
        hub: crate::notify::NotificationHub,
        options: super::NotifyOptions,
    ) -> Self {
        self.notifications = Some((hub, options));
        self
    }

    /// Bounds on searches (query length, page size and depth, filters, aggregations, time,
    /// concurrency); see [`SearchLimits`].
    pub fn with_search_limits(mut self, limits: SearchLimits) -> Self {
        self.search_limits = limits;
        self
    }

    /// Serves `index` under `/read-models/{name}/{collection}/search` (what
    /// [`QueryDashboard::read_model`] does for a projection with searchable collections).
    #[cfg(feature = "search")]
    pub fn with_search(
        mut self,
        name: impl Into<String>,
        index: Arc<crate::search::SearchIndex>,
    ) -> Self {
        self.searches.insert(name.into(), index);
        self
    }

    /// Which hosts and origins the dashboard accepts (default: IP addresses and `localhost`,
    /// same-origin writes), against DNS rebinding.
    pub fn with_origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origins = policy;
        self
    }

    /// Who may call: `read-models:read` for the overview and read models (default
    /// [`AccessControl::open`]: anonymous callers may read, nothing that always needs a
    /// credential).
    pub fn with_access(mut self, access: AccessControl) -> Self {
        self.access = access;
        self
    }

    /// Bounds on `wait_for` (default: 256 waiters, `wait_ms` up to 30 s).
    pub fn with_limits(mut self, limits: QueryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves `routes` too (for instance [`super::TemporalApi::dashboard_routes`]), documented
    /// by `openapi_paths` (`{"/path": {...}}`) in the service's OpenAPI document.
    pub fn with_routes(mut self, routes: Router, openapi_paths: Value) -> Self {
        self.extra.push((routes, openapi_paths));
        self
    }

    /// Serves the web console at `/console` (and `GET /access/me`, which it asks what the
    /// signed-in credential may do), calling the services `console` names.
    pub fn with_console(mut self, console: super::Console) -> Self {
        self.console = Some(console);
        self
    }

    /// Serves the read model of a running projection under `/read-models/{its name}`, and its
    /// searchable collections under `/read-models/{its name}/{collection}/search`.
    pub fn read_model(self, projection: &ProjectionHandle) -> Self {
        let this = self.with_read_model(projection.name(), projection.read_model().clone());
        #[cfg(feature = "search")]
        let this = match projection.search() {
            Some(index) => this.with_search(projection.name(), Arc::clone(index)),
            None => this,
        };
        this
    }

    /// Serves `store` under `/read-models/{name}`.
    pub fn with_read_model(mut self, name: impl Into<String>, store: ReadModelStore) -> Self {
        self.read_models.insert(name.into(), store);
        self
    }

    /// The service's name in its OpenAPI document and metrics (default `query-dashboard`).
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The router: read models, their dead letters (`/admin/projections/{name}/dead-letters`),
    /// their documents' audit history (`/audit/read-models/{name}/{collection}/{id}`), health,
    /// `/metrics`, `/openapi.json`, an overview page at `/` and, when configured, the console.
    pub fn router(self) -> Router {
        let names: Vec<String> = self.read_models.keys().cloned().collect();
        let mut openapi = OpenApi::new(
            &self.title,
            "Serves the read models of this service's projections and their health.",
        );
        openapi.query_paths(&names, self.limits.max_wait);
        #[cfg(feature = "search")]
        {
            let searchable: Vec<(String, Vec<String>)> = self
                .searches
                .iter()
                .map(|(name, index)| (name.clone(), index.collections()))
                .collect();
            openapi.search_paths(&searchable, &self.search_limits, self.limits.max_wait);
        }
        openapi.extra_paths(&super::dead_letters::openapi(&names));
        openapi.extra_paths(&super::read_model_audit::openapi(&names));
        if self.console.is_some() {
            openapi.extra_paths(&super::console::openapi());
        }
        if self.notifications.is_some() {
            openapi.notify_paths(&names);
        }
        for (_, paths) in &self.extra {
            openapi.extra_paths(paths);
        }
        let openapi = openapi.finish(OpenApi::generator());
        let title = self.title.clone();
        for name in self.read_models.keys() {
            register_metrics(name);
        }
        let dead_letters = super::dead_letters::routes(&self.read_models, &self.access);
        let audit = super::read_model_audit::routes(&self.read_models, &self.access);
        let console = self
            .console
            .as_ref()
            .map(|console| console.routes(&self.access, &self.title));
        let state = Arc::new(Shared {
            health: self.health.clone(),
            read_models: self.read_models,
            title: self.title,
            waiters: Arc::new(Semaphore::new(self.limits.max_waiters)),
            limits: self.limits,
            live: self.notifications.is_some(),
            #[cfg(feature = "search")]
            searches: self.searches,
            #[cfg(feature = "search")]
            searching: Arc::new(Semaphore::new(self.search_limits.max_concurrent)),
            #[cfg(feature = "search")]
            search_limits: self.search_limits,
        });
        let routes = Router::new()
            .route("/", get(overview))
            .route("/read-models", get(projections))
            .route("/read-models/{projection}/{collection}", get(list));
        // A static segment wins over `{id}`: a document whose id is `search` is read through
        // the list endpoint's filters instead.
        #[cfg(feature = "search")]
        let routes = routes.route("/read-models/{projection}/{collection}/search", get(search));
        let mut routes = routes
            .route("/read-models/{projection}/{collection}/{id}", get(one))
            .route_layer(self.access.require(Permission::ReadModelsRead))
            .with_state(state)
            .merge(super::health_router(self.health))
            .merge(dead_letters)
            .merge(audit);
        if let Some(console) = console {
            routes = routes.merge(console);
        }
        for (extra, _) in self.extra {
            routes = routes.merge(extra);
        }
        if let Some((hub, options)) = self.notifications {
            routes = routes.merge(super::notify::routes(
                hub,
                options,
                names.iter().cloned().collect(),
                &self.access,
            ));
        }
        super::with_service_routes(
            routes,
            &title,
            openapi,
            super::BodyLimits::default(),
            self.origins,
        )
    }
}

struct Shared {
    health: HealthRegistry,
    read_models: BTreeMap<String, ReadModelStore>,
    title: String,
    waiters: Arc<Semaphore>,
    limits: QueryLimits,
    /// Notifications are served: the overview updates itself through the JavaScript client.
    live: bool,
    #[cfg(feature = "search")]
    searches: BTreeMap<String, Arc<crate::search::SearchIndex>>,
    #[cfg(feature = "search")]
    searching: Arc<Semaphore>,
    #[cfg(feature = "search")]
    search_limits: SearchLimits,
}

impl Shared {
    /// The projection's read model and the request's parameters, once any `wait_for` is met.
    async fn ready(
        &self,
        projection: &str,
        pairs: Vec<(String, String)>,
    ) -> Result<(ReadModelStore, ListParams), ApiError> {
        let store = self.read_model(projection)?;
        let params = ListParams::parse(pairs, self.limits.max_wait)?;
        if let Some(wait) = &params.wait {
            let _permit = Arc::clone(&self.waiters).try_acquire_owned().map_err(|_| {
                ApiError::TooManyWaiters {
                    limit: self.limits.max_waiters,
                }
            })?;
            wait.until_applied(&store).await?;
        }
        Ok((store, params))
    }

    fn read_model(&self, name: &str) -> Result<ReadModelStore, ApiError> {
        self.read_models
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::UnknownProjection {
                name: name.to_owned(),
                known: self.read_models.keys().cloned().collect(),
            })
    }
}

/// The reserved query parameters; every other one is a field filter.
#[derive(Debug, Default)]
struct ListParams {
    limit: usize,
    offset: usize,
    wait: Option<Wait>,
    filters: Vec<(String, Value)>,
}

/// A read-your-writes condition: the projection has applied `version` of `stream`.
#[derive(Debug)]
struct Wait {
    stream: StreamId,
    version: u64,
    timeout: Duration,
}

impl ListParams {
    fn parse(pairs: Vec<(String, String)>, max_wait: Duration) -> Result<Self, ApiError> {
        let mut params = Self {
            limit: DEFAULT_LIMIT,
            ..Self::default()
        };
        let mut wait_for = None;
        let mut wait_ms = None;
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    params.limit = number(&key, &value)?;
                    if !(1..=MAX_LIMIT).contains(&params.limit) {
                        return Err(ApiError::InvalidParameter(format!(
                            "limit must be 1 to {MAX_LIMIT}, got {value}"
                        )));
                    }
                }
                "offset" => params.offset = number(&key, &value)?,
                "wait_for" => wait_for = Some(value),
                "wait_ms" => wait_ms = Some(number(&key, &value)?),
                _ => params.filters.push((key, filter_value(&value))),
            }
        }
        // Checked with or without `wait_for`: the document bounds it either way.
        let timeout = match wait_ms {
            None => DEFAULT_WAIT.min(max_wait),
            Some(ms) if (ms as u128) <= max_wait.as_millis() => Duration::from_millis(ms as u64),
            Some(ms) => {
                return Err(ApiError::InvalidParameter(format!(
                    "wait_ms must be 0 to {}, got {ms}",
                    max_wait.as_millis()
                )));
            }
        };
        if let Some(spec) = wait_for {
            params.wait = Some(Wait::parse(&spec, timeout)?);
        }
        Ok(params)
    }
}

impl Wait {
    fn parse(spec: &str, timeout: Duration) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::InvalidParameter(format!(
                "wait_for must look like `order/o-1@3` (aggregate/id@version), got `{spec}`"
            ))
        };
        let (stream, version) = spec.rsplit_once('@').ok_or_else(invalid)?;
        let (aggregate, id) = stream.split_once('/').ok_or_else(invalid)?;
        let version = version.parse::<u64>().map_err(|_| invalid())?;
        if aggregate.is_empty() || id.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            stream: StreamId::new(aggregate, id),
            version,
            timeout,
        })
    }

    /// Waits until `store` has applied the version, or fails with 503 when the time is up.
    async fn until_applied(&self, store: &ReadModelStore) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let applied = store
                .stream_version(&self.stream)
                .await
                .map_err(read_model_error)?;
            if applied >= self.version {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ApiError::NotAppliedYet {
                    stream: self.stream.to_string(),
                    applied,
                    wanted: self.version,
                });
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}

fn number(key: &str, value: &str) -> Result<usize, ApiError> {
    value.parse::<usize>().map_err(|_| {
        ApiError::InvalidParameter(format!(
            "{key} must be a non-negative integer, got `{value}`"
        ))
    })
}

/// A filter value: JSON when it parses as a number, boolean, null or quoted string; else text.
fn filter_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::String(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

/// The answer to a failed read-model call: 400 for a bad filter field, 503 when the database
/// is unreachable, else 500 (the cause is logged, never returned).
pub(super) fn read_model_error(err: ReadModelError) -> ApiError {
    match err {
        ReadModelError::InvalidField(field) => ApiError::InvalidFilter(field),
        err @ ReadModelError::Unavailable { .. } => ApiError::unavailable(err),
        err => ApiError::internal(err),
    }
}

async fn projections(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let mut projections = Vec::new();
    for (name, store) in &shared.read_models {
        let checkpoint = store.checkpoint().await.map_err(read_model_error)?;
        #[cfg(feature = "search")]
        let (search, search_fields) = match shared.searches.get(name) {
            Some(index) => {
                let documents = index.documents().await.map_err(search_error)?;
                // What a client may search, filter, sort and facet on, per collection.
                let fields: serde_json::Map<String, Value> = documents
                    .keys()
                    .filter_map(|c| Some((c.clone(), json!(index.declaration(c)?.fields()))))
                    .collect();
                (Some(documents), Some(fields))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "search"))]
        let (search, search_fields): (Option<BTreeMap<String, u64>>, Option<Value>) = (None, None);
        let collections = store
            .collections(MAX_COLLECTIONS)
            .await
            .map_err(read_model_error)?;
        projections.push(json!({
            "name": name,
            "collections": collections,
            "checkpoint": checkpoint.map(|c| c.position),
            "health": shared.health.get(name),
            "searchable": search,
            "search_fields": search_fields,
        }));
    }
    Ok(Json(json!({ "projections": projections })))
}

/// Times a read-model query into `nexus_query_duration_seconds`, `nexus_queries_total` and the
/// per-second ring; a name that is no read model of this dashboard is not a label value.
async fn timed<T>(
    shared: &Shared,
    projection: &str,
    kind: &'static str,
    query: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let started = std::time::Instant::now();
    let result = query.await;
    if shared.read_models.contains_key(projection) {
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ApiError::UnknownId(_)) => "not_found",
            Err(_) => "error",
        };
        metrics::histogram!("nexus_query_duration_seconds", "read_model" => projection.to_owned(), "kind" => kind)
            .record(elapsed.as_secs_f64());
        metrics::counter!("nexus_queries_total", "read_model" => projection.to_owned(), "kind" => kind, "outcome" => outcome)
            .increment(1);
        live::count(live::Series::Queries, 1);
        live::latency(live::Latency::Query, elapsed);
    }
    result
}

/// Registers the query metrics of `read_model` at zero.
fn register_metrics(read_model: &str) {
    for kind in ["get", "list"] {
        let _registered = metrics::histogram!("nexus_query_duration_seconds", "read_model" => read_model.to_owned(), "kind" => kind);
        for outcome in ["ok", "not_found", "error"] {
            metrics::counter!("nexus_queries_total", "read_model" => read_model.to_owned(), "kind" => kind, "outcome" => outcome)
                .increment(0);
        }
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path((projection, collection)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    timed(
        &shared,
        &projection,
        "list",
        list_documents(&shared, &projection, &collection, pairs),
    )
    .await
}

async fn list_documents(
    shared: &Shared,
    projection: &str,
    collection: &str,
    pairs: Vec<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (store, params) = shared.ready(projection, pairs).await?;
    let (limit, offset) = (params.limit, params.offset);
    // One more than asked tells whether a next page exists.
    let mut documents = store
        .list(collection, &params.filters, limit + 1, offset)
        .await
        .map_err(read_model_error)?;
    let next_offset = (documents.len() > limit).then_some(offset + limit);
    documents.truncate(limit);
    let items: Vec<Value> = documents
        .into_iter()
        .map(|(id, document)| json!({ "id": id, "document": document }))
        .collect();
    Ok(Json(json!({
        "items": items,
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    })))
}

#[cfg(feature = "search")]
/// The answer to a failed search: 400 for a bad request, 404 for a collection that is not
/// searchable, 503 when the backend is unreachable, else 500 (the cause is logged).
fn search_error(err: SearchError) -> ApiError {
    match err {
        SearchError::Invalid(message) => ApiError::InvalidSearch(message),
        SearchError::Unsupported(message) => ApiError::UnsupportedSearch(message),
        SearchError::NotSearchable {
            projection,
            collection,
        } => ApiError::NotSearchable {
            projection,
            collection,
            searchable: Vec::new(),
        },
        err @ SearchError::Unavailable { .. } => ApiError::unavailable(err),
        err => ApiError::internal(err),
    }
}

/// Full-text search with filters, sort, cursor pages, highlights, facets and aggregations.
#[cfg(feature = "search")]
async fn search(
    State(shared): State<Arc<Shared>>,
    Path((projection, collection)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let store = shared.read_model(&projection)?;
    {
        let not_searchable = |searchable: Vec<String>| ApiError::NotSearchable {
            projection: projection.clone(),
            collection: collection.clone(),
            searchable,
        };
        let index = shared
            .searches
            .get(&projection)
            .cloned()
            .ok_or_else(|| not_searchable(Vec::new()))?;
        let declaration = index
            .declaration(&collection)
            .ok_or_else(|| not_searchable(index.collections()))?;
        let request = SearchRequest::parse(&pairs, declaration, &shared.search_limits)
            .map_err(search_error)?;
        let waits: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(key, _)| key == "wait_for" || key == "wait_ms")
            .collect();
        let params = ListParams::parse(waits, shared.limits.max_wait)?;
        if let Some(wait) = &params.wait {
            let _permit = Arc::clone(&shared.waiters)
                .try_acquire_owned()
                .map_err(|_| ApiError::TooManyWaiters {
                    limit: shared.limits.max_waiters,
                })?;
            let started = Instant::now();
            wait.until_applied(&store).await?;
            let left = wait.timeout.saturating_sub(started.elapsed());
            if !index.wait_searchable(left).await {
                return Err(ApiError::NotSearchableYet);
            }
        }
        let permit = Arc::clone(&shared.searching)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::SearchBusy(format!(
                    "{} searches are running",
                    shared.search_limits.max_concurrent
                ))
            })?;
        let limits = shared.search_limits;
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let late = || {
            ApiError::SearchBusy(format!(
                "the search took longer than {} ms",
                limits.timeout.as_millis()
            ))
        };
        // A search never answers after its time is up, even one that finished just after.
        let response = tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => return Err(late()),
            response = index.search(&collection, request, limits, permit) => response,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(late());
        }
        let response = response.map_err(search_error)?;
        let body = serde_json::to_value(response).map_err(ApiError::internal)?;
        Ok(Json(body))
    }
}

async fn one(
    State(shared): State<Arc<Shared>>,
    Path((projection, collection, id)): Path<(String, String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let get = async {
        let (store, _) = shared.ready(&projection, pairs).await?;
        let found = store
            .get(&collection, &id)
            .await
            .map_err(read_model_error)?;
        found
            .map(Json)
            .ok_or_else(|| ApiError::UnknownId(format!("no document `{id}` in this collection")))
    };
    timed(&shared, &projection, "get", get).await
}

/// A small HTML page: each projection's health, with links to its API.
async fn overview(State(shared): State<Arc<Shared>>) -> Response {
    let mut rows = String::new();
    for name in shared.read_models.keys() {
        let (status, position, lag, dead) = shared.health.get(name).map_or_else(
            || ("unknown".to_owned(), 0, 0, 0),
            |h| {
                (
                    format!("{:?}", h.status).to_lowercase(),
                    h.last_position,
                    h.lag_events,
                    h.dead_letters,
                )
            },
        );
        let name = escape(name);
        rows.push_str(&format!(
            "<tr data-projection=\"{name}\"><td><a href=\"/health/projections/{name}\">{name}</a></td><td class=\"{status}\">{status}</td>\
             <td class=\"position\">{position}</td><td>{lag}</td><td>{dead}</td></tr>\n"
        ));
    }
    let title = escape(&shared.title);
    let (refresh, live) = if shared.live {
        let projections = serde_json::to_string(&shared.read_models.keys().collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".to_owned())
            .replace('<', "\\u003c");
        (
            String::new(),
            format!(
                "<h2>Live changes <small id=\"live-status\">connecting</small></h2>\
             <table><thead><tr><th>committed</th><th>projection</th><th>document</th><th>aggregate version</th>\
             <th>event</th><th>position</th></tr></thead><tbody id=\"live\"></tbody></table>\
             <script src=\"/notifications/client.js\"></script><script>{}</script>",
                LIVE_SCRIPT.replace("PROJECTIONS", &projections)
            ),
        )
    } else {
        (
            "<meta http-equiv=\"refresh\" content=\"2\">".to_owned(),
            String::new(),
        )
    };
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         {refresh}\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}\
         td,th{{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}}\
         .running{{color:#070}}.retrying{{color:#a60}}.failing,.stopped{{color:#b00}}</style></head>\
         <body><h1>{title}</h1><table><thead><tr><th>projection</th><th>status</th><th>position</th>\
         <th>lag (events)</th><th>dead letters</th></tr></thead><tbody>\n{rows}</tbody></table>\
         <p><a href=\"/read-models\">/read-models</a> · <a href=\"/health\">/health</a> · \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/openapi.json\">/openapi.json</a></p>{live}</body></html>\n"
    ))
    .into_response()
}

/// The overview's live feed: the newest 20 changes, through the JavaScript client.
const LIVE_SCRIPT: &str = r#"(function () {
  var rows = document.getElementById("live");
  var status = document.getElementById("live-status");
  var client = new NexusNotifications(location.origin, {
    onStatus: function (s) { status.textContent = s; }
  });
  PROJECTIONS.forEach(function (projection) {
    client.subscribe(projection, { projection: projection }, {
      notification: function (n) {
        var tr = document.createElement("tr");
        tr.className = "change";
        [n.committed_at.slice(11, 23), n.projection, n.collection + "/" + n.id,
         n.aggregate_type + "/" + n.aggregate_id + "@" + n.aggregate_version +
           (n.coalesced ? " (" + n.coalesced.count + " coalesced)" : ""),
         n.event_id, n.epoch + ":" + n.position].forEach(function (text) {
          var td = document.createElement("td");
          td.textContent = text;
          tr.appendChild(td);
        });
        rows.insertBefore(tr, rows.firstChild);
        while (rows.children.length > 20) rows.removeChild(rows.lastChild);
        var cell = document.querySelector('tr[data-projection="' + CSS.escape(n.projection) + '"] .position');
        if (cell && n.log_position > Number(cell.textContent)) cell.textContent = n.log_position;
      },
      reset: function (r) { status.textContent = "reset (" + r.reason + "): positions start over"; }
    });
  });
})();"#;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ListParams {
        fn parse_default(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
            Self::parse(pairs, QueryLimits::default().max_wait)
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn list_params_split_reserved_names_from_filters() {
        let params = ListParams::parse_default(pairs(&[
            ("limit", "10"),
            ("offset", "20"),
            ("status", "confirmed"),
            ("items", "2"),
            ("sku", "\"123\""),
        ]))
        .unwrap();
        assert_eq!((params.limit, params.offset), (10, 20));
        assert_eq!(
            params.filters,
            vec![
                ("status".to_owned(), json!("confirmed")),
                ("items".to_owned(), json!(2)),
                ("sku".to_owned(), json!("123")),
            ]
        );
    }

    #[test]
    fn list_params_reject_bad_numbers_and_wait_specs() {
        assert_eq!(
            ListParams::parse_default(pairs(&[("limit", "0")]))
                .unwrap_err()
                .code(),
            "invalid_parameter"
        );
        assert_eq!(
            ListParams::parse_default(pairs(&[("offset", "-1")]))
                .unwrap_err()
                .code(),
            "invalid_parameter"
        );
        for spec in ["order", "order/o-1", "order/o-1@x", "/o-1@3", "order/@3"] {
            assert!(
                ListParams::parse_default(pairs(&[("wait_for", spec)])).is_err(),
                "{spec} accepted"
            );
        }
        let wait =
            ListParams::parse_default(pairs(&[("wait_for", "order/o-1@3"), ("wait_ms", "50")]))
                .unwrap()
                .wait
                .unwrap();
        assert_eq!(wait.stream, StreamId::new("order", "o-1"));
        assert_eq!((wait.version, wait.timeout), (3, Duration::from_millis(50)));
    }

    #[test]
    fn a_wait_ms_over_the_limit_is_refused_even_without_wait_for() {
        let max = Duration::from_secs(30);
        for params in [
            pairs(&[("wait_ms", "30001")]),
            pairs(&[("wait_for", "order/o-1@3"), ("wait_ms", "30001")]),
        ] {
            let err = ListParams::parse(params, max).unwrap_err();
            assert_eq!(err.code(), "invalid_parameter");
        }
        assert!(ListParams::parse(pairs(&[("wait_ms", "30000")]), max).is_ok());
    }
}
