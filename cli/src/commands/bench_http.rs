//! `nexus bench http`: a built-in load generator against the command service of the orders
//! sample (embedded store), beside the store's own append rate measured in the same run, so
//! the cost of the HTTP layer shows as a ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use nexus_runtime::http::{CommandService, serve_until};
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use serde_json::json;
use tokio::net::TcpListener;

use super::Outcome;
use super::bench::{latency_ms, round};
use crate::events::Order;
use crate::http::{self, Http};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct HttpArgs {
    /// Concurrent connections, each sending one command after the other.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds of load for each of the two phases (HTTP, then raw appends).
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Print JSON (the default output is a short summary).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: HttpArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.connections > 0 && args.duration > 0,
        "--connections and --duration must be positive"
    );
    super::tokio_runtime()?.block_on(async {
        let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
        let path = dir.path().join("events.db");
        let store: Arc<dyn EventStore> =
            Arc::new(EmbeddedStore::open(&path).context("failed to open the embedded store")?);
        let snapshots = Arc::new(
            EmbeddedSnapshotStore::open(EmbeddedSnapshotStore::path_beside(&path))
                .context("failed to open the snapshot store")?,
        );
        let router = CommandService::new(Arc::clone(&store))
            .with_snapshots(snapshots)
            .aggregate::<Order>()
            .router();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_until(listener, router, async {
            let _ = stopped.await;
        }));
        let http = http_phase(&format!("http://{address}"), &args).await?;
        let appends = append_phase(&store, &args).await?;
        let _ = stop.send(());
        server.await??;
        let ratio = match (
            http["commands_per_sec"].as_f64(),
            appends["appends_per_sec"].as_f64(),
        ) {
            (Some(http), Some(appends)) if appends > 0.0 => json!(round(http / appends)),
            _ => serde_json::Value::Null,
        };
        let report = json!({
            "benchmark": "http",
            "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
            "backend": "embedded",
            "connections": args.connections,
            "http": http,
            "store_appends": appends,
            "http_to_store_ratio": ratio,
            "peak_rss_mb": super::bench::peak_rss_mb(),
        });
        if args.json {
            output::json(&report)?;
        } else {
            output::line(&format!(
                "http: {} commands/s, p50 {} ms p99 {} ms; the store alone {} appends/s; ratio {}",
                report["http"]["commands_per_sec"],
                report["http"]["latency_ms"]["p50"],
                report["http"]["latency_ms"]["p99"],
                report["store_appends"]["appends_per_sec"],
                report["http_to_store_ratio"],
            ))?;
        }
        Ok(Outcome::Clean)
    })
}

/// `--connections` clients each place new orders one after the other for `--duration` seconds.
async fn http_phase(base: &str, args: &HttpArgs) -> anyhow::Result<serde_json::Value> {
    let client = Http::pooled(Duration::from_secs(30), args.connections)?;
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let client = client.clone();
        let next = Arc::clone(&next);
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = json!({"type": "PlaceOrder", "customer": format!("c{}", n % 100)});
                let url = http::url(&base, &["commands", "order", &format!("bench-{n}")], &[])?;
                let t = Instant::now();
                let answer = client
                    .send(reqwest::Method::POST, &url, Some(&body))
                    .await?;
                if answer.status.is_success() {
                    latencies.push(t.elapsed().as_secs_f64());
                } else {
                    failures += 1;
                }
            }
            anyhow::Ok((latencies, failures))
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (done, failed) = task.await??;
        latencies.extend(done);
        failures += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        failures == 0,
        "{failures} commands failed during the benchmark"
    );
    Ok(json!({
        "commands": latencies.len(),
        "seconds": round(seconds),
        "commands_per_sec": round(latencies.len() as f64 / seconds),
        "latency_ms": latency_ms(&mut latencies),
    }))
}

/// The same number of writers appending one event to a fresh stream each, without HTTP.
async fn append_phase(
    store: &Arc<dyn EventStore>,
    args: &HttpArgs,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let store = Arc::clone(store);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let event = NewEvent::from_json(
                    "OrderPlaced",
                    1,
                    format!(r#"{{"customer":"c{}"}}"#, n % 100),
                    Metadata::correlated("bench"),
                )?;
                let t = Instant::now();
                store
                    .append(
                        &StreamId::new("raw", format!("raw-{n}")),
                        ExpectedVersion::NoStream,
                        vec![event],
                    )
                    .await?;
                latencies.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "appends": latencies.len(),
        "seconds": round(seconds),
        "appends_per_sec": round(latencies.len() as f64 / seconds),
        "latency_ms": latency_ms(&mut latencies),
    }))
}
