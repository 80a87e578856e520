//! `nexus bench …`: benchmark commands that print JSON.

use clap::{Args, Subcommand};

use super::Outcome;
use super::bench_store::Backend;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Event bus: offered load, commit-to-projection latency and lag, for 1..K projections.
    Bus(super::bench_bus::BusArgs),
    /// The writer process of `nexus bench bus --cross-process`.
    #[command(hide = true)]
    BusWriter(super::bench_bus::BusWriterArgs),
    /// Command service over HTTP: a built-in load generator, beside the store's own append rate.
    Http(super::bench_http::HttpArgs),
    /// Generate a workspace of N lines of Rust and time `nexus check` on it.
    Check(super::bench_check::BenchCheckArgs),
    /// Time registry reads and a compatibility check against 100 versions on loopback.
    Registry(super::bench_registry::BenchRegistryArgs),
    /// Sagas: concurrent three-step sagas per backend, step and status-query latency, overdue
    /// deadlines after a restart.
    Saga(super::bench_saga::SagaArgs),
    /// Notifications: N WebSocket clients, events at a fixed rate, commit-to-client latency.
    Notify(super::bench_notify::NotifyArgs),
    /// The server process of `nexus bench notify`.
    #[command(hide = true)]
    NotifyServer(super::bench_notify::NotifyServerArgs),
    /// Event store: append throughput and latency, rehydration, reads, change-data-capture latency.
    Store(super::bench_store::StoreArgs),
    /// Temporal reads: a 10k-event time range, state as of a version, paging by continuation.
    Temporal(super::bench_temporal::TemporalArgs),
    /// The query side under load: full-text search and aggregation latency, time from commit to
    /// searchable, index size, on 100,000 orders with events flowing.
    Query(super::bench_query::QueryArgs),
}

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {
        BenchCommand::Bus(args) => super::bench_bus::run(args),
        BenchCommand::BusWriter(args) => super::bench_bus::run_writer(args),
        BenchCommand::Check(args) => super::bench_check::run(args),
        BenchCommand::Http(args) => super::bench_http::run(args),
        BenchCommand::Registry(args) => super::bench_registry::run(args),
        BenchCommand::Saga(args) => super::bench_saga::run(args),
        BenchCommand::Notify(args) => super::bench_notify::run(args),
        BenchCommand::NotifyServer(args) => super::bench_notify::run_server(args),
        BenchCommand::Store(args) => super::bench_store::run(args),
        BenchCommand::Temporal(args) => super::bench_temporal::run(args),
        BenchCommand::Query(args) => super::bench_query::run(args),
    }
}

/// The stores a benchmark measures, and the PostgreSQL it measures on.
#[derive(Debug, Args)]
pub(crate) struct Backends {
    /// Backends to measure, one after the other (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "embedded,postgres"
    )]
    backend: Vec<Backend>,
    /// PostgreSQL URL (throw-away schemas are created and dropped in it); without it the
    /// PostgreSQL run is skipped and the report says so.
    #[arg(long, env = "NEXUS_POSTGRES_URL")]
    pub(crate) url: Option<String>,
}

impl Backends {
    /// The backends to run, in order, and why each of the others is skipped (for the report).
    pub(crate) fn to_run(&self) -> (Vec<Backend>, Vec<&'static str>) {
        let mut run = Vec::new();
        let mut skipped = Vec::new();
        for backend in &self.backend {
            if *backend == Backend::Postgres && self.url.is_none() {
                skipped.push("postgres: no --url (or NEXUS_POSTGRES_URL)");
            } else {
                run.push(*backend);
            }
        }
        (run, skipped)
    }
}

/// Latency percentiles in milliseconds (p50, p99, p999, max) of samples given in seconds.
pub(crate) fn latency_ms(seconds: &mut [f64]) -> serde_json::Value {
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if seconds.is_empty() {
            return 0.0;
        }
        let index = ((seconds.len() as f64 * q).ceil() as usize).clamp(1, seconds.len()) - 1;
        round(seconds[index] * 1000.0)
    };
    serde_json::json!({
        "p50": at(0.5),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": at(1.0),
        "samples": seconds.len(),
    })
}

/// A figure rounded to three decimals, as the reports print it.
pub(crate) fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The process's peak resident memory in MiB so far (what `getrusage` reports as max RSS), read
/// from `/proc/self/status`; `None` where that file does not exist.
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round(kib / 1024.0))
}

/// The process's resident memory in MiB now, from `/proc/self/status`.
pub(crate) fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round(kib / 1024.0))
}
