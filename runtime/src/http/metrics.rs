//! Prometheus metrics: one process-wide recorder, a `/metrics` route, and a layer that counts
//! and times every request by route.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

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
                        handle.run_upkeep();
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
