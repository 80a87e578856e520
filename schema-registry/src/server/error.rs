//! The one error type of the HTTP API and its mapping to Confluent's status and `error_code`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{compat::Violation, storage::StorageError};

use super::sr_json;

/// Everything a request can fail with; each variant maps to one status and `error_code`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No route matches the path.
    #[error("HTTP 404 Not Found")]
    RouteNotFound,
    /// The route exists but not for this method.
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// The request body is not the JSON the endpoint expects.
    #[error("malformed request body: {0}")]
    MalformedRequest(String),
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {version} not found in subject '{subject}'.")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: String,
    },
    /// 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 40404.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 40407.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// 40409.
    #[error("Subject '{0}' does not have subject-level mode configured")]
    SubjectModeNotFound(String),
    /// 409 / 40901.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// Why.
        violations: Vec<Violation>,
    },
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42201, when reading and dereferencing the schema outlasts the deadline.
    #[error(
        "Invalid schema: it could not be read and dereferenced within {0:?}; it is too large or too complex"
    )]
    PrepareTimeout(std::time::Duration),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error("Invalid compatibility level: {0}")]
    InvalidCompatibility(String),
    /// 42204.
    #[error("Invalid mode: {0}")]
    InvalidMode(String),
    /// 42205.
    #[error("Operation not permitted: {0}")]
    NotPermitted(String),
    /// 42206.
    #[error("One or more references exist to the schema {{subject={subject},version={version}}}")]
    ReferenceExists {
        /// The subject.
        subject: String,
        /// The version other schemas refer to.
        version: u32,
    },
    /// 42208.
    #[error("Invalid subject: {0}")]
    InvalidSubject(String),
    /// 42209.
    #[error("Schema is {size} bytes, above the limit of {limit} bytes")]
    SchemaTooLarge {
        /// Size of the schema text.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// 42209, when the request body is over the limit before the schema can be read.
    #[error("Request body is above the limit of {limit} bytes")]
    BodyTooLarge {
        /// The body limit.
        limit: usize,
    },
    /// 50001.
    #[error("Error in the backend data store")]
    Storage(#[from] StorageError),
    /// 50001, when registrations of one subject keep racing each other.
    #[error("Subject '{0}' is being changed by too many concurrent registrations; retry")]
    Contended(String),
    /// 50002.
    #[error("Operation timed out: the compatibility check did not finish in time")]
    CheckTimeout,
}

impl ApiError {
    /// The HTTP status and Confluent `error_code`.
    pub fn codes(&self) -> (StatusCode, u32) {
        match self {
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, 404),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            ApiError::MalformedRequest(_) => (StatusCode::BAD_REQUEST, 400),
            ApiError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            ApiError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            ApiError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            ApiError::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            ApiError::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            ApiError::VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40406),
            ApiError::VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            ApiError::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            ApiError::SubjectModeNotFound(_) => (StatusCode::NOT_FOUND, 40409),
            ApiError::Incompatible { .. } => (StatusCode::CONFLICT, 40901),
            ApiError::InvalidSchema(_) | ApiError::PrepareTimeout(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, 42201)
            }
            ApiError::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            ApiError::InvalidCompatibility(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            ApiError::InvalidMode(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42204),
            ApiError::NotPermitted(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            ApiError::ReferenceExists { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42206),
            ApiError::InvalidSubject(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42208),
            ApiError::SchemaTooLarge { .. } | ApiError::BodyTooLarge { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, 42209)
            }
            ApiError::Storage(_) | ApiError::Contended(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 50001)
            }
            ApiError::CheckTimeout => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.codes();
        if let ApiError::Storage(err) = &self {
            // 5xx bodies say nothing internal; the cause goes to the log.
            tracing::error!(error = %err, cause = ?std::error::Error::source(err), "registry storage failed");
        }
        sr_json(
            status,
            &json!({"error_code": code, "message": self.to_string()}),
        )
    }
}
