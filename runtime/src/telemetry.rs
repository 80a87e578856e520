//! Telemetry: the catalogue of every metric the runtime emits (names, units, labels, buckets),
//! the per-second ring behind the `nexus_live_*` gauges, and (feature `otel`) trace context
//! propagation through event metadata and the OpenTelemetry/OTLP set-up.
//!
//! Metric names live in one place, [`catalogue::CATALOGUE`]: the Prometheus exporter takes
//! each histogram's buckets from it, `docs/metrics.md` is generated from it, and an end-to-end
//! test scrapes a running `nexus up` and fails when an exposed metric is not in it or a
//! catalogued one is not exposed.

pub mod catalogue;
pub mod live;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(all(feature = "otel", feature = "http"))]
pub mod otlp_metrics;
pub mod trace;

pub use catalogue::{CATALOGUE, Component, MetricDef, MetricKind};

/// Installs the process-wide Prometheus recorder (feature `http`) unless a recorder is already
/// installed. Components call it when they are built, so the series they register at zero and
/// the handles they keep are the recorder's, not the no-op recorder's of a process that had not
/// served `/metrics` yet. An application with a recorder of its own installs it first.
pub(crate) fn ensure_recorder() {
    #[cfg(feature = "http")]
    {
        let _ = crate::http::prometheus();
    }
}
