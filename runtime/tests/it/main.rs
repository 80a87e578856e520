//! Integration tests of the runtime: the store contract on every backend, the command path,
//! snapshots, and PostgreSQL-specific guarantees.

#[cfg(feature = "http")]
mod access;
mod command;
#[cfg(feature = "http")]
mod dead_letters;
mod domain;
#[cfg(feature = "http")]
mod http;
mod integration;
#[cfg(all(feature = "http", feature = "notify-client"))]
mod notify;
mod projection;
mod read_model_audit;
mod saga;
#[cfg(all(feature = "search", feature = "http"))]
mod search;
mod snapshot;
mod store_contract;
mod support;
mod temporal;

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
