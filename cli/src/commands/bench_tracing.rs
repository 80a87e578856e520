//! What tracing export costs: `nexus bench store --tracing-overhead` (commands through
//! `CommandHandler`: command, load, decide and append spans) and `nexus bench bus
//! --tracing-overhead` (events through the in-process bus to a projection: delivery, apply and
//! commit spans), each measured with OpenTelemetry export off and on, alternating.
//!
//! "Off" is the default set-up (log lines at `warn`, no span recorded); "on" adds the OTLP layer
//! exporting every span over HTTP/protobuf to a receiver in this process that decodes and counts
//! them, so spans dropped by a full export queue would show as `spans_exported` falling short.
//! Each phase runs on a current-thread runtime inside its own `tracing` dispatcher, so both
//! sides run the same code on the same threads; the best of two runs per side is reported.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::projection::ProjectionRunner;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{
    Aggregate, CommandHandler, DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent,
    Repository, StreamId,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

use super::Outcome;
use super::bench::round;
use super::bench_bus::Tally as Counted;
use crate::output;

/// The largest tracing cost the benchmark accepts, in percent of throughput.
const BUDGET_PERCENT: f64 = 10.0;
/// Seconds of each command phase.
const PHASE: Duration = Duration::from_secs(3);
/// Concurrent command writers.
const WRITERS: usize = 8;
/// Events a projection phase catches up on.
const BUS_EVENTS: usize = 20_000;
/// Largest export request the receiver reads.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What is measured.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Workload {
    /// Commands per second through `CommandHandler` on the embedded store.
    Commands,
    /// Events per second from the in-process bus through a projection into its read model.
    Projection,
}

pub(crate) fn run(workload: Workload, json_output: bool) -> anyhow::Result<Outcome> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut expected_spans = 0u64;
    for round in 0..2 {
        off.push(phase(workload, dir.path(), &format!("off{round}"), None)?);
        let (rate, work) = phase(
            workload,
            dir.path(),
            &format!("on{round}"),
            Some(&receiver.endpoint),
        )?;
        on.push((rate, work));
        expected_spans += work.1;
    }
    let best = |runs: &[(f64, (u64, u64))]| runs.iter().map(|r| r.0).fold(0.0, f64::max);
    let (off_rate, on_rate) = (best(&off), best(&on));
    let overhead = (off_rate - on_rate) / off_rate * 100.0;
    let unit = match workload {
        Workload::Commands => "commands_per_sec",
        Workload::Projection => "events_per_sec",
    };
    let report = json!({
        "benchmark": match workload { Workload::Commands => "store", Workload::Projection => "bus" },
        "measure": "tracing_overhead",
        "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
        "workload": match workload {
            Workload::Commands => format!("{WRITERS} writers, {} s per run, commands through CommandHandler on the embedded store", PHASE.as_secs()),
            Workload::Projection => format!("{BUS_EVENTS} events through the in-process bus to a projection with a SQLite read model"),
        },
        "tracing_off": { unit: round(off_rate), "runs": off.iter().map(|r| round(r.0)).collect::<Vec<_>>() },
        "tracing_on": {
            unit: round(on_rate),
            "runs": on.iter().map(|r| round(r.0)).collect::<Vec<_>>(),
            "spans_expected": match workload { Workload::Commands => json!(expected_spans), Workload::Projection => json!(null) },
            "spans_exported": receiver.spans(),
            "events_expected_in_batch_spans": match workload { Workload::Commands => json!(null), Workload::Projection => json!(expected_spans) },
            "events_in_exported_batch_spans": match workload { Workload::Commands => json!(null), Workload::Projection => json!(receiver.batch_events()) },
            "export_requests": receiver.requests.load(Ordering::Relaxed),
        },
        "overhead_percent": round(overhead),
        "budget_percent": BUDGET_PERCENT,
        "within_budget": overhead < BUDGET_PERCENT,
    });
    if json_output {
        output::json(&report)?;
    } else {
        output::line(&format!(
            "tracing export costs {:.1} % of {unit} ({:.0} off, {:.0} on; budget {BUDGET_PERCENT} %); {} spans exported",
            overhead,
            off_rate,
            on_rate,
            receiver.spans(),
        ))?;
    }
    Ok(if overhead < BUDGET_PERCENT {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

/// One measured phase: (rate, (units of work, spans that work creates)).
fn phase(
    workload: Workload,
    dir: &std::path::Path,
    name: &str,
    endpoint: Option<&str>,
) -> anyhow::Result<(f64, (u64, u64))> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::new("warn"));
    let (otel, guard) = match endpoint {
        Some(endpoint) => {
            let (layer, guard) =
                nexus_runtime::telemetry::otel::layer_for("nexus-bench", endpoint)?;
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("nexus_runtime", tracing::Level::INFO);
    let subscriber = tracing_subscriber::registry()
        .with(logs)
        .with(otel.with_filter(spans));
    let result = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            match workload {
                Workload::Commands => commands(&dir.join(format!("{name}.db"))).await,
                Workload::Projection => projection(dir, name).await,
            }
        })
    });
    if let Some(guard) = guard {
        guard.flush();
    }
    result
}

/// Commands per second for [`PHASE`], and the spans they create (4 each).
async fn commands(path: &std::path::Path) -> anyhow::Result<(f64, (u64, u64))> {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(path)?);
    let handler = CommandHandler::new(Repository::<Tally>::new(store));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while started.elapsed() < PHASE {
                handler
                    .execute(
                        &format!("w{writer}-{}", done % 64),
                        &1,
                        Metadata::correlated("bench"),
                    )
                    .await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((total as f64 / seconds, (total, total * 4)))
}

/// Events per second a projection applies while catching up on [`BUS_EVENTS`], and the events
/// its batch spans cover (`process`, `apply` and `commit` per batch; the per-event span is for
/// log lines and not exported, see `telemetry::trace::DELIVERY_TARGET`).
async fn projection(dir: &std::path::Path, name: &str) -> anyhow::Result<(f64, (u64, u64))> {
    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(dir.join(format!("{name}-bus.db")))?);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for chunk in 0..BUS_EVENTS / 100 {
        let events = (0..100)
            .map(|n| {
                let metadata = Metadata {
                    traceparent: Some(traceparent.to_owned()),
                    ..Metadata::correlated("bench")
                };
                NewEvent::from_domain(&Added { amount: n }, metadata)
            })
            .collect::<Result<Vec<_>, _>>()?;
        store
            .append(
                &StreamId::new("tally", format!("s{chunk}")),
                ExpectedVersion::NoStream,
                events,
            )
            .await?;
    }
    let head = store.head().await?.position;
    let bus = Arc::new(InProcessBus::new(Arc::clone(&store)));
    let runner = ProjectionRunner::new(Arc::clone(&store), bus, dir.join(format!("{name}-models")));
    let started = Instant::now();
    let handle = runner.spawn(Counted(name.to_owned()))?;
    loop {
        let at = handle
            .read_model()
            .checkpoint()
            .await?
            .map_or(0, |c| c.position);
        if at >= head {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the projection did not catch up within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    handle.stop().await;
    Ok((
        BUS_EVENTS as f64 / seconds,
        (BUS_EVENTS as u64, BUS_EVENTS as u64),
    ))
}

/// The measured aggregate: each command adds one event.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Added {
    amount: u64,
}

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = u64;
    type Event = Added;
    type Error = std::convert::Infallible;

    fn handle(&self, amount: &u64) -> Result<Vec<Added>, Self::Error> {
        Ok(vec![Added { amount: *amount }])
    }

    fn apply(&mut self, event: &Added) {
        self.total += event.amount;
    }
}

/// An OTLP/HTTP receiver that decodes and counts the spans it is sent.
struct Receiver {
    endpoint: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    requests: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let (b, r) = (Arc::clone(&bodies), Arc::clone(&requests));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (b, r) = (Arc::clone(&b), Arc::clone(&r));
                std::thread::spawn(move || serve(stream, &b, &r));
            }
        });
        Ok(Self {
            endpoint,
            bodies,
            requests,
        })
    }

    /// The events the exported `process {projection}` batch spans say they covered
    /// (`messaging.batch.message_count`): all of them when no span was dropped.
    fn batch_events(&self) -> u64 {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        self.received()
            .into_iter()
            .filter(|span| span.name.starts_with("process "))
            .flat_map(|span| span.attributes)
            .filter(|kv| kv.key == "messaging.batch.message_count")
            .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                Some(Value::IntValue(n)) => u64::try_from(n).ok(),
                Some(Value::StringValue(n)) => n.parse().ok(),
                _ => None,
            })
            .sum()
    }

    /// How many spans were received so far.
    fn spans(&self) -> u64 {
        self.received().len() as u64
    }

    /// The spans received so far, decoded.
    fn received(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        let bodies = self
            .bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bodies
            .iter()
            .filter_map(|body| ExportTraceServiceRequest::decode(body.as_slice()).ok())
            .flat_map(|export| export.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }
}

fn serve(stream: TcpStream, bodies: &Mutex<Vec<Vec<u8>>>, requests: &AtomicU64) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while let Some((_, body)) = crate::otlp_request::read(&mut reader, MAX_BODY) {
        // Decoded after the measurement, so the receiver (a collector's work) does not take
        // CPU from the measured process while it runs.
        bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(body);
        requests.fetch_add(1, Ordering::Relaxed);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
