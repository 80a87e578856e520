//! `nexus bench temporal`: temporal reads through the read-only history on each backend: a
//! time-range read of 10,000 events, state as of a version with and without the snapshot
//! history, and 10,000 events read page by page through continuation tokens against one
//! unbounded read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};
use nexus_runtime::temporal::{
    AsOf, History, PostgresHistory, Scope, SqliteHistory, TemporalLimits, TemporalQuery, TimeRange,
    TokenSigner, run_page, state_as_of,
};
use nexus_runtime::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent, Repository,
    SnapshotStore, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Outcome;
use super::bench::{Backends, latency_ms, round};
use super::bench_store::Backend;
use crate::output;

/// Events in the benchmark stream.
const EVENTS: u64 = 10_000;
/// A snapshot every this many events while seeding.
const SNAPSHOT_EVERY: u64 = 250;

#[derive(Debug, Args)]
pub(crate) struct TemporalArgs {
    #[command(flatten)]
    backends: Backends,
    /// Samples per measurement.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Print JSON (the default output is a short summary).
    #[arg(long)]
    json: bool,
}

/// A running total: what state-as-of rebuilds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    total: u64,
    events: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Added {
    amount: u64,
    note: String,
}

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = ();
    type Event = Added;
    type Error = std::convert::Infallible;

    fn handle(&self, (): &()) -> Result<Vec<Added>, Self::Error> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &Added) {
        self.total += event.amount;
        self.events += 1;
    }
}

pub(crate) fn run(args: TemporalArgs) -> anyhow::Result<Outcome> {
    if args.samples == 0 {
        anyhow::bail!("--samples must be at least 1");
    }
    super::tokio_runtime()?.block_on(async {
        let (backends, skipped) = args.backends.to_run();
        let mut runs = Vec::new();
        for backend in backends {
            runs.push(bench_backend(backend, &args).await?);
        }
        let report = json!({
            "benchmark": "temporal",
            "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
            "events": EVENTS,
            "samples": args.samples,
            "targets": { "range_read_p99_ms": 200, "continuation_overhead_max": 0.2 },
            "runs": runs,
            "skipped": skipped,
        });
        if args.json {
            output::json(&report)?;
        } else {
            for run in report["runs"].as_array().into_iter().flatten() {
                output::line(&format!(
                    "{}: range read of 10k p99 {} ms; state as of p99 {} ms with snapshot history, {} ms without; 10 pages via tokens {} ms vs one read {} ms ({} overhead)",
                    run["backend"].as_str().unwrap_or_default(),
                    run["range_read_10k_ms"]["p99"],
                    run["state_as_of_ms"]["with_snapshot_history"]["p99"],
                    run["state_as_of_ms"]["without_snapshots"]["p99"],
                    run["continuation"]["paged_ms"]["p50"],
                    run["continuation"]["unbounded_ms"]["p50"],
                    run["continuation"]["overhead"],
                ))?;
            }
        }
        Ok(Outcome::Clean)
    })
}

struct Target {
    store: Arc<dyn EventStore>,
    history: Arc<dyn History>,
    snapshots: Arc<dyn SnapshotStore>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

async fn open(backend: Backend, args: &TemporalArgs) -> anyhow::Result<Target> {
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
            let path = dir.path().join("events.db");
            let store = EmbeddedStore::open(&path).context("failed to open the embedded store")?;
            let snapshots = EmbeddedSnapshotStore::open(EmbeddedSnapshotStore::path_beside(&path))
                .context("failed to open the snapshot store")?;
            let history = SqliteHistory::open(&path).context("failed to open the history")?;
            Ok(Target {
                store: Arc::new(store),
                history: Arc::new(history),
                snapshots: Arc::new(snapshots),
                _dir: Some(dir),
                schema: None,
            })
        }
        Backend::Postgres => {
            let url = args
                .backends
                .url
                .clone()
                .context("--backend postgres needs --url (or NEXUS_POSTGRES_URL)")?;
            let schema = format!("nexus_bench_{}", uuid::Uuid::now_v7().simple());
            let options = PostgresOptions {
                schema: schema.clone(),
                ..PostgresOptions::default()
            };
            let store = PostgresStore::connect_with(&url, options)
                .await
                .context("failed to open the PostgreSQL store")?;
            let snapshots = nexus_runtime::snapshot::postgres::PostgresSnapshotStore::with_pool(
                store.pool().clone(),
                &schema,
            );
            let history = PostgresHistory::connect(&url, &schema, 4)
                .await
                .context("failed to open the read-only history")?;
            Ok(Target {
                store: Arc::new(store),
                history: Arc::new(history),
                snapshots: Arc::new(snapshots),
                _dir: None,
                schema: Some((url, schema)),
            })
        }
    }
}

/// Appends the benchmark stream, snapshotting every [`SNAPSHOT_EVERY`] events.
async fn seed(target: &Target, stream: &StreamId) -> anyhow::Result<()> {
    let repository = Repository::<Tally>::new(Arc::clone(&target.store))
        .with_snapshots(Arc::clone(&target.snapshots));
    let mut version = 0;
    while version < EVENTS {
        let events = (version..version + SNAPSHOT_EVERY)
            .map(|i| {
                NewEvent::from_domain(
                    &Added {
                        amount: i % 7,
                        note: format!("event {i} of the temporal benchmark"),
                    },
                    Metadata::default(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        version = target
            .store
            .append(stream, ExpectedVersion::Exact(version), events)
            .await
            .context("failed to seed the benchmark stream")?
            .version;
        repository.snapshot(stream.aggregate_id()).await?;
    }
    Ok(())
}

/// Reads of the benchmark stream through the read-only history.
struct Reads<'a> {
    history: &'a dyn History,
    signer: TokenSigner,
    limits: TemporalLimits,
    /// Every event of the stream, in one page.
    query: TemporalQuery,
}

impl Reads<'_> {
    /// One page holding all 10,000 events (the scan limit is 10,000), `samples` times.
    async fn range(&self, samples: usize) -> anyhow::Result<Vec<Duration>> {
        let mut took = Vec::with_capacity(samples);
        for _ in 0..samples {
            let at = Instant::now();
            let page = run_page(
                self.history,
                &self.signer,
                &self.limits,
                &self.query,
                "bench",
                None,
            )
            .await?;
            took.push(at.elapsed());
            anyhow::ensure!(
                page.returned as u64 == EVENTS && !page.partial,
                "short read"
            );
        }
        Ok(took)
    }

    /// Ten pages of 1,000 through continuation tokens, `samples` times.
    async fn paged(&self, samples: usize) -> anyhow::Result<Vec<Duration>> {
        let query = TemporalQuery {
            page_size: Some(1000),
            ..self.query.clone()
        };
        let mut took = Vec::with_capacity(samples);
        for _ in 0..samples {
            let at = Instant::now();
            let mut token: Option<String> = None;
            let mut read = 0;
            loop {
                let page = run_page(
                    self.history,
                    &self.signer,
                    &self.limits,
                    &query,
                    "bench",
                    token.as_deref(),
                )
                .await?;
                read += page.returned;
                match page.next_token {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
            took.push(at.elapsed());
            anyhow::ensure!(read as u64 == EVENTS, "paging lost events: {read}");
        }
        Ok(took)
    }
}

/// State-as-of timings with and without the snapshot history.
struct StatesAsOf {
    with: Vec<Duration>,
    without: Vec<Duration>,
    /// The most events one read with the history folded.
    folded_with: usize,
}

/// State as of versions in the second half of the stream, each read with and without the
/// snapshot history, which must agree.
async fn states_as_of(
    target: &Target,
    limits: &TemporalLimits,
    stream: &StreamId,
    samples: usize,
) -> anyhow::Result<StatesAsOf> {
    let history = target.history.as_ref();
    let mut states = StatesAsOf {
        with: Vec::with_capacity(samples),
        without: Vec::with_capacity(samples),
        folded_with: 0,
    };
    for sample in 0..samples as u64 {
        let version = EVENTS / 2 + (sample * 977) % (EVENTS / 2);
        let at = Instant::now();
        let found = state_as_of::<Tally>(
            history,
            Some(target.snapshots.as_ref()),
            limits,
            stream.aggregate_id(),
            AsOf::Version(version),
        )
        .await?
        .context("no state")?;
        states.with.push(at.elapsed());
        states.folded_with = states.folded_with.max(found.events_folded);
        let at = Instant::now();
        let rebuilt = state_as_of::<Tally>(
            history,
            None,
            limits,
            stream.aggregate_id(),
            AsOf::Version(version),
        )
        .await?
        .context("no state")?;
        states.without.push(at.elapsed());
        anyhow::ensure!(
            rebuilt.state.total == found.state.total && found.version == version,
            "state with and without snapshots differ at version {version}"
        );
    }
    Ok(states)
}

fn median(samples: &[Duration]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2].as_secs_f64()
}

async fn bench_backend(backend: Backend, args: &TemporalArgs) -> anyhow::Result<Value> {
    let target = open(backend, args).await?;
    let stream = StreamId::new(Tally::TYPE, "t1");
    let started = Utc::now() - chrono::Duration::seconds(1);
    seed(&target, &stream).await?;
    let reads = Reads {
        history: target.history.as_ref(),
        signer: TokenSigner::random(),
        limits: TemporalLimits::default(),
        query: TemporalQuery {
            scope: Scope::Stream(stream.clone()),
            range: TimeRange {
                from: started,
                to: Utc::now() + chrono::Duration::seconds(1),
            },
            event_types: Vec::new(),
            page_size: None,
        },
    };
    let range = reads.range(args.samples).await?;
    // Ten pages of 1,000 through continuation tokens against one unbounded page.
    let paged = reads.paged(args.samples).await?;
    let states = states_as_of(&target, &reads.limits, &stream, args.samples).await?;

    let overhead = median(&paged) / median(&range) - 1.0;
    if let Some((url, schema)) = &target.schema {
        drop(target.store);
        drop_schema(url, schema).await?;
    }
    Ok(json!({
        "backend": backend.name(),
        "range_read_10k_ms": ms(&range),
        "state_as_of_ms": {
            "with_snapshot_history": ms(&states.with),
            "without_snapshots": ms(&states.without),
            "most_events_folded_with_history": states.folded_with,
        },
        "continuation": {
            "pages": 10,
            "paged_ms": ms(&paged),
            "unbounded_ms": ms(&range),
            "overhead": round(overhead),
            "within_target": overhead < 0.2,
        },
        "range_read_within_target": ms(&range)["p99"].as_f64().is_some_and(|p99| p99 < 200.0),
    }))
}

fn ms(samples: &[Duration]) -> Value {
    let mut seconds: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    latency_ms(&mut seconds)
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("failed to connect to drop the benchmark schema")?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .with_context(|| format!("failed to drop the benchmark schema {schema}"))
}
