//! Extractors that turn axum's rejections into [`ApiError`] once, so handlers never map them.
//!
//! [`Path`] and [`Query`] wrap axum's; [`JsonBody`] reads a body under the service's
//! [`BodyLimits`] (size and read time) and [`Json`] parses it into a type.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// How large a request body may be and how long it may take to arrive.
///
/// Installed per service (`CommandService::with_body_limits`, `QueryDashboard` uses the
/// default); read by [`JsonBody`] from the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body in bytes (default 1 MiB: a command is a small JSON document).
    pub max_bytes: usize,
    /// Longest time from the first poll of the body to its last byte (default 10 s).
    pub read_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// axum's `Path`, answering [`ApiError::InvalidPath`] when a segment cannot be read.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection: PathRejection| ApiError::InvalidPath(rejection.body_text()))
    }
}

/// axum's `Query`, answering [`ApiError::InvalidParameter`] when the query string cannot be read.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| {
                ApiError::InvalidParameter(format!(
                    "the query string cannot be read: {}",
                    rejection.body_text()
                ))
            })
    }
}

/// The raw bytes of a JSON body, read within the service's [`BodyLimits`].
///
/// The media type is checked before the handler runs (by the request guard); this extractor
/// bounds the size and the time the body may take, so a client that trickles a body byte by
/// byte is cut off with a 408.
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let limits = request
            .extensions()
            .get::<BodyLimits>()
            .copied()
            .unwrap_or_default();
        let body = request.into_body();
        match tokio::time::timeout(
            limits.read_timeout,
            axum::body::to_bytes(body, limits.max_bytes),
        )
        .await
        {
            Ok(Ok(bytes)) => Ok(Self(bytes)),
            Ok(Err(err)) if is_length_limit(&err) => Err(ApiError::BodyTooLarge {
                limit: limits.max_bytes,
            }),
            Ok(Err(err)) => Err(ApiError::InvalidBody {
                message: format!("the body could not be read: {err}"),
                line: 0,
                column: 0,
            }),
            Err(_) => Err(ApiError::BodyTimeout {
                timeout: limits.read_timeout,
            }),
        }
    }
}

/// Whether reading a body failed because it was over the limit.
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A JSON body parsed into `T`, answering [`ApiError::InvalidBody`] with the line and column.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBody(bytes) = JsonBody::from_request(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|err| ApiError::InvalidBody {
                message: err.to_string(),
                line: err.line(),
                column: err.column(),
            })
    }
}
