//! `nexus bench store`: append throughput and latency (raw appends, or whole commands through
//! `CommandHandler`), rehydration through `Repository::load`, stream reads and
//! change-data-capture latency, with PostgreSQL's plain-INSERT ceiling measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};
use nexus_runtime::store::subscribe;
use nexus_runtime::{
    Aggregate, CommandHandler, DomainEvent, EventStore, ExpectedVersion, LogPosition, Metadata,
    NewEvent, Repository, SnapshotStore, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Outcome;
use super::bench::{latency_ms, round};
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    /// The embedded SQLite store.
    Embedded,
    /// PostgreSQL at `--url`.
    Postgres,
}

impl Backend {
    /// Its name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WritePath {
    /// Raw `EventStore::append` calls.
    Append,
    /// Whole commands through `CommandHandler::execute` (fresh aggregate loaded, decision,
    /// append with the expected version), measured beside the append path in the same run.
    Command,
}

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// What the writers call: raw appends, or commands (which also measures appends).
    #[arg(long, value_enum, default_value_t = WritePath::Append)]
    path: WritePath,
    /// Backends to measure, one after the other in this run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "embedded")]
    backend: Vec<Backend>,
    /// PostgreSQL URL (a throw-away schema is created and dropped in it).
    #[arg(long, env = "NEXUS_POSTGRES_URL")]
    url: Option<String>,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Events appended in all, across writers.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// PostgreSQL: groups of appends committed concurrently (the store's group commit).
    #[arg(long, default_value_t = PostgresOptions::default().committers)]
    committers: usize,
    /// Memory soak instead of the throughput phases: `--commands` commands, each on a stream
    /// of its own, with snapshots on; reports resident memory along the way.
    #[arg(long)]
    soak: bool,
    /// Commands of the soak run (a smaller count makes a quick check).
    #[arg(long, default_value_t = 1_000_000)]
    commands: usize,
    /// Print JSON (the default output is a short summary).
    #[arg(long)]
    json: bool,
    /// Measure what tracing export costs instead: throughput with OpenTelemetry export off and
    /// on (to an OTLP receiver in this process), alternating; exit code 1 above 10 %.
    #[arg(long)]
    tracing_overhead: bool,
}

/// Resident memory the soak run must stay under, in MiB.
const SOAK_RSS_LIMIT_MB: f64 = 80.0;

pub(crate) fn run(args: StoreArgs) -> anyhow::Result<Outcome> {
    if args.tracing_overhead {
        return super::bench_tracing::run(super::bench_tracing::Workload::Commands, args.json);
    }
    if args.soak {
        return run_soak(&args);
    }
    if args.writers == 0 || args.batch == 0 || args.events < args.writers * args.batch {
        anyhow::bail!(
            "--events ({}) must cover at least one batch ({}) per writer ({})",
            args.events,
            args.batch,
            args.writers
        );
    }
    super::tokio_runtime()?.block_on(async {
        let mut runs = Vec::new();
        for backend in &args.backend {
            runs.push(bench_backend(*backend, &args).await?);
        }
        let mut report = json!({
            "benchmark": "store",
            "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
            "writers": args.writers,
            "events": args.events,
            "batch": args.batch,
            "committers": args.committers,
            "path": match args.path { WritePath::Append => "append", WritePath::Command => "command" },
            "runs": runs,
            "peak_rss_mb": super::bench::peak_rss_mb(),
        });
        let rate = |name: &str| {
            report["runs"].as_array().and_then(|runs| {
                runs.iter()
                    .find(|r| r["backend"] == name)
                    .and_then(|r| r["append"]["events_per_sec"].as_f64())
            })
        };
        if let (Some(embedded), Some(postgres)) = (rate("embedded"), rate("postgres")) {
            report["embedded_to_postgres_ratio"] = json!(round(embedded / postgres));
        }
        if args.json {
            output::json(&report)?;
        } else {
            summary(&report)?;
        }
        Ok(Outcome::Clean)
    })
}

fn run_soak(args: &StoreArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.commands >= args.writers && args.writers > 0,
        "--commands must be at least --writers"
    );
    let backend = args.backend.first().copied().unwrap_or(Backend::Embedded);
    super::tokio_runtime()?.block_on(async {
        let target = open(backend, args).await?;
        let soak = soak_phase(&target, args).await?;
        drop(target.store);
        drop(target.snapshots);
        if let Cleanup::Schema { url, schema } = &target.cleanup {
            drop_schema(url, schema).await?;
        }
        let report = json!({
            "benchmark": "store-soak",
            "backend": backend.name(),
            "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
            "writers": args.writers,
            "soak": soak,
            "peak_rss_mb": super::bench::peak_rss_mb(),
        });
        if args.json {
            output::json(&report)?;
        } else {
            output::line(&format!(
                "soak: {} commands at {} commands/s; resident memory {} MiB at start, {} MiB at most, under {SOAK_RSS_LIMIT_MB} MiB: {}",
                report["soak"]["commands"],
                report["soak"]["commands_per_sec"],
                report["soak"]["rss_mb"]["start"],
                report["soak"]["rss_mb"]["max"],
                report["soak"]["rss_mb"]["under_limit"],
            ))?;
        }
        Ok(Outcome::Clean)
    })
}

/// Commands on as many streams as commands, with the snapshot manager watching every one,
/// sampling resident memory ten times along the way.
async fn soak_phase(target: &Target, args: &StoreArgs) -> anyhow::Result<serde_json::Value> {
    let repository = Repository::<Counter>::new(Arc::clone(&target.store))
        .with_snapshots(Arc::clone(&target.snapshots));
    let handler = CommandHandler::new(repository);
    let manager = nexus_runtime::SnapshotManager::new(
        Arc::clone(&target.store),
        Arc::clone(&target.snapshots),
    )
    .register::<Counter>(nexus_runtime::SnapshotPolicy {
        every_events: Some(1),
        ..nexus_runtime::SnapshotPolicy::default()
    })
    .spawn();
    let start = super::bench::rss_mb();
    let mut samples = Vec::new();
    let started = Instant::now();
    let per_writer = args.commands / args.writers;
    let step = (per_writer / 10).max(1);
    for round in 0..per_writer.div_ceil(step) {
        let from = round * step;
        let to = (from + step).min(per_writer);
        let mut tasks = Vec::new();
        for writer in 0..args.writers {
            let handler = handler.clone();
            tasks.push(tokio::spawn(async move {
                for i in from..to {
                    handler
                        .execute(
                            &format!("soak-w{writer}-{i}"),
                            &1,
                            Metadata::correlated("soak"),
                        )
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        samples.push(json!({
            "commands": to * args.writers,
            "rss_mb": super::bench::rss_mb(),
        }));
    }
    let seconds = started.elapsed().as_secs_f64();
    let snapshots = manager.snapshots_taken();
    let tracked = manager.tracked_streams();
    manager.stop().await;
    // The peak counts too, not only the samples: memory that rose and fell between two
    // samples was still resident.
    let max = samples
        .iter()
        .filter_map(|s| s["rss_mb"].as_f64())
        .chain(super::bench::peak_rss_mb())
        .fold(start.unwrap_or(0.0), f64::max);
    let commands = per_writer * args.writers;
    Ok(json!({
        "commands": commands,
        "streams": commands,
        "snapshots_taken": snapshots,
        "snapshot_manager_tracked_streams": tracked,
        "seconds": round(seconds),
        "commands_per_sec": round(commands as f64 / seconds),
        "rss_mb": {
            "start": start,
            "samples": samples,
            "end": super::bench::rss_mb(),
            "max": max,
            "limit": SOAK_RSS_LIMIT_MB,
            "under_limit": max < SOAK_RSS_LIMIT_MB,
        },
    }))
}

fn summary(report: &serde_json::Value) -> anyhow::Result<()> {
    for run in report["runs"].as_array().into_iter().flatten() {
        output::line(&format!(
            "{}: {} events/s ({} appends/s), append p50 {} ms p99 {} ms; rehydrate 10k: {} ms, from snapshot {} ms; cdc p99 {} ms",
            run["backend"].as_str().unwrap_or_default(),
            run["append"]["events_per_sec"],
            run["append"]["appends_per_sec"],
            run["append"]["latency_ms"]["p50"],
            run["append"]["latency_ms"]["p99"],
            run["rehydrate_10k_ms"]["without_snapshot"]["p50"],
            run["rehydrate_10k_ms"]["with_snapshot"]["p50"],
            run["cdc_latency_ms"]["p99"],
        ))?;
        if let Some(ratio) = run["ceiling"]["ratio"].as_f64() {
            output::line(&format!("  {ratio} of the plain-INSERT ceiling"))?;
        }
        if run["command"].is_object() {
            output::line(&format!(
                "  commands: {} events/s, p50 {} ms p99 {} ms, {} of the append path",
                run["command"]["events_per_sec"],
                run["command"]["latency_ms"]["p50"],
                run["command"]["latency_ms"]["p99"],
                run["command"]["to_append_ratio"],
            ))?;
        }
    }
    Ok(())
}

struct Target {
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    cleanup: Cleanup,
}

enum Cleanup {
    Folder(
        #[expect(dead_code, reason = "held so the folder lives as long as the store")]
        tempfile::TempDir,
    ),
    Schema {
        url: String,
        schema: String,
    },
}

async fn open(backend: Backend, args: &StoreArgs) -> anyhow::Result<Target> {
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
            let path = dir.path().join("events.db");
            let store = EmbeddedStore::open(&path).context("failed to open the embedded store")?;
            let snapshots = EmbeddedSnapshotStore::open(EmbeddedSnapshotStore::path_beside(&path))
                .context("failed to open the snapshot store")?;
            Ok(Target {
                store: Arc::new(store),
                snapshots: Arc::new(snapshots),
                cleanup: Cleanup::Folder(dir),
            })
        }
        Backend::Postgres => {
            let url = args
                .url
                .clone()
                .context("--backend postgres needs --url (or NEXUS_POSTGRES_URL)")?;
            let schema = format!("nexus_bench_{}", uuid::Uuid::now_v7().simple());
            let options = PostgresOptions {
                schema: schema.clone(),
                pool_size: args.writers + args.committers + 4,
                committers: args.committers,
                ..PostgresOptions::default()
            };
            let store = PostgresStore::connect_with(&url, options)
                .await
                .context("failed to open the PostgreSQL store")?;
            let snapshots = nexus_runtime::snapshot::postgres::PostgresSnapshotStore::with_pool(
                store.pool().clone(),
                &schema,
            );
            Ok(Target {
                store: Arc::new(store),
                snapshots: Arc::new(snapshots),
                cleanup: Cleanup::Schema { url, schema },
            })
        }
    }
}

async fn bench_backend(backend: Backend, args: &StoreArgs) -> anyhow::Result<serde_json::Value> {
    let target = open(backend, args).await?;
    let append = append_phase(&target.store, args).await?;
    let command = match args.path {
        WritePath::Append => None,
        WritePath::Command => Some(command_phase(&target.store, args).await?),
    };
    let rehydrate = rehydrate_phase(&target.store, &target.snapshots).await?;
    let reads = read_phase(&target.store).await?;
    let cdc = cdc_phase(&target.store).await?;
    let mut run = json!({
        "backend": backend.name(),
        "append": append,
        "rehydrate_10k_ms": rehydrate,
        "stream_read_ms": reads,
        "cdc_latency_ms": cdc,
    });
    if let Some(mut command) = command {
        if let (Some(commands), Some(appends)) = (
            command["events_per_sec"].as_f64(),
            run["append"]["events_per_sec"].as_f64(),
        ) {
            command["to_append_ratio"] = json!(round(commands / appends));
        }
        run["command"] = command;
    }
    drop(target.store);
    if let Cleanup::Schema { url, schema } = &target.cleanup {
        let ceiling = ceiling_phase(url, args).await?;
        if let (Some(nexus), Some(raw)) = (
            run["append"]["events_per_sec"].as_f64(),
            ceiling["events_per_sec"].as_f64(),
        ) {
            run["ceiling"] = ceiling;
            run["ceiling"]["ratio"] = json!(round(nexus / raw));
            if let Some(commands) = run["command"]["events_per_sec"].as_f64() {
                run["command"]["ceiling_ratio"] = json!(round(commands / raw));
            }
        }
        drop_schema(url, schema).await?;
    }
    Ok(run)
}

fn payload(n: usize) -> NewEvent {
    NewEvent::from_json(
        "Counted",
        1,
        format!(r#"{{"amount":{},"note":"benchmark event"}}"#, n % 1000),
        Metadata::correlated("bench"),
    )
    .expect("the benchmark payload is valid JSON")
}

async fn append_phase(
    store: &Arc<dyn EventStore>,
    args: &StoreArgs,
) -> anyhow::Result<serde_json::Value> {
    let appends_per_writer = args.events / args.writers / args.batch;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let store = Arc::clone(store);
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            // Each writer owns a handful of streams, so versions never race between writers.
            let streams: Vec<StreamId> = (0..16)
                .map(|s| StreamId::new("bench", format!("w{writer}-s{s}")))
                .collect();
            let mut versions = [0u64; 16];
            let mut latencies = Vec::with_capacity(appends_per_writer);
            for i in 0..appends_per_writer {
                let slot = i % streams.len();
                let events = (0..batch).map(|k| payload(i * batch + k)).collect();
                let t = Instant::now();
                let result = store
                    .append(
                        &streams[slot],
                        ExpectedVersion::Exact(versions[slot]),
                        events,
                    )
                    .await?;
                latencies.push(t.elapsed());
                versions[slot] = result.version;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let appends = latencies.len();
    Ok(json!({
        "appends": appends,
        "events": appends * args.batch,
        "seconds": round(seconds),
        "appends_per_sec": round(appends as f64 / seconds),
        "events_per_sec": round((appends * args.batch) as f64 / seconds),
        "latency_ms": percentiles(&mut latencies),
    }))
}

/// Commands as users run them: per command a fresh aggregate is loaded (its stream is empty),
/// decides `--batch` events, and appends them with the expected version through
/// `CommandHandler`; the same writers, event count and payload as the append phase.
async fn command_phase(
    store: &Arc<dyn EventStore>,
    args: &StoreArgs,
) -> anyhow::Result<serde_json::Value> {
    let commands_per_writer = args.events / args.writers / args.batch;
    let handler = CommandHandler::new(Repository::<Counter>::new(Arc::clone(store)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let handler = handler.clone();
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(commands_per_writer);
            for i in 0..commands_per_writer {
                let id = format!("w{writer}-c{i}");
                let t = Instant::now();
                let done = handler
                    .execute(&id, &batch, Metadata::correlated("bench"))
                    .await?;
                latencies.push(t.elapsed());
                anyhow::ensure!(
                    done.version == batch as u64,
                    "a fresh aggregate was not empty"
                );
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let commands = latencies.len();
    Ok(json!({
        "commands": commands,
        "events": commands * args.batch,
        "seconds": round(seconds),
        "commands_per_sec": round(commands as f64 / seconds),
        "events_per_sec": round((commands * args.batch) as f64 / seconds),
        "latency_ms": percentiles(&mut latencies),
    }))
}

/// The aggregate the rehydration phase rebuilds: a running total over every event.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    total: u64,
    events: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Counted {
    amount: u64,
    note: String,
}

impl DomainEvent for Counted {
    fn event_type(&self) -> &'static str {
        "Counted"
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    /// How many events to emit.
    type Command = usize;
    type Event = Counted;
    type Error = std::convert::Infallible;

    fn handle(&self, events: &usize) -> Result<Vec<Counted>, Self::Error> {
        Ok((0..*events)
            .map(|n| Counted {
                amount: (self.total + n as u64) % 1000,
                note: "benchmark event".into(),
            })
            .collect())
    }

    fn apply(&mut self, event: &Counted) {
        self.total += event.amount;
        self.events += 1;
    }
}

async fn rehydrate_phase(
    store: &Arc<dyn EventStore>,
    snapshots: &Arc<dyn SnapshotStore>,
) -> anyhow::Result<serde_json::Value> {
    const EVENTS: usize = 10_000;
    let stream = StreamId::new(Counter::TYPE, "rehydrate");
    let mut version = 0;
    for chunk in 0..EVENTS / 1000 {
        let events = (0..1000).map(|i| payload(chunk * 1000 + i)).collect();
        version = store
            .append(&stream, ExpectedVersion::Exact(version), events)
            .await
            .context("failed to seed the rehydration stream")?
            .version;
    }
    let plain = Repository::<Counter>::new(Arc::clone(store));
    let mut without = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let loaded = plain.load("rehydrate").await?;
        without.push(t.elapsed());
        anyhow::ensure!(
            loaded.state.events == EVENTS as u64,
            "rehydration lost events"
        );
    }
    let with_snapshots = plain.clone().with_snapshots(Arc::clone(snapshots));
    with_snapshots.snapshot("rehydrate").await?;
    let mut with = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let loaded = with_snapshots.load("rehydrate").await?;
        with.push(t.elapsed());
        anyhow::ensure!(
            loaded.state.events == EVENTS as u64 && loaded.snapshot_version == Some(version),
            "the snapshot load did not give the full state"
        );
    }
    Ok(json!({
        "events": EVENTS,
        "without_snapshot": percentiles(&mut without),
        "with_snapshot": percentiles(&mut with),
    }))
}

async fn read_phase(store: &Arc<dyn EventStore>) -> anyhow::Result<serde_json::Value> {
    let streams: Vec<StreamId> = (0..20)
        .map(|i| StreamId::new("reads", format!("r{i}")))
        .collect();
    for stream in &streams {
        let events = (0..50).map(payload).collect();
        store
            .append(stream, ExpectedVersion::NoStream, events)
            .await?;
    }
    let mut latencies = Vec::new();
    for round in 0..500 {
        let t = Instant::now();
        let events = store
            .read_stream(&streams[round % streams.len()], 1, None)
            .await?;
        latencies.push(t.elapsed());
        anyhow::ensure!(
            events.len() == 50,
            "a stream read returned {} events",
            events.len()
        );
    }
    let mut report = percentiles(&mut latencies);
    report["events_per_read"] = json!(50);
    Ok(report)
}

/// Commit-to-subscriber latency: one writer appends at a steady pace while a subscriber tails
/// the log; each event's latency runs from the moment its append was acknowledged.
async fn cdc_phase(store: &Arc<dyn EventStore>) -> anyhow::Result<serde_json::Value> {
    const EVENTS: usize = 500;
    let start = head_now(store).await?;
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let subscriber = {
        let mut subscription = subscribe(Arc::clone(store), start);
        tokio::spawn(async move {
            let mut received = Vec::with_capacity(EVENTS);
            while received.len() < EVENTS {
                let event = subscription.next().await?;
                if event.stream.aggregate_type() == "cdc" {
                    received.push((event.position, Instant::now()));
                }
            }
            anyhow::Ok(received)
        })
    };
    let stream = StreamId::new("cdc", "tail");
    for i in 0..EVENTS {
        let t0 = Instant::now();
        let result = store
            .append(&stream, ExpectedVersion::Exact(i as u64), vec![payload(i)])
            .await?;
        acks_tx.send((result.last_position, t0)).ok();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(acks_tx);
    let received = tokio::time::timeout(Duration::from_secs(30), subscriber)
        .await
        .context("the subscriber did not receive every event within 30 s")???;
    let mut sent = std::collections::HashMap::new();
    while let Some((position, t0)) = acks_rx.recv().await {
        sent.insert(position, t0);
    }
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|(position, at)| {
            sent.get(position)
                .map(|t0| at.saturating_duration_since(*t0))
        })
        .collect();
    let mut report = percentiles(&mut latencies);
    report["measured_from"] = json!("append call (includes the commit)");
    Ok(report)
}

async fn head_now(store: &Arc<dyn EventStore>) -> anyhow::Result<LogPosition> {
    // Wait until everything appended so far is readable, so the phase starts from a quiet log.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut head = store.head().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = store.head().await?;
        if now == head || Instant::now() > deadline {
            return Ok(now);
        }
        head = now;
    }
}

/// Plain `INSERT` + `COMMIT` from the same number of connections into a table of the usual
/// event-table shape: the most this machine's PostgreSQL can do for the same work.
async fn ceiling_phase(url: &str, args: &StoreArgs) -> anyhow::Result<serde_json::Value> {
    let table = format!("nexus_ceiling_{}", uuid::Uuid::now_v7().simple());
    let admin = connect(url).await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (global_position bigserial PRIMARY KEY, stream_id text NOT NULL, \
             version bigint NOT NULL, payload jsonb NOT NULL, metadata jsonb NOT NULL, \
             UNIQUE (stream_id, version))"
        ))
        .await?;
    let appends_per_writer = args.events / args.writers / args.batch;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let client = connect(url).await?;
        let sql = format!(
            "INSERT INTO {table} (stream_id, version, payload, metadata) \
             SELECT $1, $2::int8 + g, $3::text::jsonb, '{{\"correlation_id\":\"bench\"}}'::jsonb FROM generate_series(1, $4::int) AS g"
        );
        let batch = args.batch as i32;
        tasks.push(tokio::spawn(async move {
            let statement = client.prepare(&sql).await?;
            let mut latencies = Vec::with_capacity(appends_per_writer);
            for i in 0..appends_per_writer {
                let stream = format!("w{writer}-s{}", i % 16);
                let version = ((i / 16) * batch as usize) as i64;
                let payload = r#"{"amount":1,"note":"benchmark event"}"#;
                let t = Instant::now();
                client
                    .execute(&statement, &[&stream, &version, &payload, &batch])
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    admin.batch_execute(&format!("DROP TABLE {table}")).await?;
    let transactions = latencies.len();
    Ok(json!({
        "kind": "plain INSERT + COMMIT (autocommit), same writers and batch",
        "events_per_sec": round((transactions * args.batch) as f64 / seconds),
        "transactions_per_sec": round(transactions as f64 / seconds),
        "latency_ms": percentiles(&mut latencies),
    }))
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("failed to connect to PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    connect(url)
        .await?
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .with_context(|| format!("failed to drop the benchmark schema {schema}"))
}

fn percentiles(samples: &mut [Duration]) -> serde_json::Value {
    let mut seconds: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    latency_ms(&mut seconds)
}
