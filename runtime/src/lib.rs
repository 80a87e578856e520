//! Nexus runtime: event store, command path, snapshots.
