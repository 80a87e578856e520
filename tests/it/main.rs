//! End-to-end tests: each module drives the `nexus` binary as a process.

mod check;
mod dlq;
mod doctor;
mod new;
mod registry;
mod support;
mod up;
