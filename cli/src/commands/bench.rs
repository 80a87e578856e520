//! `nexus bench …`: benchmark commands that print JSON.

use clap::Subcommand;

use super::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {}

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {}
}
