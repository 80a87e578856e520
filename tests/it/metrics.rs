//! The metrics table: `docs/metrics.md` is generated from the runtime's catalogue, and what a
//! running `nexus up` exposes at `/metrics` under a little load is exactly what it documents.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nexus_runtime::telemetry::{CATALOGUE, Component, MetricKind};
use serde_json::json;

use crate::support::service_url;
use crate::up::{Up, command, drop_stream, http};

/// Components `nexus up` does not run, so their metrics cannot be exposed by it: the
/// integration relay to external consumers (RabbitMQ or the embedded queue) is started by
/// applications that declare routes, and is covered by `runtime/tests/it/integration.rs`; sagas
/// run in services that define them (`runtime/tests/it/saga.rs`), not in `nexus up` so far.
pub(crate) const NOT_RUN_BY_NEXUS_UP: &[Component] = &[Component::Integration, Component::Saga];

/// Metrics only the NATS layout emits (JetStream publish, pending counts, the relay).
fn nats_only(name: &str) -> bool {
    name.starts_with("nexus_relay_")
        || matches!(
            name,
            "nexus_bus_published_total"
                | "nexus_bus_publish_seconds"
                | "nexus_bus_pending_messages"
        )
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

#[test]
fn the_metrics_table_is_generated_from_the_catalogue() {
    let path = repo_root().join("docs/metrics.md");
    let want = nexus_runtime::telemetry::catalogue::markdown();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, &want).unwrap();
        } else {
            panic!(
                "docs/metrics.md is stale: run `UPDATE_DOCS=1 cargo test -p nexus-cli --test e2e metrics::` and commit it"
            );
        }
    }
}

/// `GET url` over HTTP/1.1; the status and the body as text.
pub(crate) fn get_text(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The metric families of a Prometheus text exposition, with their `# TYPE`.
pub(crate) fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Sends what makes every component of `nexus up` record: commands of every outcome, enough
/// events on one order for a snapshot, queries of both kinds, and a compatibility check.
pub(crate) fn drive(up: &Up, run: &str) {
    for n in 0..5 {
        let id = format!("{run}-{n}");
        let (status, body) = command(up, &id, json!({"type": "PlaceOrder", "customer": "ada"}));
        assert_eq!(status, 200, "{body}");
        command(
            up,
            &id,
            json!({"type": "AddItem", "sku": "tea", "quantity": 1, "unit_price_cents": 150}),
        );
        command(up, &id, json!({"type": "ConfirmOrder"}));
        // Rejected by the domain, and a stale If-Match.
        command(up, &id, json!({"type": "CancelOrder", "reason": "late"}));
        http(
            "POST",
            &format!("{}/commands/order/{id}", up.command_url),
            &[("If-Match", "\"1\"")],
            Some(json!({"type": "ConfirmOrder"})),
        );
    }
    // The snapshot policy of `nexus up` takes one every 100 events.
    let big = format!("{run}-big");
    command(up, &big, json!({"type": "PlaceOrder", "customer": "grace"}));
    for _ in 0..100 {
        command(
            up,
            &big,
            json!({"type": "AddItem", "sku": "tea", "quantity": 1, "unit_price_cents": 1}),
        );
    }
    let (status, _) = http(
        "GET",
        &format!(
            "{}/read-models/orders/orders/{big}?wait_for=order/{big}@101&wait_ms=20000",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(status, 200);
    http(
        "GET",
        &format!("{}/read-models/orders/orders?limit=5", up.query_url),
        &[],
        None,
    );
    http(
        "GET",
        &format!("{}/read-models/orders/orders/nobody", up.query_url),
        &[],
        None,
    );
    if let Some(registry) = up.announced["schema_registry"].as_str() {
        let subjects = up.announced["registered_subjects"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(subject) = subjects.first().and_then(|s| s.as_str()) {
            http(
                "POST",
                &format!("{registry}/compatibility/subjects/{subject}/versions/latest"),
                &[("Content-Type", "application/vnd.schemaregistry.v1+json")],
                Some(json!({"schema": "{\"type\":\"object\"}", "schemaType": "JSON"})),
            );
        }
    }
}

/// Scrapes every service of `up` until a snapshot shows in the metrics (it is taken in the
/// background), and returns the families exposed.
fn scrape(up: &Up) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = get_text(&format!("{}/metrics", up.command_url));
        assert_eq!(status, 200);
        let snapshotted = text
            .lines()
            .any(|l| l.starts_with("nexus_snapshot_size_bytes_count") && !l.ends_with(" 0"));
        if snapshotted || Instant::now() > deadline {
            let mut all = families(&text);
            all.extend(families(&get_text(&format!("{}/metrics", up.query_url)).1));
            if let Some(registry) = up.announced["schema_registry"].as_str() {
                all.extend(families(&get_text(&format!("{registry}/metrics")).1));
            }
            return all;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_exposed_metric_is_documented_and_every_documented_one_is_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("embedded"), &[]);
    drive(&up, "m");
    let mut exposed = scrape(&up);
    drop(up);

    let nats = service_url("NEXUS_TEST_NATS_URL");
    if let Some(nats) = &nats {
        let stream = format!("NEXUS_METRICS_TEST_{}", std::process::id());
        let up = Up::start(
            &dir.path().join("nats"),
            &[
                "--bus",
                "nats",
                "--nats-url",
                nats,
                "--nats-stream",
                &stream,
            ],
        );
        drive(&up, "n");
        exposed.extend(scrape(&up));
        drop(up);
        drop_stream(nats, &stream);
    }

    let documented: BTreeMap<&str, MetricKind> =
        CATALOGUE.iter().map(|m| (m.name, m.kind)).collect();
    let undocumented: Vec<&String> = exposed
        .keys()
        .filter(|name| !documented.contains_key(name.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in the catalogue (runtime/src/telemetry/catalogue.rs): {undocumented:?}"
    );
    for (name, kind) in &exposed {
        assert_eq!(
            kind,
            documented[name.as_str()].as_str(),
            "{name} is exposed as a {kind}"
        );
    }
    let missing: BTreeSet<&str> = CATALOGUE
        .iter()
        .filter(|m| !NOT_RUN_BY_NEXUS_UP.contains(&m.component))
        .filter(|m| nats.is_some() || !nats_only(m.name))
        .map(|m| m.name)
        .filter(|name| !exposed.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exposed by nexus up: {missing:?}"
    );
}

#[test]
fn nexus_top_reads_rates_latencies_and_lags_from_a_running_system() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    drive(&up, "top");
    let top = |args: &[&str]| {
        let output = crate::support::nexus()
            .arg("top")
            .arg(&up.command_url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let sample: serde_json::Value = serde_json::from_str(&top(&["--json"])).unwrap();
    assert!(
        sample["totals"]["nexus_commands_total"].as_f64().unwrap() >= 100.0,
        "{sample}"
    );
    assert_eq!(sample["projections"][0]["name"], "orders", "{sample}");
    assert!(sample["per_second"]["commands"].is_number(), "{sample}");
    assert!(
        sample["latency_seconds"]["command"]["p99"].is_number(),
        "{sample}"
    );
    let screen = top(&["--once"]);
    for expected in [
        "nexus top",
        "commands",
        "events projected",
        "p99",
        "projection orders",
    ] {
        assert!(
            screen.contains(expected),
            "{expected} missing from\n{screen}"
        );
    }
}

#[test]
fn the_otlp_export_pushes_every_metric_that_metrics_exposes() {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;

    let receiver = crate::traces::Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_with_env(
        &dir.path().join("data"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ],
    );
    drive(&up, "o");
    // The same families, of the same kinds, under the same names: counters as monotonic
    // cumulative sums, gauges as gauges, histograms with the buckets of `/metrics`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, exported) = loop {
        let (status, text) = get_text(&format!("{}/metrics", up.command_url));
        assert_eq!(status, 200);
        let exported = receiver.metrics();
        // A histogram nothing was recorded in has no data point to export.
        let observed = |name: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}_count")))
                .any(|l| !l.ends_with(" 0"))
        };
        let differ: Vec<(String, String)> = families(&text)
            .into_iter()
            .filter(|(name, kind)| kind != "histogram" || observed(name))
            .filter(|(name, kind)| {
                let same = match exported.get(name).and_then(|m| m.data.as_ref()) {
                    Some(Data::Sum(sum)) => {
                        kind == "counter" && sum.is_monotonic && sum.aggregation_temporality == 2
                    }
                    Some(Data::Gauge(_)) => kind == "gauge",
                    Some(Data::Histogram(_)) => kind == "histogram",
                    _ => false,
                };
                !same
            })
            .collect();
        if differ.is_empty() {
            break (text, exported);
        }
        assert!(
            Instant::now() < deadline,
            "exposed on /metrics but not exported over OTLP as the same kind: {differ:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let Some(Data::Histogram(histogram)) = exported["nexus_command_duration_seconds"].data.as_ref()
    else {
        panic!("a histogram")
    };
    let bounds = &histogram.data_points[0].explicit_bounds;
    let buckets = CATALOGUE
        .iter()
        .find(|m| m.name == "nexus_command_duration_seconds")
        .unwrap()
        .buckets;
    assert_eq!(bounds.as_slice(), buckets);
    // With the traffic over, the exported counts reach what /metrics says.
    let placed = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("nexus_commands_total{") && l.contains("outcome=\"ok\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let want = placed(&text);
    assert!(want >= 100.0, "{want} commands accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Some(Data::Sum(sum)) = receiver.metrics()["nexus_commands_total"].data.clone() else {
            panic!("a sum")
        };
        let have: f64 = sum
            .data_points
            .iter()
            .filter(|p| {
                p.attributes
                    .iter()
                    .any(|a| a.key == "outcome" && format!("{:?}", a.value).contains("\"ok\""))
            })
            .map(|p| match p.value {
                Some(Number::AsInt(n)) => n as f64,
                Some(Number::AsDouble(n)) => n,
                None => 0.0,
            })
            .sum();
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exported {have}, /metrics says {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(up);
}
