//! [`OriginPolicy`]: keeps web pages out of local services, as a tower layer every service puts
//! in front of its routes.
//!
//! A page in a developer's browser can send requests to `127.0.0.1`, and DNS rebinding lets it
//! read the answers too (Vite, webpack-dev-server and Jupyter each shipped this hole). The
//! guard refuses, before any route runs:
//! - a `Host` that is neither an IP address, `localhost` (or `*.localhost`), nor a configured
//!   name: 421 `misdirected_host` (a rebinding page's requests carry its own name; an IP
//!   literal or `localhost` cannot be rebound);
//! - a write (any method but `GET`, `HEAD`, `OPTIONS`, and any `Upgrade` request) whose
//!   `Origin` is neither the service's own origin nor a configured one, or, without `Origin`,
//!   with `Sec-Fetch-Site: cross-site`: 403 `cross_site`;
//! - a body whose media type is not `application/json`, another `application/*+json` type or a
//!   configured one: 415 `unsupported_media_type` (a page can post `text/plain` or a form
//!   without a preflight, but not JSON).
//!
//! Requests without `Host`, `Origin` or `Sec-Fetch-Site` come from programs, not browsers, and
//! pass: the guard is about browsers; credentials are [`AccessControl`](crate::AccessControl)'s.
//!
//! Pages of a configured origin (not merely the same origin) may also *read* the answers
//! (CORS): the guard answers their preflight requests itself (204 with the methods and
//! request headers the services take) and adds `Access-Control-Allow-Origin` for them to every
//! answer, refusals included. That is how the console, served by the query dashboard, calls the
//! command service and the registry on other ports; other origins get no CORS headers, so a
//! browser keeps their pages from reading anything. No cookies are involved: callers send
//! their credential in `Authorization`, which the page must hold to send.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::{Layer, Service};

use crate::rejection::ErrorStyle;

/// Which hosts, origins and body media types a service accepts.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    hosts: Vec<String>,
    origins: Vec<String>,
    media_types: Vec<String>,
    style: ErrorStyle,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            origins: Vec::new(),
            media_types: vec!["application/json".to_owned()],
            style: ErrorStyle::Nexus,
        }
    }
}

impl OriginPolicy {
    /// IP addresses and `localhost` as hosts, same-origin writes, JSON bodies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also answers for `name` (a DNS name the service is reached by, without port; `*` for
    /// any name, which gives up the DNS-rebinding defence).
    pub fn allow_host(mut self, name: impl AsRef<str>) -> Self {
        self.hosts.push(name.as_ref().trim().to_ascii_lowercase());
        self
    }

    /// Also accepts writes from pages of `origin` (`scheme://host[:port]`, as browsers send it;
    /// `*` for any origin, which gives up the cross-site defence).
    pub fn allow_origin(mut self, origin: impl AsRef<str>) -> Self {
        let origin = origin.as_ref().trim().trim_end_matches('/');
        self.origins.push(origin.to_ascii_lowercase());
        self
    }

    /// Also accepts bodies of `media_type` (for example `application/octet-stream`).
    pub fn accept_media_type(mut self, media_type: impl AsRef<str>) -> Self {
        self.media_types
            .push(media_type.as_ref().trim().to_ascii_lowercase());
        self
    }

    /// Renders refusals in `style` (default the runtime's).
    pub fn style(mut self, style: ErrorStyle) -> Self {
        self.style = style;
        self
    }

    /// The configured origin a browser request comes from (for CORS), if any.
    fn cors_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = text(origin).to_ascii_lowercase();
        self.origins
            .iter()
            .any(|o| o == "*" || *o == text)
            .then(|| origin.clone())
    }

    /// The tower layer enforcing this policy.
    pub fn layer(self) -> OriginLayer {
        OriginLayer {
            policy: Arc::new(self),
        }
    }

    /// Whether `request` may go on, or why not.
    pub fn check<B: HttpBody>(
        &self,
        request: &axum::http::Request<B>,
    ) -> Result<(), OriginRejection> {
        let body = request.body().size_hint().upper() != Some(0);
        self.check_parts(request.method(), request.headers(), body)
    }

    fn check_parts(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: bool,
    ) -> Result<(), OriginRejection> {
        let host = headers.get(header::HOST).map(text);
        if let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Err(self.reject(Refusal::MisdirectedHost { host: host.clone() }));
        }
        let write = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            || headers.contains_key(header::UPGRADE);
        if write {
            match headers.get(header::ORIGIN).map(text) {
                Some(origin) if !self.origin_allowed(&origin, host.as_deref()) => {
                    return Err(self.reject(Refusal::CrossSite {
                        reason: format!("Origin `{origin}`"),
                    }));
                }
                Some(_) => {}
                None => {
                    let site = headers.get("sec-fetch-site").map(text);
                    if site.as_deref() == Some("cross-site") {
                        return Err(self.reject(Refusal::CrossSite {
                            reason: "Sec-Fetch-Site: cross-site".to_owned(),
                        }));
                    }
                }
            }
        }
        if body || has_body(headers) {
            let got = headers.get(header::CONTENT_TYPE).map(text);
            let media_type = got.as_deref().map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
            if !media_type.is_some_and(|t| self.media_type_allowed(&t)) {
                return Err(self.reject(Refusal::UnsupportedMediaType {
                    got: got.unwrap_or_default(),
                    accepted: self.media_types.join(", "),
                }));
            }
        }
        Ok(())
    }

    fn reject(&self, refusal: Refusal) -> OriginRejection {
        OriginRejection {
            refusal,
            style: self.style,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.iter().any(|h| h == "*" || *h == name)
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.origins.iter().any(|o| o == "*" || *o == origin) {
            return true;
        }
        // Same origin: the page was served by this service, under the name it was asked by.
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let Some(host) = host.map(str::to_ascii_lowercase) else {
            return false;
        };
        let default_port = match scheme {
            "http" => ":80",
            "https" => ":443",
            _ => return false,
        };
        authority == host
            || format!("{authority}{default_port}") == host
            || authority == format!("{host}{default_port}")
    }

    fn media_type_allowed(&self, media_type: &str) -> bool {
        self.media_types.iter().any(|t| t == media_type)
            || (media_type.starts_with("application/") && media_type.ends_with("+json"))
    }
}

/// A header value as text (lossy: a non-ASCII value never matches an allowed one).
fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).trim().to_owned()
}

/// The name or address of a `Host` header, without its port (`[::1]:8080` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Whether the request carries a body: a non-zero `Content-Length`, or any `Transfer-Encoding`.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// What the guard refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    MisdirectedHost { host: String },
    CrossSite { reason: String },
    UnsupportedMediaType { got: String, accepted: String },
}

/// A request the [`OriginPolicy`] refused, rendered in the service's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRejection {
    refusal: Refusal,
    style: ErrorStyle,
}

impl OriginRejection {
    /// 421, 403 or 415.
    pub fn status(&self) -> StatusCode {
        match self.refusal {
            Refusal::MisdirectedHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossSite { .. } => StatusCode::FORBIDDEN,
            Refusal::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The stable code, as the runtime's `ApiError` names it.
    pub fn code(&self) -> &'static str {
        match self.refusal {
            Refusal::MisdirectedHost { .. } => "misdirected_host",
            Refusal::CrossSite { .. } => "cross_site",
            Refusal::UnsupportedMediaType { .. } => "unsupported_media_type",
        }
    }
}

impl std::fmt::Display for OriginRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.refusal {
            Refusal::MisdirectedHost { host } => write!(
                f,
                "this service does not answer for host `{host}`; add the name to its allowed hosts"
            ),
            Refusal::CrossSite { reason } => write!(
                f,
                "cross-site write refused ({reason}); add the origin to the allowed origins"
            ),
            Refusal::UnsupportedMediaType { got, accepted } => write!(
                f,
                "the body's Content-Type must be one of {accepted} or application/*+json, got `{got}`"
            ),
        }
    }
}

impl std::error::Error for OriginRejection {}

impl IntoResponse for OriginRejection {
    fn into_response(self) -> Response {
        let status = self.status();
        match self.style {
            ErrorStyle::Nexus => (
                status,
                axum::Json(json!({"error": self.code(), "message": self.to_string()})),
            )
                .into_response(),
            ErrorStyle::Confluent => {
                let code = u32::from(status.as_u16()) * 100 + 1;
                let body = json!({"error_code": code, "message": self.to_string()}).to_string();
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
        }
    }
}

/// The layer of an [`OriginPolicy`]; put it outermost (`Router::layer`), so it runs for every
/// route and the fallback.
#[derive(Debug, Clone)]
pub struct OriginLayer {
    policy: Arc<OriginPolicy>,
}

impl<S> Layer<S> for OriginLayer {
    type Service = OriginGuard<S>;

    fn layer(&self, inner: S) -> OriginGuard<S> {
        OriginGuard {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service [`OriginLayer`] wraps a router in.
#[derive(Debug, Clone)]
pub struct OriginGuard<S> {
    inner: S,
    policy: Arc<OriginPolicy>,
}

impl<S> Service<Request> for OriginGuard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let cors = self.policy.cors_origin(request.headers());
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match self.policy.check(&request) {
            Ok(()) => match cors {
                Some(origin) if preflight => {
                    Box::pin(std::future::ready(Ok(preflight_response(origin))))
                }
                Some(origin) => {
                    let answer = self.inner.call(request);
                    Box::pin(async move {
                        let mut response = answer.await?;
                        allow_reading(response.headers_mut(), origin);
                        Ok(response)
                    })
                }
                None => Box::pin(self.inner.call(request)),
            },
            Err(rejection) => {
                tracing::info!(%rejection, "request refused by the origin policy");
                let mut response = rejection.into_response();
                if let Some(origin) = cors {
                    allow_reading(response.headers_mut(), origin);
                }
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// Methods a configured origin's pages may send.
const CORS_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Request headers they may send: credentials, JSON bodies, versions, idempotency and tracing.
const CORS_REQUEST_HEADERS: &str = "authorization, content-type, if-match, idempotency-key, \
     x-api-key, x-correlation-id, x-causation-id, traceparent, tracestate";
/// Response headers they may read besides the simple ones.
const CORS_EXPOSED_HEADERS: &str =
    "etag, location, retry-after, x-correlation-id, idempotent-replayed, www-authenticate";
/// How long a browser may cache a preflight answer, in seconds.
const CORS_MAX_AGE: &str = "600";

/// The answer to a configured origin's preflight request.
fn preflight_response(origin: HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_REQUEST_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(CORS_MAX_AGE),
    );
    headers.append(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    response
}

/// Lets a configured origin's page read `headers`' response.
fn allow_reading(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn code(policy: &OriginPolicy, method: Method, pairs: &[(&str, &str)]) -> &'static str {
        match policy.check_parts(&method, &headers(pairs), false) {
            Ok(()) => "ok",
            Err(rejection) => rejection.code(),
        }
    }

    #[test]
    fn hosts_are_addresses_localhost_or_configured_names() {
        let policy = OriginPolicy::new().allow_host("orders.internal");
        for host in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.0.0.5",
            "localhost:3000",
            "app.localhost",
            "ORDERS.internal:443",
        ] {
            assert_eq!(
                code(&policy, Method::GET, &[("host", host)]),
                "ok",
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
        ] {
            assert_eq!(
                code(&policy, Method::GET, &[("host", host)]),
                "misdirected_host",
                "{host}"
            );
        }
        assert_eq!(code(&policy, Method::GET, &[]), "ok");
        let any = OriginPolicy::new().allow_host("*");
        assert_eq!(code(&any, Method::GET, &[("host", "evil.example")]), "ok");
    }

    #[test]
    fn writes_from_other_origins_or_cross_site_are_refused() {
        let policy = OriginPolicy::new().allow_origin("http://localhost:5173/");
        let host = ("host", "127.0.0.1:8080");
        for (pairs, expected) in [
            (vec![host, ("origin", "http://127.0.0.1:8080")], "ok"),
            (
                vec![("host", "localhost"), ("origin", "http://localhost")],
                "ok",
            ),
            (vec![host, ("origin", "http://localhost:5173")], "ok"),
            (vec![host, ("origin", "http://evil.example")], "cross_site"),
            (vec![host, ("origin", "null")], "cross_site"),
            (
                vec![host, ("origin", "http://127.0.0.1:9999")],
                "cross_site",
            ),
            (vec![host, ("sec-fetch-site", "cross-site")], "cross_site"),
            (vec![host, ("sec-fetch-site", "same-origin")], "ok"),
            (vec![host], "ok"),
        ] {
            assert_eq!(code(&policy, Method::POST, &pairs), expected, "{pairs:?}");
        }
        // Reads are not writes; a WebSocket upgrade is.
        let foreign = [host, ("origin", "http://evil.example")];
        assert_eq!(code(&policy, Method::GET, &foreign), "ok");
        let upgrade = [
            host,
            ("origin", "http://evil.example"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(code(&policy, Method::GET, &upgrade), "cross_site");
    }

    async fn answer(
        policy: OriginPolicy,
        request: axum::http::Request<axum::body::Body>,
    ) -> Response {
        let router = axum::Router::new()
            .route(
                "/x",
                axum::routing::get(|| async { "read" }).post(|| async { "written" }),
            )
            .layer(policy.layer());
        tower::ServiceExt::oneshot(router, request).await.unwrap()
    }

    #[tokio::test]
    async fn configured_origins_may_read_answers_and_get_their_preflights_answered() {
        let policy = OriginPolicy::new().allow_origin("http://127.0.0.1:8081");
        let request = |method: &str, origin: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri("/x")
                .header("host", "127.0.0.1:8080")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let preflight = answer(policy.clone(), request("OPTIONS", "http://127.0.0.1:8081")).await;
        assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
        let allowed = |r: &Response, name: header::HeaderName| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            allowed(&preflight, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert!(
            allowed(&preflight, header::ACCESS_CONTROL_ALLOW_HEADERS)
                .unwrap()
                .contains("authorization")
        );
        let read = answer(policy.clone(), request("GET", "http://127.0.0.1:8081")).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(
            allowed(&read, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert!(
            allowed(&read, header::ACCESS_CONTROL_EXPOSE_HEADERS)
                .unwrap()
                .contains("retry-after")
        );

        // Another origin: no preflight answer, no CORS header (the browser hides the answer),
        // and its writes are still refused.
        let foreign = answer(policy.clone(), request("OPTIONS", "http://evil.example")).await;
        assert_eq!(foreign.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(allowed(&foreign, header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        let foreign = answer(policy.clone(), request("GET", "http://evil.example")).await;
        assert!(allowed(&foreign, header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        let foreign = answer(policy.clone(), request("POST", "http://evil.example")).await;
        assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
        // The same origin needs no CORS: its page reads anyway.
        let same = answer(policy, request("GET", "http://127.0.0.1:8080")).await;
        assert!(allowed(&same, header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn bodies_must_be_json_or_an_accepted_type() {
        let policy = OriginPolicy::new().accept_media_type("application/octet-stream");
        for (content_type, expected) in [
            ("application/json", "ok"),
            ("application/json; charset=utf-8", "ok"),
            ("Application/JSON", "ok"),
            ("application/vnd.schemaregistry.v1+json", "ok"),
            ("application/octet-stream", "ok"),
            ("text/plain", "unsupported_media_type"),
            (
                "application/x-www-form-urlencoded",
                "unsupported_media_type",
            ),
            ("multipart/form-data; boundary=x", "unsupported_media_type"),
        ] {
            let pairs = [("content-type", content_type), ("content-length", "2")];
            assert_eq!(
                code(&policy, Method::POST, &pairs),
                expected,
                "{content_type}"
            );
        }
        assert_eq!(
            code(&policy, Method::POST, &[("content-length", "2")]),
            "unsupported_media_type"
        );
        assert_eq!(
            code(&policy, Method::POST, &[("transfer-encoding", "chunked")]),
            "unsupported_media_type"
        );
        assert_eq!(
            code(&policy, Method::POST, &[("content-length", "0")]),
            "ok"
        );
    }
}
