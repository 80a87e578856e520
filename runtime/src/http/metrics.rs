//! Prometheus metrics: one process-wide recorder, a `/metrics` route, and a layer that counts
//! and times every request by route.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::telemetry::catalogue::LATENCY_BUCKETS;
use crate::telemetry::{CATALOGUE, MetricKind};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the recorder's histogram samples are folded into their buckets without a scrape.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process-wide Prometheus recorder, installed on first use.
///
/// `None` when the application installed another `metrics` recorder first; the `/metrics`
/// route then answers 501 and the application exports metrics its own way.
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            match install(recorder) {
                Ok(()) => {
                    describe();
                    keep_up(handle.clone(), UPKEEP_EVERY);
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(%err, "another metrics recorder is installed; /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// Folds `handle`'s histogram samples into their buckets every `every`, in a thread of its own
/// for the life of the process.
///
/// The recorder keeps each sample recorded (8 bytes) until upkeep folds it into its buckets;
/// `/metrics` folds them on each scrape (`render` does), but a process nobody scrapes (a bench, a service
/// without Prometheus) would keep them all: about 45 bytes per command with snapshots on.
/// With this, what is held is bounded by what is recorded in `every`.
fn keep_up(handle: PrometheusHandle, every: Duration) {
    let started = std::thread::Builder::new()
        .name("nexus-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        });
    if let Err(err) = started {
        tracing::warn!(%err, "cannot start the metrics upkeep thread; histograms are folded on scrapes only");
    }
}

/// Installs the Prometheus recorder, beside the OTLP export when that is configured.
fn install(recorder: PrometheusRecorder) -> Result<(), String> {
    #[cfg(feature = "otel")]
    match crate::telemetry::otlp_metrics::recorder() {
        Ok(Some(otlp)) => {
            return ::metrics::set_global_recorder(crate::telemetry::otlp_metrics::Both(
                recorder, otlp,
            ))
            .map_err(|e| e.to_string());
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(%err, "the OTLP metrics export is off"),
    }
    ::metrics::set_global_recorder(recorder).map_err(|e| e.to_string())
}

/// The exporter: every histogram a classic histogram with explicit buckets (the catalogue's,
/// else the latency buckets), never a summary, so quantiles aggregate across instances and
/// hold at any scrape interval.
fn builder() -> PrometheusBuilder {
    let Ok(mut builder) = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS) else {
        return PrometheusBuilder::new();
    };
    for metric in CATALOGUE.iter().filter(|m| m.kind == MetricKind::Histogram) {
        match PrometheusBuilder::set_buckets_for_metric(
            builder,
            Matcher::Full(metric.name.to_owned()),
            metric.buckets,
        ) {
            Ok(next) => builder = next,
            // Only an empty bucket list is refused, and the catalogue's test rules that out.
            Err(_) => return PrometheusBuilder::new(),
        }
    }
    builder
}

/// Describes every catalogued metric to the recorder (its `# HELP` and unit).
fn describe() {
    for metric in CATALOGUE {
        let help = metric.help;
        match metric.kind {
            MetricKind::Counter => ::metrics::describe_counter!(metric.name, help),
            MetricKind::Gauge => ::metrics::describe_gauge!(metric.name, help),
            MetricKind::Histogram => ::metrics::describe_histogram!(metric.name, help),
        }
    }
}

/// `GET /metrics`: every metric of the process in Prometheus text format.
pub fn metrics_router() -> Router {
    let handle = prometheus();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                match handle {
                    Some(handle) => {
                        crate::telemetry::live::publish();
                        // `render` folds the histogram samples itself: no upkeep first.
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            handle.render(),
                        )
                            .into_response()
                    }
                    None => (
                        StatusCode::NOT_IMPLEMENTED,
                        "another metrics recorder is installed in this process\n",
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// The method as a metric label: the standard methods by name, any other as `OTHER`, so a
/// client inventing methods cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Middleware counting and timing requests by service, route template, method and status.
pub(crate) async fn track(service: Arc<str>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::histogram!(
        "nexus_http_request_duration_seconds",
        "service" => service.to_string(), "route" => route.clone(), "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(
        "nexus_http_requests_total",
        "service" => service.to_string(), "route" => route, "method" => method, "status" => status
    )
    .increment(1);
    response
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Resident memory of this process, in bytes.
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    const CHILD: &str = "NEXUS_TEST_UPKEEP_CHILD";

    /// A process nobody scrapes keeps what it records in histograms bounded: 3,000,000 samples
    /// (24 MB if each were kept) grow resident memory by less than 8 MB. Measured in a child
    /// process running this test alone, so no other test's memory counts.
    #[test]
    fn histogram_samples_are_folded_without_a_scrape() {
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "http::metrics::tests::histogram_samples_are_folded_without_a_scrape",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        let recorder = builder().build_recorder();
        keep_up(recorder.handle(), Duration::from_millis(10));
        let histogram = ::metrics::with_local_recorder(&recorder, || {
            ::metrics::histogram!("nexus_upkeep_test_seconds")
        });
        // Allocator and thread set-up out of the way first.
        for _ in 0..100_000 {
            histogram.record(0.001);
        }
        std::thread::sleep(Duration::from_millis(50));
        let before = rss();
        for _ in 0..30 {
            for _ in 0..100_000 {
                histogram.record(0.001);
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        let grown = rss().saturating_sub(before);
        assert!(
            grown < 8 * 1024 * 1024,
            "resident memory grew by {grown} bytes: samples are kept"
        );
    }
}
