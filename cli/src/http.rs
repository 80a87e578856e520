//! The one HTTP client of the commands that talk to Nexus services (`saga`, `replay`, `top`,
//! `up --demo`, `bench http`): JSON over plain HTTP, a timeout on every request, an answer
//! read to at most [`MAX_ANSWER_BYTES`], a bearer token when given, and error answers turned
//! into messages naming the service's own `error` and `message`.
//!
//! URLs are built with [`url`], which percent-encodes each path segment and query value.
//! Messages show a URL without its credentials or query (which may hold a continuation token).

use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::output;

/// The longest answer read from a service.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// How long connecting may take (within the request's own timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client whose every request must finish, answer included, within one timeout.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    timeout: Duration,
    max_answer: usize,
    token: Option<String>,
}

/// A service's answer, read to the end.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status.
    pub(crate) status: StatusCode,
    /// `Retry-After` in seconds, when the service sent one as a number.
    pub(crate) retry_after: Option<u64>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Http {
    /// A client whose requests each take at most `timeout`.
    pub(crate) fn new(timeout: Duration) -> anyhow::Result<Self> {
        Self::pooled(timeout, usize::MAX)
    }

    /// A client keeping at most `idle` idle connections per host (a load generator keeps one
    /// per concurrent sender).
    pub(crate) fn pooled(timeout: Duration, idle: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .pool_max_idle_per_host(idle)
            .no_proxy()
            .build()
            .context("failed to set up the HTTP client")?;
        Ok(Self {
            client,
            timeout,
            max_answer: MAX_ANSWER_BYTES,
            token: None,
        })
    }

    /// The same client sending `token` (a JWT or an API key) as `Authorization: Bearer …`.
    pub(crate) fn with_token(mut self, token: Option<String>) -> anyhow::Result<Self> {
        if token
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            bail!("the token must be one word without spaces");
        }
        self.token = token;
        Ok(self)
    }

    /// Sends one request (with `body` as JSON) and reads the whole answer, whatever its status.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let failed = |err: reqwest::Error| {
            if err.is_timeout() {
                anyhow::anyhow!(
                    "no answer from {} within {} s",
                    shown(url),
                    self.timeout.as_secs_f64()
                )
            } else {
                anyhow::Error::new(err.without_url())
                    .context(format!("cannot reach {}", shown(url)))
            }
        };
        let mut request = self.client.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > self.max_answer {
                bail!(
                    "the answer from {} is longer than {} bytes",
                    shown(url),
                    self.max_answer
                );
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after,
            body: bytes,
        })
    }

    /// Sends one request and returns its JSON answer; an error status is an error naming the
    /// service's `error` and `message`.
    pub(crate) async fn json(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.send(method, url, body).await?.into_json(url)
    }
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as JSON if the status is a success, else an error naming the service's
    /// `error` and `message`.
    pub(crate) fn into_json(self, url: &Url) -> anyhow::Result<Value> {
        let body = self.json();
        if !self.status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            let code = body["error"].as_str().unwrap_or("error");
            bail!(
                "{} answered {} ({code}): {message}",
                shown(url),
                self.status
            );
        }
        Ok(body)
    }
}

/// `base` (an `http://` URL, perhaps with a path) followed by `segments`, each percent-encoded,
/// and by the query `query`.
pub(crate) fn url(base: &str, segments: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Url> {
    let mut url = Url::parse(base)
        .ok()
        .filter(|url| url.scheme() == "http" && url.host_str().is_some_and(|h| !h.is_empty()))
        .with_context(|| format!("`{}` is not an http:// URL", output::redact_url(base)))?;
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// `url` for messages: without credentials and query.
pub(crate) fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    output::redact_url(shown.as_str())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn urls_percent_encode_segments_and_query_values() {
        let built = url(
            "http://127.0.0.1:8080/prefix/",
            &["sagas", "a b/c?d"],
            &[
                ("status", "stuck & done"),
                ("at", "2026-01-31T11:00:00+00:00"),
            ],
        )
        .unwrap();
        assert_eq!(
            built.as_str(),
            "http://127.0.0.1:8080/prefix/sagas/a%20b%2Fc%3Fd?status=stuck+%26+done&at=2026-01-31T11%3A00%3A00%2B00%3A00"
        );
        assert_eq!(
            url("http://127.0.0.1:8080", &["metrics"], &[])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/metrics"
        );
        for bad in ["https://example.test", "127.0.0.1:8080", "http://", ""] {
            assert!(url(bad, &[], &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_show_no_credentials_or_query() {
        let built = url(
            "http://user:secret@127.0.0.1:8080",
            &["x"],
            &[("token", "t")],
        )
        .unwrap();
        let text = shown(&built);
        assert!(
            !text.contains("secret") && !text.contains("token"),
            "{text}"
        );
    }

    #[test]
    fn tokens_are_one_word() {
        let http = || Http::new(Duration::from_secs(1)).unwrap();
        assert!(http().with_token(Some("abc.def".into())).is_ok());
        assert!(http().with_token(None).is_ok());
        for bad in ["", "two words", "tab\there"] {
            assert!(http().with_token(Some(bad.into())).is_err(), "{bad:?}");
        }
    }

    /// A server answering every connection with `answer` once it has read the request head.
    async fn answering(answer: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(&answer).await;
                    // Hold the connection open: a silent server must time out on its own.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        addr
    }

    fn ok_with(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn answers_are_read_up_to_the_limit_and_refused_past_it() {
        let body = format!("\"{}\"", "x".repeat(62));
        let addr = answering(ok_with(&body)).await;
        let target = url(&format!("http://{addr}"), &["doc"], &[]).unwrap();
        let mut http = Http::new(Duration::from_secs(5)).unwrap();
        http.max_answer = 64;
        let answer = http.json(Method::GET, &target, None).await.unwrap();
        assert_eq!(
            answer.as_str().map(str::len),
            Some(62),
            "exactly at the limit"
        );
        http.max_answer = 63;
        let err = http.json(Method::GET, &target, None).await.unwrap_err();
        assert!(err.to_string().contains("longer than 63 bytes"), "{err:#}");
    }

    #[tokio::test]
    async fn a_silent_service_times_out() {
        let addr = answering(Vec::new()).await;
        let target = url(&format!("http://{addr}"), &[], &[]).unwrap();
        let http = Http::new(Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        let err = http.send(Method::GET, &target, None).await.unwrap_err();
        assert!(err.to_string().contains("no answer from"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn error_answers_name_the_service_message() {
        let body = r#"{"error":"forbidden","message":"needs dlq:admin"}"#;
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let addr = answering(answer.into_bytes()).await;
        let target = url(&format!("http://{addr}"), &["sagas"], &[]).unwrap();
        let http = Http::new(Duration::from_secs(5)).unwrap();
        let err = http.json(Method::POST, &target, None).await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("answered 403 Forbidden (forbidden): needs dlq:admin"),
            "{err:#}"
        );
    }
}
