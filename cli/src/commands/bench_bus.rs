//! `nexus bench bus`: offered load in, commit-to-projection latency and lag out, for the
//! in-process bus and NATS JetStream, with one or more projections in the same run; with
//! `--cross-process` the events are appended by another process on the same SQLite file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::{Args, ValueEnum};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::bus::nats::{JetStreamBus, NatsOptions};
use nexus_runtime::bus::relay::Relay;
use nexus_runtime::checkpoint::EmbeddedCheckpoints;
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, ProjectionHandle, ProjectionRunner, RunnerOptions,
};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
use serde_json::json;

use super::Outcome;
use super::bench::{latency_ms, round};
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BusBackend {
    /// Consumers tail the embedded store directly.
    Inprocess,
    /// A relay publishes to NATS JetStream; consumers are durable pull consumers.
    Nats,
}

#[derive(Debug, Args)]
pub(crate) struct BusArgs {
    /// The bus to measure.
    #[arg(long, value_enum, default_value_t = BusBackend::Inprocess)]
    backend: BusBackend,
    /// NATS URL for `--backend nats`.
    #[arg(long, env = "NEXUS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Projection counts to measure, one run each (comma-separated), e.g. `1,4`.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    projections: Vec<usize>,
    /// Offered load in events per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Append from another process (`--backend inprocess` only): a child `nexus` writes to
    /// the same SQLite file while this process runs the projections, as a command service and
    /// a query dashboard do in the default layout.
    #[arg(long)]
    cross_process: bool,
    /// Keep the read models' audit logs (`RunnerOptions::audit`, on by default); `--audit false`
    /// measures the same run without them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    audit: bool,
    /// Seconds the projections may take to catch up after the load ends; a run that does not
    /// catch up is reported with what each projection had left (`caught_up: false`, exit code 1).
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// Print JSON (the default output is a short summary).
    #[arg(long)]
    json: bool,
    /// Measure what tracing export costs instead: throughput with OpenTelemetry export off and
    /// on (to an OTLP receiver in this process), alternating; exit code 1 above 10 %.
    #[arg(long)]
    tracing_overhead: bool,
}

/// The writer half of `nexus bench bus --cross-process`: appends at a steady rate to the
/// embedded store in `--path` and prints its append latencies as JSON.
#[derive(Debug, Args)]
pub(crate) struct BusWriterArgs {
    /// The SQLite file of the embedded store.
    #[arg(long)]
    path: std::path::PathBuf,
    /// Events per second.
    #[arg(long)]
    rate: u64,
    /// Seconds of load.
    #[arg(long)]
    duration: u64,
}

/// Runs the writer half of a cross-process run (a hidden command the benchmark starts).
pub(crate) fn run_writer(args: BusWriterArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(async {
        let store: Arc<dyn EventStore> =
            Arc::new(EmbeddedStore::open(&args.path).context("failed to open the store")?);
        let mut append_seconds = offer_load(&store, args.rate, args.duration).await?;
        output::json(&json!({ "append_latency_ms": latency_ms(&mut append_seconds) }))?;
        Ok(Outcome::Clean)
    })
}

/// Captures the runner's latency histogram; everything else is dropped.
#[derive(Default)]
struct Capture {
    latencies: Mutex<HashMap<String, Vec<f64>>>,
}

struct CaptureHistogram {
    capture: Arc<Capture>,
    projection: String,
}

impl metrics::HistogramFn for CaptureHistogram {
    fn record(&self, value: f64) {
        self.capture
            .latencies
            .lock()
            .expect("capture lock poisoned")
            .entry(self.projection.clone())
            .or_default()
            .push(value);
    }
}

struct CaptureRecorder(Arc<Capture>);

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() != "nexus_projection_latency_seconds" {
            return Histogram::noop();
        }
        let projection = key
            .labels()
            .find(|l| l.key() == "projection")
            .map_or_else(String::new, |l| l.value().to_owned());
        Histogram::from_arc(Arc::new(CaptureHistogram {
            capture: Arc::clone(&self.0),
            projection,
        }))
    }
}

/// The benchmark's projection: one document per stream, updated per event.
pub(crate) struct Tally(pub(crate) String);

#[async_trait]
impl Projection for Tally {
    fn name(&self) -> &str {
        &self.0
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let id = event.stream.aggregate_id();
        let count = changes
            .get("tally", id)
            .await?
            .and_then(|d| d["count"].as_u64())
            .unwrap_or(0);
        changes.put(
            "tally",
            id,
            json!({ "count": count + 1, "version": event.version }),
        );
        Ok(())
    }
}

pub(crate) fn run(args: BusArgs) -> anyhow::Result<Outcome> {
    if args.tracing_overhead {
        return super::bench_tracing::run(super::bench_tracing::Workload::Projection, args.json);
    }
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0,
        "--rate and --duration must be positive"
    );
    anyhow::ensure!(
        !args.projections.is_empty() && args.projections.iter().all(|k| (1..=64).contains(k)),
        "--projections takes counts from 1 to 64"
    );
    anyhow::ensure!(
        !args.cross_process || args.backend == BusBackend::Inprocess,
        "--cross-process measures the in-process bus over the embedded store"
    );
    let capture = Arc::new(Capture::default());
    metrics::set_global_recorder(CaptureRecorder(Arc::clone(&capture)))
        .map_err(|e| anyhow::anyhow!("cannot install the benchmark's metrics recorder: {e}"))?;
    super::tokio_runtime()?.block_on(async {
        let mut runs = Vec::new();
        for &k in &args.projections {
            capture.latencies.lock().expect("capture lock poisoned").clear();
            runs.push(bench_run(&args, k, &capture).await?);
        }
        let mut report = json!({
            "benchmark": "bus",
            "backend": match args.backend { BusBackend::Inprocess => "inprocess", BusBackend::Nats => "nats" },
            "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
            "offered_rate": args.rate,
            "duration_s": args.duration,
            "cross_process": args.cross_process,
            "audit": args.audit,
            "runs": runs,
            "peak_rss_mb": super::bench::peak_rss_mb(),
        });
        let cpu_per_event = |k: usize| {
            report["runs"].as_array().and_then(|runs| {
                runs.iter()
                    .find(|r| r["projections"] == k)
                    .and_then(|r| r["cpu_ms_per_1k_events"].as_f64())
            })
        };
        if let (Some(one), Some(four)) = (cpu_per_event(1), cpu_per_event(4)) {
            report["cost_4_vs_1"] = json!(round(four / one));
        }
        let caught_up = report["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|run| run["caught_up"] == true);
        if args.json {
            output::json(&report)?;
        } else {
            for run in report["runs"].as_array().into_iter().flatten() {
                output::line(&format!(
                    "{} projection(s): {} events/s achieved, latency p50 {} ms p99 {} ms p999 {} ms, lag at end {} events{}",
                    run["projections"],
                    run["achieved_rate"],
                    run["latency_ms"]["p50"],
                    run["latency_ms"]["p99"],
                    run["latency_ms"]["p999"],
                    run["lag_at_end_events"],
                    if run["caught_up"] == true {
                        String::new()
                    } else {
                        format!(
                            "; not caught up within {} s, events left: {}",
                            args.drain_timeout, run["unprocessed_events"]
                        )
                    }
                ))?;
            }
        }
        Ok(if caught_up {
            Outcome::Clean
        } else {
            Outcome::Findings
        })
    })
}

/// Starts `nexus bench bus-writer` on `path` and waits for its report.
async fn write_elsewhere(
    path: &std::path::Path,
    args: &BusArgs,
) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the nexus executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["bench", "bus-writer", "--path"])
        .arg(path)
        .args(["--rate", &args.rate.to_string()])
        .args(["--duration", &args.duration.to_string()]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("failed to start the writer process")?;
    anyhow::ensure!(
        output.status.success(),
        "the writer process failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("the writer process printed no report")
}

/// Appends `rate` events per second for `duration` seconds, in ticks of 10 ms, each append
/// concurrent with the others of its tick; returns how long each took to be acknowledged.
async fn offer_load(
    store: &Arc<dyn EventStore>,
    rate: u64,
    duration: u64,
) -> anyhow::Result<Vec<f64>> {
    let tick = Duration::from_millis(10);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0);
    let total = (rate * duration) as usize;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut owed = 0.0;
    // How long each append took to be acknowledged: the part of the commit-to-projection
    // latency spent before the event is durable (the store's group commit and fsync).
    let mut append_seconds = Vec::with_capacity(total);
    while sent < total {
        interval.tick().await;
        owed += per_tick;
        let now = owed.floor() as usize;
        owed -= now as f64;
        let appends: Vec<_> = (sent..(sent + now).min(total))
            .map(|i| {
                let store = Arc::clone(store);
                async move {
                    let event = NewEvent::from_json(
                        "Ticked",
                        1,
                        format!(r#"{{"n":{i}}}"#),
                        nexus_runtime::Metadata::default(),
                    )
                    .expect("valid JSON");
                    let started = Instant::now();
                    store
                        .append(
                            &StreamId::new("bench", format!("k{}", i % 64)),
                            ExpectedVersion::Any,
                            vec![event],
                        )
                        .await
                        .map(|_| started.elapsed().as_secs_f64())
                }
            })
            .collect();
        for result in futures::future::join_all(appends).await {
            append_seconds.push(result.context("an append failed during the benchmark")?);
        }
        sent = (sent + now).min(total);
    }
    Ok(append_seconds)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux); 0 elsewhere.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Waits at most `timeout` for every projection to have processed `total` events; returns
/// what each had left (none when all caught up) and how long it waited, in milliseconds.
async fn drain(
    handles: &[ProjectionHandle],
    total: u64,
    timeout: Duration,
) -> (serde_json::Map<String, serde_json::Value>, f64) {
    let started = Instant::now();
    let left = || -> serde_json::Map<String, serde_json::Value> {
        handles
            .iter()
            .filter_map(|h| {
                let left = total.saturating_sub(h.health().processed);
                (left > 0).then(|| (h.name().to_owned(), json!(left)))
            })
            .collect()
    };
    let mut unprocessed = left();
    while !unprocessed.is_empty() && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(5)).await;
        unprocessed = left();
    }
    (unprocessed, started.elapsed().as_secs_f64() * 1000.0)
}

async fn bench_run(
    args: &BusArgs,
    projections: usize,
    capture: &Arc<Capture>,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
    let store: Arc<dyn EventStore> = Arc::new(
        EmbeddedStore::open(dir.path().join("events.db")).context("failed to open the store")?,
    );
    let mut relay = None;
    let mut stream_name = None;
    let bus: Arc<dyn EventBus> = match args.backend {
        BusBackend::Inprocess => Arc::new(InProcessBus::new(Arc::clone(&store))),
        BusBackend::Nats => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            let options = NatsOptions {
                stream: format!("NEXUS_BENCH_{id}"),
                subject_prefix: format!("nexus_bench_{id}"),
                ..NatsOptions::default()
            };
            stream_name = Some(options.stream.clone());
            let bus = JetStreamBus::connect(&args.url, options)
                .await
                .with_context(|| {
                    format!(
                        "failed to connect to NATS at {}",
                        crate::output::redact_url(&args.url)
                    )
                })?;
            let checkpoints = EmbeddedCheckpoints::open(dir.path().join("relay.db"))?;
            relay = Some(
                Relay::new(
                    "bench",
                    Arc::clone(&store),
                    bus.clone(),
                    Arc::new(checkpoints),
                )
                .spawn(),
            );
            Arc::new(bus)
        }
    };
    let runner = ProjectionRunner::new(Arc::clone(&store), bus, dir.path().join("read-models"))
        .with_options(RunnerOptions {
            audit: args.audit,
            ..RunnerOptions::default()
        });
    let mut handles = Vec::new();
    for k in 0..projections {
        handles.push(runner.spawn(Tally(format!("tally-{k}")))?);
    }
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let total = (args.rate * args.duration) as usize;
    let mut append_seconds = if args.cross_process {
        let report = write_elsewhere(&dir.path().join("events.db"), args).await?;
        let summary = report["append_latency_ms"].clone();
        Err(summary)
    } else {
        Ok(offer_load(&store, args.rate, args.duration).await?)
    };
    let write_seconds = started.elapsed().as_secs_f64();
    let lag_at_end: u64 = handles
        .iter()
        .map(|h| (total as u64).saturating_sub(h.health().processed))
        .max()
        .unwrap_or(0);
    // A run that does not catch up is reported as it stands (and its stream still deleted),
    // not abandoned.
    let (unprocessed, drain_ms) = drain(
        &handles,
        total as u64,
        Duration::from_secs(args.drain_timeout),
    )
    .await;
    let cpu = cpu_seconds() - cpu_before;
    for handle in handles {
        handle.stop().await;
    }
    if let Some(relay) = relay {
        relay.stop().await;
    }
    if let Some(name) = stream_name
        && let Ok(client) = async_nats::connect(&args.url).await
    {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&name)
            .await;
    }
    let latencies = capture
        .latencies
        .lock()
        .expect("capture lock poisoned")
        .clone();
    let mut all: Vec<f64> = latencies.values().flatten().copied().collect();
    let per_projection: serde_json::Map<String, serde_json::Value> = latencies
        .into_iter()
        .map(|(name, mut values)| (name, latency_ms(&mut values)))
        .collect();
    Ok(json!({
        "projections": projections,
        "events": total,
        "achieved_rate": round(total as f64 / write_seconds),
        "latency_ms": latency_ms(&mut all),
        "append_latency_ms": match &mut append_seconds {
            Ok(seconds) => latency_ms(seconds),
            Err(summary) => summary.clone(),
        },
        "per_projection_latency_ms": per_projection,
        "lag_at_end_events": lag_at_end,
        "caught_up": unprocessed.is_empty(),
        "unprocessed_events": unprocessed,
        "drain_ms": round(drain_ms),
        "cpu_seconds": round(cpu),
        "cpu_ms_per_1k_events": round(cpu * 1000.0 / (total as f64 / 1000.0)),
    }))
}
