//! `nexus bench registry`: read latency and compatibility-check latency of the schema registry.
//!
//! Starts a registry in-process on a loopback port (embedded SQLite in a temporary folder unless
//! `--storage` says otherwise), registers a subject with `--versions` versions (each adds one
//! optional property), then lets `--clients` concurrent HTTP clients read versions and schemas
//! and check a new version against every earlier one. Prints percentiles as JSON; exits 1 when a
//! p99 misses the requirement (reads 100 ms, checks 200 ms).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use nexus_schema_registry::{
    client::Client,
    server::{self, AppState, Options},
};
use serde::Serialize;
use serde_json::{Value, json};

use super::Outcome;
use crate::output;

/// Requirement 8: reads under 100 ms, validation against all versions under 200 ms.
const READ_REQUIREMENT_MS: f64 = 100.0;
const CHECK_REQUIREMENT_MS: f64 = 200.0;
/// The tighter targets at 4 concurrent clients.
const READ_TARGET_P99_MS: f64 = 5.0;
const CHECK_TARGET_P99_MS: f64 = 10.0;

#[derive(Debug, Args)]
pub(crate) struct BenchRegistryArgs {
    /// Print JSON (the only format; accepted for symmetry with other benches).
    #[arg(long)]
    json: bool,
    /// Versions in the benchmark subject.
    #[arg(long, default_value_t = 100)]
    versions: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Read requests per client.
    #[arg(long, default_value_t = 2_500)]
    reads: usize,
    /// Compatibility checks per client.
    #[arg(long, default_value_t = 250)]
    checks: usize,
    /// Storage: `sqlite:PATH` or a `postgres://` URL (default: SQLite in a temporary folder).
    #[arg(long)]
    storage: Option<String>,
}

#[derive(Debug, Serialize)]
struct Latency {
    requests: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    target_p99_ms: f64,
    requirement_ms: f64,
}

fn latency(mut samples: Vec<Duration>, target: f64, requirement: f64) -> Latency {
    samples.sort_unstable();
    let pick = |p: f64| {
        let n = samples.len();
        if n == 0 {
            return 0.0;
        }
        let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        round(samples[idx].as_secs_f64() * 1000.0)
    };
    Latency {
        requests: samples.len(),
        p50_ms: pick(0.50),
        p90_ms: pick(0.90),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        target_p99_ms: target,
        requirement_ms: requirement,
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// A realistic event schema: ten base properties, a nested object, an array, an enum, and
/// `extra` optional string properties added one per version.
fn event_schema(extra: usize) -> String {
    let mut properties = serde_json::Map::new();
    properties.insert(
        "order_id".into(),
        json!({"type": "string", "format": "uuid"}),
    );
    properties.insert(
        "placed_at".into(),
        json!({"type": "string", "format": "date-time"}),
    );
    properties.insert(
        "status".into(),
        json!({"type": "string", "enum": ["placed", "paid", "shipped"]}),
    );
    properties.insert("total".into(), json!({"type": "number", "minimum": 0}));
    properties.insert(
        "currency".into(),
        json!({"type": "string", "minLength": 3, "maxLength": 3}),
    );
    properties.insert(
        "customer".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "string"}, "email": {"type": "string"}, "tier": {"type": "integer"}
        }, "required": ["id"]}),
    );
    properties.insert(
        "lines".into(),
        json!({"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}, "price": {"type": "number"}
        }, "required": ["sku", "quantity"]}}),
    );
    properties.insert("notes".into(), json!({"type": ["string", "null"]}));
    properties.insert("channel".into(), json!({"type": "string"}));
    properties.insert("correlation_id".into(), json!({"type": "string"}));
    for i in 0..extra {
        properties.insert(
            format!("field_{i:03}"),
            json!({"type": "string", "maxLength": 200}),
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "OrderPlaced",
        "type": "object",
        "properties": properties,
        "required": ["order_id", "placed_at", "status", "total"],
    })
    .to_string()
}

pub(crate) fn run(args: BenchRegistryArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(bench(args))
}

async fn bench(args: BenchRegistryArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.versions >= 1 && args.clients >= 1,
        "--versions and --clients must be at least 1"
    );
    let temp: Option<PathBuf> = match args.storage {
        Some(_) => None,
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "nexus-bench-registry-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
            Some(dir)
        }
    };
    let spec = match (&args.storage, &temp) {
        (Some(spec), _) => spec.clone(),
        (None, Some(dir)) => format!("sqlite:{}", dir.join("registry.db").display()),
        (None, None) => unreachable!("a temporary folder exists when no storage is given"),
    };
    let result = measure(&args, &spec).await;
    if let Some(dir) = temp {
        let _ = std::fs::remove_dir_all(dir);
    }
    let report = result?;
    let outcome = if report["reads"]["p99_ms"].as_f64().unwrap_or(f64::MAX) <= READ_REQUIREMENT_MS
        && report["compat_check_all_versions"]["p99_ms"]
            .as_f64()
            .unwrap_or(f64::MAX)
            <= CHECK_REQUIREMENT_MS
    {
        Outcome::Clean
    } else {
        Outcome::Findings
    };
    output::json(&report)?;
    Ok(outcome)
}

async fn measure(args: &BenchRegistryArgs, spec: &str) -> anyhow::Result<Value> {
    let storage = super::registry::open_storage(spec).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        AppState::new(storage, Options::default()),
        async {
            let _ = stopped.await;
        },
    ));

    let subject = format!(
        "bench-order-placed-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let setup = Client::new(&url)?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..args.versions {
        let answer = setup
            .register(&subject, &event_schema(i), None, None)
            .await
            .with_context(|| format!("failed to register version {}", i + 1))?;
        ids.push(
            answer["id"]
                .as_i64()
                .context("registration answer has no id")?,
        );
    }
    let setup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let proposal = event_schema(args.versions);

    // Warm up connections and caches.
    for _ in 0..20 {
        setup.version(&subject, "latest").await?;
        setup.check(&subject, &proposal, None).await?;
    }

    let reads = run_clients(args.clients, args.reads, &url, {
        let subject = subject.clone();
        let ids = ids.clone();
        move |client: Client, n: usize| {
            let subject = subject.clone();
            let ids = ids.clone();
            async move {
                match n % 3 {
                    0 => client.version(&subject, "latest").await.map(drop),
                    1 => client.schema_by_id(ids[n % ids.len()]).await.map(drop),
                    _ => client
                        .version(&subject, &(n % ids.len() + 1).to_string())
                        .await
                        .map(drop),
                }
            }
        }
    })
    .await?;

    let checks = run_clients(args.clients, args.checks, &url, {
        let subject = subject.clone();
        move |client: Client, _n: usize| {
            let subject = subject.clone();
            let proposal = proposal.clone();
            async move {
                let answer = client.check(&subject, &proposal, None).await?;
                if answer.is_compatible {
                    Ok(())
                } else {
                    Err(nexus_schema_registry::client::ClientError::Api {
                        status: 200,
                        error_code: 0,
                        message: "the benchmark proposal was judged incompatible".to_owned(),
                    })
                }
            }
        }
    })
    .await?;

    let _ = stop.send(());
    server.await.context("registry task failed")??;

    Ok(json!({
        "benchmark": "registry",
        "storage": if spec.starts_with("sqlite:") { "sqlite" } else { "postgres" },
        "transport": "http/1.1 loopback",
        "clients": args.clients,
        "versions": args.versions,
        "setup_register_all_versions_ms": round(setup_ms),
        "reads": latency(reads, READ_TARGET_P99_MS, READ_REQUIREMENT_MS),
        "compat_check_all_versions": latency(checks, CHECK_TARGET_P99_MS, CHECK_REQUIREMENT_MS),
    }))
}

/// Runs `per_client` requests on each of `clients` concurrent clients; returns every latency.
async fn run_clients<F, Fut>(
    clients: usize,
    per_client: usize,
    url: &str,
    request: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(Client, usize) -> Fut + Clone + Send + 'static,
    Fut:
        std::future::Future<Output = Result<(), nexus_schema_registry::client::ClientError>> + Send,
{
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::new(url)?;
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for n in 0..per_client {
                let started = Instant::now();
                request(client.clone(), n + c).await?;
                samples.push(started.elapsed());
            }
            Ok::<_, nexus_schema_registry::client::ClientError>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("benchmark client panicked")??);
    }
    Ok(all)
}
