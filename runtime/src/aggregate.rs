//! The `Aggregate` trait: a consistency boundary that decides on commands and folds events.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::DomainEvent;

/// A consistency boundary: decides on commands against its state and evolves by events.
///
/// `handle` is pure (no I/O, no clock) and `apply` is infallible, so the state after a
/// sequence of events is the same however often and wherever it is rebuilt.
/// The state is serialisable so that it can be snapshotted.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type, used as the first half of every stream id (e.g. `order`).
    const TYPE: &'static str;
    /// The schema version of the serialised state, bumped when its shape changes.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The commands this aggregate decides on.
    type Command: Send + Sync;
    /// The events it emits and folds.
    type Event: DomainEvent;
    /// Why a command is rejected.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Validates `command` against the current state and returns the events it causes.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event.
    fn apply(&mut self, event: &Self::Event);

    /// Upcasts a snapshot written with an older `SNAPSHOT_VERSION` to the current shape.
    ///
    /// Returning `None` (the default) discards the snapshot: the aggregate is rebuilt from
    /// its events, never misread.
    fn upcast_snapshot(version: u32, state: serde_json::Value) -> Option<serde_json::Value> {
        let _ = (version, state);
        None
    }
}
