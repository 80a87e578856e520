//! `nexus up`: runs the reference system on the embedded default.

use clap::Args;

use super::Outcome;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {}

pub(crate) fn run(_args: UpArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("the reference system is not wired yet")
}
