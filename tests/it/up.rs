//! `nexus up` and `nexus bench store|bus`: the reference system runs end to end, and the
//! benchmarks print the JSON documents their users parse.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestDb, nexus, service_url};

/// A running `nexus up`; tests stop it with [`Up::interrupt`], a panic kills it.
pub(crate) struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) command_url: String,
    pub(crate) query_url: String,
    /// The first line: URLs and the subjects registered.
    pub(crate) announced: Value,
}

impl Up {
    pub(crate) fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    /// Like [`Up::start`], with extra environment variables.
    pub(crate) fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = nexus()
            .envs(env.iter().copied())
            .args([
                "up",
                "--json",
                "--command-port",
                "0",
                "--query-port",
                "0",
                "--registry-port",
                "0",
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nexus up");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("nexus up prints its URLs");
        let urls: Value = serde_json::from_str(&first).expect("the first line is JSON");
        Self {
            child,
            lines,
            command_url: urls["command_service"].as_str().unwrap().to_owned(),
            query_url: urls["query_dashboard"].as_str().unwrap().to_owned(),
            announced: urls,
        }
    }

    fn next_line(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("nexus up prints another line");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    /// Sends SIGINT and returns the exit code and the last line printed.
    pub(crate) fn interrupt(mut self) -> (Option<i32>, Value) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(
                Instant::now() < deadline,
                "nexus up did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let last = self
            .lines
            .try_iter()
            .last()
            .map(|l| serde_json::from_str(&l).unwrap())
            .unwrap_or(Value::Null);
        (code, last)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the JSON body.
pub(crate) fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, body) = http_with_headers(method, url, headers, body);
    (status, body)
}

/// Like [`http`], also returning the response headers (names in lower case).
pub(crate) fn http_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, std::collections::BTreeMap<String, String>, Value) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    // Bodies are small and sent with Content-Length or one chunk; take the JSON part.
    let json_body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split_once("\r\n")
            .map_or("", |(_, rest)| rest)
            .rsplit_once("\r\n0\r\n")
            .map_or("", |(json, _)| json)
    } else {
        body
    };
    let response_headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (
        status,
        response_headers,
        serde_json::from_str(json_body).unwrap_or(Value::Null),
    )
}

pub(crate) fn command(up: &Up, id: &str, body: Value) -> (u16, Value) {
    http(
        "POST",
        &format!("{}/commands/order/{id}", up.command_url),
        &[],
        Some(body),
    )
}

/// Places order `id`, adds 3 × tea at 150 cents and confirms it, then waits until the orders
/// read model shows its version 3: that document.
pub(crate) fn confirmed_order(up: &Up, id: &str) -> Value {
    for body in [
        json!({"type": "PlaceOrder", "customer": "ada"}),
        json!({"type": "AddItem", "sku": "tea", "quantity": 3, "unit_price_cents": 150}),
        json!({"type": "ConfirmOrder"}),
    ] {
        let (status, answer) = command(up, id, body);
        assert_eq!(status, 200, "{answer}");
    }
    let (status, order) = http(
        "GET",
        &format!(
            "{}/read-models/orders/orders/{id}?wait_for=order/{id}@3",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(status, 200, "{order}");
    order
}

#[test]
fn up_serves_commands_and_read_models_and_keeps_them_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    assert_eq!(
        command(&up, "o-1", json!({"type": "PlaceOrder", "customer": "ada"})).0,
        200
    );
    let (status, added) = command(
        &up,
        "o-1",
        json!({"type": "AddItem", "sku": "tea", "quantity": 3, "unit_price_cents": 150}),
    );
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["version"], 2);
    let (status, confirmed) = command(&up, "o-1", json!({"type": "ConfirmOrder"}));
    assert_eq!(status, 200, "{confirmed}");

    // Domain rules are 422, a stale If-Match is 409 with the actual version, bad JSON is 400.
    let (status, rejected) = command(&up, "o-1", json!({"type": "CancelOrder", "reason": "late"}));
    assert_eq!(status, 422, "{rejected}");
    let (status, conflict) = http(
        "POST",
        &format!("{}/commands/order/o-1", up.command_url),
        &[("If-Match", "\"1\"")],
        Some(json!({"type": "ConfirmOrder"})),
    );
    assert_eq!(
        (status, conflict["actual"].clone()),
        (409, json!(3)),
        "{conflict}"
    );
    let (status, _) = command(&up, "o-1", json!({"type": "Teleport"}));
    assert_eq!(status, 400);

    // The read model catches up (read-your-writes on the version the command answered).
    let (status, order) = http(
        "GET",
        &format!(
            "{}/read-models/orders/orders/o-1?wait_for=order/o-1@3",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total_cents"], 450);
    for base in [&up.command_url, &up.query_url] {
        let (status, doc) = http("GET", &format!("{base}/openapi.json"), &[], None);
        assert_eq!(status, 200);
        assert_valid_openapi(&doc);
    }
    let (status, health) = http("GET", &format!("{}/health", up.query_url), &[], None);
    assert_eq!(
        (status, health["status"].clone()),
        (200, json!("ok")),
        "{health}"
    );

    let (code, last) = up.interrupt();
    assert_eq!(code, Some(0), "SIGINT stops nexus up cleanly");
    assert_eq!(last["stopped"], true, "{last}");
    assert_eq!(last["events"], 3);

    // Started again on the same data: the events and the read model are still there, and
    // registering the unchanged schemas again is accepted.
    let up = Up::start(&data, &[]);
    assert_eq!(
        up.announced["registration_error"],
        Value::Null,
        "{}",
        up.announced
    );
    let (status, order) = http(
        "GET",
        &format!("{}/read-models/orders/orders/o-1", up.query_url),
        &[],
        None,
    );
    assert_eq!(
        (status, order["status"].clone()),
        (200, json!("confirmed")),
        "{order}"
    );
    let (status, state) = http(
        "GET",
        &format!("{}/aggregates/order/o-1", up.command_url),
        &[],
        None,
    );
    assert_eq!(
        (status, state["version"].clone()),
        (200, json!(3)),
        "{state}"
    );
    let (status, placed) = command(&up, "o-2", json!({"type": "PlaceOrder", "customer": "ada"}));
    assert_eq!(status, 200, "{placed}");
    let (status, customer) = http(
        "GET",
        &format!(
            "{}/read-models/orders/customers/ada?wait_for=order/o-2@1",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(
        (status, customer["orders"].clone()),
        (200, json!(2)),
        "{customer}"
    );
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));
}

/// Validates `doc` against the official OpenAPI 3.1 schema.
fn assert_valid_openapi(doc: &Value) {
    let schema: Value =
        serde_json::from_str(include_str!("fixtures/openapi-3.1.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI schema compiles");
    assert!(
        !validator
            .is_valid(&json!({"openapi": "3.1.0", "paths": {"/x": {"get": {"responses": 5}}}})),
        "the schema rejects a document without info and with a malformed operation"
    );
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid OpenAPI 3.1 document: {errors:#?}"
    );
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
}

#[test]
fn up_demo_sends_orders_and_shows_the_read_model_changing() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        &dir.path().join("data"),
        &["--demo", "--demo-orders", "1", "--no-registry"],
    );
    let steps: Vec<Value> = (0..4).map(|_| up.next_line()).collect();
    let commands: Vec<&str> = steps
        .iter()
        .map(|s| s["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        ["PlaceOrder", "AddItem", "AddItem", "SubmitOrder"]
    );
    assert_eq!(steps[0]["read_model"]["status"], "placed");
    // The fulfilment saga reserved the stock, charged the payment and confirmed the order.
    assert_eq!(steps[3]["saga"]["status"], "completed", "{}", steps[3]);
    assert_eq!(steps[3]["read_model"]["status"], "confirmed");
    assert_eq!(steps[3]["version"], 5);
    assert!(
        steps[3]["customer"]["total_cents"].as_u64().unwrap() > 0,
        "{}",
        steps[3]
    );
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));
}

/// Polls saga `id` of `fulfilment` until `check` holds (at most 30 s); returns its document.
fn fulfilment_until(up: &Up, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, saga) = http(
            "GET",
            &format!("{}/sagas/fulfilment/{id}", up.command_url),
            &[],
            None,
        );
        if status == 200 && check(&saga) {
            return saga;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} did not become {what} within 30 s: {status} {saga}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the console's browser test does by hand: a saga stuck on a refused compensation, found
/// in the stuck list, retried by an operator once the cause is gone.
#[test]
fn up_demo_runs_the_fulfilment_saga_and_an_operator_retries_a_stuck_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &["--demo", "--demo-orders", "1", "--no-registry"]);
    // The demo's order: placed, two items, submitted (the fourth line).
    let lines: Vec<Value> = (0..4).map(|_| up.next_line()).collect();
    let submitted = &lines[3];
    assert_eq!(submitted["saga"]["status"], "completed", "{submitted}");
    let post = |path: &str, body: Value, headers: &[(&str, &str)]| {
        http(
            "POST",
            &format!("{}{path}", up.command_url),
            headers,
            Some(body),
        )
    };

    // A stock count: nothing goes back on the shelf until it finishes.
    let (status, body) = post(
        "/commands/inventory/main",
        json!({"type": "StartStockCount"}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    // An order above the charge limit: declined, so its reservation must be released.
    for step in [
        json!({"type": "PlaceOrder", "customer": "ada"}),
        json!({"type": "AddItem", "sku": "espresso", "quantity": 1, "unit_price_cents": 60000}),
        json!({"type": "SubmitOrder"}),
    ] {
        let (status, body) = command(&up, "stuck-1", step);
        assert_eq!(status, 200, "{body}");
    }
    let (status, page) = (0..300)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            http(
                "GET",
                &format!("{}/sagas/fulfilment?status=stuck", up.command_url),
                &[],
                None,
            )
        })
        .find(|(_, page)| page["items"].as_array().is_some_and(|i| !i.is_empty()))
        .expect("the saga gets stuck within 30 s");
    assert_eq!(status, 200);
    let stuck = &page["items"][0];
    assert_eq!(stuck["correlation_key"], "stuck-1", "{page}");
    let id = stuck["id"].as_str().unwrap().to_owned();
    let shown = fulfilment_until(&up, &id, "stuck", |s| s["status"] == "stuck");
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stock count")),
        "{shown}"
    );

    // Retrying needs `dlq:admin`; while the count runs it gets stuck again.
    let (status, _) = post(&format!("/sagas/fulfilment/{id}/retry"), json!({}), &[]);
    assert_eq!(status, 401);
    let out = nexus()
        .args(["token", "issue", "--role", "admin", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let admin = format!("Bearer {}", String::from_utf8(out.stdout).unwrap().trim());
    let (status, body) = post(
        "/commands/inventory/main",
        json!({"type": "FinishStockCount"}),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &format!("/sagas/fulfilment/{id}/retry"),
        json!({}),
        &[("Authorization", &admin)],
    );
    assert_eq!(status, 200, "{body}");
    let done = fulfilment_until(&up, &id, "compensated", |s| s["status"] == "compensated");
    let types: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        types.contains(&"SagaStuck") && types.contains(&"SagaRetried"),
        "{types:?}"
    );
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));
}

#[test]
fn up_refuses_a_port_in_use_and_names_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = nexus()
        .args([
            "up",
            "--query-port",
            "0",
            "--registry-port",
            "0",
            "--command-port",
            &port,
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--command-port"), "{stderr}");
}

#[test]
fn up_runs_on_postgres_and_nats_and_keeps_its_read_models_in_postgres() {
    let (Some(db), Some(nats)) = (
        TestDb::create_blocking(),
        service_url("NEXUS_TEST_NATS_URL"),
    ) else {
        return;
    };
    let url = db.url().to_owned();
    let stream = format!("NEXUS_UP_TEST_{}", std::process::id());
    let args = [
        "--store",
        "postgres",
        "--url",
        &url,
        "--read-models",
        "postgres",
        "--bus",
        "nats",
        "--nats-url",
        &nats,
        "--nats-stream",
        &stream,
    ];
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &args);
    let placed = command(
        &up,
        "p-1",
        json!({"type": "PlaceOrder", "customer": "grace"}),
    );
    assert_eq!(placed.0, 200, "{}", placed.1);
    let (status, order) = http(
        "GET",
        &format!(
            "{}/read-models/orders/orders/p-1?wait_for=order/p-1@1&wait_ms=10000",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(
        (status, order["customer"].clone()),
        (200, json!("grace")),
        "{order}"
    );
    // Search runs in PostgreSQL too: no index server, and the write is searchable as it commits.
    let (status, found) = http(
        "GET",
        &format!(
            "{}/read-models/orders/orders/search?q=grac*&highlight=customer&facets=status",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found["total"],
        json!({"value": 1, "relation": "eq"}),
        "{found}"
    );
    assert_eq!(found["hits"][0]["id"], json!("p-1"), "{found}");
    assert_eq!(found["facets"]["status"], json!({"placed": 1}), "{found}");
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));

    // A fresh data folder: the read model lives in PostgreSQL, not in a local file.
    let other = tempfile::tempdir().unwrap();
    let up = Up::start(&other.path().join("data"), &args);
    let (status, order) = http(
        "GET",
        &format!("{}/read-models/orders/orders/p-1", up.query_url),
        &[],
        None,
    );
    assert_eq!(
        (status, order["status"].clone()),
        (200, json!("placed")),
        "{order}"
    );
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));
    drop_stream(&nats, &stream);
}

/// Deletes a JetStream stream a test created.
pub(crate) fn drop_stream(url: &str, name: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    });
}

#[test]
fn up_rejects_postgres_without_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (flags, message) in [
        (["--store", "postgres"], "--store postgres needs --url"),
        (
            ["--read-models", "postgres"],
            "--read-models postgres needs --url",
        ),
    ] {
        let output = nexus()
            .arg("up")
            .args(flags)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("NEXUS_POSTGRES_URL")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains(message));
        assert!(!data.exists(), "bad flags create nothing on disk");
    }
}

#[test]
fn bench_store_prints_its_measurements_as_json() {
    let output = nexus()
        .args([
            "bench",
            "store",
            "--backend",
            "embedded",
            "--writers",
            "2",
            "--events",
            "200",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["backend"], "embedded");
    assert_eq!(run["append"]["events"], 200);
    for key in ["events_per_sec", "appends_per_sec"] {
        assert!(run["append"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(run["append"]["latency_ms"]["p99"].is_number());
    assert_eq!(run["rehydrate_10k_ms"]["events"], 10_000);
    assert!(run["rehydrate_10k_ms"]["with_snapshot"]["p50"].is_number());
    assert!(run["stream_read_ms"]["p99"].is_number());
    assert_eq!(run["cdc_latency_ms"]["samples"], 500);
}

#[test]
fn bench_refuses_a_load_smaller_than_its_writers() {
    let output = nexus()
        .args(["bench", "store", "--writers", "8", "--events", "4"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must cover at least one batch"));
}

#[test]
fn bench_bus_prints_latency_and_lag_per_projection_count() {
    let output = nexus()
        .args([
            "bench",
            "bus",
            "--projections",
            "1,2",
            "--rate",
            "500",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["backend"], "inprocess");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["projections"], 2);
    assert_eq!(
        runs[1]["latency_ms"]["samples"], 1000,
        "each projection saw each event once"
    );
    assert!(runs[0]["latency_ms"]["p999"].is_number());
}

#[test]
fn bench_store_measures_postgres_against_its_plain_insert_ceiling() {
    let Some(url) = service_url("NEXUS_TEST_POSTGRES_URL") else {
        return;
    };
    let output = nexus()
        .args([
            "bench",
            "store",
            "--backend",
            "postgres",
            "--writers",
            "2",
            "--events",
            "200",
            "--batch",
            "2",
            "--json",
            "--url",
        ])
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["backend"], "postgres");
    assert_eq!(run["append"]["events"], 200);
    assert!(run["ceiling"]["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(run["ceiling"]["ratio"].as_f64().unwrap() > 0.0);
}

/// Runs `nexus` with `args` and returns the exit code, stdout and stderr.
fn run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let output = nexus()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run nexus");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn up_creates_a_dev_key_and_nexus_token_issue_opens_admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    let key = up.announced["dev_signing_key"].as_str().unwrap().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the dev key is private");
    }
    let registry = up.announced["schema_registry"].as_str().unwrap().to_owned();
    let data_dir = data.to_str().unwrap();
    let issue = |role: &str| {
        let (code, token, stderr) = run(
            &[],
            &["token", "issue", "--role", role, "--data-dir", data_dir],
        );
        assert_eq!(code, Some(0), "{stderr}");
        token.trim().to_owned()
    };
    let level = json!({"compatibility": "NONE"});

    // Administration needs a credential even on loopback; reads and commands stay open there.
    let (status, body) = http(
        "PUT",
        &format!("{registry}/config"),
        &[],
        Some(level.clone()),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_code"], 40101);
    let reader = format!("Bearer {}", issue("reader"));
    let (status, body) = http(
        "PUT",
        &format!("{registry}/config"),
        &[("Authorization", &reader)],
        Some(level.clone()),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("registry:admin"),
        "{body}"
    );
    let admin = format!("Bearer {}", issue("admin"));
    let (status, body) = http(
        "PUT",
        &format!("{registry}/config"),
        &[("Authorization", &admin)],
        Some(level),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = command(
        &up,
        "o-auth",
        json!({"type": "PlaceOrder", "customer": "ada"}),
    );
    assert!((200..300).contains(&status), "{status}: {body}");
    let (status, _) = http(
        "POST",
        &format!("{}/commands/order/o-auth2", up.command_url),
        &[("Authorization", "Bearer a.b.c")],
        Some(json!({"type": "PlaceOrder", "customer": "ada"})),
    );
    assert_eq!(
        status, 401,
        "a bad token is refused even where anonymous callers may write"
    );

    // `nexus schema` sends the token from NEXUS_TOKEN; a bad one is refused with 401.
    let (code, stdout, stderr) = run(
        &[("NEXUS_TOKEN", admin.trim_start_matches("Bearer "))],
        &["schema", "list", "--registry", &registry],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("OrderPlaced"), "{stdout}");
    let (code, _, stderr) = run(
        &[],
        &[
            "schema",
            "list",
            "--registry",
            &registry,
            "--token",
            "nexus_not_a_key",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("401") || stderr.contains("authentication"),
        "{stderr}"
    );

    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));
    // Without a key, `nexus token issue` says where it looked.
    let (code, _, stderr) = run(
        &[],
        &[
            "token",
            "issue",
            "--role",
            "admin",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("nexus up"), "{stderr}");
}

#[test]
fn a_non_loopback_bind_without_auth_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.to_str().unwrap();
    let (code, _, stderr) = run(
        &[],
        &[
            "up",
            "--host",
            "0.0.0.0",
            "--command-port",
            "0",
            "--query-port",
            "0",
            "--registry-port",
            "0",
            "--data-dir",
            data_dir,
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    let (code, _, stderr) = run(
        &[],
        &[
            "registry",
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--storage",
            &format!("sqlite:{data_dir}/r.db"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");

    let up = Up::start(&data, &["--host", "0.0.0.0", "--insecure"]);
    let (status, body) = command(
        &up,
        "o-open",
        json!({"type": "PlaceOrder", "customer": "ada"}),
    );
    assert!((200..300).contains(&status), "{status}: {body}");
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));
}

#[test]
fn the_registry_serves_behind_an_auth_file_with_api_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (code, printed, stderr) = run(&[], &["token", "api-key", "--id", "ci", "--role", "writer"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (key, entry) = printed.split_once('\n').unwrap();
    std::fs::write(dir.path().join("auth.toml"), entry).unwrap();
    let mut child = nexus()
        .args(["registry", "serve", "--addr", "0.0.0.0:0", "--storage"])
        .arg(format!("sqlite:{}", dir.path().join("r.db").display()))
        .arg("--auth")
        .arg(dir.path().join("auth.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().replace("0.0.0.0", "127.0.0.1");
    let (status, body) = http("GET", &format!("{url}/subjects"), &[], None);
    assert_eq!(
        status, 401,
        "anonymous callers get nothing on a public bind: {body}"
    );
    let bearer = format!("Bearer {key}");
    let (status, body) = http(
        "GET",
        &format!("{url}/subjects"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        "DELETE",
        &format!("{url}/subjects/x"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(status, 403, "a writer may not delete");
    let _ = child.kill();
    let _ = child.wait();
}
