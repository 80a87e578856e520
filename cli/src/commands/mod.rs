//! The command tree of `nexus` and the dispatch from a parsed command to its module.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod bench;
pub(crate) mod bench_bus;
pub(crate) mod bench_check;
pub(crate) mod bench_http;
pub(crate) mod bench_notify;
pub(crate) mod bench_query;
pub(crate) mod bench_registry;
pub(crate) mod bench_saga;
pub(crate) mod bench_store;
pub(crate) mod bench_temporal;
pub(crate) mod bench_tracing;
pub(crate) mod check;
pub(crate) mod completions;
pub(crate) mod dlq;
pub(crate) mod doctor;
pub(crate) mod new;
pub(crate) mod registry;
pub(crate) mod replay;
pub(crate) mod rules;
pub(crate) mod saga;
pub(crate) mod schema;
pub(crate) mod token;
pub(crate) mod top;
pub(crate) mod up;
pub(crate) mod up_demo;
pub(crate) mod watch;

use clap::{Parser, Subcommand};

/// Nexus: event-sourced CQRS services in Rust.
///
/// Exit codes: 0 success, 1 findings (policy violations, incompatible schemas),
/// 2 the tool itself failed (bad input, unreachable server, I/O error).
#[derive(Debug, Parser)]
#[command(name = "nexus", version, about, long_about = None)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// How log lines on stderr are written: text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = crate::output::LogFormat::Text)]
    pub(crate) log_format: crate::output::LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a project: a command service, a query dashboard and their events crate.
    New(new::NewArgs),
    /// Run the reference system on the embedded default.
    Up(up::UpArgs),
    /// Measure Nexus components and print JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Check architecture rules (Rego policies under `rules/`) over a workspace.
    Check(check::CheckArgs),
    /// Work with policy rules.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Run the schema registry.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Register, check, read and compare schemas.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Temporal queries: events in a time range, state as of a time, projections as of a time.
    #[command(subcommand)]
    Replay(replay::ReplayCommand),
    /// List, inspect and redrive a projection's dead letters.
    Dlq(dlq::DlqArgs),
    /// Verify, read and prune the audit log of a projection's read-model changes.
    Audit(audit::AuditArgs),
    /// List and inspect saga instances; retry or abort stuck ones.
    Saga(saga::SagaArgs),
    /// Print read-model notifications as they arrive (WebSocket, resumes after a drop).
    Watch(watch::WatchArgs),
    /// Issue development tokens and API keys for the services' access control.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Watch a running system's rates, latencies, lags and dead letters from its `/metrics`.
    Top(top::TopArgs),
    /// Check this machine: Rust toolchain, servers, free ports, the data folder.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script for `nexus`.
    Completions(completions::CompletionsArgs),
}

impl Command {
    /// The log filter without `-v`: warnings, plus the request log of a registry served on its own.
    pub(crate) fn default_log_filter(&self) -> &'static str {
        match self {
            Self::Registry(_) => "warn,nexus::registry=info",
            _ => "warn",
        }
    }
}

/// What a successful command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing to report: exit code 0.
    Clean,
    /// The command ran and found problems (violations, incompatibilities): exit code 1.
    Findings,
}

/// Runs one parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::New(args) => new::run(args),
        Command::Up(args) => up::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Check(args) => check::run(args),
        Command::Rules(command) => rules::run(command),
        Command::Registry(command) => registry::run(command),
        Command::Schema(command) => schema::run(command),
        Command::Replay(command) => replay::run(command),
        Command::Dlq(args) => dlq::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Saga(args) => saga::run(args),
        Command::Token(command) => token::run(command),
        Command::Top(args) => top::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Completions(args) => completions::run(args),
    }
}

/// Builds the multi-threaded Tokio runtime the async commands run on.
pub(crate) fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
