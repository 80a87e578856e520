//! The optional OTLP metrics export (features `otel` and `http`): every metric the Prometheus
//! endpoint exposes, pushed periodically over OTLP/HTTP (protobuf) to a collector, for users on
//! OpenTelemetry rather than Prometheus.
//!
//! Opt-in, with the standard variables: `OTEL_METRICS_EXPORTER=otlp` and a collector in
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (the full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (its
//! base; `/v1/metrics` is appended), every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default
//! 60 000). The OpenTelemetry SDK does the aggregation and the export on a thread of its own;
//! this module only forwards what the `metrics` facade records to it: counters as cumulative
//! sums, gauges as gauges, histograms as explicit-bucket histograms with the buckets `/metrics`
//! uses, under the same names and labels. The `nexus_live_*` gauges are refreshed every interval,
//! as a scrape refreshes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Key, KeyName, Metadata, Recorder, SharedString, Unit};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use super::catalogue::LATENCY_BUCKETS;
use super::otel::OtelError;
use super::{CATALOGUE, MetricKind};

/// The variable that selects metric exporters (`otlp` turns this export on).
pub const EXPORTER_VAR: &str = "OTEL_METRICS_EXPORTER";
/// The full URL metrics go to, overriding `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// How often metrics are exported, in milliseconds.
pub const INTERVAL_VAR: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// The export interval unless [`INTERVAL_VAR`] says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// The meter provider, once the export is on: flushed and shut down by [`shutdown`].
static PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();

/// The collector metrics go to when the export is configured: `OTEL_METRICS_EXPORTER` lists
/// `otlp` and an endpoint variable is set.
pub fn endpoint() -> Option<String> {
    let selected = std::env::var(EXPORTER_VAR).unwrap_or_default();
    if !selected.split(',').any(|e| e.trim() == "otlp") {
        return None;
    }
    [METRICS_ENDPOINT_VAR, super::otel::ENDPOINT_VAR]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|endpoint| !endpoint.trim().is_empty())
}

fn interval() -> Duration {
    std::env::var(INTERVAL_VAR)
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_INTERVAL, Duration::from_millis)
}

/// A recorder forwarding to the OTLP export, when it is configured; `None` otherwise.
pub(crate) fn recorder() -> Result<Option<OtlpRecorder>, OtelError> {
    let Some(endpoint) = endpoint() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|source| OtelError::Exporter {
            endpoint: crate::redact::url(&endpoint),
            source,
        })?;
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(super::otel::resource())
        .build();
    let meter = provider.meter("nexus");
    if PROVIDER.set(provider).is_err() {
        // Only one recorder is ever installed; a second call has nothing to forward to.
        return Ok(None);
    }
    let every = interval();
    let _ = std::thread::Builder::new()
        .name("nexus-live-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                super::live::publish();
            }
        });
    tracing::info!(
        endpoint = crate::redact::url(&endpoint),
        interval_ms = every.as_millis() as u64,
        "exporting metrics over OTLP"
    );
    Ok(Some(OtlpRecorder {
        meter,
        cells: RwLock::default(),
        help: RwLock::default(),
    }))
}

/// Exports what was recorded since the last export and stops the export, waiting a bounded
/// time (a process calls it at exit).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        super::otel::bounded(move || {
            let _ = provider.shutdown();
        });
    }
}

/// One series (metric name and labels) with its instrument and the state the facade's
/// operations need: a counter's total (for `absolute`), a gauge's value (for `increment`).
struct Cell<I> {
    instrument: I,
    attributes: Vec<KeyValue>,
    value: AtomicU64,
}

#[derive(Default)]
struct Cells {
    counters: HashMap<Key, Arc<Cell<opentelemetry::metrics::Counter<u64>>>>,
    gauges: HashMap<Key, Arc<Cell<opentelemetry::metrics::Gauge<f64>>>>,
    histograms: HashMap<Key, Arc<Cell<opentelemetry::metrics::Histogram<f64>>>>,
}

/// Forwards the `metrics` facade to OpenTelemetry instruments, one cell per series.
pub(crate) struct OtlpRecorder {
    meter: Meter,
    cells: RwLock<Cells>,
    /// Descriptions by metric name.
    help: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for OtlpRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpRecorder").finish_non_exhaustive()
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|label| KeyValue::new(label.key().to_owned(), label.value().to_owned()))
        .collect()
}

impl OtlpRecorder {
    fn describe(&self, name: &KeyName, description: &SharedString) {
        self.help
            .write()
            .expect("metric help lock poisoned")
            .insert(name.as_str().to_owned(), description.to_string());
    }

    fn help(&self, name: &str) -> String {
        self.help
            .read()
            .expect("metric help lock poisoned")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The cell of `key` in the map `pick` selects, made by `make` the first time.
    fn cell<I>(
        &self,
        key: &Key,
        pick: fn(&Cells) -> &HashMap<Key, Arc<Cell<I>>>,
        pick_mut: fn(&mut Cells) -> &mut HashMap<Key, Arc<Cell<I>>>,
        make: impl FnOnce(&str) -> I,
    ) -> Arc<Cell<I>> {
        if let Some(cell) = pick(&self.cells.read().expect("metric cells lock poisoned")).get(key) {
            return Arc::clone(cell);
        }
        let cell = Arc::new(Cell {
            instrument: make(key.name()),
            attributes: attributes(key),
            value: AtomicU64::new(0),
        });
        let mut cells = self.cells.write().expect("metric cells lock poisoned");
        Arc::clone(pick_mut(&mut cells).entry(key.clone()).or_insert(cell))
    }
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Counter {
        let cell = self.cell(
            key,
            |c| &c.counters,
            |c| &mut c.counters,
            |name| {
                self.meter
                    .u64_counter(name.to_owned())
                    .with_description(self.help(name))
                    .build()
            },
        );
        metrics::Counter::from_arc(cell)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Gauge {
        let cell = self.cell(
            key,
            |c| &c.gauges,
            |c| &mut c.gauges,
            |name| {
                self.meter
                    .f64_gauge(name.to_owned())
                    .with_description(self.help(name))
                    .build()
            },
        );
        metrics::Gauge::from_arc(cell)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> metrics::Histogram {
        let cell = self.cell(
            key,
            |c| &c.histograms,
            |c| &mut c.histograms,
            |name| {
                let buckets = CATALOGUE
                    .iter()
                    .find(|m| m.name == name && m.kind == MetricKind::Histogram)
                    .map_or(LATENCY_BUCKETS, |m| m.buckets);
                self.meter
                    .f64_histogram(name.to_owned())
                    .with_description(self.help(name))
                    .with_boundaries(buckets.to_vec())
                    .build()
            },
        );
        metrics::Histogram::from_arc(cell)
    }
}

impl metrics::CounterFn for Cell<opentelemetry::metrics::Counter<u64>> {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
        self.instrument.add(value, &self.attributes);
    }

    fn absolute(&self, value: u64) {
        let before = self.value.fetch_max(value, Ordering::Relaxed);
        self.instrument
            .add(value.saturating_sub(before), &self.attributes);
    }
}

impl metrics::GaugeFn for Cell<opentelemetry::metrics::Gauge<f64>> {
    fn increment(&self, value: f64) {
        self.change(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.change(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
        self.instrument.record(value, &self.attributes);
    }
}

impl Cell<opentelemetry::metrics::Gauge<f64>> {
    fn change(&self, f: impl Fn(f64) -> f64) {
        let mut now = 0.0;
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                now = f(f64::from_bits(bits));
                Some(now.to_bits())
            });
        self.instrument.record(now, &self.attributes);
    }
}

impl metrics::HistogramFn for Cell<opentelemetry::metrics::Histogram<f64>> {
    fn record(&self, value: f64) {
        self.instrument.record(value, &self.attributes);
    }
}

/// Two recorders as one: every series recorded in both (the Prometheus recorder behind
/// `/metrics` and the OTLP export).
#[derive(Debug)]
pub(crate) struct Both<A, B>(pub(crate) A, pub(crate) B);

struct Pair<T>(T, T);

impl metrics::CounterFn for Pair<metrics::Counter> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.absolute(value);
    }
}

impl metrics::GaugeFn for Pair<metrics::Gauge> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1.decrement(value);
    }

    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.set(value);
    }
}

impl metrics::HistogramFn for Pair<metrics::Histogram> {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.record(value);
    }
}

impl<A: Recorder, B: Recorder> Recorder for Both<A, B> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0
            .describe_counter(key.clone(), unit, description.clone());
        self.1.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0
            .describe_gauge(key.clone(), unit, description.clone());
        self.1.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0
            .describe_histogram(key.clone(), unit, description.clone());
        self.1.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Arc::new(Pair(
            self.0.register_counter(key, metadata),
            self.1.register_counter(key, metadata),
        )))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(Pair(
            self.0.register_gauge(key, metadata),
            self.1.register_gauge(key, metadata),
        )))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(Arc::new(Pair(
            self.0.register_histogram(key, metadata),
            self.1.register_histogram(key, metadata),
        )))
    }
}
