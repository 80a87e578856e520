//! Per-projection health endpoints.
//!
//! Health answers from memory (the runner keeps it current), never from a database, so a
//! check returns in well under a millisecond however busy the projection is.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::extract::Path;
use crate::projection::HealthRegistry;

/// `GET /health` (every projection) and `GET /health/projections/{name}` (one).
///
/// Both answer 200 when healthy and 503 when a projection is failing or stopped.
pub fn health_router(registry: HealthRegistry) -> Router {
    Router::new()
        .route("/health", get(all))
        .route("/health/projections/{name}", get(one))
        .with_state(registry)
}

async fn all(State(registry): State<HealthRegistry>) -> Response {
    let projections = registry.all();
    let healthy = projections.iter().all(|p| p.is_healthy());
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "projections": projections,
    });
    (status, Json(body)).into_response()
}

async fn one(State(registry): State<HealthRegistry>, Path(name): Path<String>) -> Response {
    match registry.get(&name) {
        Some(health) => {
            let status = if health.is_healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, Json(health)).into_response()
        }
        None => ApiError::UnknownProjection {
            name,
            known: registry.all().into_iter().map(|h| h.name).collect(),
        }
        .into_response(),
    }
}
