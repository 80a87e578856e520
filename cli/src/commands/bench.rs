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
}

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {
        BenchCommand::Bus(args) => super::bench_bus::run(args),
        BenchCommand::Check(args) => super::bench_check::run(args),
        BenchCommand::Registry(args) => super::bench_registry::run(args),
        BenchCommand::Store(args) => super::bench_store::run(args),
    }
}
