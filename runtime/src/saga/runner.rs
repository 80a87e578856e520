//! Runs sagas: one supervised projection per saga type fed from the bus (starts, awaited events,
//! the status read model and the index of what is due when), and a driver that advances
//! instances, each transition appended with the stream's expected version.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::commands::{SagaCommands, StepFailure};
use super::definition::{SagaContext, SagaDefinition, StepRetry};
use super::state::{Action, Next, SAGA_STREAM_TYPE, SagaEvent, SagaState, SagaStatus};
use super::{SagaError, SagaReader};
use crate::event::{EventId, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::projection::{
    Changes, Projection, ProjectionError, ProjectionHandle, ProjectionRunner, ReadModelStore,
};
use crate::store::{AppendError, EventStore, ExpectedVersion};

/// The collection of every instance's status document.
pub(crate) const SAGAS: &str = "sagas";
/// The collection of instances that have not ended (running, compensating, stuck), with when
/// each is next due: the scheduler's index, rebuilt from the saga's events like any document.
pub(crate) const OPEN: &str = "open";

/// The collection of every instance's history (`{"events": [...]}`, its first `MAX_HISTORY`
/// events as the status documents show them).
pub(crate) const HISTORY: &str = "history";

/// The namespace of instance ids (a UUIDv5 of saga name and correlation key).
const INSTANCE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6e65_7875_735f_7361_6761_5f69_6e73_7463);

/// How a saga runner works.
#[derive(Debug, Clone)]
pub struct SagaOptions {
    /// Instances advanced at the same time at most.
    pub max_concurrent: usize,
    /// Instances the in-memory timer index holds at most; beyond it, the periodic reconcile
    /// from the `open` documents picks the rest up.
    pub max_tracked: usize,
    /// How long a step's command may take before its outcome counts as unknown.
    pub send_timeout: Duration,
    /// How often the timer index is rebuilt from the `open` documents (and gauges refreshed).
    pub reconcile_interval: Duration,
    /// Wait before advancing an instance again after the store or read model failed.
    pub error_backoff: Duration,
    /// Transitions one advance of an instance makes at most before yielding.
    pub max_actions: usize,
}

impl Default for SagaOptions {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            max_tracked: 100_000,
            send_timeout: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(30),
            error_backoff: Duration::from_secs(1),
            max_actions: 256,
        }
    }
}

/// The stream of instance `id` of saga `saga`.
pub fn instance_stream(saga: &str, id: &str) -> StreamId {
    StreamId::new(SAGA_STREAM_TYPE, format!("{saga}:{id}"))
}

/// The id of the instance of saga `saga` for correlation key `key`: one per key, ever.
pub fn instance_id(saga: &str, key: &str) -> String {
    uuid::Uuid::new_v5(&INSTANCE_NAMESPACE, format!("{saga}\u{0}{key}").as_bytes()).to_string()
}

/// Instances due at some time, bounded; the earliest first.
struct DueQueue {
    inner: Mutex<Due>,
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct Due {
    by_id: HashMap<String, DateTime<Utc>>,
    by_time: BTreeSet<(DateTime<Utc>, String)>,
}

impl DueQueue {
    fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Due::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Due> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `id` is due at `at` (or earlier, if it already was).
    fn schedule(&self, id: &str, at: DateTime<Utc>) {
        let mut due = self.lock();
        if let Some(old) = due.by_id.get(id).copied() {
            if old <= at {
                return;
            }
            due.by_time.remove(&(old, id.to_owned()));
        } else if due.by_id.len() >= self.capacity {
            // Full: keep the earliest; the latest is found again by the next reconcile.
            let Some(last) = due.by_time.last().cloned() else {
                return;
            };
            if last.0 <= at {
                return;
            }
            due.by_time.remove(&last);
            due.by_id.remove(&last.1);
        }
        due.by_id.insert(id.to_owned(), at);
        due.by_time.insert((at, id.to_owned()));
        drop(due);
        self.notify.notify_one();
    }

    /// Takes at most `limit` instances due at `now`, and says when the next one is due.
    fn take_due(&self, now: DateTime<Utc>, limit: usize) -> (Vec<String>, Option<DateTime<Utc>>) {
        let mut due = self.lock();
        let mut taken = Vec::new();
        while taken.len() < limit {
            let Some(first) = due.by_time.first().cloned() else {
                break;
            };
            if first.0 > now {
                break;
            }
            due.by_time.remove(&first);
            due.by_id.remove(&first.1);
            taken.push(first.1);
        }
        let next = due.by_time.first().map(|(at, _)| *at);
        (taken, next)
    }

    fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

/// What the projection and the driver of one saga type share.
pub(crate) struct Engine {
    pub(crate) name: String,
    definitions: BTreeMap<u32, SagaDefinition>,
    store: Arc<dyn EventStore>,
    commands: SagaCommands,
    options: SagaOptions,
    queue: DueQueue,
}

impl Engine {
    fn latest(&self) -> &SagaDefinition {
        self.definitions
            .values()
            .next_back()
            .expect("a runner has at least one definition")
    }

    fn stream(&self, id: &str) -> StreamId {
        instance_stream(&self.name, id)
    }

    /// When `state` is next due under its definition, if ever by itself.
    fn due(&self, state: &SagaState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let definition = self.definitions.get(&state.definition_version)?;
        match state.next(definition, now) {
            Next::Idle => None,
            Next::At(at) => Some(at),
            Next::Act(_) => Some(now),
        }
    }

    /// The instance's state from its stream, or `None` if it has none.
    async fn load(&self, id: &str) -> Result<Option<SagaState>, SagaError> {
        let stream = self.stream(id);
        let events = self
            .store
            .read_stream(&stream, 1, None)
            .await
            .map(Some)
            .or_else(|err| match err {
                crate::store::ReadError::StreamNotFound(_) => Ok(None),
                err => Err(err),
            })
            .map_err(|source| SagaError::Read {
                stream: stream.to_string(),
                source,
            })?;
        let Some(events) = events else {
            return Ok(None);
        };
        fold(id, &stream, &events)
    }

    /// Starts an instance for `event`, unless its correlation key already has one.
    async fn start(&self, event: &RecordedEvent) -> Result<Option<String>, SagaError> {
        let definition = self.latest();
        let Some(key) = (definition.key)(event) else {
            return Ok(None);
        };
        let id = instance_id(&self.name, &key);
        let input: Value = serde_json::from_str(event.payload.get()).unwrap_or(Value::Null);
        let deadline = definition
            .timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .map(|t| event.recorded_at + t);
        let started = SagaEvent::SagaStarted {
            saga: self.name.clone(),
            definition_version: definition.version,
            correlation_key: key,
            input,
            steps: definition.steps.iter().map(|s| s.name.clone()).collect(),
            deadline,
        };
        let metadata = Metadata {
            correlation_id: event.metadata.correlation_id.clone(),
            causation_id: Some(event.id.to_string()),
            actor: Some(format!("saga:{}", self.name)),
            ..Metadata::default()
        };
        let new = NewEvent::from_domain(&started, metadata)
            .map_err(|e| SagaError::Encode(e.to_string()))?
            .with_id(derived_id(&id, &format!("start\u{0}{}", event.id)));
        let stream = self.stream(&id);
        match self
            .store
            .append(&stream, ExpectedVersion::NoStream, vec![new])
            .await
        {
            Ok(result) => {
                if !result.idempotent_replay {
                    metrics::counter!("nexus_saga_started_total", "saga" => self.name.clone())
                        .increment(1);
                }
                Ok(Some(id))
            }
            // A duplicate start: the key already has its instance, which goes on as it was.
            Err(AppendError::Conflict { .. } | AppendError::DuplicateEventId { .. }) => {
                Ok(Some(id))
            }
            Err(source) => Err(SagaError::Append {
                stream: stream.to_string(),
                source,
            }),
        }
    }

    /// Records an awaited event (`event`) on the step of the instance waiting for it.
    async fn deliver(&self, event: &RecordedEvent) -> Result<(), SagaError> {
        let Some(key) = (self.latest().key)(event) else {
            return Ok(());
        };
        let id = instance_id(&self.name, &key);
        let stream = self.stream(&id);
        for _ in 0..self.options.max_actions {
            let Some(state) = self.load(&id).await? else {
                return Ok(());
            };
            let Some(definition) = self.definitions.get(&state.definition_version) else {
                return Ok(());
            };
            let Some(index) = definition.steps.iter().position(|s| {
                s.awaits.as_deref() == Some(&event.event_type)
                    || s.fails_on.as_deref() == Some(&event.event_type)
            }) else {
                return Ok(());
            };
            // Late or early: a step that does not wait any more ignores it.
            if !state.awaits(index) {
                return Ok(());
            }
            let attempt = state.steps[index].attempts;
            let transition = if definition.steps[index].awaits.as_deref() == Some(&event.event_type)
            {
                SagaEvent::SagaStepSucceeded {
                    step: index,
                    attempt,
                    output: serde_json::from_str(event.payload.get()).unwrap_or(Value::Null),
                }
            } else {
                SagaEvent::SagaStepFailed {
                    step: index,
                    attempt,
                    error: format!("{} `{}` arrived", event.event_type, event.stream),
                    outcome_unknown: false,
                    retry_at: None,
                }
            };
            let new = NewEvent::from_domain(&transition, self.metadata(&id))
                .map_err(|e| SagaError::Encode(e.to_string()))?
                .with_id(derived_id(&id, &format!("event\u{0}{}", event.id)));
            match self
                .store
                .append(&stream, ExpectedVersion::Exact(state.version), vec![new])
                .await
            {
                Ok(_) => {
                    if let SagaEvent::SagaStepSucceeded { .. } = transition {
                        self.step_latency(&state, index);
                    }
                    return Ok(());
                }
                Err(AppendError::Conflict { .. }) => continue,
                Err(AppendError::DuplicateEventId { .. }) => return Ok(()),
                Err(source) => {
                    return Err(SagaError::Append {
                        stream: stream.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn metadata(&self, id: &str) -> Metadata {
        Metadata {
            correlation_id: Some(format!("saga:{id}")),
            actor: Some(format!("saga:{}", self.name)),
            ..Metadata::default()
        }
    }

    fn step_latency(&self, state: &SagaState, index: usize) {
        if let Some(started) = state.steps.get(index).and_then(|s| s.started_at) {
            let seconds = (Utc::now() - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
            metrics::histogram!(
                "nexus_saga_step_seconds",
                "saga" => self.name.clone(),
                "step" => state.steps[index].name.clone()
            )
            .record(seconds.max(0.0));
        }
    }

    /// Advances instance `id` until it waits, ends or is stuck.
    async fn drive(&self, id: &str) {
        if let Err(err) = self.try_drive(id).await {
            tracing::warn!(saga = %self.name, instance = id, cause = %crate::redact::error_chain(&err), "advancing a saga failed; trying again later");
            let backoff = chrono::Duration::from_std(self.options.error_backoff)
                .unwrap_or_else(|_| chrono::Duration::seconds(1));
            self.queue.schedule(id, Utc::now() + backoff);
        }
    }

    async fn try_drive(&self, id: &str) -> Result<(), SagaError> {
        let Some(mut state) = self.load(id).await? else {
            return Ok(());
        };
        let stream = self.stream(id);
        for _ in 0..self.options.max_actions {
            let Some(definition) = self.definitions.get(&state.definition_version) else {
                metrics::counter!("nexus_saga_missing_definition_total", "saga" => self.name.clone())
                    .increment(1);
                return Err(SagaError::MissingDefinition {
                    saga: self.name.clone(),
                    version: state.definition_version,
                    instance: id.to_owned(),
                });
            };
            let now = Utc::now();
            let action = match state.next(definition, now) {
                Next::Idle => return Ok(()),
                Next::At(at) => {
                    self.queue.schedule(id, at);
                    return Ok(());
                }
                Next::Act(action) => action,
            };
            let events = self.perform(&state, definition, action).await;
            let new: Vec<NewEvent> = events
                .iter()
                .map(|e| NewEvent::from_domain(e, self.metadata(id)))
                .collect::<Result<_, _>>()
                .map_err(|e| SagaError::Encode(e.to_string()))?;
            match self
                .store
                .append(&stream, ExpectedVersion::Exact(state.version), new)
                .await
            {
                Ok(result) => {
                    let at = Utc::now();
                    let first = result.version + 1 - events.len() as u64;
                    for (offset, event) in events.iter().enumerate() {
                        self.count(&state, event);
                        state.apply(event, first + offset as u64, at);
                    }
                }
                // Another runner moved the instance on: start again from what it recorded.
                Err(AppendError::Conflict { .. }) => {
                    metrics::counter!("nexus_saga_conflicts_total", "saga" => self.name.clone())
                        .increment(1);
                    match self.load(id).await? {
                        Some(fresh) => state = fresh,
                        None => return Ok(()),
                    }
                }
                Err(source) => {
                    return Err(SagaError::Append {
                        stream: stream.to_string(),
                        source,
                    });
                }
            }
        }
        // Long enough for one go: the rest happens on the next turn.
        self.queue.schedule(id, Utc::now());
        Ok(())
    }

    /// Metrics of one recorded transition.
    fn count(&self, state: &SagaState, event: &SagaEvent) {
        let saga = self.name.clone();
        match event {
            SagaEvent::SagaStepSucceeded { step, .. } => self.step_latency(state, *step),
            SagaEvent::SagaStepFailed { step, .. } => {
                let step = state
                    .steps
                    .get(*step)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                metrics::counter!("nexus_saga_step_failures_total", "saga" => saga, "step" => step)
                    .increment(1);
            }
            SagaEvent::SagaCompleted {} => {
                metrics::counter!("nexus_saga_completed_total", "saga" => saga).increment(1);
            }
            SagaEvent::SagaFailed { .. } => {
                metrics::counter!("nexus_saga_compensated_total", "saga" => saga).increment(1);
            }
            SagaEvent::SagaTimedOut { .. } => {
                metrics::counter!("nexus_saga_timeouts_total", "saga" => saga).increment(1);
            }
            SagaEvent::SagaStuck { .. } => {
                metrics::counter!("nexus_saga_stuck_total", "saga" => saga).increment(1);
            }
            _ => {}
        }
    }

    /// Does `action` (sending a command if it is one) and returns the events recording it.
    async fn perform(
        &self,
        state: &SagaState,
        definition: &SagaDefinition,
        action: Action,
    ) -> Vec<SagaEvent> {
        let now = Utc::now();
        let outputs: Vec<Option<Value>> = state.steps.iter().map(|s| s.output.clone()).collect();
        let context = SagaContext {
            instance: &state.id,
            correlation_key: &state.correlation_key,
            input: &state.input,
            outputs: &outputs,
        };
        match action {
            Action::Dispatch {
                step,
                attempt,
                key,
                deadline,
            } => vec![match (definition.steps[step].command)(&context) {
                Ok(command) => SagaEvent::SagaStepDispatched {
                    step,
                    attempt,
                    key,
                    command,
                    deadline,
                },
                Err(error) => SagaEvent::SagaStepFailed {
                    step,
                    attempt,
                    error: format!("the step's command could not be built: {error}"),
                    outcome_unknown: false,
                    retry_at: None,
                },
            }],
            Action::Send {
                step,
                attempt,
                key,
                command,
            } => {
                let sent = self.send(state, &command, &key).await;
                vec![step_sent(definition, now, step, attempt, sent)]
            }
            Action::TimeOut { step, deadline } => {
                let what = match step.and_then(|i| state.steps.get(i)) {
                    Some(s) => format!("step `{}`", s.name),
                    None => "the saga".to_owned(),
                };
                vec![
                    SagaEvent::SagaTimedOut { step, deadline },
                    SagaEvent::SagaCompensationStarted {
                        reason: format!("{what} timed out at {}", deadline.to_rfc3339()),
                    },
                ]
            }
            Action::Compensate { reason } => vec![SagaEvent::SagaCompensationStarted { reason }],
            Action::Complete => vec![SagaEvent::SagaCompleted {}],
            Action::DispatchCompensation { step, attempt, key } => {
                vec![dispatch_compensation(
                    definition, &context, step, attempt, key,
                )]
            }
            Action::SendCompensation {
                step,
                attempt,
                key,
                command,
            } => {
                let sent = self.send(state, &command, &key).await;
                vec![compensation_sent(
                    state, definition, now, step, attempt, sent,
                )]
            }
            Action::SkipCompensation { step } => {
                vec![SagaEvent::SagaStepCompensated { step, attempt: 0 }]
            }
            Action::Stuck { step, reason } => vec![SagaEvent::SagaStuck { step, reason }],
            Action::Fail { reason } => vec![SagaEvent::SagaFailed { reason }],
        }
    }

    async fn send(
        &self,
        state: &SagaState,
        command: &super::StepCommand,
        key: &str,
    ) -> Result<Value, StepFailure> {
        let mut metadata = self.metadata(&state.id);
        metadata.causation_id = Some(key.to_owned());
        match tokio::time::timeout(
            self.options.send_timeout,
            self.commands.send(command, key, metadata),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(StepFailure::unknown(format!(
                "no answer within {:?}",
                self.options.send_timeout
            ))),
        }
    }
}

/// When a send that failed after `used` attempts is tried again (`retry`'s delay after `now`):
/// `None` once its attempts are used up.
fn retry_at(now: DateTime<Utc>, retry: StepRetry, used: u32) -> Option<DateTime<Utc>> {
    (used < retry.attempts).then(|| {
        now + chrono::Duration::from_std(retry.delay(used))
            .unwrap_or_else(|_| chrono::Duration::days(1))
    })
}

/// What a step's command answered, recorded: accepted when the step awaits an event, else
/// succeeded; or failed, with when it is tried again.
fn step_sent(
    definition: &SagaDefinition,
    now: DateTime<Utc>,
    step: usize,
    attempt: u32,
    sent: Result<Value, StepFailure>,
) -> SagaEvent {
    match sent {
        Ok(_) if definition.steps[step].awaits.is_some() => {
            SagaEvent::SagaStepAccepted { step, attempt }
        }
        Ok(output) => SagaEvent::SagaStepSucceeded {
            step,
            attempt,
            output,
        },
        Err(failure) => SagaEvent::SagaStepFailed {
            step,
            attempt,
            error: failure.message,
            outcome_unknown: failure.outcome_unknown,
            retry_at: retry_at(now, definition.steps[step].retry, attempt),
        },
    }
}

/// The dispatch of a step's compensation, recorded: its command, the failure to build one, or
/// the step compensated at once when it has no compensation.
fn dispatch_compensation(
    definition: &SagaDefinition,
    context: &SagaContext<'_>,
    step: usize,
    attempt: u32,
    key: String,
) -> SagaEvent {
    let build = definition.steps[step]
        .compensation
        .as_ref()
        .map(|f| f(context));
    match build {
        Some(Ok(command)) => SagaEvent::SagaCompensationDispatched {
            step,
            attempt,
            key,
            command,
        },
        Some(Err(error)) => SagaEvent::SagaCompensationFailed {
            step,
            attempt,
            error: format!("the compensation could not be built: {error}"),
            outcome_unknown: false,
            retry_at: None,
        },
        None => SagaEvent::SagaStepCompensated { step, attempt: 0 },
    }
}

/// What a compensation's command answered, recorded: compensated, or failed with when it is
/// tried again (within the compensation's budget, which an operator's retry renews).
fn compensation_sent(
    state: &SagaState,
    definition: &SagaDefinition,
    now: DateTime<Utc>,
    step: usize,
    attempt: u32,
    sent: Result<Value, StepFailure>,
) -> SagaEvent {
    match sent {
        Ok(_) => SagaEvent::SagaStepCompensated { step, attempt },
        Err(failure) => SagaEvent::SagaCompensationFailed {
            step,
            attempt,
            error: failure.message,
            outcome_unknown: failure.outcome_unknown,
            retry_at: retry_at(
                now,
                definition.steps[step].compensation_retry,
                state.compensation_budget_used(step),
            ),
        },
    }
}

/// The id of a saga event derived from the instance and what caused it, so recording the same
/// cause again is an idempotent replay.
fn derived_id(instance: &str, cause: &str) -> EventId {
    EventId(uuid::Uuid::new_v5(
        &INSTANCE_NAMESPACE,
        format!("{instance}\u{0}{cause}").as_bytes(),
    ))
}

/// Folds an instance's events.
pub(crate) fn fold(
    id: &str,
    stream: &StreamId,
    events: &[RecordedEvent],
) -> Result<Option<SagaState>, SagaError> {
    let mut state: Option<SagaState> = None;
    for event in events {
        let decoded: SagaEvent =
            serde_json::from_str(event.payload.get()).map_err(|source| SagaError::Decode {
                stream: stream.to_string(),
                version: event.version,
                source,
            })?;
        match &mut state {
            None => state = SagaState::start(id, &decoded, event.recorded_at),
            Some(state) => state.apply(&decoded, event.version, event.recorded_at),
        }
    }
    Ok(state)
}

/// The projection of one saga type: starts instances, delivers awaited events, and keeps the
/// status documents and the index of open instances.
struct SagaProjection {
    projection: String,
    prefix: String,
    engine: Arc<Engine>,
}

#[async_trait]
impl Projection for SagaProjection {
    fn name(&self) -> &str {
        &self.projection
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        if event.stream.aggregate_type() == SAGA_STREAM_TYPE {
            return event.stream.aggregate_id().starts_with(&self.prefix);
        }
        self.engine
            .definitions
            .values()
            .any(|d| d.starts_on(event) || d.awaited(&event.event_type))
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        if event.stream.aggregate_type() != SAGA_STREAM_TYPE {
            if self.engine.latest().starts_on(event) {
                if let Some(id) = self.engine.start(event).await.map_err(projection_error)? {
                    self.engine.queue.schedule(&id, Utc::now());
                }
            } else {
                self.engine.deliver(event).await.map_err(projection_error)?;
            }
            return Ok(());
        }
        let id = &event.stream.aggregate_id()[self.prefix.len()..];
        let data: Value = serde_json::from_str(event.payload.get())?;
        let decoded: SagaEvent = serde_json::from_value(data.clone())?;
        let state = match changes.get(SAGAS, id).await? {
            Some(doc) => {
                let mut state: SagaState = serde_json::from_value(doc)?;
                state.apply(&decoded, event.version, event.recorded_at);
                Some(state)
            }
            None => SagaState::start(id, &decoded, event.recorded_at),
        };
        // The history is projected too (its first `MAX_HISTORY` events, in a collection of its
        // own so the status documents stay small to scan), so a status query is two indexed
        // reads of the read model; an instance projected before histories were has none, and
        // the reader falls back to its stream.
        let history = match changes.get(HISTORY, id).await? {
            Some(doc) => doc.get("events").and_then(Value::as_array).cloned(),
            None if event.version == 1 => Some(Vec::new()),
            None => None,
        };
        if let Some(mut history) = history {
            let entry = json!({
                "version": event.version,
                "type": event.event_type,
                "recorded_at": event.recorded_at,
                "data": data,
            });
            if record(&mut history, entry) {
                changes.put(HISTORY, id, json!({ "events": history }));
            }
        }
        let Some(state) = state else {
            return Err(ProjectionError::new(format!(
                "saga stream `{}` does not begin with SagaStarted",
                event.stream
            )));
        };
        let due = self.engine.due(&state, Utc::now());
        let mut doc = serde_json::to_value(&state)?;
        if let Value::Object(map) = &mut doc {
            map.insert("next_due".into(), json!(due));
            map.insert("stream".into(), json!(event.stream.to_string()));
            map.insert("current_step_name".into(), json!(state.current_step_name()));
        }
        changes.put(SAGAS, id, doc);
        if state.status.is_terminal() {
            changes.delete(OPEN, id);
        } else {
            changes.put(
                OPEN,
                id,
                json!({ "status": state.status, "next_due": due, "version": state.definition_version }),
            );
        }
        if let Some(due) = due {
            self.engine.queue.schedule(id, due);
        }
        Ok(())
    }
}

/// Appends `entry` to a projected history unless it holds [`super::MAX_HISTORY`] entries already
/// (the reader then says the history is truncated); whether it did.
fn record(history: &mut Vec<Value>, entry: Value) -> bool {
    let room = history.len() < super::MAX_HISTORY;
    if room {
        history.push(entry);
    }
    room
}

fn projection_error(err: SagaError) -> ProjectionError {
    ProjectionError::with_source("a saga transition failed", err)
}

/// Starts saga types on a projection runner.
#[derive(Clone)]
pub struct SagaRunner {
    store: Arc<dyn EventStore>,
    commands: SagaCommands,
    projections: ProjectionRunner,
    options: SagaOptions,
}

impl std::fmt::Debug for SagaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRunner")
            .field("commands", &self.commands)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SagaRunner {
    /// Sagas appending to `store`, commanding the aggregates of `commands`, fed and checkpointed
    /// like projections by `projections` (each saga type's read model is `saga-{name}`).
    pub fn new(
        store: Arc<dyn EventStore>,
        commands: SagaCommands,
        projections: ProjectionRunner,
    ) -> Self {
        Self {
            store,
            commands,
            projections,
            options: SagaOptions::default(),
        }
    }

    /// The same runner with other options.
    pub fn with_options(mut self, options: SagaOptions) -> Self {
        self.options = options;
        self
    }

    /// The read model name of saga `saga`.
    pub fn projection_name(saga: &str) -> String {
        format!("saga-{saga}")
    }

    /// Starts one saga type, all its versions given (new instances start on the highest; each
    /// running instance goes on with the version it started with).
    ///
    /// Refuses to start when an instance that has not ended needs a version not given.
    pub async fn spawn(&self, definitions: Vec<SagaDefinition>) -> Result<SagaHandle, SagaError> {
        let Some(first) = definitions.first() else {
            return Err(SagaError::NoDefinition);
        };
        let name = first.name.clone();
        let mut by_version = BTreeMap::new();
        for definition in definitions {
            if definition.name != name {
                return Err(SagaError::MixedDefinitions {
                    expected: name,
                    found: definition.name,
                });
            }
            by_version.insert(definition.version, definition);
        }
        let projection = Self::projection_name(&name);
        let read_model = self
            .projections
            .read_models()
            .open(&projection)
            .map_err(SagaError::ReadModel)?;
        let engine = Arc::new(Engine {
            name: name.clone(),
            definitions: by_version,
            store: Arc::clone(&self.store),
            commands: self.commands.clone(),
            options: self.options.clone(),
            queue: DueQueue::new(self.options.max_tracked),
        });
        // Before anything runs: every open instance must find its definition.
        reconcile(&engine, &read_model, true).await?;
        let handle = self
            .projections
            .spawn(SagaProjection {
                projection,
                prefix: format!("{name}:"),
                engine: Arc::clone(&engine),
            })
            .map_err(SagaError::ReadModel)?;
        let (stop, stopped) = watch::channel(false);
        let driver = tokio::spawn(run_driver(
            Arc::clone(&engine),
            handle.read_model().clone(),
            stopped,
        ));
        Ok(SagaHandle {
            reader: SagaReader::new(name, Arc::clone(&self.store), handle.read_model().clone()),
            projection: handle,
            driver,
            stop,
        })
    }
}

/// Rebuilds the timer index from the `open` documents and refreshes the gauges; with `check`,
/// fails on an instance whose definition version is missing.
async fn reconcile(
    engine: &Engine,
    read_model: &ReadModelStore,
    check: bool,
) -> Result<(), SagaError> {
    const PAGE: usize = 500;
    let now = Utc::now();
    let mut offset = 0;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut overdue = 0u64;
    loop {
        let page = read_model
            .list(OPEN, &[], PAGE, offset)
            .await
            .map_err(SagaError::ReadModel)?;
        for (id, doc) in &page {
            let version = doc
                .get("version")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0);
            if check && !engine.definitions.contains_key(&version) {
                return Err(SagaError::MissingDefinition {
                    saga: engine.name.clone(),
                    version,
                    instance: id.clone(),
                });
            }
            let status = doc
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("running")
                .to_owned();
            *counts.entry(status).or_default() += 1;
            if let Some(due) = doc
                .get("next_due")
                .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok())
            {
                if due + chrono::Duration::seconds(10) < now {
                    overdue += 1;
                }
                engine.queue.schedule(id, due);
            }
        }
        if page.len() < PAGE {
            break;
        }
        offset += PAGE;
    }
    for status in [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Stuck,
    ] {
        let count = counts.get(status.as_str()).copied().unwrap_or(0);
        metrics::gauge!("nexus_sagas", "saga" => engine.name.clone(), "status" => status.as_str())
            .set(count as f64);
    }
    metrics::gauge!("nexus_saga_timers_overdue", "saga" => engine.name.clone()).set(overdue as f64);
    Ok(())
}

/// Takes due instances off the queue and advances them, at most `max_concurrent` at a time,
/// never one instance twice at once in this process.
async fn run_driver(
    engine: Arc<Engine>,
    read_model: ReadModelStore,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(engine.options.max_concurrent.max(1)));
    let mut running: JoinSet<String> = JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut again: HashSet<String> = HashSet::new();
    let mut reconciled = tokio::time::Instant::now();
    loop {
        if *stopped.borrow() {
            break;
        }
        if reconciled.elapsed() >= engine.options.reconcile_interval {
            reconciled = tokio::time::Instant::now();
            if let Err(err) = reconcile(&engine, &read_model, false).await {
                tracing::warn!(saga = %engine.name, cause = %crate::redact::error_chain(&err), "reconciling saga timers failed");
            }
        }
        let free = permits.available_permits();
        let (due, next) = engine.queue.take_due(Utc::now(), free);
        for id in due {
            if in_flight.contains(&id) {
                again.insert(id);
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            in_flight.insert(id.clone());
            let engine = Arc::clone(&engine);
            running.spawn(async move {
                engine.drive(&id).await;
                drop(permit);
                id
            });
        }
        metrics::gauge!("nexus_saga_timers", "saga" => engine.name.clone())
            .set(engine.queue.len() as f64);
        // With every permit taken, what is due waits for a drive to end (never a busy loop).
        let wait = match next {
            Some(at) if permits.available_permits() > 0 => {
                (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
            }
            _ => engine.options.reconcile_interval,
        }
        .min(engine.options.reconcile_interval);
        tokio::select! {
            _ = stopped.changed() => {}
            () = engine.queue.notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(id) = done {
                    in_flight.remove(&id);
                    if again.remove(&id) {
                        engine.queue.schedule(&id, Utc::now());
                    }
                }
            }
        }
    }
    // Let what is in flight record its outcome.
    while running.join_next().await.is_some() {}
}

/// Controls one running saga type.
pub struct SagaHandle {
    reader: SagaReader,
    projection: ProjectionHandle,
    driver: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for SagaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaHandle")
            .field("saga", &self.reader.saga())
            .finish_non_exhaustive()
    }
}

impl SagaHandle {
    /// Status, history, retry and abort of this saga's instances.
    pub fn reader(&self) -> &SagaReader {
        &self.reader
    }

    /// The health of its projection.
    pub fn projection(&self) -> &ProjectionHandle {
        &self.projection
    }

    /// Stops it: the instances being advanced record their outcome first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.driver.await;
        self.projection.stop().await;
    }

    /// Kills it at once, as a crash would.
    pub fn abort(self) {
        self.driver.abort();
        self.projection.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projected_history_keeps_its_first_events_up_to_the_bound() {
        let max = super::super::MAX_HISTORY;
        let mut history: Vec<Value> = (1..max).map(|v| json!({ "version": v })).collect();
        assert!(record(&mut history, json!({ "version": max })));
        assert_eq!(history.len(), max);
        assert!(!record(&mut history, json!({ "version": max + 1 })));
        assert_eq!(history.len(), max);
        assert_eq!(history.last(), Some(&json!({ "version": max })));
    }
}
