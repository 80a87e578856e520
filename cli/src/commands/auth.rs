//! Access-control flags shared by the commands that serve HTTP (`nexus up`, `nexus registry
//! serve`) and the development signing key of `nexus up` that `nexus token issue` signs with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use nexus_runtime::http::access::{
    AccessControl, AuthConfig, OriginPolicy, Permission, Section, config_base,
};

use crate::output;

/// `iss` of development tokens.
pub(crate) const DEV_ISSUER: &str = "nexus-dev";
/// `aud` of development tokens.
pub(crate) const DEV_AUDIENCE: &str = "nexus";

#[derive(Debug, Args)]
pub(crate) struct AuthArgs {
    /// Access configuration: a TOML file with an `[auth]` table (as in `nexus.toml`) or its keys
    /// at the top level; relative paths in it are read from the file's folder.
    #[arg(long = "auth", value_name = "FILE", env = "NEXUS_AUTH")]
    pub(crate) auth: Option<PathBuf>,
    /// Serve on a non-loopback address without configured credentials; anyone who can reach it
    /// may run commands and read (history, audit and administration stay closed).
    #[arg(long)]
    pub(crate) insecure: bool,
}

/// Which names and web origins a served HTTP service accepts, besides its own.
#[derive(Debug, Args)]
pub(crate) struct OriginArgs {
    /// Another name the services are reached by, besides IP addresses and `localhost`
    /// (requests for other names are refused against DNS rebinding); repeatable.
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// A web origin whose pages may write (`http://localhost:5173`); repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origins: Vec<String>,
}

impl OriginArgs {
    /// `base` with the names and origins of `--allow-host` and `--allow-origin` added.
    pub(crate) fn policy(&self, base: OriginPolicy) -> OriginPolicy {
        let policy = self.allow_hosts.iter().fold(base, OriginPolicy::allow_host);
        self.allow_origins
            .iter()
            .fold(policy, OriginPolicy::allow_origin)
    }
}

/// Where `nexus up` keeps its development signing key under `data_dir`.
pub(crate) fn dev_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("auth").join("dev-signing-key")
}

/// The configuration of the development key at `path`.
pub(crate) fn dev_config(path: &Path) -> AuthConfig {
    AuthConfig {
        issuer: Some(DEV_ISSUER.to_owned()),
        audience: Some(DEV_AUDIENCE.to_owned()),
        hs256_secret_file: Some(path.to_owned()),
        ..AuthConfig::default()
    }
}

/// Reads `--auth FILE`: its `[auth]` table, or the whole file.
pub(crate) fn read_config(path: &Path) -> anyhow::Result<(AuthConfig, PathBuf)> {
    let config = AuthConfig::from_file(path, Section::AuthTableOrWholeFile)?.unwrap_or_default();
    Ok((config, config_base(path)))
}

/// The access layer for a server bound to `addr`: `--auth FILE` if given, else `fallback` (the
/// development key of `nexus up`, or nothing). A non-loopback bind needs `--auth` or
/// `--insecure`; with `--insecure`, anonymous callers get the open permissions.
pub(crate) async fn access_for(
    args: &AuthArgs,
    addr: SocketAddr,
    fallback: Option<AuthConfig>,
) -> anyhow::Result<AccessControl> {
    let loopback = addr.ip().is_loopback();
    let (mut config, base) = match &args.auth {
        Some(path) => read_config(path)?,
        None => {
            if !loopback && !args.insecure {
                anyhow::bail!(
                    "refusing to serve on {addr} without authentication: pass `--auth FILE` (an `[auth]` table), bind to 127.0.0.1, or pass `--insecure`"
                );
            }
            (fallback.unwrap_or_default(), PathBuf::from("."))
        }
    };
    if args.insecure && !loopback {
        output::warning(&format!(
            "serving on {addr} with --insecure: anyone who can reach it may run commands and read"
        ))?;
        if config.anonymous.is_none() {
            config.anonymous = Some(Permission::open().into_iter().collect());
        }
    }
    let access = AccessControl::load(&config, &base)
        .await
        .context("failed to load the access configuration")?;
    Ok(access.for_bind(addr, args.insecure)?)
}
