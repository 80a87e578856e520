//! The `nexus` command line: parses arguments, runs a command, and picks the exit code.

mod commands;
// The sample orders domain is the same code `nexus new` generates into a project's
// `crates/events` and query dashboard; `nexus up` runs it from here.
#[allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    reason = "shared with the generated projects, where these items are public"
)]
#[path = "../../templates/project/crates/events/src/lib.rs"]
mod events;
mod http;
mod otlp_request;
mod output;
#[allow(
    dead_code,
    unreachable_pub,
    reason = "shared with the generated projects, where these items are public"
)]
#[path = "../../templates/project/services/query-dashboard/src/projection.rs"]
mod projection;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::{Cli, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tracing = output::init_tracing(
        cli.verbose,
        cli.command.default_log_filter(),
        cli.log_format,
    );
    let outcome = commands::run(cli);
    // Export the spans still buffered before the process exits.
    drop(tracing);
    match outcome {
        Ok(Outcome::Clean) => ExitCode::from(0),
        Ok(Outcome::Findings) => ExitCode::from(1),
        Err(err) => {
            output::report(&err);
            ExitCode::from(2)
        }
    }
}
