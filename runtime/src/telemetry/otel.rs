//! The OpenTelemetry layer for `tracing` (feature `otel`): spans exported over OTLP
//! (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, nothing otherwise.
//!
//! The standard variables apply: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and the batch
//! processor's `OTEL_BSP_*`. The batch exporter runs on a thread of its own with a blocking HTTP
//! client, never on the application's Tokio runtime, and [`TracerGuard`] flushes it on drop
//! within a bounded time.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` layer that records spans for OpenTelemetry.
pub type OtelLayer<S> = OpenTelemetryLayer<S, SdkTracer>;

/// The variable that turns export on.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The longest a flush at exit may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The OTLP exporter could not be built (a malformed endpoint, for one).
    #[error("cannot build the OTLP span exporter for `{endpoint}`")]
    Exporter {
        /// The configured endpoint, redacted.
        endpoint: String,
        /// What the exporter said.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Flushes and shuts the exporter down when dropped (at most [`SHUTDOWN_TIMEOUT`]).
#[derive(Debug)]
pub struct TracerGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracerGuard {
    /// Exports what is buffered now, waiting at most the shutdown timeout.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let provider = provider.clone();
            bounded(move || {
                let _ = provider.force_flush();
            });
        }
    }
}

impl Drop for TracerGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            bounded(move || {
                let _ = provider.shutdown();
            });
        }
        // The OTLP metrics export, if on, ends with the process's telemetry too.
        #[cfg(feature = "http")]
        super::otlp_metrics::shutdown();
    }
}

/// The service name telemetry reports unless `OTEL_SERVICE_NAME` says otherwise (the first one
/// a process sets up tracing with).
static SERVICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The resource telemetry of this process reports: `OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_SERVICE_NAME`, else the service named when tracing was set up (else `nexus`).
pub(crate) fn resource() -> Resource {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource =
            resource.with_service_name(SERVICE.get().map_or("nexus", String::as_str).to_owned());
    }
    resource.build()
}

/// Runs `work` on a thread of its own and waits for it at most [`SHUTDOWN_TIMEOUT`]: an
/// unreachable collector must not hang the process at exit.
pub(crate) fn bounded(work: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("otel-shutdown".into())
        .spawn(move || {
            work();
            let _ = done.send(());
        });
    if spawned.is_ok() {
        let _ = finished.recv_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// Sets up `tracing` for a service as `nexus up` does: log lines on stderr filtered by
/// `RUST_LOG` (default `info`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans at `info`
/// and above (but the per-event spans of [`super::trace::DELIVERY_TARGET`]) exported over OTLP (the W3C trace context of requests and event metadata is
/// continued, so one trace follows a command through to its read model). `service` names the
/// process unless `OTEL_SERVICE_NAME` does. Keep the guard until the process ends: dropping it
/// flushes what is buffered. A second call (another subscriber already set) only logs nothing
/// new.
///
/// ```no_run
/// # fn main() -> Result<(), nexus_runtime::telemetry::otel::OtelError> {
/// let _telemetry = nexus_runtime::telemetry::otel::init("command-service")?;
/// # Ok(())
/// # }
/// ```
pub fn init(service: &str) -> Result<Option<TracerGuard>, OtelError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (otel, guard) = match layer(service)? {
        Some((layer, guard)) => (Some(layer), Some(guard)),
        None => (None, None),
    };
    // Spans at `info` and above, except the per-event log spans of projections.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target(
            super::trace::DELIVERY_TARGET,
            tracing_subscriber::filter::LevelFilter::OFF,
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(otel.with_filter(spans))
        .try_init();
    Ok(guard)
}

/// The OpenTelemetry layer exporting to `OTEL_EXPORTER_OTLP_ENDPOINT`, or `None` when it is
/// unset or empty. `service` names the process unless `OTEL_SERVICE_NAME` does.
pub fn layer<S>(service: &str) -> Result<Option<(OtelLayer<S>, TracerGuard)>, OtelError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let _ = SERVICE.set(service.to_owned());
    let endpoint = std::env::var(ENDPOINT_VAR).unwrap_or_default();
    if endpoint.trim().is_empty() {
        return Ok(None);
    }
    build(&endpoint, None).map(Some)
}

/// The OpenTelemetry layer exporting to the OTLP/HTTP collector at `endpoint` (its base URL;
/// spans go to `{endpoint}/v1/traces`), whatever the environment says.
pub fn layer_for<S>(service: &str, endpoint: &str) -> Result<(OtelLayer<S>, TracerGuard), OtelError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let _ = SERVICE.set(service.to_owned());
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    build(endpoint, Some(traces))
}

fn build<S>(
    endpoint: &str,
    traces: Option<String>,
) -> Result<(OtelLayer<S>, TracerGuard), OtelError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(traces) = traces {
        exporter = exporter.with_endpoint(traces);
    }
    let exporter = exporter.build().map_err(|source| OtelError::Exporter {
        endpoint: crate::redact::url(endpoint),
        source,
    })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let tracer = provider.tracer("nexus");
    // What each span costs is paid per event on the projection path, so the layer records
    // only what the spans say: no source location or thread attributes (five more attributes,
    // one an allocated thread name, on every span), no idle timings, and no OpenTelemetry
    // context attached on every enter (spans find their parent through `tracing`, and context
    // is read from a span with `trace::headers`, never from the current OpenTelemetry context).
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_context_activation(false);
    Ok((
        layer,
        TracerGuard {
            provider: Some(provider),
        },
    ))
}
