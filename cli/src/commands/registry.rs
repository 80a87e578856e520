//! `nexus registry serve`: runs the schema registry in the foreground until Ctrl-C or SIGTERM.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use nexus_schema_registry::{
    compat::Level,
    server::{self, AppState, Options},
    storage::{Storage, postgres::PostgresStorage, sqlite::SqliteStorage},
};

use super::Outcome;
use crate::output;

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Serve the Confluent-compatible REST API; prints the bound URL as the first line on stdout.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8082", env = "NEXUS_REGISTRY_ADDR")]
    addr: SocketAddr,
    /// Where schemas live: `sqlite:PATH` (embedded, the default) or a `postgres://` URL.
    #[arg(
        long,
        default_value = "sqlite:nexus-registry.db",
        env = "NEXUS_REGISTRY_STORAGE"
    )]
    storage: String,
    /// The largest schema text accepted, in bytes (the compatibility budget bounds the cost).
    #[arg(long, default_value_t = Options::default().max_schema_bytes)]
    max_schema_bytes: usize,
    /// Compatibility level of subjects without their own configuration (NEXUS = additive-only).
    #[arg(long, default_value = "NEXUS")]
    default_compatibility: Level,
    /// Hold every subject to this level and refuse requests to set another (e.g. NEXUS, so
    /// clients cannot switch a subject to NONE).
    #[arg(long, value_name = "LEVEL")]
    lock_compatibility: Option<Level>,
    #[command(flatten)]
    auth: super::auth::AuthArgs,
    #[command(flatten)]
    origins: super::auth::OriginArgs,
}

pub(crate) fn run(command: RegistryCommand) -> anyhow::Result<Outcome> {
    match command {
        RegistryCommand::Serve(args) => super::tokio_runtime()?.block_on(serve(args)),
    }
}

/// Opens the storage named by `--storage`.
pub(crate) async fn open_storage(spec: &str) -> anyhow::Result<Arc<dyn Storage>> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let storage = PostgresStorage::connect(spec)
            .await
            .context("failed to open the PostgreSQL registry storage")?;
        return Ok(Arc::new(storage));
    }
    let Some(path) = spec.strip_prefix("sqlite:") else {
        anyhow::bail!(
            "unknown storage `{}`: expected `sqlite:PATH` or a `postgres://` URL",
            output::redact_url(spec)
        );
    };
    let storage = SqliteStorage::open(path)
        .with_context(|| format!("failed to open the SQLite registry storage at `{path}`"))?;
    Ok(Arc::new(storage))
}

async fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    let access = super::auth::access_for(&args.auth, args.addr, None).await?;
    let storage = open_storage(&args.storage).await?;
    let listener = nexus_runtime::http::listen(args.addr)
        .await
        .with_context(|| format!("failed to listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    output::line(&format!("http://{local}"))?;
    let storage_spec = output::redact_url(&args.storage);
    tracing::info!(target: "nexus::registry", %local, storage = %storage_spec, "schema registry listening");
    let options = Options {
        max_schema_bytes: args.max_schema_bytes,
        default_level: args.default_compatibility,
        locked_level: args.lock_compatibility,
        access: Some(access),
        origins: args.origins.policy(Options::default().origins),
        ..Options::default()
    };
    server::serve(listener, AppState::new(storage, options), shutdown_signal())
        .await
        .context("the registry server failed")?;
    tracing::info!(target: "nexus::registry", "schema registry stopped");
    Ok(Outcome::Clean)
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    nexus_runtime::http::shutdown_signal().await;
    tracing::info!(target: "nexus::registry", "shutting down: finishing requests in flight");
}
