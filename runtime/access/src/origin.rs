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
        match self.policy.check(&request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(rejection) => {
                tracing::info!(%rejection, "request refused by the origin policy");
                Box::pin(std::future::ready(Ok(rejection.into_response())))
            }
        }
    }
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
