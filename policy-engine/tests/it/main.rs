//! The policy engine's integration tests, one binary: rule fixtures and their snapshots,
//! bookkeeping diagnostics, SARIF, the totality of every rule, tidy checks of `rules/`, and tidy
//! checks of the workspace's Rust code (module docs, function lengths).

mod fixtures;
mod sarif;
mod snapshots;
mod support;
mod tidy;
mod tidy_code;
mod totality;
