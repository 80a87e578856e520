//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;

/// Path of the `nexus` binary built for this test run.
#[allow(dead_code)]
pub(crate) fn nexus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nexus"))
}

/// The URL in `var`, or `None` (skipped) when unset; `NEXUS_REQUIRE_SERVICES=1` fails instead.
#[allow(dead_code)]
pub(crate) fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("NEXUS_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but NEXUS_REQUIRE_SERVICES=1"
            );
            #[expect(clippy::print_stderr, reason = "say why the test did nothing")]
            {
                eprintln!("skipped: {var} not set");
            }
            None
        }
    }
}
