//! `nexus completions SHELL`: prints the shell completion script for `nexus` on stdout.

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{Cli, Outcome};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to print the script for.
    #[arg(value_enum)]
    shell: Shell,
}

pub(crate) fn run(args: CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "nexus", &mut script);
    let script = String::from_utf8(script).context("the completion script is not UTF-8")?;
    output::line(script.trim_end_matches('\n'))?;
    Ok(Outcome::Clean)
}
