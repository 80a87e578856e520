//! Request and registry metrics, rendered in the Prometheus text format at `/metrics`.
//!
//! The server keeps its own counters so `/metrics` works without a global recorder, and also
//! emits them through the `metrics` facade for processes that install one.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex, time::Duration};

const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct State {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<String, Histogram>,
    checks: BTreeMap<&'static str, u64>,
    registrations: u64,
}

/// The server's metrics.
#[derive(Default)]
pub(crate) struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one answered request.
    pub(crate) fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        {
            let mut state = self.lock();
            *state
                .requests
                .entry((method.to_owned(), route.to_owned(), status))
                .or_default() += 1;
            let h = state.durations.entry(route.to_owned()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
        metrics::counter!("nexus_registry_http_requests_total",
            "method" => method.to_owned(), "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
        metrics::histogram!("nexus_registry_http_request_duration_seconds", "route" => route.to_owned())
            .record(seconds);
    }

    /// Records one compatibility check.
    pub(crate) fn check(&self, compatible: bool) {
        let result = if compatible {
            "compatible"
        } else {
            "incompatible"
        };
        *self.lock().checks.entry(result).or_default() += 1;
        metrics::counter!("nexus_registry_compatibility_checks_total", "result" => result)
            .increment(1);
    }

    /// Records one new version.
    pub(crate) fn registration(&self) {
        self.lock().registrations += 1;
        metrics::counter!("nexus_registry_registrations_total").increment(1);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let state = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP nexus_registry_http_requests_total HTTP requests answered."
        );
        let _ = writeln!(out, "# TYPE nexus_registry_http_requests_total counter");
        for ((method, route, status), n) in &state.requests {
            let _ = writeln!(
                out,
                "nexus_registry_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                route.replace('"', "\\\"")
            );
        }
        let _ = writeln!(
            out,
            "# HELP nexus_registry_http_request_duration_seconds Time to answer a request."
        );
        let _ = writeln!(
            out,
            "# TYPE nexus_registry_http_request_duration_seconds histogram"
        );
        for (route, h) in &state.durations {
            let route = route.replace('"', "\\\"");
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "nexus_registry_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "nexus_registry_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "nexus_registry_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "nexus_registry_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP nexus_registry_compatibility_checks_total Compatibility checks by result."
        );
        let _ = writeln!(
            out,
            "# TYPE nexus_registry_compatibility_checks_total counter"
        );
        for result in ["compatible", "incompatible"] {
            let n = state.checks.get(result).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "nexus_registry_compatibility_checks_total{{result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP nexus_registry_registrations_total New schema versions stored."
        );
        let _ = writeln!(out, "# TYPE nexus_registry_registrations_total counter");
        let _ = writeln!(
            out,
            "nexus_registry_registrations_total {}",
            state.registrations
        );
        out
    }
}
