//! Schema registry: a pure compatibility checker, storage backends and a REST server.
//!
//! - [`compat`] decides whether a proposed schema may follow the earlier versions of its subject.
//! - [`storage`] keeps subjects, versions, schemas and configuration in SQLite or PostgreSQL.
//! - [`server`] speaks the Confluent REST dialect over HTTP.
//! - [`client`] is a small HTTP client for the same dialect, used by the `nexus` command line.

pub mod client;
pub mod compat;
pub mod document;
pub mod server;
pub mod storage;
