//! Nexus runtime: the event store, the command path and snapshots for event-sourced services.
//!
//! The core knows nothing about HTTP, PostgreSQL or NATS: those are adapters behind cargo
//! features. With default features the store is an embedded SQLite file.

// Lets `#[derive(DomainEvent)]`, whose output names `::nexus_runtime`, work inside the crate.
extern crate self as nexus_runtime;

pub mod aggregate;
pub mod audit;
pub mod bus;
pub mod checkpoint;
pub mod command;
pub mod event;
#[cfg(feature = "http")]
pub mod http;
pub mod integration;
pub mod notify;
#[cfg(feature = "postgres")]
mod pg;
pub mod projection;
pub mod redact;
pub mod saga;
pub mod search;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod temporal;
pub mod testing;
pub mod upcast;
mod wal;

pub use aggregate::Aggregate;
pub use command::{
    CommandError, CommandHandler, CommandOutcome, ExecuteOptions, Loaded, Repository, RetryPolicy,
};
pub use event::{
    DomainEvent, EventEnvelope, EventId, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId,
};
/// `#[derive(DomainEvent)]` with `#[event(type = "…", version = N)]` (see `nexus_macros`).
pub use nexus_macros::DomainEvent;
pub use snapshot::{Snapshot, SnapshotManager, SnapshotPolicy, SnapshotStore};
pub use store::{
    AppendError, AppendResult, EventStore, ExpectedVersion, PayloadRef, ReadError, StoredPayload,
};
