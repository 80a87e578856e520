//! HTTP adapters of the runtime (feature `http`): the command service and the query dashboard
//! as axum routers, per-projection health, Prometheus metrics and OpenAPI documents.
//!
//! The two services never call each other: the command service appends to the event store and
//! the dashboard's projections read the bus. Both are plain [`Router`]s, so an application can
//! nest them, add its own routes or layers, and serve them however it likes; [`serve`] is the
//! default (graceful shutdown on Ctrl-C or SIGTERM).

mod command;
mod correlation;
mod error;
pub mod extract;
mod health;
mod metrics;
mod openapi;
mod query;

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub use command::CommandService;
pub use error::{ApiError, Cause};
pub use extract::BodyLimits;
pub use health::health_router;
pub use metrics::{metrics_router, prometheus};
/// The access-control layer shared with the schema registry (`nexus-access`).
pub use nexus_access as access;
pub use query::QueryDashboard;

/// Adds what every Nexus service serves beside its own routes: `/openapi.json` (`openapi`),
/// `/metrics`, JSON errors for unknown routes and methods, the body limits, per-route request
/// metrics labelled with `service`, and a correlation id and `tracing` span per request.
fn with_service_routes(
    routes: Router,
    service: &str,
    openapi: serde_json::Value,
    limits: BodyLimits,
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
        .layer(axum::middleware::from_fn(move |request, next| {
            metrics::track(std::sync::Arc::clone(&service), request, next)
        }))
        .layer(axum::middleware::from_fn(correlation::correlate))
}

/// Serves `router` on `listener` until Ctrl-C or SIGTERM, then lets requests in flight finish.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    serve_until(listener, router, shutdown_signal()).await
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve_until(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        // If the handler cannot be installed, never complete rather than stop at once.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
