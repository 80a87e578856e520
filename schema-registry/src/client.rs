//! A small client for the registry's REST dialect (plain HTTP), used by `nexus schema …` and the benchmark.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The registry URL is not a plain `http://` URL.
    #[error("registry URL `{0}` is not supported (expected http://host:port)")]
    InvalidUrl(String),
    /// The registry could not be reached.
    #[error("cannot reach the registry at {url}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry answered with an error.
    #[error("registry answered {status} (error_code {error_code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Confluent error code.
        error_code: u32,
        /// The message.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("registry answer is not valid JSON")]
    Decode(#[source] serde_json::Error),
}

/// A violation as the registry reports it (`verbose=true`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteViolation {
    /// The newest version broken.
    pub version: u32,
    /// JSON pointer in the dereferenced schema.
    pub pointer: String,
    /// Rule name, e.g. `property-removed`.
    pub rule: String,
    /// What changed.
    pub message: String,
    /// How to fix it.
    pub remediation: String,
}

/// The answer to a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CompatibilityAnswer {
    /// Whether the schema is compatible.
    pub is_compatible: bool,
    /// Why not.
    #[serde(default)]
    pub violations: Vec<RemoteViolation>,
}

/// A client bound to one registry base URL.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer …` when set.
    token: Option<String>,
}

/// Percent-encodes one path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn schema_body(schema: &str, major: Option<u64>, semver: Option<&str>) -> Value {
    let mut properties = serde_json::Map::new();
    if let Some(major) = major {
        properties.insert("major_version".to_owned(), json!(major.to_string()));
    }
    if let Some(semver) = semver {
        properties.insert("semver".to_owned(), json!(semver));
    }
    let mut body = json!({"schema": schema, "schemaType": "JSON", "references": []});
    if !properties.is_empty() {
        body["metadata"] = json!({"properties": properties});
    }
    body
}

impl Client {
    /// A client for `http://host:port` (a trailing slash is fine).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/');
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(ClientError::InvalidUrl(base_url.to_owned()));
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            base: base.to_owned(),
            http,
            token: None,
        })
    }

    /// The same client sending `token` (a JWT or an API key) as a bearer credential.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// Sends one request and decodes the JSON answer; error answers become [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::CONTENT_TYPE, crate::server::CONTENT_TYPE)
            .header(header::ACCEPT, crate::server::CONTENT_TYPE);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let request = request
            .body(Full::new(bytes))
            .map_err(|_| ClientError::InvalidUrl(url.clone()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                source: Box::new(e),
            })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                source: Box::new(e),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let error: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Api {
                status: status.as_u16(),
                error_code: error["error_code"]
                    .as_u64()
                    .map_or(0, |c| u32::try_from(c).unwrap_or(0)),
                message: error["message"].as_str().map_or_else(
                    || String::from_utf8_lossy(&bytes).into_owned(),
                    str::to_owned,
                ),
            });
        }
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// Registers a schema text under a subject; returns the version object.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
        major: Option<u64>,
        semver: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = format!("/subjects/{}/versions", segment(subject));
        self.call(
            Method::POST,
            &path,
            Some(&schema_body(schema, major, semver)),
        )
        .await
    }

    /// Checks a schema text against every version the subject's level requires.
    pub async fn check(
        &self,
        subject: &str,
        schema: &str,
        major: Option<u64>,
    ) -> Result<CompatibilityAnswer, ClientError> {
        let path = format!(
            "/compatibility/subjects/{}/versions?verbose=true",
            segment(subject)
        );
        let answer = self
            .call(Method::POST, &path, Some(&schema_body(schema, major, None)))
            .await?;
        serde_json::from_value(answer).map_err(ClientError::Decode)
    }

    /// One version of a subject (`latest` or a number).
    pub async fn version(&self, subject: &str, version: &str) -> Result<Value, ClientError> {
        let path = format!(
            "/subjects/{}/versions/{}",
            segment(subject),
            segment(version)
        );
        self.call(Method::GET, &path, None).await
    }

    /// A schema by global id.
    pub async fn schema_by_id(&self, id: i64) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/schemas/ids/{id}"), None)
            .await
    }

    /// Every subject.
    pub async fn subjects(&self) -> Result<Vec<String>, ClientError> {
        let answer = self.call(Method::GET, "/subjects", None).await?;
        serde_json::from_value(answer).map_err(ClientError::Decode)
    }

    /// The version numbers of a subject.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, ClientError> {
        let answer = self
            .call(
                Method::GET,
                &format!("/subjects/{}/versions", segment(subject)),
                None,
            )
            .await?;
        serde_json::from_value(answer).map_err(ClientError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("orders-value"), "orders-value");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(Client::new("http://127.0.0.1:8081/").is_ok());
        assert!(matches!(
            Client::new("https://example.test"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            Client::new("http://"),
            Err(ClientError::InvalidUrl(_))
        ));
    }
}
