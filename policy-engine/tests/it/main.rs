//! The policy engine's integration tests, one binary: rule fixtures and their snapshots,
//! bookkeeping diagnostics, SARIF, the totality of every rule, and tidy checks of `rules/`.

mod fixtures;
mod sarif;
mod snapshots;
mod support;
mod tidy;
mod totality;
