//! One access-control layer for every Nexus HTTP service: the command service, the query
//! dashboard and the schema registry.
//!
//! Callers authenticate with a bearer JWT (HS256 shared secret, or RS256/ES256/EdDSA keys from
//! a JWKS file or URL) or a static API key; the roles they carry map to [`Permission`]s; each
//! route requires one through [`AccessControl::require`] as a `route_layer`, which puts the
//! [`Principal`] into the request's extensions. Refusals are 401 (with `WWW-Authenticate:
//! Bearer`) or 403 naming the missing permission, in the service's JSON error shape.
//!
//! ```
//! # use axum::{Router, routing::get};
//! use nexus_access::{AccessControl, Permission, Principal};
//!
//! let access = AccessControl::open();
//! let app: Router = Router::new()
//!     .route("/history", get(|who: Principal| async move { who.client_id() }))
//!     .route_layer(access.require(Permission::TemporalRead));
//! ```
//!
//! [`OriginPolicy`] keeps web pages out (DNS rebinding, cross-site writes, non-JSON bodies), and
//! [`serve_with`] bounds what a slow or abusive client can hold (connections, header time).
//!
//! Defaults: history, audit and administration ([`Permission::always_authenticated`]) always
//! need a credential; everything else is open on a loopback bind unless configured
//! ([`AccessControl::for_bind`]), and a non-loopback bind without credentials is refused.

mod access;
mod api_key;
pub mod config;
mod jwks;
mod origin;
mod permission;
mod principal;
mod rejection;
mod secret;
mod serve;
mod token;

pub use access::{
    API_KEY_HEADER, AccessControl, BindError, ConfigError, Require, RequireService,
    ServiceConfigError,
};
pub use api_key::{BadDigest, digest_hex, generate_api_key};
pub use config::{ApiKeyConfig, AuthConfig, FileError, Section, config_base, default_roles};
pub use jsonwebtoken::Algorithm;
pub use jwks::{JwksError, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
pub use origin::{OriginGuard, OriginLayer, OriginPolicy, OriginRejection};
pub use permission::{Permission, Permissions, UnknownPermission};
pub use principal::{Principal, Via};
pub use rejection::{ErrorStyle, Rejection};
pub use secret::{MIN_SECRET_BYTES, ensure_secret_file};
pub use serve::{
    LISTEN_BACKLOG, ServeOptions, listen, serve, serve_until, serve_with, shutdown_signal,
};
pub use token::{IssueError, MAX_TOKEN_BYTES, TokenError, TokenRequest, issue_hs256};

#[cfg(test)]
mod tests;
