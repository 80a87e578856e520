//! A given/when/then harness for sagas: the real runner over an embedded store in a temporary
//! folder, fed by the in-process bus, so a scenario exercises the same code a service runs.
//!
//! ```no_run
//! # use nexus_runtime::saga::{SagaDefinition, SagaStatus};
//! # use nexus_runtime::testing::SagaTest;
//! # async fn example<Order, Stock>(definition: SagaDefinition, placed: Order::Event, submit: Order::Command)
//! # where Order: nexus_runtime::Aggregate, Order::Command: serde::Serialize + serde::de::DeserializeOwned,
//! #       Stock: nexus_runtime::Aggregate, Stock::Command: serde::Serialize + serde::de::DeserializeOwned {
//! let scenario = SagaTest::new(definition)
//!     .aggregate::<Order>()
//!     .aggregate::<Stock>()
//!     .given::<Order>("o-1", [placed])
//!     .when::<Order>("o-1", submit)
//!     .await;
//! scenario.then_status("o-1", SagaStatus::Completed).await;
//! scenario.stop().await;
//! # }
//! ```

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::bus::EventBus;
use crate::bus::local::InProcessBus;
use crate::command::{CommandHandler, Repository};
use crate::event::{Metadata, NewEvent, StreamId};
use crate::projection::{ProjectionRunner, ReadModels, RetrySchedule, RunnerOptions};
use crate::saga::{
    SagaCommands, SagaDefinition, SagaEvent, SagaHandle, SagaOptions, SagaRunner, SagaState,
    SagaStatus, StepCommand, StepFailure, instance_id, instance_stream,
};
use crate::store::embedded::EmbeddedStore;
use crate::store::{EventStore, ExpectedVersion, ReadError};

/// How long a scenario waits for a saga to reach what a `then` expects.
const WAIT: Duration = Duration::from_secs(20);

type Register = Box<dyn Fn(&Arc<dyn EventStore>, SagaCommands) -> SagaCommands + Send + Sync>;

/// One saga scenario: the aggregates it commands, their past events, then a command.
pub struct SagaTest {
    definition: SagaDefinition,
    aggregates: Vec<Register>,
    given: Vec<(StreamId, Vec<NewEvent>)>,
}

impl Debug for SagaTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaTest")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

impl SagaTest {
    /// A scenario of the saga `definition`.
    pub fn new(definition: SagaDefinition) -> Self {
        Self {
            definition,
            aggregates: Vec::new(),
            given: Vec::new(),
        }
    }

    /// The saga may command aggregate `A` (and `when`/`and` may too).
    pub fn aggregate<A>(mut self) -> Self
    where
        A: Aggregate,
        A::Command: DeserializeOwned,
    {
        self.aggregates.push(Box::new(|store, commands| {
            commands.handler(CommandHandler::new(Repository::<A>::new(Arc::clone(store))))
        }));
        self
    }

    /// Aggregate `id` of type `A` has these events in its past (the saga sees them too, as it
    /// would after a restart).
    ///
    /// # Panics
    /// When an event does not encode.
    pub fn given<A: Aggregate>(
        mut self,
        id: &str,
        events: impl IntoIterator<Item = A::Event>,
    ) -> Self {
        let events = events
            .into_iter()
            .map(|e| NewEvent::from_domain(&e, Metadata::default()).expect("a given event encodes"))
            .collect();
        self.given.push((StreamId::new(A::TYPE, id), events));
        self
    }

    /// Starts the saga runner over the given history and sends `command` to aggregate `id` of
    /// type `A` through the command path.
    ///
    /// # Panics
    /// When the store, the runner or the command fails.
    pub async fn when<A>(self, id: &str, command: A::Command) -> SagaScenario
    where
        A: Aggregate,
        A::Command: Serialize,
    {
        let scenario = self.start().await;
        if let Err(err) = scenario.and::<A>(id, command).await {
            panic!("the `when` command to {}/{id} failed: {err}", A::TYPE);
        }
        scenario
    }

    /// Starts the saga runner over the given history, sending nothing.
    ///
    /// # Panics
    /// When the store or the runner fails.
    pub async fn when_nothing(self) -> SagaScenario {
        self.start().await
    }

    async fn start(self) -> SagaScenario {
        let dir = TempFolder::new();
        let store: Arc<dyn EventStore> = Arc::new(
            EmbeddedStore::open(dir.0.join("events.db")).expect("the test event store opens"),
        );
        for (stream, events) in self.given {
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("the given events are appended");
        }
        let commands = self
            .aggregates
            .iter()
            .fold(SagaCommands::new(), |commands, register| {
                register(&store, commands)
            });
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
        let projections = ProjectionRunner::with_read_models(
            Arc::clone(&store),
            bus,
            ReadModels::sqlite(dir.0.join("read-models")),
        )
        .with_options(RunnerOptions {
            retry: RetrySchedule {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                max_retries: 5,
            },
            ..RunnerOptions::default()
        });
        let saga = self.definition.name().to_owned();
        let handle = SagaRunner::new(Arc::clone(&store), commands.clone(), projections)
            .with_options(SagaOptions {
                reconcile_interval: Duration::from_millis(200),
                error_backoff: Duration::from_millis(20),
                ..SagaOptions::default()
            })
            .spawn(vec![self.definition])
            .await
            .expect("the saga runner starts");
        SagaScenario {
            saga,
            store,
            commands,
            handle: Some(handle),
            sent: std::sync::atomic::AtomicU64::new(0),
            _dir: dir,
        }
    }
}

/// A running scenario, ready to be driven further and asserted.
pub struct SagaScenario {
    saga: String,
    store: Arc<dyn EventStore>,
    commands: SagaCommands,
    handle: Option<SagaHandle>,
    sent: std::sync::atomic::AtomicU64,
    _dir: TempFolder,
}

impl Debug for SagaScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaScenario")
            .field("saga", &self.saga)
            .finish_non_exhaustive()
    }
}

impl SagaScenario {
    /// Sends a further command to aggregate `id` of type `A` (a review, a stock count, ...).
    pub async fn and<A>(&self, id: &str, command: A::Command) -> Result<Value, StepFailure>
    where
        A: Aggregate,
        A::Command: Serialize,
    {
        let json = serde_json::to_value(&command).map_err(|err| {
            StepFailure::definitive(format!("the command does not encode: {err}"))
        })?;
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.commands
            .send(
                &StepCommand::new(A::TYPE, id, json),
                &format!("saga-test-{n}"),
                Metadata::default(),
            )
            .await
    }

    /// Status, history, retry and abort of the saga's instances (what `/sagas` serves).
    pub fn reader(&self) -> &crate::saga::SagaReader {
        self.handle.as_ref().expect("the scenario runs").reader()
    }

    /// The instance correlated to `key`, folded from its events, once `check` holds.
    ///
    /// # Panics
    /// When `check` does not hold within 20 s.
    pub async fn wait_for(
        &self,
        key: &str,
        what: &str,
        check: impl Fn(&SagaState) -> bool,
    ) -> SagaState {
        let reader = self.reader();
        let id = instance_id(&self.saga, key);
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Ok(state) = reader.state(&id).await {
                if check(&state) {
                    return state;
                }
                last = Some(state);
            }
            assert!(
                started.elapsed() < WAIT,
                "saga `{}` for `{key}` did not reach {what} within {WAIT:?}; it is {:#?}",
                self.saga,
                last
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts the instance correlated to `key` reaches `status` (waiting for it), and returns it.
    ///
    /// # Panics
    /// When it settles in another status, or reaches none within 20 s.
    pub async fn then_status(&self, key: &str, status: SagaStatus) -> SagaState {
        let state = self
            .wait_for(key, status.as_str(), |s| {
                s.status == status || s.status.is_terminal() || s.status == SagaStatus::Stuck
            })
            .await;
        assert_eq!(
            state.status, status,
            "saga `{}` for `{key}` ended otherwise: {:#?}",
            self.saga, state
        );
        state
    }

    /// The events the instance correlated to `key` recorded, in order.
    pub async fn history(&self, key: &str) -> Vec<SagaEvent> {
        let stream = instance_stream(&self.saga, &instance_id(&self.saga, key));
        self.read(&stream)
            .await
            .into_iter()
            .map(|e| e.decode().expect("a saga event decodes"))
            .collect()
    }

    /// The names of the steps the instance correlated to `key` undid, in the order it undid them.
    pub async fn compensated(&self, key: &str) -> Vec<String> {
        let history = self.history(key).await;
        let steps: Vec<String> = match history.first() {
            Some(SagaEvent::SagaStarted { steps, .. }) => steps.clone(),
            _ => return Vec::new(),
        };
        history
            .iter()
            .filter_map(|e| match e {
                SagaEvent::SagaStepCompensated { step, attempt } if *attempt > 0 => {
                    steps.get(*step).cloned()
                }
                _ => None,
            })
            .collect()
    }

    /// Asserts aggregate `id` of type `A` recorded exactly `expected`, in order.
    ///
    /// # Panics
    /// When it recorded something else.
    pub async fn then_events<A>(&self, id: &str, expected: impl IntoIterator<Item = A::Event>)
    where
        A: Aggregate,
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let recorded: Vec<A::Event> = self
            .read(&StreamId::new(A::TYPE, id))
            .await
            .into_iter()
            .map(|e| e.decode().expect("an aggregate event decodes"))
            .collect();
        assert_eq!(recorded, expected, "{}/{id} recorded other events", A::TYPE);
    }

    async fn read(&self, stream: &StreamId) -> Vec<crate::event::RecordedEvent> {
        match self.store.read_stream(stream, 1, None).await {
            Ok(events) => events,
            Err(ReadError::StreamNotFound(_)) => Vec::new(),
            Err(err) => panic!("reading {stream} failed: {err}"),
        }
    }

    /// Stops the runner (what it is doing records its outcome first).
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
    }
}

impl Drop for SagaScenario {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A folder removed when dropped.
struct TempFolder(PathBuf);

impl TempFolder {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("nexus-saga-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&path).expect("a temporary folder can be created");
        Self(path)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
