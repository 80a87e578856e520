//! HTTP adapters of the runtime (feature `http`): the command service and the query dashboard
//! as axum routers, per-projection health, Prometheus metrics and OpenAPI documents.
//!
//! The two services never call each other: the command service appends to the event store and
//! the dashboard's projections read the bus. Both are plain [`Router`]s, so an application can
//! nest them, add its own routes or layers, and serve them however it likes; [`serve`] is the
//! default (graceful shutdown on Ctrl-C or SIGTERM).

mod command;
mod console;
mod correlation;
mod dead_letters;
mod error;
pub mod extract;
mod health;
mod metrics;
mod notify;
mod openapi;
mod query;
mod read_model_audit;
mod saga;
mod temporal;

use axum::Router;

pub use command::CommandService;
pub use console::Console;
pub use error::{ApiError, Cause};
pub use extract::BodyLimits;
pub use health::health_router;
pub use metrics::{metrics_router, prometheus};
/// The access-control layer shared with the schema registry (`nexus-access`).
pub use nexus_access as access;
pub use nexus_access::{
    LISTEN_BACKLOG, ServeOptions, listen, serve, serve_until, serve_with, shutdown_signal,
};
pub use notify::{
    BEARER_PROTOCOL_PREFIX, CLIENT_JS, EXPIRED_CLOSE_CODE, NotifyOptions,
    PROTOCOL as NOTIFY_PROTOCOL,
};
pub use query::{QueryDashboard, QueryLimits};
pub use saga::SagaApi;
pub use temporal::{TemporalApi, TemporalOpenError};

/// Adds what every Nexus service serves beside its own routes: `/openapi.json` (`openapi`),
/// `/metrics`, JSON errors for unknown routes and methods, the body limits, the origin guard
/// (`Host`, cross-site writes, JSON bodies), per-route request metrics labelled with `service`, and a correlation id and `tracing` span per request.
fn with_service_routes(
    routes: Router,
    service: &str,
    openapi: serde_json::Value,
    limits: BodyLimits,
    origins: access::OriginPolicy,
) -> Router {
    let openapi = std::sync::Arc::new(openapi);
    let service: std::sync::Arc<str> = service.into();
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let openapi = std::sync::Arc::clone(&openapi);
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .merge(metrics_router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::Extension(limits))
        .layer(origins.layer())
        .layer(axum::middleware::from_fn(move |request, next| {
            metrics::track(std::sync::Arc::clone(&service), request, next)
        }))
        .layer(axum::middleware::from_fn(correlation::correlate))
}
