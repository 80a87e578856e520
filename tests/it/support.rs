//! Helpers shared by the end-to-end tests: the one `nexus` command builder, and the skip and
//! throw-away-database helpers of `nexus-test-support`.

use std::path::PathBuf;
use std::process::Command;

pub(crate) use nexus_test_support::{TestDb, available, service_url, skip};

/// Path of the `nexus` binary built for this test run.
pub(crate) fn nexus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nexus"))
}

/// Variables of the developer's shell that would change what `nexus` does.
const SHELL_VARIABLES: &[&str] = &[
    "NEXUS_TOKEN",
    "NEXUS_URL",
    "NEXUS_AUTH",
    "NEXUS_PATH",
    "NEXUS_REGISTRY_URL",
    "NEXUS_POSTGRES_URL",
    "NEXUS_NATS_URL",
    "NEXUS_RABBITMQ_URL",
    "GITHUB_STEP_SUMMARY",
];

/// The `nexus` command, with colour off and the developer's `NEXUS_*` settings cleared; a test
/// adds what it needs (`.args`, `.env`, `.current_dir`) and runs it.
pub(crate) fn nexus() -> Command {
    let mut command = Command::new(nexus_bin());
    command.env("NO_COLOR", "1");
    for variable in SHELL_VARIABLES {
        command.env_remove(variable);
    }
    command
}
