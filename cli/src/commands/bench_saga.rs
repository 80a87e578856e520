//! `nexus bench saga`: concurrent three-step sagas on each backend: sagas completed per second
//! (beside a ceiling: the same commands sent straight through the command path), step latency,
//! status query latency under load (through the `/sagas` route), and how long overdue
//! deadlines take to fire after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use clap::Args;
use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::SagaApi;
use nexus_runtime::http::access::AccessControl;
use nexus_runtime::projection::{ProjectionRunner, ReadModels};
use nexus_runtime::saga::{
    SagaCommands, SagaDefinition, SagaEvent, SagaHandle, SagaOptions, SagaReader, SagaRunner,
    SagaStatus, Step, StepCommand, StepRetry, instance_id, instance_stream,
};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};
use nexus_runtime::{
    Aggregate, CommandHandler, DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent,
    Repository, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::Outcome;
use super::bench::{Backends, latency_ms, round};
use super::bench_store::Backend;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct SagaArgs {
    #[command(flatten)]
    backends: Backends,
    /// Sagas started at once.
    #[arg(long, default_value_t = 1_000)]
    sagas: usize,
    /// Sagas whose deadline passes while the runner is down.
    #[arg(long, default_value_t = 200)]
    deadlines: usize,
    /// Print JSON (the report is JSON either way).
    #[arg(long)]
    json: bool,
}

/// Whatever a step's aggregate is told, it records once.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    touched: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum TallyEvent {
    Touched,
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> &'static str {
        "Touched"
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum TallyCommand {
    Touch,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = Never;

    fn handle(&self, _: &TallyCommand) -> Result<Vec<TallyEvent>, Never> {
        Ok(vec![TallyEvent::Touched])
    }

    fn apply(&mut self, _: &TallyEvent) {
        self.touched += 1;
    }
}

const SAGA: &str = "bench";
const LATE: &str = "bench-late";

fn touch(
    step: usize,
) -> impl Fn(&nexus_runtime::saga::SagaContext<'_>) -> Result<StepCommand, String> {
    move |c| {
        Ok(StepCommand::new(
            "tally",
            format!("{}-{step}", c.correlation_key),
            json!({"type": "Touch"}),
        ))
    }
}

/// Three steps, each a command to an aggregate of its own.
fn three_steps() -> anyhow::Result<SagaDefinition> {
    let mut builder = SagaDefinition::builder(SAGA, 1).starts_on("bench-order", "Placed");
    for step in 0..3 {
        builder = builder.step(
            Step::new(format!("step-{step}"), touch(step))
                .compensate(touch(step + 10))
                .retry(StepRetry::new(3, Duration::from_millis(50))),
        );
    }
    Ok(builder.build()?)
}

/// One step waiting for an event that never comes, for at most `timeout`.
fn waits(timeout: Duration) -> anyhow::Result<SagaDefinition> {
    Ok(SagaDefinition::builder(LATE, 1)
        .starts_on("bench-late", "Placed")
        .step(
            Step::new("wait", touch(0))
                .awaits("NeverHappens")
                .timeout(timeout)
                .compensate(touch(10)),
        )
        .build()?)
}

struct Target {
    store: Arc<dyn EventStore>,
    read_models: ReadModels,
    cleanup: Option<(String, Vec<String>)>,
    _dir: tempfile::TempDir,
}

async fn open(backend: Backend, url: Option<&str>) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
    match backend {
        Backend::Embedded => {
            let store = EmbeddedStore::open(dir.path().join("events.db"))
                .context("failed to open the embedded store")?;
            Ok(Target {
                store: Arc::new(store),
                read_models: ReadModels::sqlite(dir.path().join("read-models")),
                cleanup: None,
                _dir: dir,
            })
        }
        Backend::Postgres => {
            let url = url.context("--backend postgres needs --url (or NEXUS_POSTGRES_URL)")?;
            let simple = uuid::Uuid::now_v7().simple().to_string();
            let suffix = &simple[simple.len() - 16..];
            let (store_schema, read_schema) = (
                format!("nexus_bench_saga_{suffix}"),
                format!("nexus_bench_sagarm_{suffix}"),
            );
            let store = PostgresStore::connect_with(
                url,
                PostgresOptions {
                    schema: store_schema.clone(),
                    pool_size: 32,
                    ..PostgresOptions::default()
                },
            )
            .await
            .context("failed to open the PostgreSQL store")?;
            let read_models = ReadModels::postgres(url, &read_schema)
                .await
                .context("failed to open the PostgreSQL read models")?;
            Ok(Target {
                store: Arc::new(store),
                read_models,
                cleanup: Some((url.to_owned(), vec![store_schema, read_schema])),
                _dir: dir,
            })
        }
    }
}

fn commands(store: &Arc<dyn EventStore>) -> SagaCommands {
    SagaCommands::new().handler(CommandHandler::<Tally>::new(Repository::new(Arc::clone(
        store,
    ))))
}

async fn spawn(target: &Target, definitions: Vec<SagaDefinition>) -> anyhow::Result<SagaHandle> {
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&target.store)));
    let projections = ProjectionRunner::with_read_models(
        Arc::clone(&target.store),
        bus,
        target.read_models.clone(),
    );
    Ok(SagaRunner::new(
        Arc::clone(&target.store),
        commands(&target.store),
        projections,
    )
    .with_options(SagaOptions {
        max_concurrent: 128,
        reconcile_interval: Duration::from_secs(1),
        ..SagaOptions::default()
    })
    .spawn(definitions)
    .await?)
}

/// Appends one start event per key, `parallel` at a time.
async fn start(
    store: &Arc<dyn EventStore>,
    aggregate: &str,
    keys: &[String],
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(16).max(1)) {
        let (store, aggregate, chunk) = (Arc::clone(store), aggregate.to_owned(), chunk.to_vec());
        tasks.spawn(async move {
            for key in chunk {
                let event = NewEvent::from_json("Placed", 1, "{}", Metadata::default())?;
                store
                    .append(
                        &StreamId::new(&aggregate, &key),
                        ExpectedVersion::NoStream,
                        vec![event],
                    )
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Counts instances with `status`, a page at a time.
async fn count(reader: &SagaReader, status: SagaStatus) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let page = reader.list(Some(status), 500, total).await?;
        total += page.len();
        if page.len() < 500 {
            return Ok(total);
        }
    }
}

async fn until(
    reader: &SagaReader,
    status: SagaStatus,
    n: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        // Whether an `n`th instance with `status` exists: only that document comes back, not
        // pages of every instance decoded each turn on the cores the sagas run on.
        if n == 0 || !reader.list(Some(status), 1, n - 1).await?.is_empty() {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "only {} of {n} sagas reached {} within {within:?}",
            count(reader, status).await?,
            status.as_str()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bench_backend(backend: Backend, args: &SagaArgs) -> anyhow::Result<Value> {
    let target = open(backend, args.backends.url.as_deref()).await?;
    let result = measure(&target, args).await;
    if let Some((url, schemas)) = &target.cleanup {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("failed to connect to PostgreSQL to drop the bench schemas")?;
        tokio::spawn(connection);
        for schema in schemas {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .context("failed to drop a bench schema")?;
        }
    }
    let mut run = result?;
    run["backend"] = json!(backend.name());
    Ok(run)
}

/// Sagas per second when their 3 × N commands go straight through the command path, 16
/// senders: the ceiling the saga rate is compared with.
async fn ceiling(target: &Target, sagas: usize) -> anyhow::Result<f64> {
    let handler = CommandHandler::<Tally>::new(Repository::new(Arc::clone(&target.store)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..16 {
        let handler = handler.clone();
        tasks.spawn(async move {
            for i in (sender..sagas * 3).step_by(16) {
                handler
                    .execute(
                        &format!("ceiling-{i}"),
                        &TallyCommand::Touch,
                        Metadata::default(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(sagas as f64 / started.elapsed().as_secs_f64())
}

/// `GET /sagas/{saga}/{id}` through the route: its status and seconds taken, body included.
async fn status_query(
    api: &axum::Router,
    saga: &str,
    id: &str,
) -> anyhow::Result<(axum::http::StatusCode, f64)> {
    let request = axum::http::Request::builder()
        .uri(format!("/sagas/{saga}/{id}"))
        .header("host", "127.0.0.1")
        .body(Body::empty())?;
    let t = Instant::now();
    let response = api.clone().oneshot(request).await?;
    let status = response.status();
    let _ = http_body_util::BodyExt::collect(response.into_body()).await?;
    Ok((status, t.elapsed().as_secs_f64()))
}

/// Status queries of instances spread over `keys` until `stop` (at most 100 000): the
/// latencies of those that succeeded.
async fn query_until(
    api: axum::Router,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && samples.len() < 100_000 {
        let id = instance_id(SAGA, &keys[(i * 7919) % keys.len()]);
        i += 1;
        match status_query(&api, SAGA, &id).await? {
            (status, took) if status.is_success() => samples.push(took),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    Ok(samples)
}

/// 1 000 status queries on an idle system, each of which must succeed.
async fn idle_queries(api: &axum::Router, keys: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    for i in 0..1_000 {
        let id = instance_id(SAGA, &keys[(i * 7919) % keys.len()]);
        let (status, took) = status_query(api, SAGA, &id).await?;
        anyhow::ensure!(status.is_success(), "status query failed: {status}");
        samples.push(took);
    }
    Ok(samples)
}

/// Step latency from the saga events: dispatch recorded → success recorded.
async fn step_latencies(store: &Arc<dyn EventStore>, keys: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut steps = Vec::new();
    for key in keys {
        let events = store
            .read_stream(&instance_stream(SAGA, &instance_id(SAGA, key)), 1, None)
            .await?;
        let mut dispatched = [None; 3];
        for event in &events {
            match serde_json::from_str::<SagaEvent>(event.payload.get())? {
                SagaEvent::SagaStepDispatched { step, .. } if step < 3 => {
                    dispatched[step].get_or_insert(event.recorded_at);
                }
                SagaEvent::SagaStepSucceeded { step, .. } if step < 3 => {
                    if let Some(at) = dispatched[step] {
                        steps.push(
                            (event.recorded_at - at).num_microseconds().unwrap_or(0) as f64 / 1e6,
                        );
                    }
                }
                _ => {}
            }
        }
    }
    Ok(steps)
}

/// Exactly once: every step's aggregate of the sagas of `keys` has one event.
async fn ensure_each_step_ran_once(
    store: &Arc<dyn EventStore>,
    keys: &[String],
) -> anyhow::Result<()> {
    for key in keys {
        for step in 0..3 {
            let events = store
                .read_stream(&StreamId::new("tally", format!("{key}-{step}")), 1, None)
                .await?;
            anyhow::ensure!(
                events.len() == 1,
                "{key} step {step} ran {} times",
                events.len()
            );
        }
    }
    Ok(())
}

/// Waits until every one of `n` deadline sagas waits for its event (or has moved on), for at
/// most two minutes.
async fn until_all_wait(reader: &SagaReader, n: usize) -> anyhow::Result<()> {
    let since = Instant::now();
    loop {
        let mut waiting = 0;
        let mut offset = 0;
        loop {
            let page = reader.list(None, 500, offset).await?;
            waiting += page
                .iter()
                .filter(|d| d["status"] != "running" || d["steps"][0]["status"] == "waiting")
                .count();
            if page.len() < 500 {
                break;
            }
            offset += 500;
        }
        if waiting >= n {
            return Ok(());
        }
        anyhow::ensure!(
            since.elapsed() < Duration::from_secs(120),
            "only {waiting} of {n} deadline sagas ever waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 2 000 status queries of the deadline sagas: the latencies of those that succeeded.
async fn query_late(api: axum::Router, keys: Vec<String>) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    for i in 0..2_000usize {
        let id = instance_id(LATE, &keys[i % keys.len()]);
        let (status, took) = status_query(&api, LATE, &id).await?;
        if status.is_success() {
            samples.push(took);
        }
    }
    Ok(samples)
}

/// Ensures each deadline saga recorded exactly one `SagaTimedOut`.
async fn ensure_each_deadline_fired_once(
    store: &Arc<dyn EventStore>,
    keys: &[String],
) -> anyhow::Result<()> {
    let mut timed_out = 0;
    for key in keys {
        let events = store
            .read_stream(&instance_stream(LATE, &instance_id(LATE, key)), 1, None)
            .await?;
        timed_out += events
            .iter()
            .filter(|e| e.event_type == "SagaTimedOut")
            .count();
    }
    anyhow::ensure!(
        timed_out == keys.len(),
        "{timed_out} deadlines fired for {} sagas",
        keys.len()
    );
    Ok(())
}

/// What the overdue-deadline phase measured.
struct Deadlines {
    sagas: usize,
    fired_before_crash: usize,
    all_fired_after_restart: Duration,
    status_query_seconds: Vec<f64>,
}

/// Deadlines due while no runner runs: every instance waits for an event that never comes,
/// the runner dies, the deadlines pass, a new runner starts and fires them while status
/// queries race it.
async fn overdue_deadlines(target: &Target, sagas: usize) -> anyhow::Result<Deadlines> {
    let deadline = Duration::from_secs(10);
    let late = spawn(target, vec![waits(deadline)?]).await?;
    let keys: Vec<String> = (0..sagas).map(|i| format!("late{i}")).collect();
    start(&target.store, "bench-late", &keys).await?;
    until_all_wait(late.reader(), keys.len()).await?;
    let fired_before_crash = count(late.reader(), SagaStatus::TimedOut).await?;
    late.abort();
    tokio::time::sleep(deadline + Duration::from_millis(500)).await;
    let restarted = Instant::now();
    let late = spawn(target, vec![waits(deadline)?]).await?;
    let api = SagaApi::new([late.reader().clone()], AccessControl::open()).routes();
    let racing = tokio::spawn(query_late(api, keys.clone()));
    until(
        late.reader(),
        SagaStatus::TimedOut,
        keys.len(),
        Duration::from_secs(300),
    )
    .await?;
    let all_fired_after_restart = restarted.elapsed();
    ensure_each_deadline_fired_once(&target.store, &keys).await?;
    let status_query_seconds = racing.await.context("the status querier panicked")??;
    late.stop().await;
    Ok(Deadlines {
        sagas: keys.len(),
        fired_before_crash,
        all_fired_after_restart,
        status_query_seconds,
    })
}

async fn measure(target: &Target, args: &SagaArgs) -> anyhow::Result<Value> {
    let ceiling = ceiling(target, args.sagas).await?;

    let sagas = spawn(target, vec![three_steps()?]).await?;
    let keys: Vec<String> = (0..args.sagas).map(|i| format!("o{i}")).collect();
    let api = SagaApi::new([sagas.reader().clone()], AccessControl::open()).routes();
    // Status queries while the sagas run, through the route.
    let stop = Arc::new(AtomicBool::new(false));
    let querying = tokio::spawn(query_until(api.clone(), keys.clone(), Arc::clone(&stop)));
    let started = Instant::now();
    start(&target.store, "bench-order", &keys).await?;
    let took = until(
        sagas.reader(),
        SagaStatus::Completed,
        keys.len(),
        Duration::from_secs(600),
    )
    .await?;
    let total = started.elapsed().max(took);
    stop.store(true, Ordering::Relaxed);
    let mut loaded = querying.await.context("the status querier panicked")??;
    // Status queries after the run too (the same route, an idle system).
    let mut idle = idle_queries(&api, &keys).await?;
    let mut steps = step_latencies(&target.store, &keys).await?;
    ensure_each_step_ran_once(&target.store, &keys[..keys.len().min(50)]).await?;
    sagas.stop().await;

    let mut deadlines = overdue_deadlines(target, args.deadlines).await?;
    let rate = keys.len() as f64 / total.as_secs_f64();
    Ok(json!({
        "sagas": keys.len(),
        "steps_per_saga": 3,
        "completed_per_sec": round(rate),
        "ceiling_sagas_per_sec": round(ceiling),
        "of_ceiling": round(rate / ceiling),
        "all_completed_ms": round(total.as_secs_f64() * 1000.0),
        "step_latency_ms": latency_ms(&mut steps),
        "status_query_ms": {
            "under_load": latency_ms(&mut loaded),
            "idle": latency_ms(&mut idle),
            "during_deadline_recovery": latency_ms(&mut deadlines.status_query_seconds),
            "target_p99": 200.0,
        },
        "overdue_deadlines": {
            "sagas": deadlines.sagas,
            "fired_once_each": true,
            "fired_before_the_crash": deadlines.fired_before_crash,
            "all_fired_after_restart_ms": round(deadlines.all_fired_after_restart.as_secs_f64() * 1000.0),
        },
    }))
}

pub(crate) fn run(args: SagaArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.sagas > 0 && args.deadlines > 0,
        "--sagas and --deadlines must be at least 1"
    );
    super::tokio_runtime()?.block_on(async {
        let (backends, skipped) = args.backends.to_run();
        let mut runs = Vec::new();
        for backend in backends {
            runs.push(bench_backend(backend, &args).await?);
        }
        let report = json!({
            "benchmark": "saga",
            "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
            "runs": runs,
            "skipped": skipped,
            "peak_rss_mb": super::bench::peak_rss_mb(),
        });
        output::json(&report)?;
        Ok(Outcome::Clean)
    })
}
