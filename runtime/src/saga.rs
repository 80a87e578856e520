//! Sagas: event-sourced process managers that coordinate aggregates of one service through the
//! command path, with retries, compensation in reverse order, durable timeouts and status.
//!
//! A saga type ([`SagaDefinition`]) starts on an event, correlates later events to an instance by
//! a key taken from them, and runs its steps in order, each a command to an aggregate of the same
//! service ([`SagaCommands`]) with its compensation, retry policy and timeout. Each instance is a
//! stream of [`SagaEvent`]s in the event store (aggregate type `saga`), so its state is rebuilt
//! from its events and its audit history is complete. [`SagaRunner`] runs each saga type as a
//! supervised projection fed from the bus (starts, awaited events, the status documents and the
//! index of what is due when) plus a driver that advances instances.
//!
//! What holds:
//! - a step's dispatch (attempt number and idempotency key, the key derived from instance, step
//!   and direction) is recorded before its command is sent; after a crash the command is sent
//!   again with the same key, and the command path answers with the stored outcome instead of
//!   executing it twice. Every attempt of a step uses the same key: a failed attempt stored
//!   nothing, so the next one decides afresh, while a concurrent runner's successful send of the
//!   same step is found instead of repeated;
//! - every transition is appended at the stream's expected version, so two runners never both
//!   advance one instance past the same point;
//! - a deadline is a field of the event that sets it (committed with it), and the index the
//!   scheduler reads is rebuilt from those events by the projection, so it survives restarts;
//!   timers are never cancelled: when one fires the state decides whether it still matters;
//! - when a step runs out of attempts or a deadline passes, completed steps are compensated in
//!   reverse order, each compensation with its own retries; one that cannot succeed leaves the
//!   instance `stuck` until an operator retries or aborts it ([`SagaReader::retry`]).

mod commands;
mod definition;
mod runner;
mod state;

use std::sync::Arc;

use serde_json::Value;

use crate::event::RecordedEvent;
use crate::projection::{ReadModelError, ReadModelStore};
use crate::store::{AppendError, EventStore, ExpectedVersion, ReadError};

pub use commands::{SagaCommands, StepFailure};
pub use definition::{
    CommandFn, DefinitionError, KeyFn, OnUnknown, SagaBuilder, SagaContext, SagaDefinition, Step,
    StepCommand, StepRetry,
};
pub use runner::{SagaHandle, SagaOptions, SagaRunner, instance_id, instance_stream};
pub use state::{
    CompensationState, CompensationStatus, SAGA_STREAM_TYPE, SagaEvent, SagaState, SagaStatus,
    StepState, StepStatus,
};

/// Most instances one list returns.
pub const MAX_PAGE: usize = 500;
/// Most events of an instance's history one read returns.
pub const MAX_HISTORY: usize = 1_000;

/// Why a saga operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// `spawn` was given no definition.
    #[error("a saga runner needs at least one definition")]
    NoDefinition,
    /// `spawn` was given definitions of different sagas.
    #[error("definitions of saga `{expected}` and `{found}` given together")]
    MixedDefinitions {
        /// The first definition's saga.
        expected: String,
        /// Another one's.
        found: String,
    },
    /// An instance runs on a definition version this process lacks.
    #[error(
        "instance `{instance}` of saga `{saga}` needs definition version {version}, which is not registered"
    )]
    MissingDefinition {
        /// The saga.
        saga: String,
        /// The version.
        version: u32,
        /// The instance.
        instance: String,
    },
    /// No such instance.
    #[error("saga `{saga}` has no instance `{instance}`")]
    NotFound {
        /// The saga.
        saga: String,
        /// The instance.
        instance: String,
    },
    /// The operation needs another status.
    #[error("instance `{instance}` is {status}, but this needs a stuck saga")]
    NotStuck {
        /// The instance.
        instance: String,
        /// Its status.
        status: &'static str,
    },
    /// Another writer recorded a transition first.
    #[error("instance `{instance}` changed meanwhile; try again")]
    Conflict {
        /// The instance.
        instance: String,
    },
    /// Reading a saga stream failed.
    #[error("failed to read saga stream `{stream}`")]
    Read {
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: ReadError,
    },
    /// Appending to a saga stream failed.
    #[error("failed to append to saga stream `{stream}`")]
    Append {
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: AppendError,
    },
    /// A stored saga event does not decode.
    #[error("event {version} of saga stream `{stream}` does not decode")]
    Decode {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A saga event could not be encoded.
    #[error("failed to encode a saga event: {0}")]
    Encode(String),
    /// The status read model failed.
    #[error("the saga status read model failed")]
    ReadModel(#[source] ReadModelError),
}

impl SagaError {
    /// Whether the store or read model could not be reached (worth trying again).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Read {
                source: ReadError::Unavailable(_),
                ..
            } | Self::Append {
                source: AppendError::Unavailable(_),
                ..
            } | Self::ReadModel(ReadModelError::Unavailable { .. })
        )
    }
}

/// Reads and operates the instances of one saga type: status from its read model (one indexed
/// read, no runner needed), history from its stream, and the operator's retry and abort.
#[derive(Clone)]
pub struct SagaReader {
    saga: String,
    store: Arc<dyn EventStore>,
    read_model: ReadModelStore,
}

impl std::fmt::Debug for SagaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaReader")
            .field("saga", &self.saga)
            .finish_non_exhaustive()
    }
}

impl SagaReader {
    /// The instances of `saga`, whose status documents are in `read_model` (the read model
    /// `SagaRunner::projection_name(saga)`).
    pub fn new(
        saga: impl Into<String>,
        store: Arc<dyn EventStore>,
        read_model: ReadModelStore,
    ) -> Self {
        Self {
            saga: saga.into(),
            store,
            read_model,
        }
    }

    /// The saga's name.
    pub fn saga(&self) -> &str {
        &self.saga
    }

    /// The status document of instance `id` (the folded state, plus `next_due`, `stream` and
    /// `current_step_name`), if it exists.
    pub async fn status(&self, id: &str) -> Result<Option<Value>, SagaError> {
        self.read_model
            .get(runner::SAGAS, id)
            .await
            .map_err(SagaError::ReadModel)
    }

    /// Status documents of instances with `status` (any when `None`), ordered by id, at most
    /// `limit` (capped at [`MAX_PAGE`]) after skipping `offset`.
    pub async fn list(
        &self,
        status: Option<SagaStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Value>, SagaError> {
        let filters: Vec<(String, Value)> = status
            .map(|s| vec![("status".to_owned(), Value::from(s.as_str()))])
            .unwrap_or_default();
        let page = self
            .read_model
            .list(runner::SAGAS, &filters, limit.min(MAX_PAGE), offset)
            .await
            .map_err(SagaError::ReadModel)?;
        Ok(page.into_iter().map(|(_, doc)| doc).collect())
    }

    /// What `GET /sagas/{saga}/{id}` shows of instance `id`: its status document with its
    /// `history` (the first [`MAX_HISTORY`] events) and `history_truncated`.
    ///
    /// Two indexed reads of the read model, where the history is projected beside the status;
    /// only an instance projected before histories were has none there, and then its stream is
    /// read.
    pub async fn show(&self, id: &str) -> Result<Option<Value>, SagaError> {
        let Some(mut doc) = self.status(id).await? else {
            return Ok(None);
        };
        let projected = self
            .read_model
            .get(runner::HISTORY, id)
            .await
            .map_err(SagaError::ReadModel)?
            .and_then(|mut h| match h.get_mut("events").map(Value::take) {
                Some(Value::Array(events)) => Some(events),
                _ => None,
            });
        let history = match projected {
            Some(events) => events,
            None => self
                .history(id, MAX_HISTORY)
                .await?
                .into_iter()
                .map(|e| {
                    serde_json::json!({
                        "version": e.version,
                        "type": e.event_type,
                        "recorded_at": e.recorded_at,
                        "data": serde_json::from_str::<Value>(e.payload.get())
                            .unwrap_or(Value::Null),
                    })
                })
                .collect(),
        };
        if let Value::Object(map) = &mut doc {
            map.insert(
                "history_truncated".into(),
                Value::Bool(history.len() >= MAX_HISTORY),
            );
            map.insert(runner::HISTORY.into(), Value::Array(history));
        }
        Ok(Some(doc))
    }

    /// The first `limit` (capped at [`MAX_HISTORY`]) events of instance `id`'s stream.
    pub async fn history(&self, id: &str, limit: usize) -> Result<Vec<RecordedEvent>, SagaError> {
        let stream = instance_stream(&self.saga, id);
        let to = limit.clamp(1, MAX_HISTORY) as u64;
        match self.store.read_stream(&stream, 1, Some(to)).await {
            Ok(events) => Ok(events),
            Err(ReadError::StreamNotFound(_)) => Ok(Vec::new()),
            Err(source) => Err(SagaError::Read {
                stream: stream.to_string(),
                source,
            }),
        }
    }

    /// The state of instance `id` folded from its stream (what the runner acts on).
    pub async fn state(&self, id: &str) -> Result<SagaState, SagaError> {
        let stream = instance_stream(&self.saga, id);
        let events = match self.store.read_stream(&stream, 1, None).await {
            Ok(events) => events,
            Err(ReadError::StreamNotFound(_)) => Vec::new(),
            Err(source) => {
                return Err(SagaError::Read {
                    stream: stream.to_string(),
                    source,
                });
            }
        };
        runner::fold(id, &stream, &events)?.ok_or_else(|| SagaError::NotFound {
            saga: self.saga.clone(),
            instance: id.to_owned(),
        })
    }

    /// Asks a stuck instance to try its failed compensation again, with a fresh retry budget.
    pub async fn retry(&self, id: &str, actor: Option<String>) -> Result<SagaState, SagaError> {
        self.operate(id, SagaEvent::SagaRetried { actor }).await
    }

    /// Gives up on a stuck instance: it ends `aborted`, its remaining compensations undone by no one.
    pub async fn abort(
        &self,
        id: &str,
        actor: Option<String>,
        reason: String,
    ) -> Result<SagaState, SagaError> {
        self.operate(id, SagaEvent::SagaAborted { actor, reason })
            .await
    }

    async fn operate(&self, id: &str, event: SagaEvent) -> Result<SagaState, SagaError> {
        let mut state = self.state(id).await?;
        if state.status != SagaStatus::Stuck {
            return Err(SagaError::NotStuck {
                instance: id.to_owned(),
                status: state.status.as_str(),
            });
        }
        let stream = instance_stream(&self.saga, id);
        let metadata = crate::event::Metadata {
            correlation_id: Some(format!("saga:{id}")),
            actor: match &event {
                SagaEvent::SagaRetried { actor } | SagaEvent::SagaAborted { actor, .. } => {
                    actor.clone()
                }
                _ => None,
            },
            ..crate::event::Metadata::default()
        };
        let new = crate::event::NewEvent::from_domain(&event, metadata)
            .map_err(|e| SagaError::Encode(e.to_string()))?;
        match self
            .store
            .append(&stream, ExpectedVersion::Exact(state.version), vec![new])
            .await
        {
            Ok(result) => {
                state.apply(&event, result.version, chrono::Utc::now());
                Ok(state)
            }
            Err(AppendError::Conflict { .. }) => Err(SagaError::Conflict {
                instance: id.to_owned(),
            }),
            Err(source) => Err(SagaError::Append {
                stream: stream.to_string(),
                source,
            }),
        }
    }
}
