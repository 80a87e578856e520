//! `nexus bench …`: benchmark commands that print JSON.

use clap::Subcommand;

use super::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Event bus: offered load, commit-to-projection latency and lag, for 1..K projections.
    Bus(super::bench_bus::BusArgs),
    /// Generate a workspace of N lines of Rust and time `nexus check` on it.
    Check(super::bench_check::BenchCheckArgs),
    /// Time registry reads and a compatibility check against 100 versions on loopback.
    Registry(super::bench_registry::BenchRegistryArgs),
    /// Event store: append throughput and latency, rehydration, reads, change-data-capture latency.
    Store(super::bench_store::StoreArgs),
    /// Temporal reads: a 10k-event time range, state as of a version, paging by continuation.
    Temporal(super::bench_temporal::TemporalArgs),
}

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {
        BenchCommand::Bus(args) => super::bench_bus::run(args),
        BenchCommand::Check(args) => super::bench_check::run(args),
        BenchCommand::Registry(args) => super::bench_registry::run(args),
        BenchCommand::Store(args) => super::bench_store::run(args),
        BenchCommand::Temporal(args) => super::bench_temporal::run(args),
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
