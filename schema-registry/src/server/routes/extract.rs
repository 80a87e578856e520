//! Extractors that turn axum's rejections into [`ApiError`] once, instead of in every handler.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Query, Request, rejection::BytesRejection},
    http::request::Parts,
};
use serde::de::DeserializeOwned;

use crate::server::{ApiError, AppState};

/// The boolean query parameters of the API; each must be `true` or `false` (any case).
const FLAGS: [&str; 7] = [
    "deleted",
    "permanent",
    "normalize",
    "verbose",
    "defaultToGlobal",
    "lookupDeletedSchema",
    "fetchMaxId",
];

/// Query parameters, read leniently: a malformed query string reads as no parameters, unknown
/// parameters are ignored and booleans are case-insensitive (Python's `False` works); a boolean
/// parameter with another value is a 400.
#[derive(Debug, Default)]
pub(super) struct Params(HashMap<String, String>);

impl Params {
    /// Whether a boolean parameter is `true` (any case).
    pub(super) fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// The value of a parameter.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let params = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|Query(p)| p)
            .unwrap_or_default();
        for name in FLAGS {
            if let Some(value) = params.get(name) {
                let value = value.trim();
                if !(value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")) {
                    return Err(ApiError::MalformedRequest(format!(
                        "query parameter `{name}` must be true or false, not `{value}`"
                    )));
                }
            }
        }
        Ok(Params(params))
    }
}

/// Path parameters; a path that does not decode answers 404 like an unknown route.
#[derive(Debug)]
pub(super) struct Path<T>(pub(super) T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| ApiError::MalformedRequest(e.body_text()))
    }
}

/// A JSON request body, read whatever its content type (Confluent clients send several).
#[derive(Debug)]
pub(super) struct Body<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.options().max_schema_bytes;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(_) => ApiError::BodyTooLarge { limit },
                other => ApiError::MalformedRequest(other.body_text()),
            })?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::MalformedRequest(e.to_string()))
    }
}
