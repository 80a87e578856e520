//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;

/// Path of the `nexus` binary built for this test run.
#[allow(dead_code)]
pub(crate) fn nexus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nexus"))
}
