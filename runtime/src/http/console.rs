//! The Nexus console: a single-page application served by the query dashboard at `/console`.
//!
//! Its built bundle (`runtime/console/dist`, built from `runtime/console/src` by
//! `npm ci && npm run build`) is committed and embedded here at compile time, so neither a
//! user nor `cargo build` needs Node.js. The page has no private API: it calls the same
//! documented, access-controlled endpoints as the CLI, on the dashboard, the command service
//! and the schema registry, with the token the operator signs in with. Every response carries a
//! Content-Security-Policy that allows scripts, styles and requests to the page's own origin and
//! the configured service origins only, so the console loads nothing from elsewhere.
//!
//! The page itself, its assets and `config.json` are served without a credential (they hold no
//! data: the operator signs in inside the page); `GET /access/me` tells the page what the
//! caller's credential may do, so it hides the actions it may not.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use nexus_access::AccessControl;

use super::error::ApiError;
use super::extract::Path;

/// The built console's page (`npm run build` writes `runtime/console/dist`; see its README).
/// `include_*!` makes cargo rebuild when a file of the bundle changes.
const INDEX: &str = include_str!("../../console/dist/index.html");

/// The page's assets: file name under `assets/`, media type, contents. Vite names them without
/// hashes (`vite.config.js`), so this list changes only when the build's outputs do.
const ASSETS: [(&str, &str, &[u8]); 2] = [
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/dist/assets/console.js"),
    ),
    (
        "index.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/dist/assets/index.css"),
    ),
];

/// Where the console finds the other services, and what it may link to.
///
/// Without a command service the console has no state-as-of and no aggregate list; without a
/// registry it has no schema pages. The origins of both URLs are added to the page's
/// `connect-src`; the services themselves must allow the dashboard's origin
/// (`OriginPolicy::allow_origin`), since the page calls them cross-origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Console {
    command_url: Option<String>,
    registry_url: Option<String>,
    trace_url: Option<String>,
}

impl Console {
    /// A console that knows only the dashboard serving it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The command service's base URL (`http://127.0.0.1:8080`).
    pub fn command_service(mut self, url: impl Into<String>) -> Self {
        self.command_url = Some(url.into().trim_end_matches('/').to_owned());
        self
    }

    /// The schema registry's base URL (`http://127.0.0.1:8082`).
    pub fn registry(mut self, url: impl Into<String>) -> Self {
        self.registry_url = Some(url.into().trim_end_matches('/').to_owned());
        self
    }

    /// A tracing UI's trace page, with `{trace_id}` where the trace id goes
    /// (`http://127.0.0.1:16686/trace/{trace_id}`); events then link their trace there.
    pub fn trace_links(mut self, template: impl Into<String>) -> Self {
        self.trace_url = Some(template.into());
        self
    }

    /// The policy every console response carries: nothing but this origin and the services.
    fn content_security_policy(&self) -> String {
        let mut connect = vec!["'self'".to_owned()];
        for url in [&self.command_url, &self.registry_url]
            .into_iter()
            .flatten()
        {
            if let Some(origin) = origin_of(url) {
                connect.push(origin);
            }
        }
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            connect.join(" ")
        )
    }

    /// The routes: the page, its assets, its configuration and `GET /access/me`.
    pub(crate) fn routes(&self, access: &AccessControl, title: &str) -> Router {
        let state = std::sync::Arc::new(Served {
            csp: HeaderValue::from_str(&self.content_security_policy())
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
            config: json!({
                "title": title,
                "command_url": self.command_url,
                "registry_url": self.registry_url,
                "trace_url": self.trace_url,
            }),
        });
        let access = access.clone();
        Router::new()
            .route("/console", get(index))
            .route("/console/", get(index))
            .route("/console/config.json", get(config))
            .route("/console/assets/{file}", get(asset))
            .with_state(state)
            .route(
                "/access/me",
                get(move |headers: HeaderMap| {
                    let access = access.clone();
                    async move { me(&access, &headers).await }
                }),
            )
    }
}

/// `scheme://host[:port]` of a URL, or `None` when it has no scheme.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

struct Served {
    csp: HeaderValue,
    config: Value,
}

type Shared = State<std::sync::Arc<Served>>;

/// A console response: the file with its type and the security headers.
fn file(served: &Served, content_type: &'static str, body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, served.csp.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            // Asset names carry no content hash, so browsers revalidate instead of guessing.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index(State(served): Shared) -> Response {
    file(
        &served,
        "text/html; charset=utf-8",
        INDEX.as_bytes().to_vec(),
    )
}

async fn config(State(served): Shared) -> Response {
    let body = serde_json::to_vec(&served.config).unwrap_or_default();
    file(&served, "application/json", body)
}

async fn asset(State(served): Shared, Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file_name, _, _)| *file_name == name) {
        Some((_, content_type, contents)) => file(&served, content_type, contents.to_vec()),
        None => ApiError::RouteNotFound.into_response(),
    }
}

/// Who the caller is and what it may do: the same authentication every route runs.
async fn me(access: &AccessControl, headers: &HeaderMap) -> Response {
    match access.authenticate(headers).await {
        Ok(principal) => {
            let mut permissions: Vec<&str> =
                principal.permissions.iter().map(|p| p.as_str()).collect();
            permissions.sort_unstable();
            Json(json!({
                "subject": principal.subject,
                "roles": principal.roles,
                "permissions": permissions,
                "authenticated": principal.is_authenticated(),
            }))
            .into_response()
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// The OpenAPI paths of the console's routes.
pub(crate) fn openapi() -> Value {
    let html = json!({"200": {"description": "The console's page (no credential needed: it holds no data)",
        "content": {"text/html": {"schema": {"type": "string"}}}}});
    let error = json!({"description": "No such file",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "/console": {"get": {"summary": "The web console", "operationId": "console",
            "tags": ["console"], "responses": html}},
        "/console/": {"get": {"summary": "The web console", "operationId": "console_slash",
            "tags": ["console"], "responses": html}},
        "/console/config.json": {"get": {
            "summary": "Where the console finds the command service, the registry and trace pages",
            "operationId": "console_config", "tags": ["console"],
            "responses": {"200": {"description": "The console's configuration",
                "content": {"application/json": {"schema": {"type": "object",
                    "required": ["title", "command_url", "registry_url", "trace_url"],
                    "properties": {"title": {"type": "string"},
                        "command_url": {"type": ["string", "null"]},
                        "registry_url": {"type": ["string", "null"]},
                        "trace_url": {"type": ["string", "null"]}}}}}}}}},
        "/console/assets/{file}": {"get": {
            "summary": "A script or style of the console", "operationId": "console_asset",
            "tags": ["console"],
            "parameters": [{"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "The file", "content": {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}}}},
                "404": error}}},
        "/access/me": {"get": {
            "summary": "Who the credential sent is and what it may do (anonymous callers get the anonymous permissions)",
            "operationId": "access_me", "tags": ["access"],
            "security": [{"bearer": []}, {}],
            "responses": {
                "200": {"description": "The caller", "content": {"application/json": {"schema": {"type": "object",
                    "required": ["subject", "roles", "permissions", "authenticated"],
                    "properties": {"subject": {"type": "string"},
                        "roles": {"type": "array", "items": {"type": "string"}},
                        "permissions": {"type": "array", "items": {"type": "string"}},
                        "authenticated": {"type": "boolean"}}}}}},
                "401": {"description": "The credential is not valid",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_embedded_and_its_page_loads_only_its_own_assets() {
        let mut referenced = 0;
        for part in INDEX.split(['"', '\'']) {
            if let Some(asset) = part.strip_prefix("/console/assets/") {
                assert!(
                    ASSETS.iter().any(|(name, _, _)| *name == asset),
                    "{asset} is not embedded"
                );
                referenced += 1;
            }
            assert!(
                !part.starts_with("http://")
                    && !part.starts_with("https://")
                    && !part.starts_with("//"),
                "the page references {part}"
            );
        }
        assert_eq!(
            referenced,
            ASSETS.len(),
            "the page loads other files than the embedded ones"
        );
        let files: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/console/dist/assets"))
                .expect("the bundle's assets are committed")
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        assert_eq!(
            files.len(),
            ASSETS.len(),
            "the build wrote other assets: {files:?}"
        );
    }

    #[test]
    fn the_policy_allows_this_origin_and_the_services_only() {
        let console = Console::new()
            .command_service("http://127.0.0.1:8080/")
            .registry("http://127.0.0.1:8082");
        let csp = console.content_security_policy();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self'"),
            "{csp}"
        );
        assert!(
            csp.contains("connect-src 'self' http://127.0.0.1:8080 http://127.0.0.1:8082;"),
            "{csp}"
        );
        assert_eq!(
            origin_of("http://[::1]:8080/x?y"),
            Some("http://[::1]:8080".to_owned())
        );
        assert_eq!(origin_of("localhost:8080"), None);
    }
}
