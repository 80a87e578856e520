//! The aggregates a saga may command: the service's own command handlers, behind their JSON
//! commands, so a saga goes through the same command path (and its idempotency keys) as
//! `POST /commands/{aggregate}/{id}`, never through another service.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::definition::StepCommand;
use crate::aggregate::Aggregate;
use crate::command::{CommandError, CommandHandler, ExecuteOptions, LoadError};
use crate::event::Metadata;
use crate::store::{AppendError, ReadError};

/// Why a saga's command was not applied, and whether it may have been after all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepFailure {
    /// What went wrong.
    pub message: String,
    /// Whether the command may have been applied (the answer was lost): the next attempt then
    /// keeps the idempotency key.
    pub outcome_unknown: bool,
}

impl StepFailure {
    /// A failure known to have changed nothing.
    pub fn definitive(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            outcome_unknown: false,
        }
    }

    /// A failure after which the command may or may not have been applied.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            outcome_unknown: true,
        }
    }
}

#[async_trait]
trait Dispatch: Send + Sync {
    async fn dispatch(
        &self,
        id: &str,
        command: &Value,
        metadata: Metadata,
        options: &ExecuteOptions,
    ) -> Result<Value, StepFailure>;
}

struct Typed<A: Aggregate> {
    handler: CommandHandler<A>,
}

#[async_trait]
impl<A> Dispatch for Typed<A>
where
    A: Aggregate,
    A::Command: DeserializeOwned,
{
    async fn dispatch(
        &self,
        id: &str,
        command: &Value,
        metadata: Metadata,
        options: &ExecuteOptions,
    ) -> Result<Value, StepFailure> {
        let typed: A::Command = serde_json::from_value(command.clone()).map_err(|err| {
            StepFailure::definitive(format!("not a command of `{}`: {err}", A::TYPE))
        })?;
        match self
            .handler
            .execute_with(id, &typed, metadata, options)
            .await
        {
            Ok(done) => Ok(json!({
                "stream": done.stream.to_string(),
                "version": done.version,
                "events": done.event_ids.len(),
                "replayed": done.replayed,
            })),
            Err(err) => Err(failure(&err)),
        }
    }
}

/// Sorts a command error into a definitive failure or an unknown outcome.
fn failure<E: std::error::Error + 'static>(err: &CommandError<E>) -> StepFailure {
    let message = crate::redact::error_chain(err);
    match err {
        CommandError::Rejected(_)
        | CommandError::Conflict { .. }
        | CommandError::Encode(_)
        | CommandError::IdempotencyKeyReused { .. }
        | CommandError::Load(LoadError::Decode { .. } | LoadError::Upcast { .. }) => {
            StepFailure::definitive(message)
        }
        CommandError::Append(
            AppendError::InvalidEvent { .. }
            | AppendError::InvalidStream { .. }
            | AppendError::BatchSize { .. }
            | AppendError::DuplicateEventId { .. },
        ) => StepFailure::definitive(message),
        CommandError::Load(LoadError::Read {
            source: ReadError::StreamNotFound(_),
            ..
        }) => StepFailure::definitive(message),
        _ => StepFailure::unknown(message),
    }
}

/// The command handlers of the service's aggregates, by aggregate type.
#[derive(Clone, Default)]
pub struct SagaCommands {
    handlers: BTreeMap<String, Arc<dyn Dispatch>>,
}

impl std::fmt::Debug for SagaCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaCommands")
            .field("aggregates", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SagaCommands {
    /// No aggregates yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sagas may command aggregate `A` through `handler`.
    pub fn handler<A>(mut self, handler: CommandHandler<A>) -> Self
    where
        A: Aggregate,
        A::Command: DeserializeOwned,
    {
        self.handlers
            .insert(A::TYPE.to_owned(), Arc::new(Typed { handler }));
        self
    }

    /// Whether sagas may command aggregate type `aggregate`.
    pub fn knows(&self, aggregate: &str) -> bool {
        self.handlers.contains_key(aggregate)
    }

    /// Sends `command` with idempotency key `key`; what the command path answered, as JSON.
    pub async fn send(
        &self,
        command: &StepCommand,
        key: &str,
        metadata: Metadata,
    ) -> Result<Value, StepFailure> {
        let Some(handler) = self.handlers.get(&command.aggregate) else {
            return Err(StepFailure::definitive(format!(
                "aggregate `{}` is not one this service's sagas may command",
                command.aggregate
            )));
        };
        let options = ExecuteOptions {
            expected: None,
            idempotency_key: Some(key.to_owned()),
            fingerprint: Some(fingerprint(&command.command)),
        };
        handler
            .dispatch(&command.id, &command.command, metadata, &options)
            .await
    }
}

/// What identifies a command: a UUIDv5 of its canonical JSON (object keys sorted, whatever
/// order a backend stored them in), so a re-sent attempt is the same request.
fn fingerprint(command: &Value) -> String {
    let mut text = String::new();
    canonical(command, &mut text);
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).to_string()
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order_but_not_content() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": [1, {"q": 1, "p": 2}]}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": [1, {"p": 2, "q": 1}], "y": 2}, "b": 1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"b": 2})));
    }
}
