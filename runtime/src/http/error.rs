//! The one error type of the runtime's HTTP services and its mapping to status and code.
//!
//! Every failed request answers `{"error": code, "message": …, …details}` with a status and a
//! stable code decided by one exhaustive match ([`ApiError::status`], [`ApiError::code`]).
//! A 5xx body never carries the internal cause (file paths, SQL, server messages): the cause is
//! logged with `tracing` inside the request's span, which carries its correlation id, and the
//! caller gets the correlation id in the `x-correlation-id` response header to quote.
//! Refusals of the origin guard (415, 421, 403 `cross_site`) and of access control (401, 403)
//! come from `nexus-access` in the same shape.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// A cause kept for the log, never shown to the caller.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a request to the command service or the query dashboard can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No route matches the path.
    #[error("no route matches this path")]
    RouteNotFound,
    /// The route exists, but not for this method.
    #[error("this route does not answer this method")]
    MethodNotAllowed,
    /// A path segment is not valid (for example not UTF-8 once decoded).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The query string cannot be read, or a parameter has a bad value.
    #[error("{0}")]
    InvalidParameter(String),
    /// A header has a bad value.
    #[error("{0}")]
    InvalidHeader(String),
    /// The body is not the JSON the endpoint expects.
    #[error("invalid JSON body: {message}")]
    InvalidBody {
        /// What the parser said.
        message: String,
        /// Where (1-based; 0 when unknown).
        line: usize,
        /// Where (1-based; 0 when unknown).
        column: usize,
    },
    /// The body is not a valid command of the aggregate.
    #[error("invalid `{aggregate}` command: {message}")]
    InvalidCommand {
        /// The aggregate type.
        aggregate: String,
        /// What the parser said.
        message: String,
        /// Where (1-based; 0 when unknown).
        line: usize,
        /// Where (1-based; 0 when unknown).
        column: usize,
    },
    /// The aggregate id cannot name a stream.
    #[error("{0}")]
    InvalidId(String),
    /// A filter names something that is not a field.
    #[error("`{0}` is not a field name (letters, digits, `_`, and `.` for nesting)")]
    InvalidFilter(String),
    /// The body is larger than the service accepts.
    #[error("the body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client did not send the whole body in time.
    #[error("the body did not arrive within {} ms", timeout.as_millis())]
    BodyTimeout {
        /// The time allowed.
        timeout: Duration,
    },
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No aggregate of that type.
    #[error("this service has no aggregate `{name}`")]
    UnknownAggregate {
        /// The name asked for.
        name: String,
        /// The aggregates served.
        known: Vec<String>,
    },
    /// No projection of that name.
    #[error("this service serves no projection `{name}`")]
    UnknownProjection {
        /// The name asked for.
        name: String,
        /// The projections served.
        known: Vec<String>,
    },
    /// No aggregate or document with that id.
    #[error("{0}")]
    UnknownId(String),
    /// The aggregate is at another version than `If-Match` said.
    #[error(
        "stream `{stream}` is at version {actual}, expected {}",
        expected.map_or_else(|| "another".to_owned(), |v| v.to_string())
    )]
    Conflict {
        /// The stream.
        stream: String,
        /// The version the caller saw (`None`: any other than `actual`).
        expected: Option<u64>,
        /// The version the stream is at.
        actual: u64,
    },
    /// The aggregate refused the command.
    #[error("{0}")]
    Rejected(String),
    /// The idempotency key was used for another command.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// The events the command produced cannot be stored.
    #[error("{0}")]
    InvalidEvent(String),
    /// `wait_for` ran out of time before the read model caught up.
    #[error("the read model has applied `{stream}` up to version {applied}, not {wanted} yet")]
    NotAppliedYet {
        /// The stream waited for.
        stream: String,
        /// The version applied.
        applied: u64,
        /// The version asked for.
        wanted: u64,
    },
    /// Too many notification connections are open.
    #[error("{limit} notification connections are already open; retry shortly")]
    TooManyConnections {
        /// The cap on open notification connections.
        limit: usize,
    },
    /// Too many requests are already waiting with `wait_for`.
    #[error("{limit} requests are already waiting for a read model; retry shortly")]
    TooManyWaiters {
        /// The cap on concurrent waiters.
        limit: usize,
    },
    /// A search request is malformed or exceeds a bound.
    #[error("{0}")]
    InvalidSearch(String),
    /// A valid search request the collection's backend does not support (400
    /// `unsupported_search`), such as a bucket aggregation nested in another on PostgreSQL.
    #[error("{0}")]
    UnsupportedSearch(String),
    /// The collection has no search declaration.
    #[error("collection `{collection}` of `{projection}` is not searchable")]
    NotSearchable {
        /// The projection.
        projection: String,
        /// The collection.
        collection: String,
        /// The searchable collections of the projection.
        searchable: Vec<String>,
    },
    /// `wait_for` on a search ran out of time before the index made the write searchable.
    #[error("the read model has applied the write, but the search index has not committed it yet")]
    NotSearchableYet,
    /// Too many searches are running, or one ran out of time.
    #[error("search is busy: {0}; retry shortly")]
    SearchBusy(String),
    /// A backend (event store, read model) is unreachable; retrying later may work.
    #[error("a backend this service needs is unavailable; retry later")]
    Unavailable(#[source] Cause),
    /// A failure the caller cannot fix.
    #[error(
        "the service failed to answer; its log has the cause under this request's correlation id"
    )]
    Internal(#[source] Cause),
}

impl ApiError {
    /// A 503 for `cause`, which is logged, never returned.
    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Self::Unavailable(cause.into())
    }

    /// A 500 for `cause`, which is logged, never returned.
    pub fn internal(cause: impl Into<Cause>) -> Self {
        Self::Internal(cause.into())
    }

    /// The HTTP status: one match for every variant.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RouteNotFound
            | Self::UnknownAggregate { .. }
            | Self::UnknownProjection { .. }
            | Self::UnknownId(_)
            | Self::NotSearchable { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidPath(_)
            | Self::InvalidParameter(_)
            | Self::InvalidHeader(_)
            | Self::InvalidBody { .. }
            | Self::InvalidCommand { .. }
            | Self::InvalidId(_)
            | Self::InvalidFilter(_)
            | Self::InvalidSearch(_)
            | Self::UnsupportedSearch(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Rejected(_) | Self::IdempotencyKeyReused(_) | Self::InvalidEvent(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::NotAppliedYet { .. }
            | Self::TooManyWaiters { .. }
            | Self::TooManyConnections { .. }
            | Self::NotSearchableYet
            | Self::SearchBusy(_)
            | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidPath(_) => "invalid_path",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::InvalidHeader(_) => "invalid_header",
            Self::InvalidBody { .. } => "invalid_body",
            Self::InvalidCommand { .. } => "invalid_command",
            Self::InvalidId(_) => "invalid_id",
            Self::InvalidFilter(_) => "invalid_filter",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownAggregate { .. } => "unknown_aggregate",
            Self::UnknownProjection { .. } => "unknown_projection",
            Self::UnknownId(_) => "unknown_id",
            Self::Conflict { .. } => "conflict",
            Self::Rejected(_) => "rejected",
            Self::IdempotencyKeyReused(_) => "idempotency_key_reused",
            Self::InvalidEvent(_) => "invalid_event",
            Self::NotAppliedYet { .. } => "not_applied_yet",
            Self::TooManyWaiters { .. } => "too_many_waiters",
            Self::TooManyConnections { .. } => "too_many_connections",
            Self::InvalidSearch(_) => "invalid_search",
            Self::UnsupportedSearch(_) => "unsupported_search",
            Self::NotSearchable { .. } => "not_searchable",
            Self::NotSearchableYet => "not_searchable_yet",
            Self::SearchBusy(_) => "search_busy",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The fields the body carries beside `error` and `message`.
    fn details(&self) -> Map<String, Value> {
        let fields = match self {
            Self::InvalidBody { line, column, .. } | Self::InvalidCommand { line, column, .. } => {
                json!({ "line": line, "column": column })
            }
            Self::BodyTooLarge { limit }
            | Self::TooManyWaiters { limit }
            | Self::TooManyConnections { limit } => {
                json!({ "limit": limit })
            }
            Self::UnknownAggregate { known, .. } => json!({ "aggregates": known }),
            Self::UnknownProjection { known, .. } => json!({ "projections": known }),
            Self::NotSearchable { searchable, .. } => json!({ "searchable": searchable }),
            Self::Conflict {
                expected, actual, ..
            } => json!({ "expected": expected, "actual": actual }),
            Self::NotAppliedYet {
                applied, wanted, ..
            } => json!({ "applied": applied, "wanted": wanted }),
            _ => return Map::new(),
        };
        match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        if let Self::Unavailable(cause) | Self::Internal(cause) = &self {
            // The log gets the cause under the request's correlation id; the body none of it.
            let correlation_id = super::correlation::current();
            tracing::error!(
                correlation_id = correlation_id.as_deref().unwrap_or("-"),
                status = status.as_u16(),
                code,
                cause = %crate::redact::error_chain(cause.as_ref()),
                "request failed"
            );
        }
        let mut body = Map::new();
        body.insert("error".into(), json!(code));
        body.insert("message".into(), json!(self.to_string()));
        body.extend(self.details());
        let mut response = (status, Json(Value::Object(body))).into_response();
        if matches!(
            self,
            Self::TooManyWaiters { .. }
                | Self::TooManyConnections { .. }
                | Self::NotAppliedYet { .. }
                | Self::NotSearchableYet
                | Self::SearchBusy(_)
                | Self::Unavailable(_)
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Unauthenticated(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_5xx_message_never_carries_its_cause() {
        let cause =
            std::io::Error::other("connect to /var/lib/nexus/store.db: SELECT * FROM events");
        for err in [
            ApiError::unavailable(cause),
            ApiError::internal("password=hunter2"),
        ] {
            let text = err.to_string();
            assert!(err.status().is_server_error());
            assert!(
                !text.contains("/var/lib") && !text.contains("SELECT") && !text.contains("hunter2"),
                "{text}"
            );
        }
    }
}
