//! Sagas end to end on each backend: a three-step fulfilment saga over three test aggregates
//! (order, shelf, wallet), its compensation in reverse order, stuck instances and an operator's
//! retry, timeouts, restarts with overdue deadlines, a crash between dispatch and outcome, two
//! runners on one instance, duplicate starts and definition versions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::projection::{ProjectionRunner, ReadModels, RetrySchedule, RunnerOptions};
use nexus_runtime::saga::{
    SagaCommands, SagaDefinition, SagaEvent, SagaHandle, SagaOptions, SagaReader, SagaRunner,
    SagaStatus, Step, StepCommand, StepRetry, instance_id, instance_stream,
};
use nexus_runtime::{
    Aggregate, CommandHandler, DomainEvent, EventStore, Metadata, Repository, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::projection::on_each_backend;
use crate::support;

// ---- the test domain ----------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    placed: bool,
    fail_confirm: bool,
    confirmed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum OrderEvent {
    Placed {
        key: String,
        amount: i64,
        fail_confirm: bool,
    },
    Confirmed,
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "Placed",
            Self::Confirmed => "Confirmed",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum OrderCommand {
    Place {
        key: String,
        amount: i64,
        #[serde(default)]
        fail_confirm: bool,
    },
    Confirm,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = Refused;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, Refused> {
        match command {
            OrderCommand::Place {
                key,
                amount,
                fail_confirm,
            } if !self.placed => Ok(vec![OrderEvent::Placed {
                key: key.clone(),
                amount: *amount,
                fail_confirm: *fail_confirm,
            }]),
            OrderCommand::Place { .. } => Err(Refused("already placed".into())),
            OrderCommand::Confirm if self.fail_confirm => Err(Refused("cannot confirm".into())),
            OrderCommand::Confirm if self.confirmed => Ok(vec![]),
            OrderCommand::Confirm => Ok(vec![OrderEvent::Confirmed]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { fail_confirm, .. } => {
                self.placed = true;
                self.fail_confirm = *fail_confirm;
            }
            OrderEvent::Confirmed => self.confirmed = true,
        }
    }
}

/// Stock reservations per order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Shelf {
    reserved: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum ShelfEvent {
    Reserved { order: String },
    Released { order: String },
}

impl DomainEvent for ShelfEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Reserved { .. } => "Reserved",
            Self::Released { .. } => "Released",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum ShelfCommand {
    Reserve { order: String },
    Release { order: String },
}

impl Aggregate for Shelf {
    const TYPE: &'static str = "shelf";
    type Command = ShelfCommand;
    type Event = ShelfEvent;
    type Error = Refused;

    fn handle(&self, command: &ShelfCommand) -> Result<Vec<ShelfEvent>, Refused> {
        match command {
            ShelfCommand::Reserve { order } => Ok(vec![ShelfEvent::Reserved {
                order: order.clone(),
            }]),
            // Nothing reserved is nothing to release.
            ShelfCommand::Release { order } if !self.reserved.contains(order) => Ok(vec![]),
            ShelfCommand::Release { order } => Ok(vec![ShelfEvent::Released {
                order: order.clone(),
            }]),
        }
    }

    fn apply(&mut self, event: &ShelfEvent) {
        match event {
            ShelfEvent::Reserved { order } => self.reserved.push(order.clone()),
            ShelfEvent::Released { order } => self.reserved.retain(|o| o != order),
        }
    }
}

/// Charges per order; refunds can be blocked (a broken payment provider).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Wallet {
    charged: Vec<String>,
    refunds_blocked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum WalletEvent {
    Charged { order: String },
    Captured { order: String },
    Refunded { order: String },
    RefundsBlocked { blocked: bool },
}

impl DomainEvent for WalletEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Charged { .. } => "Charged",
            Self::Captured { .. } => "Captured",
            Self::Refunded { .. } => "Refunded",
            Self::RefundsBlocked { .. } => "RefundsBlocked",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum WalletCommand {
    Charge { order: String },
    Capture { order: String },
    Refund { order: String },
    BlockRefunds { blocked: bool },
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "wallet";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = Refused;

    fn handle(&self, command: &WalletCommand) -> Result<Vec<WalletEvent>, Refused> {
        match command {
            WalletCommand::Charge { order } => Ok(vec![WalletEvent::Charged {
                order: order.clone(),
            }]),
            WalletCommand::Capture { order } => Ok(vec![WalletEvent::Captured {
                order: order.clone(),
            }]),
            WalletCommand::Refund { .. } if self.refunds_blocked => {
                Err(Refused("refunds are blocked".into()))
            }
            WalletCommand::Refund { order } if !self.charged.contains(order) => Ok(vec![]),
            WalletCommand::Refund { order } => Ok(vec![WalletEvent::Refunded {
                order: order.clone(),
            }]),
            WalletCommand::BlockRefunds { blocked } => {
                Ok(vec![WalletEvent::RefundsBlocked { blocked: *blocked }])
            }
        }
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Charged { order } => self.charged.push(order.clone()),
            WalletEvent::Refunded { order } => self.charged.retain(|o| o != order),
            WalletEvent::Captured { .. } => {}
            WalletEvent::RefundsBlocked { blocked } => self.refunds_blocked = *blocked,
        }
    }
}

// ---- the saga -----------------------------------------------------------------------------

const SAGA: &str = "fulfilment";

fn order_of(context: &nexus_runtime::saga::SagaContext<'_>) -> String {
    context.correlation_key.to_owned()
}

/// reserve → charge → confirm; release and refund undo the first two. With `await_capture`
/// the charge waits for `Captured` of its order, for at most `charge_timeout`.
fn fulfilment(version: u32, await_capture: bool, charge_timeout: Duration) -> SagaDefinition {
    let fast = StepRetry::new(3, Duration::from_millis(20));
    let mut charge = Step::new("charge", |c| {
        Ok(StepCommand::new(
            "wallet",
            "w",
            json!({"type": "Charge", "order": order_of(c)}),
        ))
    })
    .compensate(|c| {
        Ok(StepCommand::new(
            "wallet",
            "w",
            json!({"type": "Refund", "order": order_of(c)}),
        ))
    })
    .retry(fast)
    .compensation_retry(fast);
    if await_capture {
        charge = charge.awaits("Captured").timeout(charge_timeout);
    }
    SagaDefinition::builder(SAGA, version)
        .starts_on("order", "Placed")
        .correlate(|event| {
            if event.stream.aggregate_type() == "order" {
                Some(event.stream.aggregate_id().to_owned())
            } else {
                serde_json::from_str::<Value>(event.payload.get())
                    .ok()?
                    .get("order")?
                    .as_str()
                    .map(str::to_owned)
            }
        })
        .step(
            Step::new("reserve", |c| {
                Ok(StepCommand::new(
                    "shelf",
                    "main",
                    json!({"type": "Reserve", "order": order_of(c)}),
                ))
            })
            .compensate(|c| {
                Ok(StepCommand::new(
                    "shelf",
                    "main",
                    json!({"type": "Release", "order": order_of(c)}),
                ))
            })
            .retry(fast)
            .compensation_retry(fast),
        )
        .step(charge)
        .step(
            Step::new("confirm", |c| {
                Ok(StepCommand::new(
                    "order",
                    order_of(c),
                    json!({"type": "Confirm"}),
                ))
            })
            .retry(fast),
        )
        .build()
        .expect("the test saga is valid")
}

// ---- the setup ----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

struct Setup {
    store: Arc<dyn EventStore>,
    read_models: ReadModels,
    _dir: tempfile::TempDir,
    #[cfg(feature = "postgres")]
    _db: Option<support::TestDb>,
}

impl Setup {
    async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let (store, dir) = support::embedded();
                Some(Self {
                    store,
                    read_models: ReadModels::sqlite(dir.path().join("read-models")),
                    _dir: dir,
                    #[cfg(feature = "postgres")]
                    _db: None,
                })
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let db = support::TestDb::create().await?;
                let store = db.store().await;
                let read_models =
                    ReadModels::postgres(&db.url, ReadModels::DEFAULT_POSTGRES_SCHEMA)
                        .await
                        .expect("the PostgreSQL read models open");
                Some(Self {
                    store,
                    read_models,
                    _dir: tempfile::tempdir().unwrap(),
                    _db: Some(db),
                })
            }
        }
    }

    fn commands(&self) -> SagaCommands {
        SagaCommands::new()
            .handler(self.handler::<Order>())
            .handler(self.handler::<Shelf>())
            .handler(self.handler::<Wallet>())
    }

    fn handler<A: Aggregate>(&self) -> CommandHandler<A> {
        CommandHandler::new(Repository::new(Arc::clone(&self.store)))
    }

    /// A runner like one process would start, its read models in `read_models`.
    async fn spawn_on(
        &self,
        read_models: ReadModels,
        definitions: Vec<SagaDefinition>,
    ) -> SagaHandle {
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&self.store)));
        let projections =
            ProjectionRunner::with_read_models(Arc::clone(&self.store), bus, read_models)
                .with_options(RunnerOptions {
                    retry: RetrySchedule {
                        initial: Duration::from_millis(20),
                        max: Duration::from_millis(200),
                        max_retries: 5,
                    },
                    ..RunnerOptions::default()
                });
        SagaRunner::new(Arc::clone(&self.store), self.commands(), projections)
            .with_options(SagaOptions {
                reconcile_interval: Duration::from_millis(500),
                error_backoff: Duration::from_millis(50),
                ..SagaOptions::default()
            })
            .spawn(definitions)
            .await
            .expect("the saga runner starts")
    }

    async fn spawn(&self, definitions: Vec<SagaDefinition>) -> SagaHandle {
        self.spawn_on(self.read_models.clone(), definitions).await
    }

    async fn place(&self, order: &str, fail_confirm: bool) {
        self.handler::<Order>()
            .execute(
                order,
                &OrderCommand::Place {
                    key: order.to_owned(),
                    amount: 10,
                    fail_confirm,
                },
                Metadata::default(),
            )
            .await
            .expect("the order is placed");
    }

    async fn wallet(&self, command: WalletCommand) {
        self.handler::<Wallet>()
            .execute("w", &command, Metadata::default())
            .await
            .expect("the wallet takes the command");
    }

    /// The event types of a stream, in order.
    async fn types(&self, stream: &StreamId) -> Vec<String> {
        match self.store.read_stream(stream, 1, None).await {
            Ok(events) => events.into_iter().map(|e| e.event_type).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The saga events of order `order`'s instance.
    async fn saga_events(&self, order: &str) -> Vec<SagaEvent> {
        let stream = instance_stream(SAGA, &instance_id(SAGA, order));
        match self.store.read_stream(&stream, 1, None).await {
            Ok(events) => events
                .into_iter()
                .map(|e| serde_json::from_str(e.payload.get()).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The (event type, order) pairs of one aggregate's stream.
    async fn entries(&self, aggregate: &str, id: &str) -> Vec<(String, String)> {
        match self
            .store
            .read_stream(&StreamId::new(aggregate, id), 1, None)
            .await
        {
            Ok(events) => events
                .into_iter()
                .filter_map(|e| {
                    let payload: Value = serde_json::from_str(e.payload.get()).ok()?;
                    let order = payload.get("order")?.as_str()?.to_owned();
                    Some((e.event_type, order))
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Waits until the status document of `order`'s instance has `status`.
async fn until_status(
    reader: &SagaReader,
    order: &str,
    status: SagaStatus,
    within: Duration,
) -> Value {
    let id = instance_id(SAGA, order);
    let deadline = Instant::now() + within;
    loop {
        let doc = reader.status(&id).await.unwrap();
        if let Some(doc) = &doc
            && doc["status"] == json!(status.as_str())
        {
            return doc.clone();
        }
        assert!(
            Instant::now() < deadline,
            "instance of {order} did not reach {status:?} within {within:?}; it is {doc:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(events: &[SagaEvent]) -> Vec<&'static str> {
    events.iter().map(DomainEvent::event_type).collect()
}

on_each_backend!(
    a_saga_runs_its_steps_in_order_and_completes,
    a_step_failing_every_retry_compensates_completed_steps_in_reverse_order,
    a_failing_compensation_leaves_the_saga_stuck_until_an_operator_retries_it,
    a_step_timeout_compensates_what_was_done_including_the_unknown_step,
    a_deadline_due_while_no_runner_runs_fires_once_after_restart,
    a_crash_between_dispatch_and_outcome_executes_the_step_once,
    two_runners_never_advance_one_instance_twice,
    a_duplicate_start_event_starts_nothing_and_versions_are_pinned,
);

async fn a_saga_runs_its_steps_in_order_and_completes(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let sagas = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    setup.place("o1", false).await;
    let doc = until_status(
        sagas.reader(),
        "o1",
        SagaStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(doc["steps"].as_array().unwrap().len(), 3);
    assert!(
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "succeeded" && s["attempts"] == 1)
    );
    assert_eq!(
        names(&setup.saga_events("o1").await),
        [
            "SagaStarted",
            "SagaStepDispatched",
            "SagaStepSucceeded",
            "SagaStepDispatched",
            "SagaStepSucceeded",
            "SagaStepDispatched",
            "SagaStepSucceeded",
            "SagaCompleted"
        ]
    );
    assert_eq!(
        setup.entries("shelf", "main").await,
        [("Reserved".into(), "o1".into())]
    );
    assert_eq!(
        setup.entries("wallet", "w").await,
        [("Charged".into(), "o1".into())]
    );
    assert_eq!(
        setup.types(&StreamId::new("order", "o1")).await,
        ["Placed", "Confirmed"]
    );
    let listed = sagas
        .reader()
        .list(Some(SagaStatus::Completed), 10, 0)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        sagas
            .reader()
            .list(Some(SagaStatus::Running), 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let history = sagas
        .reader()
        .history(&instance_id(SAGA, "o1"), 3)
        .await
        .unwrap();
    assert_eq!(history.len(), 3, "a history read is bounded by its limit");
    sagas.stop().await;
}

async fn a_step_failing_every_retry_compensates_completed_steps_in_reverse_order(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let sagas = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    setup.place("o2", true).await;
    let doc = until_status(
        sagas.reader(),
        "o2",
        SagaStatus::Compensated,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        doc["reason"].as_str().unwrap().contains("cannot confirm"),
        "{doc}"
    );
    let events = setup.saga_events("o2").await;
    let failed: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::SagaStepFailed {
                step: 2, attempt, ..
            } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        [1, 2, 3],
        "the step is tried exactly as often as its policy says"
    );
    let compensated: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::SagaStepCompensated { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(
        compensated,
        [1, 0],
        "charge is undone before reserve: reverse order of completion"
    );
    assert_eq!(names(&events).last(), Some(&"SagaFailed"));
    assert_eq!(
        setup.entries("wallet", "w").await,
        [
            ("Charged".into(), "o2".into()),
            ("Refunded".into(), "o2".into())
        ]
    );
    assert_eq!(
        setup.entries("shelf", "main").await,
        [
            ("Reserved".into(), "o2".into()),
            ("Released".into(), "o2".into())
        ]
    );
    sagas.stop().await;
}

async fn a_failing_compensation_leaves_the_saga_stuck_until_an_operator_retries_it(
    backend: Backend,
) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    setup
        .wallet(WalletCommand::BlockRefunds { blocked: true })
        .await;
    let sagas = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    setup.place("o3", true).await;
    let doc = until_status(
        sagas.reader(),
        "o3",
        SagaStatus::Stuck,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("refunds are blocked"),
        "{doc}"
    );
    assert_eq!(doc["steps"][1]["compensation"]["status"], "failed");
    let stuck = sagas
        .reader()
        .list(Some(SagaStatus::Stuck), 10, 0)
        .await
        .unwrap();
    assert_eq!(
        stuck.len(),
        1,
        "the stuck instance is in the operator's list"
    );
    // Stuck means waiting: nothing happens by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        names(&setup.saga_events("o3").await).last(),
        Some(&"SagaStuck")
    );
    let id = instance_id(SAGA, "o3");
    assert!(
        sagas
            .reader()
            .abort(&instance_id(SAGA, "nope"), None, "x".into())
            .await
            .is_err()
    );

    setup
        .wallet(WalletCommand::BlockRefunds { blocked: false })
        .await;
    sagas.reader().retry(&id, Some("ops".into())).await.unwrap();
    until_status(
        sagas.reader(),
        "o3",
        SagaStatus::Compensated,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        sagas.reader().retry(&id, None).await.is_err(),
        "only a stuck saga can be retried"
    );
    let compensated: Vec<usize> = setup
        .saga_events("o3")
        .await
        .iter()
        .filter_map(|e| match e {
            SagaEvent::SagaStepCompensated { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(compensated, [1, 0]);
    assert_eq!(
        setup.entries("wallet", "w").await,
        [
            ("Charged".into(), "o3".into()),
            ("Refunded".into(), "o3".into())
        ]
    );
    sagas.stop().await;
}

async fn a_step_timeout_compensates_what_was_done_including_the_unknown_step(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let sagas = setup
        .spawn(vec![fulfilment(1, true, Duration::from_millis(400))])
        .await;
    // o4 is captured in time and completes; o5 never is and times out.
    setup.place("o4", false).await;
    setup.place("o5", false).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup
        .entries("wallet", "w")
        .await
        .iter()
        .any(|(t, o)| t == "Charged" && o == "o4")
    {
        assert!(Instant::now() < deadline, "o4 was never charged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    setup
        .wallet(WalletCommand::Capture { order: "o4".into() })
        .await;
    until_status(
        sagas.reader(),
        "o4",
        SagaStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    let doc = until_status(
        sagas.reader(),
        "o5",
        SagaStatus::TimedOut,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("`charge` timed out"),
        "{doc}"
    );
    let events = setup.saga_events("o5").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SagaEvent::SagaTimedOut { step: Some(1), .. }))
            .count(),
        1
    );
    let compensated: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::SagaStepCompensated { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(
        compensated,
        [1, 0],
        "the accepted charge (outcome unknown) is refunded, then stock released"
    );
    // A capture after the timeout changes nothing.
    setup
        .wallet(WalletCommand::Capture { order: "o5".into() })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.saga_events("o5").await.len(), events.len());
    sagas.stop().await;
}

async fn a_deadline_due_while_no_runner_runs_fires_once_after_restart(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let definition = || fulfilment(1, true, Duration::from_secs(3));
    let sagas = setup.spawn(vec![definition()]).await;
    setup.place("o6", false).await;
    let id = instance_id(SAGA, "o6");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = sagas.reader().status(&id).await.unwrap();
        if doc.is_some_and(|d| d["steps"][1]["status"] == "waiting") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the charge never waited for its capture"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The process dies while the charge waits; its deadline passes while nothing runs.
    sagas.abort();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !setup
            .saga_events("o6")
            .await
            .iter()
            .any(|e| matches!(e, SagaEvent::SagaTimedOut { .. })),
        "nothing fired while no runner ran"
    );
    let restarted = Instant::now();
    let sagas = setup.spawn(vec![definition()]).await;
    until_status(
        sagas.reader(),
        "o6",
        SagaStatus::TimedOut,
        Duration::from_secs(20),
    )
    .await;
    let fired_after = restarted.elapsed();
    assert!(
        fired_after < Duration::from_secs(5),
        "the overdue deadline fired {fired_after:?} after the restart"
    );
    // A second restart fires nothing again.
    sagas.stop().await;
    let sagas = setup.spawn(vec![definition()]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = setup.saga_events("o6").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SagaEvent::SagaTimedOut { .. }))
            .count(),
        1
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SagaEvent::SagaFailed { .. }))
            .count(),
        1
    );
    sagas.stop().await;
}

async fn a_crash_between_dispatch_and_outcome_executes_the_step_once(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    // What a runner killed after sending the first step's command leaves behind: the order, the
    // saga's start and dispatch, and the command applied under the dispatch's key, but no outcome.
    setup.place("o7", false).await;
    let id = instance_id(SAGA, "o7");
    let stream = instance_stream(SAGA, &id);
    let key = "saga:crashed:do:0".to_owned();
    let command = StepCommand::new("shelf", "main", json!({"type": "Reserve", "order": "o7"}));
    let started = SagaEvent::SagaStarted {
        saga: SAGA.into(),
        definition_version: 1,
        correlation_key: "o7".into(),
        input: json!({}),
        steps: vec!["reserve".into(), "charge".into(), "confirm".into()],
        deadline: None,
    };
    let dispatched = SagaEvent::SagaStepDispatched {
        step: 0,
        attempt: 1,
        key: key.clone(),
        command: command.clone(),
        deadline: None,
    };
    let new = |e: &SagaEvent| nexus_runtime::NewEvent::from_domain(e, Metadata::default()).unwrap();
    setup
        .store
        .append(
            &stream,
            nexus_runtime::ExpectedVersion::NoStream,
            vec![new(&started), new(&dispatched)],
        )
        .await
        .unwrap();
    setup
        .commands()
        .send(&command, &key, Metadata::default())
        .await
        .unwrap();
    // The restarted runner finds the dispatch without an outcome and sends it again, same key.
    let sagas = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    until_status(
        sagas.reader(),
        "o7",
        SagaStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        setup.entries("shelf", "main").await,
        [("Reserved".into(), "o7".into())],
        "the reservation was executed once"
    );
    let events = setup.saga_events("o7").await;
    let succeeded = events.iter().find_map(|e| match e {
        SagaEvent::SagaStepSucceeded {
            step: 0, output, ..
        } => Some(output.clone()),
        _ => None,
    });
    assert_eq!(
        succeeded.unwrap()["replayed"],
        json!(true),
        "the re-send got the stored outcome"
    );
    // The same key with another command is refused, never applied.
    let other = StepCommand::new("shelf", "main", json!({"type": "Reserve", "order": "o8"}));
    let failure = setup
        .commands()
        .send(&other, &key, Metadata::default())
        .await
        .unwrap_err();
    assert!(!failure.outcome_unknown);
    sagas.stop().await;
}

async fn two_runners_never_advance_one_instance_twice(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    let other_dir = tempfile::tempdir().unwrap();
    // Two processes: each its own read model, both on the same store and aggregates.
    let a = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    let b = setup
        .spawn_on(
            ReadModels::sqlite(other_dir.path()),
            vec![fulfilment(1, false, Duration::ZERO)],
        )
        .await;
    let orders: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    for order in &orders {
        setup.place(order, false).await;
    }
    for order in &orders {
        until_status(
            a.reader(),
            order,
            SagaStatus::Completed,
            Duration::from_secs(30),
        )
        .await;
        until_status(
            b.reader(),
            order,
            SagaStatus::Completed,
            Duration::from_secs(30),
        )
        .await;
    }
    let reserved = setup.entries("shelf", "main").await;
    let charged = setup.entries("wallet", "w").await;
    for order in &orders {
        assert_eq!(
            reserved.iter().filter(|(_, o)| o == order).count(),
            1,
            "{order} reserved once"
        );
        assert_eq!(
            charged.iter().filter(|(_, o)| o == order).count(),
            1,
            "{order} charged once"
        );
        assert_eq!(
            setup.types(&StreamId::new("order", order)).await,
            ["Placed", "Confirmed"]
        );
        let events = setup.saga_events(order).await;
        let mut dispatched: Vec<(usize, u32)> = Vec::new();
        let mut succeeded: Vec<usize> = Vec::new();
        for event in &events {
            match event {
                SagaEvent::SagaStepDispatched { step, attempt, .. } => {
                    assert!(
                        !dispatched.contains(&(*step, *attempt)),
                        "{order}: attempt dispatched twice"
                    );
                    dispatched.push((*step, *attempt));
                }
                SagaEvent::SagaStepSucceeded { step, .. } => succeeded.push(*step),
                _ => {}
            }
        }
        assert_eq!(
            succeeded,
            [0, 1, 2],
            "{order}: each step succeeded once, in order"
        );
        let ends = names(&events);
        assert_eq!(ends.iter().filter(|n| **n == "SagaStarted").count(), 1);
        assert_eq!(ends.iter().filter(|n| **n == "SagaCompleted").count(), 1);
        assert_eq!(ends.last(), Some(&"SagaCompleted"));
    }
    a.stop().await;
    b.stop().await;
}

/// Saga `dup`: one step charging wallet `d`, started by an order's `Placed` and correlated by
/// the order's `key` field, so that two orders with one key are one instance.
fn correlated_by_key() -> SagaDefinition {
    SagaDefinition::builder("dup", 1)
        .starts_on("order", "Placed")
        .correlate(|e| {
            serde_json::from_str::<Value>(e.payload.get())
                .ok()?
                .get("key")?
                .as_str()
                .map(str::to_owned)
        })
        .step(Step::new("charge", |c| {
            Ok(StepCommand::new(
                "wallet",
                "d",
                json!({"type": "Charge", "order": c.correlation_key}),
            ))
        }))
        .build()
        .unwrap()
}

async fn a_duplicate_start_event_starts_nothing_and_versions_are_pinned(backend: Backend) {
    let Some(setup) = Setup::new(backend).await else {
        return;
    };
    // Version 1 waits for a capture that comes late; version 2 does not wait.
    let v1 = || fulfilment(1, true, Duration::from_secs(60));
    let v2 = || fulfilment(2, false, Duration::ZERO);
    let sagas = setup.spawn(vec![v1()]).await;
    setup.place("v1", false).await;
    let id = instance_id(SAGA, "v1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sagas
        .reader()
        .status(&id)
        .await
        .unwrap()
        .is_some_and(|d| d["steps"][1]["status"] == "waiting")
    {
        assert!(Instant::now() < deadline, "v1 never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sagas.stop().await;
    // A process without version 1 refuses to start while an instance needs it.
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&setup.store)));
    let refused = SagaRunner::new(
        Arc::clone(&setup.store),
        setup.commands(),
        ProjectionRunner::with_read_models(
            Arc::clone(&setup.store),
            bus,
            setup.read_models.clone(),
        ),
    )
    .spawn(vec![v2()])
    .await;
    assert!(
        matches!(
            refused,
            Err(nexus_runtime::saga::SagaError::MissingDefinition { version: 1, .. })
        ),
        "{refused:?}"
    );
    let sagas = setup.spawn(vec![v1(), v2()]).await;
    setup.place("v2", false).await;
    let doc = until_status(
        sagas.reader(),
        "v2",
        SagaStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(doc["definition_version"], 2);
    // v1 still waits (its own version), then completes on its capture.
    setup
        .wallet(WalletCommand::Capture { order: "v1".into() })
        .await;
    let doc = until_status(
        sagas.reader(),
        "v1",
        SagaStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(doc["definition_version"], 1);

    // A second start event with the same correlation key: the store refuses a second `Placed`
    // on one order, so send one on another stream the correlation maps to the same key.
    let dup = setup.spawn(vec![correlated_by_key()]).await;
    for order in ["d1", "d2"] {
        setup
            .handler::<Order>()
            .execute(
                order,
                &OrderCommand::Place {
                    key: "same".into(),
                    amount: 1,
                    fail_confirm: false,
                },
                Metadata::default(),
            )
            .await
            .unwrap();
    }
    let dup_id = instance_id("dup", "same");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = dup.reader().status(&dup_id).await.unwrap();
        if doc.is_some_and(|d| d["status"] == "completed") {
            break;
        }
        assert!(Instant::now() < deadline, "the dup saga never completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let same = dup
        .reader()
        .list(None, 100, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d["correlation_key"] == "same")
        .count();
    assert_eq!(same, 1, "one instance per key");
    let charges = setup.entries("wallet", "d").await;
    assert_eq!(
        charges.iter().filter(|(_, o)| o == "same").count(),
        1,
        "{charges:?}"
    );
    let started = setup
        .types(&instance_stream("dup", &dup_id))
        .await
        .iter()
        .filter(|t| *t == "SagaStarted")
        .count();
    assert_eq!(started, 1);
    dup.stop().await;
    sagas.stop().await;
}

/// The saga list (for `reader`): by status (`stuck` is the one stuck instance), paged with
/// `next_offset`; bad queries, ids and sagas are refused.
#[cfg(feature = "http")]
async fn saga_lists_are_filtered_paged_and_checked(
    reader: &crate::support::http::Caller<'_>,
    stuck: &str,
) {
    use axum::http::StatusCode;

    let (status, body) = reader.get(&format!("/sagas/{SAGA}?status=stuck")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["items"][0]["id"], json!(stuck));
    let (_, body) = reader.get(&format!("/sagas/{SAGA}?limit=1")).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["next_offset"], 1);
    let (_, body) = reader.get(&format!("/sagas/{SAGA}?limit=1&offset=1")).await;
    assert_eq!(body["next_offset"], Value::Null);
    for bad in [
        "?status=asleep",
        "?limit=0",
        "?limit=501",
        "?offset=1000001",
        "?colour=red",
    ] {
        let (status, body) = reader.get(&format!("/sagas/{SAGA}{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = reader.get(&format!("/sagas/{SAGA}/not-a-uuid")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = reader.get("/sagas/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = reader
        .get(&format!("/sagas/{SAGA}/{}", instance_id(SAGA, "zz")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The saga routes: reads need `aggregates:read`, retry and abort `dlq:admin`; bounds on pages,
/// statuses, ids and reasons answer 400; a stuck instance is retried over HTTP to its end.
#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_routes_show_list_retry_and_abort_behind_access_control() {
    use axum::http::StatusCode;
    use nexus_runtime::http::{CommandService, SagaApi};

    use crate::support::http::{Caller, access};

    let Some(setup) = Setup::new(Backend::Sqlite).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let access = access(dir.path()).await;
    setup
        .wallet(WalletCommand::BlockRefunds { blocked: true })
        .await;
    let sagas = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    let api = SagaApi::new([sagas.reader().clone()], access.clone());
    let app = CommandService::new(Arc::clone(&setup.store))
        .with_access(access)
        .with_routes(api.routes(), api.openapi_paths())
        .router();

    setup.place("h1", false).await;
    setup.place("h2", true).await;
    until_status(
        sagas.reader(),
        "h1",
        SagaStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    until_status(
        sagas.reader(),
        "h2",
        SagaStatus::Stuck,
        Duration::from_secs(20),
    )
    .await;
    let (h1, h2) = (instance_id(SAGA, "h1"), instance_id(SAGA, "h2"));
    let anonymous = Caller::anonymous(&app);
    let reader = Caller::with_role(&app, "reader");
    let admin = Caller::with_role(&app, "admin");

    let (status, _) = anonymous.get(&format!("/sagas/{SAGA}/{h1}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = reader.get(&format!("/sagas/{SAGA}/{h1}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["steps"][0]["name"], "reserve");
    assert_eq!(body["history"][0]["type"], "SagaStarted");
    assert_eq!(body["history"].as_array().unwrap().len(), 8);

    saga_lists_are_filtered_paged_and_checked(&reader, &h2).await;

    // Operating needs dlq:admin, which a reader lacks.
    let (status, _) = reader
        .post(&format!("/sagas/{SAGA}/{h2}/retry"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = admin.post(&format!("/sagas/{SAGA}/{h1}/retry"), None).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a completed saga is not stuck: {body}"
    );
    let long = "x".repeat(1_001);
    for reason in ["", long.as_str()] {
        let (status, _) = admin
            .post(
                &format!("/sagas/{SAGA}/{h2}/abort"),
                Some(json!({"reason": reason})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    setup
        .wallet(WalletCommand::BlockRefunds { blocked: false })
        .await;
    let (status, body) = admin.post(&format!("/sagas/{SAGA}/{h2}/retry"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "compensating");
    until_status(
        sagas.reader(),
        "h2",
        SagaStatus::Compensated,
        Duration::from_secs(20),
    )
    .await;
    let retried = setup
        .saga_events("h2")
        .await
        .into_iter()
        .find_map(|e| match e {
            SagaEvent::SagaRetried { actor } => Some(actor),
            _ => None,
        });
    assert_eq!(
        retried,
        Some(Some("operator".to_owned())),
        "the retry names who asked"
    );
    sagas.stop().await;
}

/// An operator's abort ends a stuck instance for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stuck_saga_ends_and_does_nothing_more() {
    let Some(setup) = Setup::new(Backend::Sqlite).await else {
        return;
    };
    setup
        .wallet(WalletCommand::BlockRefunds { blocked: true })
        .await;
    let sagas = setup
        .spawn(vec![fulfilment(1, false, Duration::ZERO)])
        .await;
    setup.place("a1", true).await;
    until_status(
        sagas.reader(),
        "a1",
        SagaStatus::Stuck,
        Duration::from_secs(20),
    )
    .await;
    let id = instance_id(SAGA, "a1");
    sagas
        .reader()
        .abort(&id, Some("ops".into()), "refunded by hand".into())
        .await
        .unwrap();
    let doc = until_status(
        sagas.reader(),
        "a1",
        SagaStatus::Aborted,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(doc["reason"], "refunded by hand");
    setup
        .wallet(WalletCommand::BlockRefunds { blocked: false })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        names(&setup.saga_events("a1").await).last(),
        Some(&"SagaAborted")
    );
    assert!(
        sagas
            .reader()
            .list(Some(SagaStatus::Stuck), 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    sagas.stop().await;
}
