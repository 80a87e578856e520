//! [`AccessControl`]: authenticates a request's credential into a [`Principal`] and checks a
//! permission, as a tower layer every service puts on its routes with `route_layer`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::DecodingKey;
use tower::{Layer, Service};

use crate::api_key::{self, BadDigest, StoredKey};
use crate::config::{AuthConfig, FileError, MAX_LEEWAY_SECS, Section, config_base};
use crate::jwks::{Jwks, JwksError, JwksSource};
use crate::permission::{Permission, Permissions};
use crate::principal::{Principal, Via};
use crate::rejection::{ErrorStyle, Rejection};
use crate::token::Verifier;

/// The header an API key may come in, besides `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why an access configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Tokens are accepted but `issuer` or `audience` is missing.
    #[error("`{0}` is required when tokens are accepted")]
    Missing(&'static str),
    /// The leeway is over the limit.
    #[error("`leeway_secs` is {0}; at most {MAX_LEEWAY_SECS} is allowed")]
    Leeway(u64),
    /// Anonymous callers were given a permission that always needs authentication.
    #[error("`{0}` always needs authentication and cannot be given to anonymous callers")]
    AnonymousPermission(Permission),
    /// The HS256 secret file could not be read or is too short.
    #[error("the HS256 secret in `{path}` is unusable: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An API key's digest is malformed.
    #[error(transparent)]
    ApiKey(#[from] BadDigest),
    /// Both or neither of a JWKS file and URL, or a URL that is not `http://`.
    #[error("JWKS: {0}")]
    JwksSource(String),
    /// The JWKS file could not be loaded.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Why [`AccessControl::for_service`] could not set up a service's access layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceConfigError {
    /// The configuration file could not be read or has invalid access settings.
    #[error(transparent)]
    File(#[from] FileError),
    /// The development secret of a loopback service could not be created.
    #[error("failed to create the development signing key {}", path.display())]
    DevSecret {
        /// The secret file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The settings cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bind would expose the service without any credential.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A bind that would expose a service without any credential.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to serve on {addr} without authentication: configure credentials (`[auth]`, an \
     HS256 secret, a JWKS or API keys), bind to a loopback address, or pass `--insecure`"
)]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
}

struct Inner {
    verifier: Option<Verifier>,
    api_keys: Vec<StoredKey>,
    roles: BTreeMap<String, Permissions>,
    /// Configured anonymous permissions; `None` decides by bind (see [`AccessControl::for_bind`]).
    anonymous_config: Option<Permissions>,
    configured: bool,
}

/// The access-control layer shared by the command service, the query dashboard and the schema
/// registry. Cheap to clone.
#[derive(Clone)]
pub struct AccessControl {
    inner: Arc<Inner>,
    anonymous: Permissions,
    style: ErrorStyle,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("verifier", &self.inner.verifier)
            .field("api_keys", &self.inner.api_keys.len())
            .field("anonymous", &self.anonymous)
            .field("style", &self.style)
            .finish()
    }
}

impl AccessControl {
    /// No credentials: anonymous callers get [`Permission::open`]; endpoints that always need
    /// authentication answer 401. For loopback development and tests.
    pub fn open() -> Self {
        Self {
            inner: Arc::new(Inner {
                verifier: None,
                api_keys: Vec::new(),
                roles: crate::config::default_roles(),
                anonymous_config: None,
                configured: false,
            }),
            anonymous: Permission::open(),
            style: ErrorStyle::Nexus,
        }
    }

    /// Builds the layer from `config`, resolving relative paths against `base`; reads the HS256
    /// secret and a JWKS file, and fetches a JWKS URL once (a failed fetch is retried on the
    /// first token). Anonymous callers get nothing until [`Self::for_bind`] decides otherwise.
    pub async fn load(config: &AuthConfig, base: &Path) -> Result<Self, ConfigError> {
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::Leeway(config.leeway_secs));
        }
        let anonymous_config = match &config.anonymous {
            Some(list) => {
                if let Some(p) = list.iter().find(|p| p.always_authenticated()) {
                    return Err(ConfigError::AnonymousPermission(*p));
                }
                Some(list.iter().copied().collect::<Permissions>())
            }
            None => None,
        };
        let verifier = if config.accepts_tokens() {
            Some(verifier(config, base).await?)
        } else {
            None
        };
        let api_keys = config
            .api_keys
            .iter()
            .map(StoredKey::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anonymous: anonymous_config.clone().unwrap_or_default(),
            inner: Arc::new(Inner {
                verifier,
                api_keys,
                roles: config.role_table(),
                anonymous_config,
                configured: config.has_credentials(),
            }),
            style: ErrorStyle::Nexus,
        })
    }

    /// Settles what anonymous callers may do for a server bound to `addr`: the configured list
    /// if any; else, on a loopback address, [`Permission::open`]; else nothing. A non-loopback
    /// bind with no credential configured is refused unless `insecure`, which opens it (with a
    /// warning in the log).
    pub fn for_bind(mut self, addr: SocketAddr, insecure: bool) -> Result<Self, BindError> {
        let loopback = addr.ip().is_loopback();
        if !loopback && !self.inner.configured {
            if !insecure {
                return Err(BindError { addr });
            }
            tracing::warn!(target: "nexus::access", %addr, "serving without authentication on a non-loopback address (--insecure)");
        }
        self.anonymous = match &self.inner.anonymous_config {
            Some(list) => list.clone(),
            None if loopback || !self.inner.configured => Permission::open(),
            None => Permissions::new(),
        };
        Ok(self)
    }

    /// The access layer of a service bound to `addr`, configured by the `[auth]` table of the
    /// TOML file at `config` (a project's `nexus.toml`): no file or no table configures no
    /// credential (open on loopback, refused elsewhere unless `insecure`, as
    /// [`Self::for_bind`]). On a loopback bind a missing HS256 secret file is created, so a
    /// fresh checkout runs with the development key that `nexus token issue` signs with; any
    /// other bind needs it to exist.
    pub async fn for_service(
        config: &Path,
        addr: SocketAddr,
        insecure: bool,
    ) -> Result<Self, ServiceConfigError> {
        let settings = match AuthConfig::from_file(config, Section::AuthTable) {
            Ok(settings) => settings.unwrap_or_default(),
            Err(FileError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                AuthConfig::default()
            }
            Err(e) => return Err(e.into()),
        };
        let base = config_base(config);
        if let Some(secret) = &settings.hs256_secret_file
            && addr.ip().is_loopback()
        {
            let path = base.join(secret);
            crate::secret::ensure_secret_file(&path).map_err(|source| {
                ServiceConfigError::DevSecret {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let access = Self::load(&settings, &base).await?;
        Ok(access.for_bind(addr, insecure)?)
    }

    /// The same layer rendering refusals in `style`.
    pub fn with_error_style(mut self, style: ErrorStyle) -> Self {
        self.style = style;
        self
    }

    /// Whether any credential (token key or API key) is configured.
    pub fn is_configured(&self) -> bool {
        self.inner.configured
    }

    /// What anonymous callers may do.
    pub fn anonymous_permissions(&self) -> &Permissions {
        &self.anonymous
    }

    /// A `route_layer` that authenticates and requires `permission` on every route it covers.
    pub fn require(&self, permission: Permission) -> Require {
        Require {
            access: self.clone(),
            rule: Rule::Fixed(permission),
        }
    }

    /// A `route_layer` that authenticates and requires the permission `rule` picks from the
    /// method and the matched route (`None`: no permission, only a valid credential if one is
    /// presented).
    pub fn require_by(&self, rule: fn(&Method, &str) -> Option<Permission>) -> Require {
        Require {
            access: self.clone(),
            rule: Rule::ByRoute(rule),
        }
    }

    /// The caller behind `headers`: anonymous without a credential, an error for a credential
    /// that does not verify.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Rejection> {
        let credential = match credential(headers, self.style)? {
            None => return Ok(Principal::anonymous(self.anonymous.clone())),
            Some(Credential::Basic { id, key }) => {
                return match api_key::find(&self.inner.api_keys, &key) {
                    Some(stored) if stored.id == id => {
                        Ok(self.principal(id, stored.roles.clone(), Via::ApiKey))
                    }
                    _ => Err(Rejection::invalid(
                        "unknown API key id or secret in the Basic credentials",
                        self.style,
                    )),
                };
            }
            Some(Credential::Bearer(credential)) => credential,
        };
        if looks_like_jwt(credential) {
            let Some(verifier) = &self.inner.verifier else {
                return Err(Rejection::invalid(
                    "this service accepts no bearer tokens",
                    self.style,
                ));
            };
            let token = verifier
                .verify(credential)
                .await
                .map_err(|e| Rejection::invalid(e.to_string(), self.style))?;
            return Ok(Principal {
                expires_at: token.expires_at,
                ..self.principal(token.subject, token.roles, Via::Token)
            });
        }
        match api_key::find(&self.inner.api_keys, credential) {
            Some(key) => Ok(self.principal(key.id.clone(), key.roles.clone(), Via::ApiKey)),
            None => Err(Rejection::invalid("unknown API key", self.style)),
        }
    }

    /// `Ok` if `principal` may do `permission`; else 401 for anonymous callers, 403 otherwise.
    pub fn authorize(
        &self,
        principal: &Principal,
        permission: Permission,
    ) -> Result<(), Rejection> {
        if principal.may(permission) {
            return Ok(());
        }
        if principal.is_authenticated() {
            tracing::info!(target: "nexus::access", subject = %principal.subject, %permission, "forbidden");
            Err(Rejection::Forbidden {
                permission,
                style: self.style,
            })
        } else {
            Err(Rejection::unauthenticated(
                format!("`{permission}` needs a bearer token or API key"),
                self.style,
            ))
        }
    }

    /// The permissions `roles` grant under this configuration.
    pub fn permissions_of(&self, roles: &[String]) -> Permissions {
        roles
            .iter()
            .filter_map(|role| self.inner.roles.get(role))
            .flatten()
            .copied()
            .collect()
    }

    fn principal(&self, subject: String, roles: Vec<String>, via: Via) -> Principal {
        Principal {
            permissions: self.permissions_of(&roles),
            subject,
            roles,
            via,
            expires_at: None,
        }
    }
}

async fn verifier(config: &AuthConfig, base: &Path) -> Result<Verifier, ConfigError> {
    let issuer = config
        .issuer
        .clone()
        .ok_or(ConfigError::Missing("issuer"))?;
    let audience = config
        .audience
        .clone()
        .ok_or(ConfigError::Missing("audience"))?;
    let hs256 = match &config.hs256_secret_file {
        Some(path) => {
            let path = base.join(path);
            let secret = read_secret(&path)?;
            let key = DecodingKey::from_secret(&secret).map_err(|e| ConfigError::Secret {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Some((config.hs256_kid.clone(), key))
        }
        None => None,
    };
    let source = match (&config.jwks_file, &config.jwks_url) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::JwksSource(
                "set `jwks_file` or `jwks_url`, not both".to_owned(),
            ));
        }
        (Some(file), None) => Some(JwksSource::File(base.join(file))),
        (None, Some(url)) => {
            let uri = reqwest::Url::parse(url)
                .map_err(|_| ConfigError::JwksSource("`jwks_url` is not a URL".to_owned()))?;
            if uri.scheme() != "http" || uri.host_str().is_none_or(str::is_empty) {
                return Err(ConfigError::JwksSource(
                    "`jwks_url` must be an http:// URL (serve https through `jwks_file` refreshed by a sidecar)".to_owned(),
                ));
            }
            Some(JwksSource::Url(uri))
        }
        (None, None) => None,
    };
    let jwks = match source {
        Some(source) => {
            let is_file = matches!(source, JwksSource::File(_));
            let jwks = Jwks::new(
                source,
                config.jwks_algorithms.clone(),
                config.jwks_pinned.clone(),
                Duration::from_secs(config.jwks_refresh_secs),
                Duration::from_secs(config.jwks_cooldown_secs),
            );
            match jwks.load().await {
                Ok(_) => {}
                Err(error) if is_file => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(target: "nexus::access", %error, "JWKS not loaded at start; retrying on the first token");
                }
            }
            Some(jwks)
        }
        None => None,
    };
    Ok(Verifier {
        issuer,
        audience,
        leeway_secs: config.leeway_secs,
        roles_claim: config.roles_claim.split('.').map(str::to_owned).collect(),
        hs256,
        jwks,
    })
}

fn read_secret(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| ConfigError::Secret {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let secret = text.trim_ascii().to_vec();
    if secret.len() < crate::MIN_SECRET_BYTES {
        return Err(ConfigError::Secret {
            path: path.to_owned(),
            reason: format!(
                "{} bytes; at least {} are needed",
                secret.len(),
                crate::MIN_SECRET_BYTES
            ),
        });
    }
    Ok(secret)
}

/// What a request presents.
enum Credential<'a> {
    /// `Authorization: Bearer …` or `X-API-Key`: a JWT or an API key.
    Bearer(&'a str),
    /// `Authorization: Basic …` with an API key's id as user and the key as password, as
    /// Confluent's clients send credentials (`basic.auth.user.info`).
    Basic { id: String, key: String },
}

/// The credential of a request: `Authorization: Bearer …` or `Basic …` (schemes
/// case-insensitive), or `X-API-Key`. Another scheme is refused rather than ignored.
fn credential(headers: &HeaderMap, style: ErrorStyle) -> Result<Option<Credential<'_>>, Rejection> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| Rejection::invalid("the Authorization header is not text", style))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic(rest.trim(), style).map(Some);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Rejection::invalid(
                "only the Bearer and Basic authorization schemes are accepted",
                style,
            ));
        }
        let credential = rest.trim();
        if credential.is_empty() {
            return Err(Rejection::invalid("the bearer credential is empty", style));
        }
        return Ok(Some(Credential::Bearer(credential)));
    }
    match headers.get(API_KEY_HEADER) {
        Some(value) => value
            .to_str()
            .map(|key| Some(Credential::Bearer(key.trim())))
            .map_err(|_| Rejection::invalid("the X-API-Key header is not text", style)),
        None => Ok(None),
    }
}

/// `id:key` from the base64 of HTTP Basic credentials.
fn basic(encoded: &str, style: ErrorStyle) -> Result<Credential<'static>, Rejection> {
    use base64::Engine as _;
    let malformed =
        || Rejection::invalid("the Basic credentials are not base64 of `id:key`", style);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, key) = text.split_once(':').ok_or_else(malformed)?;
    Ok(Credential::Basic {
        id: id.to_owned(),
        key: key.to_owned(),
    })
}

/// Whether `credential` has a JWT's shape (three dot-separated parts); API keys have no dots.
fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3
}

#[derive(Clone, Copy)]
enum Rule {
    Fixed(Permission),
    ByRoute(fn(&Method, &str) -> Option<Permission>),
}

/// The layer [`AccessControl::require`] returns; put it on routes with `route_layer`, so
/// unknown paths keep answering 404.
#[derive(Clone)]
pub struct Require {
    access: AccessControl,
    rule: Rule,
}

impl std::fmt::Debug for Require {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rule = match self.rule {
            Rule::Fixed(p) => p.as_str(),
            Rule::ByRoute(_) => "by route",
        };
        f.debug_struct("Require").field("rule", &rule).finish()
    }
}

impl<S> Layer<S> for Require {
    type Service = RequireService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireService {
            inner,
            require: self.clone(),
        }
    }
}

/// The service of [`Require`].
#[derive(Clone, Debug)]
pub struct RequireService<S> {
    inner: S,
    require: Require,
}

impl<S> Service<Request> for RequireService<S>
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

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone is not ready; the service polled ready is the one that runs the request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let require = self.require.clone();
        Box::pin(async move {
            let access = &require.access;
            let permission = match require.rule {
                Rule::Fixed(permission) => Some(permission),
                Rule::ByRoute(rule) => {
                    let route = request.extensions().get::<MatchedPath>().map_or_else(
                        || request.uri().path().to_owned(),
                        |p| p.as_str().to_owned(),
                    );
                    rule(request.method(), &route)
                }
            };
            let principal = match access.authenticate(request.headers()).await {
                Ok(principal) => principal,
                Err(rejection) => return Ok(rejection.into_response()),
            };
            if let Some(permission) = permission
                && let Err(rejection) = access.authorize(&principal, permission)
            {
                return Ok(rejection.into_response());
            }
            request.extensions_mut().insert(principal);
            request.extensions_mut().insert(access.style);
            inner.call(request).await
        })
    }
}
