//! The `nexus` command line: parses arguments, runs a command, and picks the exit code.

mod commands;
mod output;
mod sample;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::{Cli, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_tracing(cli.verbose);
    match commands::run(cli) {
        Ok(Outcome::Clean) => ExitCode::from(0),
        Ok(Outcome::Findings) => ExitCode::from(1),
        Err(err) => {
            output::report(&err);
            ExitCode::from(2)
        }
    }
}
