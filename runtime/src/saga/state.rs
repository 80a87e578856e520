//! A saga instance's events, its state folded from them, and the decision of what it does next.
//!
//! The state is only ever rebuilt from the instance's stream, so the audit history is complete
//! by construction and a restart resumes exactly where the saga was.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::{OnUnknown, SagaDefinition, StepCommand};
use crate::event::DomainEvent;

/// The aggregate type of every saga instance's stream.
pub const SAGA_STREAM_TYPE: &str = "saga";

/// One transition of a saga instance, as stored in its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum SagaEvent {
    /// The instance started on definition `saga`@`definition_version`.
    SagaStarted {
        /// The saga's name.
        saga: String,
        /// The definition version the instance runs on until it ends.
        definition_version: u32,
        /// The correlation key (unique per saga).
        correlation_key: String,
        /// The payload of the start event.
        input: Value,
        /// The names of the steps, in order.
        steps: Vec<String>,
        /// When the whole saga times out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<DateTime<Utc>>,
    },
    /// A step's command is about to be sent (recorded before sending).
    SagaStepDispatched {
        /// The step's index.
        step: usize,
        /// Its attempt (from 1).
        attempt: u32,
        /// The idempotency key the command carries.
        key: String,
        /// The command.
        command: StepCommand,
        /// When the step times out (set by its first attempt).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<DateTime<Utc>>,
    },
    /// The step's command was accepted; the step waits for the event that completes it.
    SagaStepAccepted {
        /// The step's index.
        step: usize,
        /// The attempt.
        attempt: u32,
    },
    /// The step is done.
    SagaStepSucceeded {
        /// The step's index.
        step: usize,
        /// The attempt.
        attempt: u32,
        /// What it produced (the command's outcome, or the awaited event's payload).
        output: Value,
    },
    /// An attempt failed.
    SagaStepFailed {
        /// The step's index.
        step: usize,
        /// The attempt.
        attempt: u32,
        /// Why.
        error: String,
        /// Whether the command may have been applied (no answer was recorded).
        #[serde(default)]
        outcome_unknown: bool,
        /// When the next attempt is due; `None` when there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<DateTime<Utc>>,
    },
    /// A deadline passed before the saga got past it.
    SagaTimedOut {
        /// The step that was running, `None` for the saga's own deadline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<usize>,
        /// The deadline.
        deadline: DateTime<Utc>,
    },
    /// The saga undoes what it did, in reverse order.
    SagaCompensationStarted {
        /// Why.
        reason: String,
    },
    /// A step's compensation is about to be sent (recorded before sending).
    SagaCompensationDispatched {
        /// The step's index.
        step: usize,
        /// The compensation's attempt (from 1).
        attempt: u32,
        /// The idempotency key the command carries.
        key: String,
        /// The command.
        command: StepCommand,
    },
    /// A step was undone.
    SagaStepCompensated {
        /// The step's index.
        step: usize,
        /// The compensation's attempt.
        attempt: u32,
    },
    /// A compensation attempt failed.
    SagaCompensationFailed {
        /// The step's index.
        step: usize,
        /// The attempt.
        attempt: u32,
        /// Why.
        error: String,
        /// Whether the command may have been applied.
        #[serde(default)]
        outcome_unknown: bool,
        /// When the next attempt is due; `None` when there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<DateTime<Utc>>,
    },
    /// A compensation ran out of attempts: the saga waits for an operator.
    SagaStuck {
        /// The step whose compensation failed.
        step: usize,
        /// Why.
        reason: String,
    },
    /// An operator asked a stuck saga to try its compensation again.
    SagaRetried {
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// An operator gave up on a stuck saga.
    SagaAborted {
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// Why.
        reason: String,
    },
    /// Every step succeeded.
    SagaCompleted {},
    /// Every completed step was compensated.
    SagaFailed {
        /// Why the saga compensated.
        reason: String,
    },
}

impl DomainEvent for SagaEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::SagaStarted { .. } => "SagaStarted",
            Self::SagaStepDispatched { .. } => "SagaStepDispatched",
            Self::SagaStepAccepted { .. } => "SagaStepAccepted",
            Self::SagaStepSucceeded { .. } => "SagaStepSucceeded",
            Self::SagaStepFailed { .. } => "SagaStepFailed",
            Self::SagaTimedOut { .. } => "SagaTimedOut",
            Self::SagaCompensationStarted { .. } => "SagaCompensationStarted",
            Self::SagaCompensationDispatched { .. } => "SagaCompensationDispatched",
            Self::SagaStepCompensated { .. } => "SagaStepCompensated",
            Self::SagaCompensationFailed { .. } => "SagaCompensationFailed",
            Self::SagaStuck { .. } => "SagaStuck",
            Self::SagaRetried { .. } => "SagaRetried",
            Self::SagaAborted { .. } => "SagaAborted",
            Self::SagaCompleted { .. } => "SagaCompleted",
            Self::SagaFailed { .. } => "SagaFailed",
        }
    }
}

/// Where a saga instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Its steps are running.
    Running,
    /// It undoes its completed steps.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated,
    /// A deadline passed and every completed step was compensated.
    TimedOut,
    /// A compensation ran out of attempts; an operator must retry or abort it.
    Stuck,
    /// An operator gave up on it.
    Aborted,
}

impl SagaStatus {
    /// Every status, in the order of the API.
    pub const ALL: [Self; 7] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::TimedOut,
        Self::Stuck,
        Self::Aborted,
    ];

    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::TimedOut => "timed_out",
            Self::Stuck => "stuck",
            Self::Aborted => "aborted",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the runner still has work to do on it by itself.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Running | Self::Compensating)
    }

    /// Whether it has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Compensated | Self::TimedOut | Self::Aborted
        )
    }
}

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Its command was dispatched and no answer is recorded yet.
    InFlight,
    /// Its command was accepted; it waits for the event that completes it.
    Waiting,
    /// An attempt failed; another is due.
    Retrying,
    /// It succeeded.
    Succeeded,
    /// Its last attempt failed.
    Failed,
}

/// Where one step's compensation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    /// Not started.
    Pending,
    /// Dispatched, no answer recorded yet.
    InFlight,
    /// An attempt failed; another is due.
    Retrying,
    /// Done.
    Compensated,
    /// Out of attempts.
    Failed,
}

/// A step's compensation as far as the events tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationState {
    /// Where it is.
    pub status: CompensationStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// Attempts that count against the retry policy (reset by an operator's retry).
    pub budget_used: u32,
    /// The idempotency key of the attempt in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The command in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<StepCommand>,
    /// When the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Whether the last failed attempt may have been applied.
    #[serde(default)]
    pub outcome_unknown: bool,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was first dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// One step as far as the events tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// The idempotency key of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The command of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<StepCommand>,
    /// When it times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// When the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Whether the last failed attempt may have been applied.
    #[serde(default)]
    pub outcome_unknown: bool,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What it produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// When it was first dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the last attempt was dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When it succeeded or finally failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Its compensation, once the saga compensates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationState>,
}

impl StepState {
    fn new(name: String) -> Self {
        Self {
            name,
            status: StepStatus::Pending,
            attempts: 0,
            key: None,
            command: None,
            deadline: None,
            retry_at: None,
            outcome_unknown: false,
            last_error: None,
            output: None,
            started_at: None,
            dispatched_at: None,
            finished_at: None,
            compensation: None,
        }
    }

    /// Whether the step may have changed something that compensation would have to undo.
    fn outcome_unknown_now(&self) -> bool {
        match self.status {
            StepStatus::InFlight | StepStatus::Waiting => true,
            StepStatus::Failed | StepStatus::Retrying => self.outcome_unknown,
            StepStatus::Pending | StepStatus::Succeeded => false,
        }
    }
}

/// A saga instance folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    /// The instance id.
    pub id: String,
    /// The saga's name.
    pub saga: String,
    /// The definition version it runs on.
    pub definition_version: u32,
    /// Its correlation key.
    pub correlation_key: String,
    /// Its input.
    pub input: Value,
    /// Where it is.
    pub status: SagaStatus,
    /// The index of the step it is at (forward), or compensates.
    pub current_step: usize,
    /// Every step.
    pub steps: Vec<StepState>,
    /// When the whole saga times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Why it compensates, is stuck or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether a deadline passed.
    #[serde(default)]
    pub timed_out: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of its stream this state includes.
    pub version: u64,
}

/// What a saga instance does next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Nothing until something else happens (ended, stuck, or waiting without a deadline).
    Idle,
    /// Nothing until then.
    At(DateTime<Utc>),
    /// This, now.
    Act(Action),
}

/// One thing the runner does to a saga instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Record the dispatch of a step's attempt (then send it).
    Dispatch {
        step: usize,
        attempt: u32,
        key: String,
        deadline: Option<DateTime<Utc>>,
    },
    /// Send a dispatched step's command and record its outcome.
    Send {
        step: usize,
        attempt: u32,
        key: String,
        command: StepCommand,
    },
    /// Record that a deadline passed and start compensating.
    TimeOut {
        step: Option<usize>,
        deadline: DateTime<Utc>,
    },
    /// Start compensating.
    Compensate { reason: String },
    /// Record the end.
    Complete,
    /// Record the dispatch of a compensation's attempt (then send it).
    DispatchCompensation {
        step: usize,
        attempt: u32,
        key: String,
    },
    /// Send a dispatched compensation and record its outcome.
    SendCompensation {
        step: usize,
        attempt: u32,
        key: String,
        command: StepCommand,
    },
    /// Nothing to undo on a step (no compensation defined): record it as compensated.
    SkipCompensation { step: usize },
    /// Record that a compensation ran out of attempts.
    Stuck { step: usize, reason: String },
    /// Record that everything was undone.
    Fail { reason: String },
}

/// The idempotency key of a step's command: instance, step and direction, the same for every
/// attempt. An attempt that failed stored nothing, so the next one under the same key decides
/// afresh; but an attempt another runner sent at the same time may have succeeded where this
/// one failed (a conflict on a busy aggregate), and a next attempt under a new key would then
/// apply the step twice. Under the same key it gets that success back instead.
pub(crate) fn step_key(instance: &str, step: usize) -> String {
    format!("saga:{instance}:do:{step}")
}

/// The idempotency key of a step's compensation: instance, step and direction (see [`step_key`]).
pub(crate) fn compensation_key(instance: &str, step: usize) -> String {
    format!("saga:{instance}:undo:{step}")
}

impl SagaState {
    /// The state after the instance's first event, or `None` if it is not `SagaStarted`.
    pub fn start(id: &str, event: &SagaEvent, at: DateTime<Utc>) -> Option<Self> {
        let SagaEvent::SagaStarted {
            saga,
            definition_version,
            correlation_key,
            input,
            steps,
            deadline,
        } = event
        else {
            return None;
        };
        Some(Self {
            id: id.to_owned(),
            saga: saga.clone(),
            definition_version: *definition_version,
            correlation_key: correlation_key.clone(),
            input: input.clone(),
            status: SagaStatus::Running,
            current_step: 0,
            steps: steps.iter().cloned().map(StepState::new).collect(),
            deadline: *deadline,
            reason: None,
            timed_out: false,
            started_at: at,
            updated_at: at,
            version: 1,
        })
    }

    /// Folds the instance's `version`-th event, recorded `at`.
    ///
    /// Events naming a step the instance does not have are ignored (never stored by a runner).
    pub fn apply(&mut self, event: &SagaEvent, version: u64, at: DateTime<Utc>) {
        self.version = version;
        self.updated_at = at;
        match event {
            SagaEvent::SagaStarted { .. } => {}
            SagaEvent::SagaStepDispatched { .. }
            | SagaEvent::SagaStepAccepted { .. }
            | SagaEvent::SagaStepSucceeded { .. }
            | SagaEvent::SagaStepFailed { .. } => self.apply_step(event, at),
            SagaEvent::SagaCompensationDispatched { .. }
            | SagaEvent::SagaStepCompensated { .. }
            | SagaEvent::SagaCompensationFailed { .. } => self.apply_compensation(event, at),
            SagaEvent::SagaTimedOut { .. } => self.timed_out = true,
            SagaEvent::SagaCompensationStarted { reason } => {
                self.status = SagaStatus::Compensating;
                self.reason = Some(reason.clone());
            }
            SagaEvent::SagaStuck { reason, .. } => {
                self.status = SagaStatus::Stuck;
                self.reason = Some(reason.clone());
            }
            SagaEvent::SagaRetried { .. } => {
                if self.status == SagaStatus::Stuck {
                    self.retry_failed_compensations(at);
                }
            }
            SagaEvent::SagaAborted { reason, .. } => {
                self.status = SagaStatus::Aborted;
                self.reason = Some(reason.clone());
            }
            SagaEvent::SagaCompleted {} => self.status = SagaStatus::Completed,
            SagaEvent::SagaFailed { reason } => {
                self.status = if self.timed_out {
                    SagaStatus::TimedOut
                } else {
                    SagaStatus::Compensated
                };
                self.reason = Some(reason.clone());
            }
        }
    }

    /// Folds an event of a step's forward command: dispatched, accepted, succeeded or failed.
    fn apply_step(&mut self, event: &SagaEvent, at: DateTime<Utc>) {
        match event {
            SagaEvent::SagaStepDispatched {
                step,
                attempt,
                key,
                command,
                deadline,
            } => {
                self.current_step = *step;
                if let Some(s) = self.steps.get_mut(*step) {
                    s.status = StepStatus::InFlight;
                    s.attempts = *attempt;
                    s.key = Some(key.clone());
                    s.command = Some(command.clone());
                    s.retry_at = None;
                    s.started_at.get_or_insert(at);
                    s.dispatched_at = Some(at);
                    if deadline.is_some() {
                        s.deadline = *deadline;
                    }
                }
            }
            SagaEvent::SagaStepAccepted { step, .. } => {
                if let Some(s) = self.steps.get_mut(*step) {
                    s.status = StepStatus::Waiting;
                }
            }
            SagaEvent::SagaStepSucceeded { step, output, .. } => {
                if let Some(s) = self.steps.get_mut(*step) {
                    s.status = StepStatus::Succeeded;
                    s.output = Some(output.clone());
                    s.outcome_unknown = false;
                    s.finished_at = Some(at);
                }
                self.current_step = step + 1;
            }
            SagaEvent::SagaStepFailed {
                step,
                error,
                outcome_unknown,
                retry_at,
                ..
            } => {
                if let Some(s) = self.steps.get_mut(*step) {
                    s.status = if retry_at.is_some() {
                        StepStatus::Retrying
                    } else {
                        StepStatus::Failed
                    };
                    s.last_error = Some(error.clone());
                    s.outcome_unknown = *outcome_unknown;
                    s.retry_at = *retry_at;
                    if retry_at.is_none() {
                        s.finished_at = Some(at);
                    }
                }
            }
            _ => {}
        }
    }

    /// Folds an event of a step's compensation: dispatched, compensated or failed.
    fn apply_compensation(&mut self, event: &SagaEvent, at: DateTime<Utc>) {
        match event {
            SagaEvent::SagaCompensationDispatched {
                step,
                attempt,
                key,
                command,
            } => {
                self.current_step = *step;
                let c = self.compensation_mut(*step);
                c.status = CompensationStatus::InFlight;
                c.attempts = *attempt;
                c.budget_used += 1;
                c.key = Some(key.clone());
                c.command = Some(command.clone());
                c.retry_at = None;
                c.started_at.get_or_insert(at);
            }
            SagaEvent::SagaStepCompensated { step, .. } => {
                let c = self.compensation_mut(*step);
                c.status = CompensationStatus::Compensated;
                c.finished_at = Some(at);
            }
            SagaEvent::SagaCompensationFailed {
                step,
                error,
                outcome_unknown,
                retry_at,
                ..
            } => {
                let c = self.compensation_mut(*step);
                c.status = if retry_at.is_some() {
                    CompensationStatus::Retrying
                } else {
                    CompensationStatus::Failed
                };
                c.last_error = Some(error.clone());
                c.outcome_unknown = *outcome_unknown;
                c.retry_at = *retry_at;
            }
            _ => {}
        }
    }

    /// An operator's retry of a stuck instance: it compensates again, failed compensations
    /// retried now with a fresh budget.
    fn retry_failed_compensations(&mut self, at: DateTime<Utc>) {
        self.status = SagaStatus::Compensating;
        for step in &mut self.steps {
            if let Some(c) = &mut step.compensation
                && c.status == CompensationStatus::Failed
            {
                c.status = CompensationStatus::Retrying;
                c.budget_used = 0;
                c.retry_at = Some(at);
            }
        }
    }

    fn compensation_mut(&mut self, step: usize) -> &mut CompensationState {
        let fallback = self.steps.len().saturating_sub(1);
        let index = step.min(fallback);
        self.steps[index]
            .compensation
            .get_or_insert(CompensationState {
                status: CompensationStatus::Pending,
                attempts: 0,
                budget_used: 0,
                key: None,
                command: None,
                retry_at: None,
                outcome_unknown: false,
                last_error: None,
                started_at: None,
                finished_at: None,
            })
    }

    /// The name of the step it is at, if any.
    pub fn current_step_name(&self) -> Option<&str> {
        self.steps.get(self.current_step).map(|s| s.name.as_str())
    }

    /// Whether the saga still needs step `index` compensated, given the definition.
    fn needs_compensation(&self, definition: &SagaDefinition, index: usize) -> bool {
        let Some(step) = self.steps.get(index) else {
            return false;
        };
        let done = step.status == StepStatus::Succeeded
            || (step.outcome_unknown_now()
                && definition
                    .steps
                    .get(index)
                    .is_some_and(|s| s.on_unknown == OnUnknown::Compensate));
        done && step
            .compensation
            .as_ref()
            .is_none_or(|c| c.status != CompensationStatus::Compensated)
    }

    /// What the instance does next at `now`, under its definition.
    pub(crate) fn next(&self, definition: &SagaDefinition, now: DateTime<Utc>) -> Next {
        match self.status {
            SagaStatus::Running => self.next_forward(definition, now),
            SagaStatus::Compensating => self.next_compensation(definition, now),
            _ => Next::Idle,
        }
    }

    fn next_forward(&self, definition: &SagaDefinition, now: DateTime<Utc>) -> Next {
        let Some(index) = self
            .steps
            .iter()
            .position(|s| s.status != StepStatus::Succeeded)
        else {
            return Next::Act(Action::Complete);
        };
        let step = &self.steps[index];
        let deadline = match (self.deadline, step.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(deadline) = deadline
            && now >= deadline
        {
            let step = (step.deadline == Some(deadline)).then_some(index);
            return Next::Act(Action::TimeOut { step, deadline });
        }
        let wait = |at: Option<DateTime<Utc>>| match (at, deadline) {
            (Some(a), Some(d)) => Next::At(a.min(d)),
            (Some(a), None) => Next::At(a),
            (None, Some(d)) => Next::At(d),
            (None, None) => Next::Idle,
        };
        match step.status {
            StepStatus::Pending => Next::Act(Action::Dispatch {
                step: index,
                attempt: 1,
                key: step_key(&self.id, index),
                deadline: definition
                    .steps
                    .get(index)
                    .and_then(|s| s.timeout)
                    .and_then(|t| chrono::Duration::from_std(t).ok())
                    .map(|t| now + t),
            }),
            StepStatus::InFlight => match (&step.key, &step.command) {
                (Some(key), Some(command)) => Next::Act(Action::Send {
                    step: index,
                    attempt: step.attempts,
                    key: key.clone(),
                    command: command.clone(),
                }),
                _ => Next::Idle,
            },
            StepStatus::Waiting => wait(None),
            StepStatus::Retrying => match step.retry_at {
                Some(at) if at > now => wait(Some(at)),
                _ => {
                    // The next attempt keeps the key: a command applied after all (an unknown
                    // outcome, or a concurrent runner's send) is found instead of applied again.
                    Next::Act(Action::Dispatch {
                        step: index,
                        attempt: step.attempts + 1,
                        key: step_key(&self.id, index),
                        deadline: None,
                    })
                }
            },
            StepStatus::Failed => Next::Act(Action::Compensate {
                reason: format!(
                    "step `{}` failed after {} attempt(s): {}",
                    step.name,
                    step.attempts,
                    step.last_error.as_deref().unwrap_or("unknown error")
                ),
            }),
            StepStatus::Succeeded => Next::Idle,
        }
    }

    fn next_compensation(&self, definition: &SagaDefinition, now: DateTime<Utc>) -> Next {
        let Some(index) = (0..self.steps.len())
            .rev()
            .find(|&i| self.needs_compensation(definition, i))
        else {
            return Next::Act(Action::Fail {
                reason: self
                    .reason
                    .clone()
                    .unwrap_or_else(|| "compensated".to_owned()),
            });
        };
        if definition
            .steps
            .get(index)
            .is_none_or(|s| s.compensation.is_none())
        {
            return Next::Act(Action::SkipCompensation { step: index });
        }
        let step = &self.steps[index];
        let Some(c) = &step.compensation else {
            return Next::Act(Action::DispatchCompensation {
                step: index,
                attempt: 1,
                key: compensation_key(&self.id, index),
            });
        };
        match c.status {
            CompensationStatus::Pending => Next::Act(Action::DispatchCompensation {
                step: index,
                attempt: c.attempts + 1,
                key: compensation_key(&self.id, index),
            }),
            CompensationStatus::InFlight => match (&c.key, &c.command) {
                (Some(key), Some(command)) => Next::Act(Action::SendCompensation {
                    step: index,
                    attempt: c.attempts,
                    key: key.clone(),
                    command: command.clone(),
                }),
                _ => Next::Idle,
            },
            CompensationStatus::Retrying => match c.retry_at {
                Some(at) if at > now => Next::At(at),
                _ => Next::Act(Action::DispatchCompensation {
                    step: index,
                    attempt: c.attempts + 1,
                    key: compensation_key(&self.id, index),
                }),
            },
            CompensationStatus::Failed => Next::Act(Action::Stuck {
                step: index,
                reason: format!(
                    "compensation of step `{}` failed after {} attempt(s): {}",
                    step.name,
                    c.budget_used,
                    c.last_error.as_deref().unwrap_or("unknown error")
                ),
            }),
            CompensationStatus::Compensated => Next::Idle,
        }
    }

    /// How many attempts of step `index`'s compensation count against its policy.
    pub(crate) fn compensation_budget_used(&self, index: usize) -> u32 {
        self.steps
            .get(index)
            .and_then(|s| s.compensation.as_ref())
            .map_or(0, |c| c.budget_used)
    }

    /// Whether step `index` waits for an event (its command was accepted or is in flight).
    pub(crate) fn awaits(&self, index: usize) -> bool {
        self.status == SagaStatus::Running
            && self.current_step == index
            && self
                .steps
                .get(index)
                .is_some_and(|s| matches!(s.status, StepStatus::InFlight | StepStatus::Waiting))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::saga::definition::{SagaContext, Step, StepRetry};

    fn command(_: &SagaContext<'_>) -> Result<StepCommand, String> {
        Ok(StepCommand::new("a", "1", json!({})))
    }

    fn definition() -> SagaDefinition {
        let step = |name: &str| {
            Step::new(name, command)
                .compensate(command)
                .retry(StepRetry::new(2, Duration::from_secs(1)))
        };
        SagaDefinition::builder("s", 1)
            .starts_on("order", "Placed")
            .step(step("one"))
            .step(step("two"))
            .build()
            .unwrap()
    }

    fn started() -> SagaState {
        let event = SagaEvent::SagaStarted {
            saga: "s".into(),
            definition_version: 1,
            correlation_key: "k".into(),
            input: json!({}),
            steps: vec!["one".into(), "two".into()],
            deadline: None,
        };
        SagaState::start("i", &event, Utc::now()).unwrap()
    }

    fn act(state: &SagaState) -> Action {
        match state.next(&definition(), Utc::now()) {
            Next::Act(action) => action,
            other => panic!("expected an action, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_step_is_retried_under_the_same_key_whatever_its_outcome() {
        let mut state = started();
        let now = Utc::now();
        state.apply(
            &SagaEvent::SagaStepDispatched {
                step: 0,
                attempt: 1,
                key: step_key("i", 0),
                command: StepCommand::new("a", "1", json!({})),
                deadline: None,
            },
            2,
            now,
        );
        let mut known = state.clone();
        known.apply(
            &SagaEvent::SagaStepFailed {
                step: 0,
                attempt: 1,
                error: "no".into(),
                outcome_unknown: false,
                retry_at: Some(now),
            },
            3,
            now,
        );
        assert!(
            matches!(act(&known), Action::Dispatch { attempt: 2, ref key, .. } if key == &step_key("i", 0))
        );
        let mut unknown = state.clone();
        unknown.apply(
            &SagaEvent::SagaStepFailed {
                step: 0,
                attempt: 1,
                error: "lost".into(),
                outcome_unknown: true,
                retry_at: Some(now),
            },
            3,
            now,
        );
        assert!(
            matches!(act(&unknown), Action::Dispatch { attempt: 2, ref key, .. } if key == &step_key("i", 0))
        );
    }

    #[test]
    fn compensation_walks_completed_steps_backwards_and_an_unknown_outcome_counts() {
        let mut state = started();
        let now = Utc::now();
        state.apply(
            &SagaEvent::SagaStepSucceeded {
                step: 0,
                attempt: 1,
                output: json!(null),
            },
            2,
            now,
        );
        state.apply(
            &SagaEvent::SagaStepDispatched {
                step: 1,
                attempt: 1,
                key: step_key("i", 1),
                command: StepCommand::new("a", "1", json!({})),
                deadline: None,
            },
            3,
            now,
        );
        state.apply(
            &SagaEvent::SagaCompensationStarted {
                reason: "timed out".into(),
            },
            4,
            now,
        );
        assert!(matches!(
            act(&state),
            Action::DispatchCompensation { step: 1, .. }
        ));
        state.apply(
            &SagaEvent::SagaStepCompensated {
                step: 1,
                attempt: 1,
            },
            5,
            now,
        );
        assert!(matches!(
            act(&state),
            Action::DispatchCompensation { step: 0, .. }
        ));
        state.apply(
            &SagaEvent::SagaStepCompensated {
                step: 0,
                attempt: 1,
            },
            6,
            now,
        );
        assert!(matches!(act(&state), Action::Fail { .. }));
    }

    #[test]
    fn an_operator_retry_renews_the_budget_of_a_stuck_compensation() {
        let mut state = started();
        let now = Utc::now();
        state.apply(
            &SagaEvent::SagaStepSucceeded {
                step: 0,
                attempt: 1,
                output: json!(null),
            },
            2,
            now,
        );
        state.apply(
            &SagaEvent::SagaCompensationStarted { reason: "x".into() },
            3,
            now,
        );
        state.apply(
            &SagaEvent::SagaCompensationDispatched {
                step: 0,
                attempt: 1,
                key: compensation_key("i", 0),
                command: StepCommand::new("a", "1", json!({})),
            },
            4,
            now,
        );
        state.apply(
            &SagaEvent::SagaCompensationFailed {
                step: 0,
                attempt: 1,
                error: "down".into(),
                outcome_unknown: false,
                retry_at: None,
            },
            4,
            now,
        );
        assert!(matches!(act(&state), Action::Stuck { step: 0, .. }));
        state.apply(
            &SagaEvent::SagaStuck {
                step: 0,
                reason: "x".into(),
            },
            5,
            now,
        );
        assert_eq!(state.next(&definition(), now), Next::Idle);
        state.apply(&SagaEvent::SagaRetried { actor: None }, 6, now);
        assert_eq!(state.status, SagaStatus::Compensating);
        assert_eq!(state.compensation_budget_used(0), 0);
        assert!(matches!(
            act(&state),
            Action::DispatchCompensation {
                step: 0,
                attempt: 2,
                ..
            }
        ));
    }
}
