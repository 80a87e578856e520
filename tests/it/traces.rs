//! End-to-end traces: `nexus up` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a small OTLP
//! receiver in the test (HTTP/protobuf, decoded with the OpenTelemetry protobuf types; it takes
//! metrics too, for `metrics.rs`), and one
//! command's trace followed from the request to the read-model commit, on the embedded store
//! with the in-process bus and on PostgreSQL with NATS JetStream.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;

use crate::otlp_request;
use crate::support::{TestDb, service_url};
use crate::up::{Up, drop_stream};

/// Largest export request the receiver reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// An OTLP/HTTP receiver on a free loopback port, keeping every span and the newest export of
/// every metric it is sent.
pub(crate) struct Receiver {
    pub(crate) endpoint: String,
    kept: Arc<Kept>,
}

#[derive(Default)]
struct Kept {
    spans: Mutex<Vec<Span>>,
    metrics: Mutex<BTreeMap<String, Metric>>,
}

impl Receiver {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let kept = Arc::new(Kept::default());
        let serving = Arc::clone(&kept);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let kept = Arc::clone(&serving);
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Self { endpoint, kept }
    }

    /// Every span received so far.
    pub(crate) fn spans(&self) -> Vec<Span> {
        self.kept.spans.lock().unwrap().clone()
    }

    /// Waits up to 30 s for a span `name` of trace `trace_id` whose parent is `parent`.
    pub(crate) fn child(&self, trace_id: &[u8], parent: &Span, name: &str) -> Span {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.spans().into_iter().find(|s| {
                s.trace_id == trace_id && s.name == name && s.parent_span_id == parent.span_id
            });
            if let Some(span) = found {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no `{name}` under `{}` in the trace within 30 s",
                parent.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The newest export of each metric received so far, by name.
    pub(crate) fn metrics(&self) -> BTreeMap<String, Metric> {
        self.kept.metrics.lock().unwrap().clone()
    }

    /// Waits until the spans of `trace_id` include every one of `names`; returns them by name.
    pub(crate) fn trace(&self, trace_id: &[u8], names: &[&str]) -> BTreeMap<String, Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: BTreeMap<String, Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| (s.name.clone(), s))
                .collect();
            if names.iter().all(|name| spans.contains_key(*name)) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "not all of {names:?} in the trace within 30 s; got {:?}",
                spans.keys().collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Answers OTLP export requests on one connection (keep-alive) until it closes.
fn serve(stream: TcpStream, kept: &Kept) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while let Some((line, body)) = otlp_request::read(&mut reader, MAX_BODY) {
        let status = if line.starts_with("POST /v1/traces") {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(export) => {
                    let mut spans = kept.spans.lock().unwrap();
                    for resource in export.resource_spans {
                        for scope in resource.scope_spans {
                            spans.extend(scope.spans);
                        }
                    }
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else if line.starts_with("POST /v1/metrics") {
            match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(export) => {
                    let mut metrics = kept.metrics.lock().unwrap();
                    for resource in export.resource_metrics {
                        for scope in resource.scope_metrics {
                            for metric in scope.metrics {
                                metrics.insert(metric.name.clone(), metric);
                            }
                        }
                    }
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else {
            "404 Not Found"
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parent<'a>(spans: &'a BTreeMap<String, Span>, name: &str) -> &'a Span {
    spans
        .get(name)
        .unwrap_or_else(|| panic!("no span `{name}` in {:?}", spans.keys().collect::<Vec<_>>()))
}

/// Sends one command with a known `traceparent`, follows it to the read model, and checks the
/// trace tree: request → command → load, decide, append → process (bus delivery) → apply, commit.
fn one_command_is_one_trace(args: &[&str], nats: bool) -> String {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_with_env(
        &dir.path().join("data"),
        args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let id = format!("t-{}", &trace_id[20..]);
    let (status, headers, body) = crate::up::http_with_headers(
        "POST",
        &format!("{}/commands/order/{id}", up.command_url),
        &[("traceparent", &traceparent)],
        Some(json!({"type": "PlaceOrder", "customer": "ada"})),
    );
    assert_eq!(status, 200, "{body}");
    // The response carries the server span's context in the caller's trace.
    let returned = headers
        .get("traceparent")
        .expect("a traceparent in the response");
    assert!(
        returned.starts_with(&format!("00-{trace_id}-")) && !returned.contains(caller_span),
        "{returned}"
    );
    let (status, _) = crate::up::http(
        "GET",
        &format!(
            "{}/read-models/orders/orders/{id}?wait_for=order/{id}@1&wait_ms=15000",
            up.query_url
        ),
        &[],
        None,
    );
    assert_eq!(status, 200);

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let request_span = "POST /commands/{aggregate}/{id}";
    let spans = receiver.trace(
        &trace_bytes,
        &[
            request_span,
            "command order",
            "load",
            "decide",
            "append",
            "process orders",
            "apply",
            "commit orders",
        ],
    );
    let request = parent(&spans, request_span);
    assert_eq!(hex(&request.parent_span_id), caller_span);
    assert_eq!(request.kind, SpanKind::Server as i32);
    let command = parent(&spans, "command order");
    assert_eq!(command.parent_span_id, request.span_id);
    for step in ["load", "decide", "append"] {
        assert_eq!(
            parent(&spans, step).parent_span_id,
            command.span_id,
            "{step}"
        );
    }
    let append = parent(&spans, "append");
    let process = parent(&spans, "process orders");
    assert_eq!(
        process.parent_span_id, append.span_id,
        "the delivery continues the trace the event was appended under"
    );
    assert_eq!(process.kind, SpanKind::Consumer as i32);
    // Every projection's batch has an `apply`: the one under this `process orders` is the
    // orders projection's.
    for name in ["apply", "commit orders"] {
        receiver.child(&trace_bytes, process, name);
    }

    if nats {
        // The relay's publish is a trace of its own, linked to the append it carries.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let linked = receiver.spans().into_iter().any(|s| {
                s.name == "send nexus"
                    && s.kind == SpanKind::Producer as i32
                    && s.links
                        .iter()
                        .any(|l| l.trace_id == trace_bytes && l.span_id == append.span_id)
            });
            if linked {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no relay publish span linked to the append"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(up);
    let mut tree = String::new();
    let mut by_id: BTreeMap<Vec<u8>, &Span> = BTreeMap::new();
    for span in spans.values() {
        by_id.insert(span.span_id.clone(), span);
    }
    render(&mut tree, &by_id, &request.span_id, 0);
    tree
}

/// The trace below `id`, one span per line, indented by depth, with durations.
fn render(out: &mut String, spans: &BTreeMap<Vec<u8>, &Span>, id: &[u8], depth: usize) {
    let Some(span) = spans.get(id) else { return };
    let micros = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano)
        / 1000;
    out.push_str(&format!(
        "{}{} ({} µs, span {})\n",
        "  ".repeat(depth),
        span.name,
        micros,
        hex(&span.span_id)
    ));
    let mut children: Vec<&&Span> = spans.values().filter(|s| s.parent_span_id == id).collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    for child in children {
        render(out, spans, &child.span_id, depth + 1);
    }
}

#[test]
fn one_command_is_one_trace_from_request_to_read_model_on_the_embedded_store() {
    let tree = one_command_is_one_trace(&[], false);
    #[expect(
        clippy::print_stderr,
        reason = "the trace tree, for people reading the test log"
    )]
    {
        eprintln!("trace tree (embedded store, in-process bus):\n{tree}");
    }
}

#[test]
fn one_command_is_one_trace_from_request_to_read_model_on_postgres_and_nats() {
    let (Some(db), Some(nats)) = (
        TestDb::create_blocking(),
        service_url("NEXUS_TEST_NATS_URL"),
    ) else {
        return;
    };
    let url = db.url().to_owned();
    let stream = format!("NEXUS_TRACING_TEST_{}", std::process::id());
    let tree = one_command_is_one_trace(
        &[
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
        ],
        true,
    );
    #[expect(
        clippy::print_stderr,
        reason = "the trace tree, for people reading the test log"
    )]
    {
        eprintln!("trace tree (PostgreSQL, NATS JetStream):\n{tree}");
    }
    drop_stream(&nats, &stream);
}
