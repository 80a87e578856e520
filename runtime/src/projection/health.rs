//! Per-projection health: status, position and lag, kept in memory so a health check answers
//! without touching a database.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a projection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionStatus {
    /// Processing normally.
    Running,
    /// At least one key is waiting to retry a failed event.
    Retrying,
    /// Its worker failed and is being restarted, or a key has waited longer than the gap wait
    /// for versions the store does not have.
    Failing,
    /// Stopped.
    Stopped,
}

/// A projection's health at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionHealth {
    /// The projection.
    pub name: String,
    /// Its status.
    pub status: ProjectionStatus,
    /// The global position of the last event it completed.
    pub last_position: u64,
    /// Events it completed since it started.
    pub processed: u64,
    /// Events committed to the store after its low-water mark (the lowest event it has not
    /// completed), so a hole below completed events counts (approximate).
    pub lag_events: u64,
    /// Age of the oldest event it has received but not completed (the low-water mark), in seconds.
    pub lag_seconds: f64,
    /// Keys waiting to retry.
    pub retrying_keys: usize,
    /// Events in its dead-letter queue.
    pub dead_letters: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When this was last updated.
    pub updated_at: DateTime<Utc>,
}

impl ProjectionHealth {
    pub(crate) fn starting(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: ProjectionStatus::Running,
            last_position: 0,
            processed: 0,
            lag_events: 0,
            lag_seconds: 0.0,
            retrying_keys: 0,
            dead_letters: 0,
            last_error: None,
            updated_at: Utc::now(),
        }
    }

    /// Records how many keys wait to retry and what a key stuck on missing versions waits
    /// for: a running projection with a stuck key is `Failing` (the reason in `last_error`),
    /// else with any key retrying `Retrying`.
    pub(crate) fn set_activity(&mut self, retrying: usize, stalled: Option<String>) {
        self.retrying_keys = retrying;
        self.status = if let Some(reason) = stalled {
            self.last_error = Some(reason);
            ProjectionStatus::Failing
        } else if retrying > 0 {
            ProjectionStatus::Retrying
        } else {
            ProjectionStatus::Running
        };
    }

    /// Whether the projection is serving (not failing or stopped).
    pub fn is_healthy(&self) -> bool {
        matches!(
            self.status,
            ProjectionStatus::Running | ProjectionStatus::Retrying
        )
    }
}

/// The health of every projection of a process.
#[derive(Debug, Clone, Default)]
pub struct HealthRegistry {
    cells: Arc<RwLock<BTreeMap<String, Arc<RwLock<ProjectionHealth>>>>>,
}

impl HealthRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn register(&self, name: &str) -> Arc<RwLock<ProjectionHealth>> {
        let cell = Arc::new(RwLock::new(ProjectionHealth::starting(name)));
        self.cells
            .write()
            .expect("health registry lock poisoned")
            .insert(name.to_owned(), Arc::clone(&cell));
        cell
    }

    /// The health of every projection, by name.
    pub fn all(&self) -> Vec<ProjectionHealth> {
        self.cells
            .read()
            .expect("health registry lock poisoned")
            .values()
            .map(|cell| cell.read().expect("health lock poisoned").clone())
            .collect()
    }

    /// The health of one projection.
    pub fn get(&self, name: &str) -> Option<ProjectionHealth> {
        self.cells
            .read()
            .expect("health registry lock poisoned")
            .get(name)
            .map(|cell| cell.read().expect("health lock poisoned").clone())
    }
}
