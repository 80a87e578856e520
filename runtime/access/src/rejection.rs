//! Refusals of the access layer, rendered in the error shape of the service that refuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::permission::Permission;

/// The JSON error shape a service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorStyle {
    /// The runtime's services: `{"error": code, "message": …, "permission": …}`.
    #[default]
    Nexus,
    /// The schema registry's Confluent dialect: exactly `{"error_code": 40101 | 40301, "message": …}`
    /// with the registry media type.
    Confluent,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 401: no credential where one is needed, or a credential that does not verify.
    Unauthenticated {
        /// What was wrong, for the caller (never key material or internals).
        reason: String,
        /// Whether a credential was presented (RFC 6750 `error="invalid_token"`).
        invalid_credential: bool,
        /// How to render it.
        style: ErrorStyle,
    },
    /// 403: the caller is known but lacks a permission.
    Forbidden {
        /// The permission the route needs.
        permission: Permission,
        /// How to render it.
        style: ErrorStyle,
    },
}

impl Rejection {
    /// A 401 for a missing credential.
    pub fn unauthenticated(reason: impl Into<String>, style: ErrorStyle) -> Self {
        Self::Unauthenticated {
            reason: reason.into(),
            invalid_credential: false,
            style,
        }
    }

    /// A 401 for a credential that did not verify.
    pub fn invalid(reason: impl Into<String>, style: ErrorStyle) -> Self {
        Self::Unauthenticated {
            reason: reason.into(),
            invalid_credential: true,
            style,
        }
    }

    /// The HTTP status: 401 or 403.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The message for people.
    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated { reason, .. } => format!("authentication required: {reason}"),
            Self::Forbidden { permission, .. } => {
                format!("missing permission `{permission}`")
            }
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Rejection {}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.message();
        let (style, challenge) = match &self {
            Self::Unauthenticated {
                invalid_credential,
                style,
                ..
            } => {
                let challenge = if *invalid_credential {
                    r#"Bearer realm="nexus", error="invalid_token""#
                } else {
                    r#"Bearer realm="nexus""#
                };
                (*style, Some(challenge))
            }
            Self::Forbidden { style, .. } => (*style, None),
        };
        let mut response = match style {
            ErrorStyle::Nexus => {
                let mut body = json!({"message": message});
                match &self {
                    Self::Unauthenticated { .. } => body["error"] = json!("unauthenticated"),
                    Self::Forbidden { permission, .. } => {
                        body["error"] = json!("forbidden");
                        body["permission"] = json!(permission.as_str());
                    }
                }
                (status, Json(body)).into_response()
            }
            ErrorStyle::Confluent => {
                let code = u32::from(status.as_u16()) * 100 + 1;
                let body = json!({"error_code": code, "message": message}).to_string();
                (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/vnd.schemaregistry.v1+json"),
                    )],
                    body,
                )
                    .into_response()
            }
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
