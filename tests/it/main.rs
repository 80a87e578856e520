//! End-to-end tests: each module drives the `nexus` binary as a process.

mod check;
mod registry;
mod support;
