//! A small client for the registry's REST dialect (plain HTTP), used by `nexus schema …`,
//! `nexus check --registry` and the benchmark.
//!
//! Every request is bounded twice: it must finish, answer included, within [`REQUEST_TIMEOUT`],
//! and an answer longer than [`MAX_ANSWER_BYTES`] is refused rather than buffered.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url, header};
use serde::Deserialize;
use serde_json::{Value, json};

/// How long one request may take, from connecting to the last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest answer read: a few of the largest schemas the registry accepts (8 MiB each).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

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
    /// The registry did not finish its answer in time.
    #[error("the registry at {url} did not answer within {after:?}")]
    TimedOut {
        /// The URL called.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The answer is longer than [`MAX_ANSWER_BYTES`].
    #[error("the registry's answer from {url} is longer than {limit} bytes")]
    TooLarge {
        /// The URL called.
        url: String,
        /// The limit.
        limit: usize,
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
    base: Url,
    http: reqwest::Client,
    /// How long one request may take.
    timeout: Duration,
    /// The longest answer read.
    max_answer: usize,
    /// Sent as `Authorization: Bearer …` when set.
    token: Option<String>,
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
    /// A client for `http://host:port` (a trailing slash is fine; a path prefix is kept).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let invalid = || ClientError::InvalidUrl(base_url.to_owned());
        let base = Url::parse(base_url).map_err(|_| invalid())?;
        if base.scheme() != "http" || base.host_str().is_none_or(str::is_empty) {
            return Err(invalid());
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.to_string(),
                source: Box::new(e),
            })?;
        Ok(Self {
            base,
            http,
            timeout: REQUEST_TIMEOUT,
            max_answer: MAX_ANSWER_BYTES,
            token: None,
        })
    }

    /// The same client sending `token` (a JWT or an API key) as a bearer credential.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The base URL followed by `segments`, each percent-encoded, and the query `query`.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request and decodes the JSON answer; error answers become [`ClientError::Api`].
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let shown = {
            let mut shown = url.clone();
            let _ = shown.set_password(None);
            shown.set_query(None);
            shown.to_string()
        };
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                ClientError::TimedOut {
                    url: shown.clone(),
                    after: self.timeout,
                }
            } else {
                ClientError::Unreachable {
                    url: shown.clone(),
                    source: Box::new(e.without_url()),
                }
            }
        };
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header(header::CONTENT_TYPE, crate::server::CONTENT_TYPE)
            .header(header::ACCEPT, crate::server::CONTENT_TYPE);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.trim());
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > self.max_answer {
                return Err(ClientError::TooLarge {
                    url: shown,
                    limit: self.max_answer,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
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
        let url = self.url(&["subjects", subject, "versions"], &[]);
        self.call(Method::POST, url, Some(&schema_body(schema, major, semver)))
            .await
    }

    /// Checks a schema text against every version the subject's level requires.
    pub async fn check(
        &self,
        subject: &str,
        schema: &str,
        major: Option<u64>,
    ) -> Result<CompatibilityAnswer, ClientError> {
        let url = self.url(
            &["compatibility", "subjects", subject, "versions"],
            &[("verbose", "true")],
        );
        let answer = self
            .call(Method::POST, url, Some(&schema_body(schema, major, None)))
            .await?;
        serde_json::from_value(answer).map_err(ClientError::Decode)
    }

    /// One version of a subject (`latest` or a number).
    pub async fn version(&self, subject: &str, version: &str) -> Result<Value, ClientError> {
        let url = self.url(&["subjects", subject, "versions", version], &[]);
        self.call(Method::GET, url, None).await
    }

    /// A schema by global id.
    pub async fn schema_by_id(&self, id: i64) -> Result<Value, ClientError> {
        let url = self.url(&["schemas", "ids", &id.to_string()], &[]);
        self.call(Method::GET, url, None).await
    }

    /// Every subject.
    pub async fn subjects(&self) -> Result<Vec<String>, ClientError> {
        let answer = self
            .call(Method::GET, self.url(&["subjects"], &[]), None)
            .await?;
        serde_json::from_value(answer).map_err(ClientError::Decode)
    }

    /// The version numbers of a subject.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, ClientError> {
        let url = self.url(&["subjects", subject, "versions"], &[]);
        let answer = self.call(Method::GET, url, None).await?;
        serde_json::from_value(answer).map_err(ClientError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_and_queries_are_percent_encoded() {
        let client = Client::new("http://127.0.0.1:8081/").expect("client");
        assert_eq!(
            client.url(&["subjects", "orders-value"], &[]).as_str(),
            "http://127.0.0.1:8081/subjects/orders-value"
        );
        assert_eq!(
            client
                .url(&["subjects", "a/b c?", "versions"], &[("verbose", "true")])
                .as_str(),
            "http://127.0.0.1:8081/subjects/a%2Fb%20c%3F/versions?verbose=true"
        );
        let prefixed = Client::new("http://registry.test/api/").expect("client");
        assert_eq!(
            prefixed.url(&["subjects"], &[]).as_str(),
            "http://registry.test/api/subjects"
        );
    }

    /// A registry whose `/subjects` answers `body` after `delay`.
    async fn registry(body: String, delay: Duration) -> Client {
        let app = axum::Router::new().route(
            "/subjects",
            axum::routing::get(move || async move {
                tokio::time::sleep(delay).await;
                body
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Client::new(&format!("http://{addr}")).expect("client")
    }

    #[tokio::test]
    async fn answers_are_read_up_to_the_limit_and_refused_past_it() {
        let subjects = r#"["orders-value","payments-value"]"#;
        let mut client = registry(subjects.to_owned(), Duration::ZERO).await;
        client.max_answer = subjects.len();
        assert_eq!(
            client.subjects().await.expect("exactly at the limit"),
            ["orders-value", "payments-value"]
        );
        client.max_answer = subjects.len() - 1;
        assert!(
            matches!(
                client.subjects().await,
                Err(ClientError::TooLarge { limit, .. }) if limit == subjects.len() - 1
            ),
            "one byte over the limit"
        );
    }

    #[tokio::test]
    async fn a_registry_that_does_not_answer_in_time_is_an_error() {
        let mut client = registry("[]".to_owned(), Duration::from_secs(30)).await;
        client.timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let err = client.subjects().await.expect_err("timed out");
        assert!(matches!(err, ClientError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
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
