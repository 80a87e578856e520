//! What a saga type is: its start event, its correlation key, and its steps in order, each a
//! command to an aggregate of the same service with a compensation, a retry policy and a timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::RecordedEvent;

/// The longest name a saga or step may have.
const MAX_NAME_LEN: usize = 64;

/// A command a saga sends: to aggregate `id` of type `aggregate`, as the JSON the aggregate's
/// command type decodes from (what `POST /commands/{aggregate}/{id}` takes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCommand {
    /// The aggregate type (`inventory`).
    pub aggregate: String,
    /// The aggregate id.
    pub id: String,
    /// The command as JSON.
    pub command: Value,
}

impl StepCommand {
    /// A command to aggregate `id` of type `aggregate`.
    pub fn new(aggregate: impl Into<String>, id: impl Into<String>, command: Value) -> Self {
        Self {
            aggregate: aggregate.into(),
            id: id.into(),
            command,
        }
    }
}

/// What a step's command and compensation are built from.
#[derive(Debug, Clone, Copy)]
pub struct SagaContext<'a> {
    /// The instance id.
    pub instance: &'a str,
    /// The correlation key the instance was started with.
    pub correlation_key: &'a str,
    /// The saga's input: the payload of the event that started it.
    pub input: &'a Value,
    /// What each step before this one produced (`None` for a step that has not succeeded).
    pub outputs: &'a [Option<Value>],
}

/// Builds a step's command (or its compensation) from the saga's input; an `Err` is a
/// definitive failure of the attempt (nothing was sent).
pub type CommandFn = Arc<dyn Fn(&SagaContext<'_>) -> Result<StepCommand, String> + Send + Sync>;

/// Takes the correlation key out of an event, or `None` when the event does not belong to the saga.
pub type KeyFn = Arc<dyn Fn(&RecordedEvent) -> Option<String> + Send + Sync>;

/// How often and how fast a step (or its compensation) is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRetry {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for StepRetry {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl StepRetry {
    /// `attempts` attempts, `backoff` apart at first, doubling up to a minute.
    pub fn new(attempts: u32, backoff: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            backoff,
            max_backoff: Duration::from_secs(60).max(backoff),
        }
    }

    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What to do with a step whose outcome is unknown when the saga compensates: its command was
/// sent but no answer was recorded (the step timed out in flight, or the store's answer was lost),
/// or it was accepted and the saga was still waiting for the event that completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknown {
    /// Run its compensation too (the default: a compensation must then accept that there may be
    /// nothing to undo).
    #[default]
    Compensate,
    /// Leave it: its command is known to change nothing unless it succeeds.
    Skip,
}

/// One step of a saga: a command, and what undoes it.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: String,
    pub(crate) command: CommandFn,
    pub(crate) compensation: Option<CommandFn>,
    pub(crate) retry: StepRetry,
    pub(crate) compensation_retry: StepRetry,
    pub(crate) timeout: Option<Duration>,
    pub(crate) awaits: Option<String>,
    pub(crate) fails_on: Option<String>,
    pub(crate) on_unknown: OnUnknown,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensated", &self.compensation.is_some())
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("awaits", &self.awaits)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step named `name` sending the command `command` builds.
    pub fn new(
        name: impl Into<String>,
        command: impl Fn(&SagaContext<'_>) -> Result<StepCommand, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            command: Arc::new(command),
            compensation: None,
            retry: StepRetry::default(),
            compensation_retry: StepRetry::default(),
            timeout: None,
            awaits: None,
            fails_on: None,
            on_unknown: OnUnknown::default(),
        }
    }

    /// What undoes the step once it succeeded.
    pub fn compensate(
        mut self,
        command: impl Fn(&SagaContext<'_>) -> Result<StepCommand, String> + Send + Sync + 'static,
    ) -> Self {
        self.compensation = Some(Arc::new(command));
        self
    }

    /// How the step's command is retried (default: 3 attempts, 1 s doubling, at most 60 s).
    pub fn retry(mut self, retry: StepRetry) -> Self {
        self.retry = retry;
        self
    }

    /// How the step's compensation is retried (default as [`Step::retry`]).
    pub fn compensation_retry(mut self, retry: StepRetry) -> Self {
        self.compensation_retry = retry;
        self
    }

    /// How long the step may take from its first dispatch, retries included, before the saga
    /// times out and compensates.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The step is done only when an event of type `event_type` correlated to the instance
    /// arrives (not when its command is accepted).
    pub fn awaits(mut self, event_type: impl Into<String>) -> Self {
        self.awaits = Some(event_type.into());
        self
    }

    /// An event of type `event_type` correlated to the instance, while the step waits, fails it
    /// definitively (no retry).
    pub fn fails_on(mut self, event_type: impl Into<String>) -> Self {
        self.fails_on = Some(event_type.into());
        self
    }

    /// What compensation does with this step when its outcome is unknown.
    pub fn on_unknown(mut self, on_unknown: OnUnknown) -> Self {
        self.on_unknown = on_unknown;
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// A name is empty, too long, or not lowercase letters, digits and `-`.
    #[error("{what} `{name}` must be 1 to {MAX_NAME_LEN} lowercase letters, digits or `-`")]
    InvalidName {
        /// What the name is of.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The saga has no start event.
    #[error("saga `{saga}` has no start event")]
    NoStart {
        /// The saga.
        saga: String,
    },
    /// The saga has no steps.
    #[error("saga `{saga}` has no steps")]
    NoSteps {
        /// The saga.
        saga: String,
    },
    /// Two steps share a name.
    #[error("saga `{saga}` has two steps named `{step}`")]
    DuplicateStep {
        /// The saga.
        saga: String,
        /// The step.
        step: String,
    },
    /// Version 0 is not a version.
    #[error("saga `{saga}` needs a version of at least 1")]
    InvalidVersion {
        /// The saga.
        saga: String,
    },
}

/// A versioned saga type. Running instances finish on the version they started with.
#[derive(Clone)]
pub struct SagaDefinition {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) start_aggregate: String,
    pub(crate) start_event: String,
    pub(crate) key: KeyFn,
    pub(crate) steps: Vec<Step>,
    pub(crate) timeout: Option<Duration>,
}

impl fmt::Debug for SagaDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("start", &(&self.start_aggregate, &self.start_event))
            .field("steps", &self.steps)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SagaDefinition {
    /// A definition of saga `name` at `version` (from 1), to be completed by the builder.
    pub fn builder(name: impl Into<String>, version: u32) -> SagaBuilder {
        SagaBuilder {
            name: name.into(),
            version,
            start: None,
            key: Arc::new(|event: &RecordedEvent| Some(event.stream.aggregate_id().to_owned())),
            steps: Vec::new(),
            timeout: None,
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Whether `event` starts an instance of this saga.
    pub fn starts_on(&self, event: &RecordedEvent) -> bool {
        event.event_type == self.start_event
            && event.stream.aggregate_type() == self.start_aggregate
    }

    /// The event types the steps wait for or fail on.
    pub(crate) fn awaited(&self, event_type: &str) -> bool {
        self.steps.iter().any(|step| {
            step.awaits.as_deref() == Some(event_type)
                || step.fails_on.as_deref() == Some(event_type)
        })
    }
}

/// Builds a [`SagaDefinition`].
pub struct SagaBuilder {
    name: String,
    version: u32,
    start: Option<(String, String)>,
    key: KeyFn,
    steps: Vec<Step>,
    timeout: Option<Duration>,
}

impl fmt::Debug for SagaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl SagaBuilder {
    /// An instance starts on each event of type `event_type` in a stream of aggregate type
    /// `aggregate`, once per correlation key.
    pub fn starts_on(
        mut self,
        aggregate: impl Into<String>,
        event_type: impl Into<String>,
    ) -> Self {
        self.start = Some((aggregate.into(), event_type.into()));
        self
    }

    /// How the correlation key is taken from the start event and from the events steps await
    /// (default: the event's aggregate id).
    pub fn correlate(
        mut self,
        key: impl Fn(&RecordedEvent) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// How long the whole saga may run before it times out and compensates.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The definition, checked.
    pub fn build(self) -> Result<SagaDefinition, DefinitionError> {
        valid_name("saga", &self.name)?;
        if self.version == 0 {
            return Err(DefinitionError::InvalidVersion { saga: self.name });
        }
        let Some((start_aggregate, start_event)) = self.start else {
            return Err(DefinitionError::NoStart { saga: self.name });
        };
        if self.steps.is_empty() {
            return Err(DefinitionError::NoSteps { saga: self.name });
        }
        for (index, step) in self.steps.iter().enumerate() {
            valid_name("step", &step.name)?;
            if self.steps[..index].iter().any(|s| s.name == step.name) {
                return Err(DefinitionError::DuplicateStep {
                    saga: self.name,
                    step: step.name.clone(),
                });
            }
        }
        Ok(SagaDefinition {
            name: self.name,
            version: self.version,
            start_aggregate,
            start_event,
            key: self.key,
            steps: self.steps,
            timeout: self.timeout,
        })
    }
}

/// Whether `name` can name a saga or step (it goes into stream ids, URLs and metric labels).
pub(crate) fn valid_name(what: &'static str, name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DefinitionError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: &SagaContext<'_>) -> Result<StepCommand, String> {
        Ok(StepCommand::new("a", "1", Value::Null))
    }

    #[test]
    fn a_definition_needs_a_start_steps_and_valid_unique_names() {
        let base = || SagaDefinition::builder("ship", 1).starts_on("order", "OrderPlaced");
        assert!(base().step(Step::new("one", noop)).build().is_ok());
        assert!(matches!(
            base().build(),
            Err(DefinitionError::NoSteps { .. })
        ));
        assert!(matches!(
            SagaDefinition::builder("ship", 1)
                .step(Step::new("one", noop))
                .build(),
            Err(DefinitionError::NoStart { .. })
        ));
        assert!(matches!(
            base().step(Step::new("One", noop)).build(),
            Err(DefinitionError::InvalidName { .. })
        ));
        assert!(matches!(
            base()
                .step(Step::new("one", noop))
                .step(Step::new("one", noop))
                .build(),
            Err(DefinitionError::DuplicateStep { .. })
        ));
        assert!(matches!(
            SagaDefinition::builder("ship", 0)
                .starts_on("order", "OrderPlaced")
                .step(Step::new("one", noop))
                .build(),
            Err(DefinitionError::InvalidVersion { .. })
        ));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(valid_name("saga", &long).is_err());
        assert!(valid_name("saga", &long[1..]).is_ok());
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let retry = StepRetry::new(10, Duration::from_millis(100));
        assert_eq!(retry.delay(1), Duration::from_millis(100));
        assert_eq!(retry.delay(2), Duration::from_millis(200));
        assert_eq!(retry.delay(40), Duration::from_secs(60));
        assert_eq!(StepRetry::new(0, Duration::ZERO).attempts, 1);
    }
}
