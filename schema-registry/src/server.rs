//! The HTTP server: Confluent's REST dialect over a [`Storage`], plus health, metrics and OpenAPI.
//!
//! [`app`] builds the router (tests drive it with `oneshot`); [`serve`] runs it on a listener
//! until a shutdown future resolves, finishing the requests in flight.

mod cache;
mod error;
mod metrics;
mod routes;
#[cfg(test)]
mod tests;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use nexus_access::{AccessControl, ErrorStyle, OriginPolicy, Permission, ServeOptions};
use serde::Serialize;

pub use self::error::ApiError;
use crate::{compat::Level, storage::Storage};

/// The media type of every JSON response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Settings of a registry server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The largest schema text accepted, in bytes.
    pub max_schema_bytes: usize,
    /// The compatibility level when neither the subject nor the registry sets one.
    pub default_level: Level,
    /// How long one compatibility check may run before the request fails with 50002.
    pub check_timeout: Duration,
    /// Bounds of dereferencing one schema (nodes and depth once its references are inlined).
    pub prepare_limits: crate::compat::Limits,
    /// The level every subject is held to, whatever clients configure (`--lock-compatibility`).
    pub locked_level: Option<Level>,
    /// The most versions one subject may hold (soft-deleted ones included), which bounds what
    /// one request reads.
    pub max_versions_per_subject: usize,
    /// How much memory dereferenced schemas may hold in the cache by schema id, in bytes
    /// (estimated); the least recently used leave first.
    pub prepared_cache_bytes: usize,
    /// Who may call: `registry:read` for reads and compatibility checks, `registry:write` to
    /// register, `registry:admin` for configuration, modes and deletes (see [`permission_for`]).
    /// `None` (the default, for embedding behind other auth) checks nothing; `nexus registry
    /// serve` always sets it.
    pub access: Option<AccessControl>,
    /// What keeps web pages out: the `Host` must be an IP address, `localhost` or an allowed
    /// name (DNS rebinding), writes from another site's pages are refused, and bodies must be
    /// JSON (`application/json`, the registry's `application/vnd.schemaregistry*+json`, or
    /// `application/octet-stream`, which Confluent's clients may send).
    pub origins: OriginPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_schema_bytes: 8 * 1024 * 1024,
            default_level: Level::Nexus,
            check_timeout: Duration::from_secs(2),
            prepare_limits: crate::compat::Limits::default(),
            locked_level: None,
            max_versions_per_subject: 1_000,
            prepared_cache_bytes: 64 * 1024 * 1024,
            access: None,
            origins: OriginPolicy::new()
                .style(ErrorStyle::Confluent)
                .accept_media_type("application/octet-stream"),
        }
    }
}

/// Shared state of the server: storage, options, caches and metrics.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    options: Options,
    /// Dereferenced schemas by id; ids are immutable, so entries never go stale.
    prepared: cache::PreparedCache,
    /// One registration at a time per subject.
    subject_locks: routes::SubjectLocks,
    metrics: metrics::Metrics,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a storage backend.
    pub fn new(storage: Arc<dyn Storage>, options: Options) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                prepared: cache::PreparedCache::new(options.prepared_cache_bytes),
                subject_locks: routes::SubjectLocks::default(),
                options,
                metrics: metrics::Metrics::default(),
            }),
        }
    }

    fn storage(&self) -> &dyn Storage {
        self.inner.storage.as_ref()
    }

    fn options(&self) -> &Options {
        &self.inner.options
    }
}

/// The router with every endpoint, the 404/405 JSON fallbacks, the request log, and the
/// origin guard outermost.
pub fn app(state: AppState) -> Router {
    let access = state.options().access.clone();
    let origins = state.options().origins.clone();
    let router = routes::router(state);
    let router = match access {
        Some(access) => router.route_layer(
            access
                .with_error_style(ErrorStyle::Confluent)
                .require_by(permission_for),
        ),
        None => router,
    };
    router.layer(origins.layer())
}

/// The permission a registry route needs: none for health, metrics and the OpenAPI document;
/// `registry:admin` for deletes and for changing configuration or modes; `registry:write` to
/// register a schema; `registry:read` for everything else (reads, lookups, compatibility checks).
pub fn permission_for(method: &Method, route: &str) -> Option<Permission> {
    match route {
        "/health" | "/metrics" | "/openapi.json" => None,
        _ if method == Method::DELETE => Some(Permission::RegistryAdmin),
        _ if (route.starts_with("/config") || route.starts_with("/mode"))
            && method != Method::GET =>
        {
            Some(Permission::RegistryAdmin)
        }
        "/subjects/{subject}/versions" if method == Method::POST => Some(Permission::RegistryWrite),
        _ => Some(Permission::RegistryRead),
    }
}

/// Serves the registry on `listener` until `shutdown` resolves, then drains requests in flight;
/// connections are capped and a client must send its headers in time ([`ServeOptions`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    nexus_access::serve_with(listener, app(state), ServeOptions::default(), shutdown).await
}

/// A JSON response with the registry media type.
pub(crate) fn sr_json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        bytes,
    )
        .into_response()
}
