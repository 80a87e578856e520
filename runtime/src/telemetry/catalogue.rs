//! Every metric the runtime (and the schema registry it is served beside) emits: name, type,
//! unit, labels, what it measures, and for histograms the explicit buckets.
//!
//! Histograms are classic Prometheus histograms with these buckets, never summaries, so
//! `histogram_quantile` works at any scrape interval and aggregates across instances.
//! `docs/metrics.md` is generated from this list (`tests/it/metrics.rs` keeps it true).

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever goes up; rate it.
    Counter,
    /// A value now.
    Gauge,
    /// A distribution in explicit buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl MetricKind {
    /// The Prometheus `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Which part of a system emits a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// The command path: load, decide, append.
    CommandService,
    /// The snapshot manager and snapshot loads.
    Snapshots,
    /// The event bus (in-process or NATS JetStream).
    Bus,
    /// The relay from the store to JetStream.
    Relay,
    /// Projection runners.
    Projection,
    /// The query dashboard's read-model queries.
    Query,
    /// Real-time notifications (WebSocket and SSE).
    Notifications,
    /// Every HTTP service of the runtime.
    Http,
    /// The per-second ring (`nexus_live_*`).
    Live,
    /// Saga runners (process managers).
    Saga,
    /// Search indexes of read models (feature `search`).
    Search,
    /// The integration relay to external consumers (not run by `nexus up`).
    Integration,
    /// The schema registry (`nexus-schema-registry`).
    Registry,
}

impl Component {
    /// The component's name in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CommandService => "command service",
            Self::Snapshots => "snapshots",
            Self::Bus => "bus",
            Self::Relay => "relay",
            Self::Projection => "projections",
            Self::Query => "query dashboard",
            Self::Notifications => "notifications",
            Self::Http => "HTTP",
            Self::Live => "per-second ring",
            Self::Saga => "sagas",
            Self::Search => "search",
            Self::Integration => "integration relay",
            Self::Registry => "schema registry",
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The Prometheus name (`_seconds`, `_bytes`, `_total` in base units).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit, for the table (`seconds`, `bytes`, `events`, …).
    pub unit: &'static str,
    /// Its labels; every one has a bounded set of values.
    pub labels: &'static [&'static str],
    /// Who emits it.
    pub component: Component,
    /// What it measures.
    pub help: &'static str,
    /// Upper bounds of a histogram's buckets.
    pub buckets: &'static [f64],
}

/// Latencies of work on the request path: 100 µs (an embedded-store command) to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Delays through the pipeline (commit to bus, commit to read model): 1 ms to a minute.
pub const PIPELINE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Sizes: 1 KiB, 4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB, 4 MiB, 16 MiB.
pub const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];

const fn counter(
    component: Component,
    name: &'static str,
    labels: &'static [&'static str],
    unit: &'static str,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Counter,
        unit,
        labels,
        component,
        help,
        buckets: &[],
    }
}

const fn gauge(
    component: Component,
    name: &'static str,
    labels: &'static [&'static str],
    unit: &'static str,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Gauge,
        unit,
        labels,
        component,
        help,
        buckets: &[],
    }
}

const fn histogram(
    component: Component,
    name: &'static str,
    labels: &'static [&'static str],
    unit: &'static str,
    buckets: &'static [f64],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Histogram,
        unit,
        labels,
        component,
        help,
        buckets,
    }
}

use Component::{
    Bus, CommandService, Http, Integration, Live, Notifications, Projection, Query, Registry,
    Relay, Saga, Search, Snapshots,
};

/// Every metric, grouped by component.
pub const CATALOGUE: &[MetricDef] = &[
    // Requirement 11.1: command latency percentiles, publication rate, error rate.
    histogram(
        CommandService,
        "nexus_command_duration_seconds",
        &["aggregate", "outcome"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to handle a command (load, decide, append, retries); outcome is ok, replayed, rejected, conflict or error.",
    ),
    counter(
        CommandService,
        "nexus_commands_total",
        &["aggregate", "outcome"],
        "commands",
        "Commands handled, by outcome; the error rate is the rate of rejected, conflict and error over all.",
    ),
    counter(
        CommandService,
        "nexus_events_appended_total",
        &["aggregate"],
        "events",
        "Events appended by commands (the publication rate).",
    ),
    counter(
        CommandService,
        "nexus_command_retries_total",
        &["aggregate"],
        "retries",
        "Attempts retried after a version conflict.",
    ),
    histogram(
        CommandService,
        "nexus_aggregate_load_seconds",
        &["aggregate"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to rebuild an aggregate (snapshot, then the events after it).",
    ),
    // Requirement 11.4: snapshot frequency and size distribution.
    histogram(
        Snapshots,
        "nexus_snapshot_load_seconds",
        &["aggregate"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to rebuild an aggregate that started from a snapshot.",
    ),
    counter(
        Snapshots,
        "nexus_snapshots_taken_total",
        &["aggregate", "reason"],
        "snapshots",
        "Snapshots taken, by trigger (events, bytes, age); increase over 1h is the frequency per hour.",
    ),
    histogram(
        Snapshots,
        "nexus_snapshot_size_bytes",
        &["aggregate"],
        "bytes",
        SIZE_BUCKETS,
        "Size of each snapshot taken (buckets 1 KiB to 16 MiB; dashboards show KB).",
    ),
    counter(
        Snapshots,
        "nexus_snapshots_discarded_total",
        &["aggregate"],
        "snapshots",
        "Snapshots that could not be decoded or upcast, so the aggregate was rebuilt from events.",
    ),
    counter(
        Snapshots,
        "nexus_snapshot_failures_total",
        &["aggregate"],
        "failures",
        "Snapshots that failed to be taken or saved.",
    ),
    // Requirement 11.2: bus throughput, consumer lag, dead letters.
    counter(
        Bus,
        "nexus_bus_published_total",
        &["bus"],
        "events",
        "Events published to the bus and stored by it (JetStream acknowledged).",
    ),
    histogram(
        Bus,
        "nexus_bus_publish_seconds",
        &["bus"],
        "seconds",
        PIPELINE_BUCKETS,
        "Time to publish one batch and have every event of it acknowledged.",
    ),
    counter(
        Bus,
        "nexus_bus_delivered_total",
        &["bus", "consumer"],
        "events",
        "Events the bus delivered to a consumer (throughput in events per second).",
    ),
    gauge(
        Bus,
        "nexus_bus_pending_messages",
        &["bus", "consumer"],
        "messages",
        "Messages JetStream holds for a durable consumer that it has not delivered yet.",
    ),
    counter(
        Relay,
        "nexus_relay_published_total",
        &["relay"],
        "events",
        "Events the relay published from the store to JetStream.",
    ),
    histogram(
        Relay,
        "nexus_relay_publish_seconds",
        &["relay"],
        "seconds",
        PIPELINE_BUCKETS,
        "Time to publish one batch of the relay.",
    ),
    gauge(
        Relay,
        "nexus_relay_lag_seconds",
        &["relay"],
        "seconds",
        "Consumer lag: age of the oldest committed event the relay has not published yet; 0 when caught up.",
    ),
    counter(
        Relay,
        "nexus_relay_failures_total",
        &["relay"],
        "failures",
        "Publishes that failed and were retried.",
    ),
    counter(
        Relay,
        "nexus_relay_republished_total",
        &["relay"],
        "restarts",
        "Starts at which the stream held less than the checkpoint, so the relay published again from the store.",
    ),
    // Requirement 11.3: projection lag.
    counter(
        Projection,
        "nexus_projection_events_total",
        &["projection"],
        "events",
        "Events a projection processed (applied, skipped or dead-lettered) and committed.",
    ),
    histogram(
        Projection,
        "nexus_projection_latency_seconds",
        &["projection"],
        "seconds",
        PIPELINE_BUCKETS,
        "Time from an event's commit in the store to its read-model commit.",
    ),
    histogram(
        Projection,
        "nexus_projection_commit_seconds",
        &["projection"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to commit one batch of document writes, stream versions and checkpoint.",
    ),
    gauge(
        Projection,
        "nexus_projection_lag_events",
        &["projection"],
        "events",
        "Events between the projection's checkpoint (low-water mark) and the head of the log.",
    ),
    gauge(
        Projection,
        "nexus_projection_lag_seconds",
        &["projection"],
        "seconds",
        "Consumer lag: age of the oldest event the projection has not applied yet; 0 when caught up.",
    ),
    counter(
        Projection,
        "nexus_projection_retries_total",
        &["projection"],
        "retries",
        "Event applications retried after an error.",
    ),
    counter(
        Projection,
        "nexus_projection_errors_total",
        &["projection"],
        "errors",
        "Event applications that failed (each retry counts).",
    ),
    counter(
        Projection,
        "nexus_projection_audit_entries_total",
        &["projection"],
        "entries",
        "Entries appended to the projection's read-model audit log (document changes, rebuilds), counted once committed.",
    ),
    counter(
        Projection,
        "nexus_projection_dead_letters_total",
        &["projection"],
        "events",
        "Events moved to the dead-letter queue.",
    ),
    gauge(
        Projection,
        "nexus_projection_dead_letters",
        &["projection"],
        "events",
        "Events in the dead-letter queue now (dead or parked).",
    ),
    counter(
        Projection,
        "nexus_projection_gap_fills_total",
        &["projection"],
        "fills",
        "Version gaps filled by reading the store.",
    ),
    counter(
        Projection,
        "nexus_projection_restarts_total",
        &["projection"],
        "restarts",
        "Projection runs restarted after an error.",
    ),
    // Requirement 11.3: query latency percentiles.
    gauge(
        Notifications,
        "nexus_notify_connections",
        &[],
        "connections",
        "Open notification connections (WebSocket and SSE).",
    ),
    gauge(
        Notifications,
        "nexus_notify_subscriptions",
        &[],
        "subscriptions",
        "Live notification subscriptions.",
    ),
    counter(
        Notifications,
        "nexus_notify_published_total",
        &["projection"],
        "notifications",
        "Notifications published after read-model commits (one per changed document).",
    ),
    counter(
        Notifications,
        "nexus_notify_sent_total",
        &[],
        "notifications",
        "Notifications written to clients' sockets; rate it for notifications sent per second.",
    ),
    counter(
        Notifications,
        "nexus_notify_coalesced_total",
        &[],
        "notifications",
        "Notifications folded into a later one of the same document for a client behind or throttled.",
    ),
    counter(
        Notifications,
        "nexus_notify_dropped_clients_total",
        &["reason"],
        "clients",
        "Clients closed by the server: `slow` (mailbox overflow or write timeout), `idle` (no frame within the idle timeout) or `expired` (the credential the connection was opened with expired).",
    ),
    counter(
        Notifications,
        "nexus_notify_refused_connections_total",
        &[],
        "connections",
        "Connections refused because the connection cap was reached.",
    ),
    counter(
        Notifications,
        "nexus_notify_resets_total",
        &["reason"],
        "resets",
        "`reset`s sent: a resume position too old, of another epoch, or with too much to replay.",
    ),
    counter(
        Notifications,
        "nexus_notify_epochs_total",
        &["projection"],
        "epochs",
        "New notification epochs: a read model rebuilt, restored or changed while its notifications were not logged.",
    ),
    histogram(
        Notifications,
        "nexus_notify_commit_to_send_seconds",
        &[],
        "seconds",
        PIPELINE_BUCKETS,
        "Time from a projection's commit to the notification's write to a client.",
    ),
    histogram(
        Notifications,
        "nexus_notify_connect_seconds",
        &[],
        "seconds",
        LATENCY_BUCKETS,
        "Time from a WebSocket upgrade request to its `ready` frame.",
    ),
    histogram(
        Query,
        "nexus_query_duration_seconds",
        &["read_model", "kind"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to answer a read-model query; kind is get or list (a wait_for wait included).",
    ),
    counter(
        Query,
        "nexus_read_cache_hits_total",
        &["read_model"],
        "reads",
        "Document reads, list queries and searches answered from the read cache.",
    ),
    counter(
        Query,
        "nexus_read_cache_misses_total",
        &["read_model"],
        "reads",
        "Document reads, list queries and searches that went to the read model's database or search index.",
    ),
    counter(
        Query,
        "nexus_read_cache_evictions_total",
        &["read_model"],
        "entries",
        "Read cache entries dropped to stay within the cache's size in bytes.",
    ),
    gauge(
        Query,
        "nexus_read_cache_hit_ratio",
        &["read_model"],
        "ratio",
        "Hits over all reads of the read cache since the process started (0 to 1).",
    ),
    counter(
        Query,
        "nexus_queries_total",
        &["read_model", "kind", "outcome"],
        "queries",
        "Read-model queries answered, by outcome (ok, not_found, error).",
    ),
    // Every HTTP service.
    counter(
        Http,
        "nexus_http_requests_total",
        &["service", "route", "method", "status"],
        "requests",
        "HTTP requests answered; route is the route template or `unmatched`, method a standard method or OTHER.",
    ),
    histogram(
        Http,
        "nexus_http_request_duration_seconds",
        &["service", "route", "method"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to answer an HTTP request.",
    ),
    // The per-second ring: 1-second granularity without a 1-second scrape.
    gauge(
        Live,
        "nexus_live_per_second",
        &["series"],
        "events or requests per second",
        "Count in the last complete second: commands, command_errors, events_appended, events_projected, queries.",
    ),
    gauge(
        Live,
        "nexus_live_per_second_peak",
        &["series"],
        "per second",
        "Highest one-second count since the previous scrape of /metrics (up to the 300 s the ring keeps).",
    ),
    gauge(
        Live,
        "nexus_live_latency_seconds",
        &["series", "quantile"],
        "seconds",
        "Latency quantile (0.5, 0.95, 0.99) over the last complete second: command, query.",
    ),
    gauge(
        Live,
        "nexus_live_latency_peak_seconds",
        &["series"],
        "seconds",
        "Highest one-second 0.99 quantile since the previous scrape of /metrics.",
    ),
    // Search indexes (feature `search`), each labelled with its projection.
    histogram(
        Search,
        "nexus_search_visibility_seconds",
        &["projection"],
        "seconds",
        PIPELINE_BUCKETS,
        "Time from an event's commit to the index commit that makes its documents searchable.",
    ),
    histogram(
        Search,
        "nexus_search_commit_seconds",
        &["projection"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to commit a projection's search indexes (on the commit timer or size cap).",
    ),
    counter(
        Search,
        "nexus_search_documents_indexed_total",
        &["projection"],
        "documents",
        "Document writes and deletions committed to the search index.",
    ),
    counter(
        Search,
        "nexus_search_commit_failures_total",
        &["projection"],
        "commits",
        "Search index commits that failed (retried on the next interval).",
    ),
    counter(
        Search,
        "nexus_search_catch_up_documents_total",
        &["projection"],
        "documents",
        "Documents re-indexed or deleted at start to catch up with the read model after an unclean stop.",
    ),
    // Sagas (process managers), each labelled with its saga type.
    counter(
        Saga,
        "nexus_saga_started_total",
        &["saga"],
        "instances",
        "Saga instances started.",
    ),
    counter(
        Saga,
        "nexus_saga_completed_total",
        &["saga"],
        "instances",
        "Saga instances that completed.",
    ),
    counter(
        Saga,
        "nexus_saga_compensated_total",
        &["saga"],
        "instances",
        "Saga instances that finished by compensating.",
    ),
    counter(
        Saga,
        "nexus_saga_timeouts_total",
        &["saga"],
        "instances",
        "Saga steps that timed out.",
    ),
    counter(
        Saga,
        "nexus_saga_stuck_total",
        &["saga"],
        "instances",
        "Saga instances that became stuck and wait for an operator.",
    ),
    counter(
        Saga,
        "nexus_saga_step_failures_total",
        &["saga", "step"],
        "failures",
        "Saga step commands that failed.",
    ),
    histogram(
        Saga,
        "nexus_saga_step_seconds",
        &["saga", "step"],
        "seconds",
        PIPELINE_BUCKETS,
        "Time from a step's first dispatch to its success.",
    ),
    counter(
        Saga,
        "nexus_saga_conflicts_total",
        &["saga"],
        "conflicts",
        "Version conflicts while recording saga progress (retried).",
    ),
    counter(
        Saga,
        "nexus_saga_missing_definition_total",
        &["saga"],
        "instances",
        "Instances of a saga version this process has no definition for.",
    ),
    gauge(
        Saga,
        "nexus_sagas",
        &["saga", "status"],
        "instances",
        "Open saga instances by status (running, compensating, stuck), refreshed each reconcile.",
    ),
    gauge(
        Saga,
        "nexus_saga_timers",
        &["saga"],
        "timers",
        "Open instances waiting for a due time.",
    ),
    gauge(
        Saga,
        "nexus_saga_timers_overdue",
        &["saga"],
        "timers",
        "Timers due more than 10 s ago at the last reconcile.",
    ),
    // The integration relay (not run by `nexus up`).
    counter(
        Integration,
        "nexus_integration_published_total",
        &["sink", "route"],
        "events",
        "Events the integration relay delivered to a sink.",
    ),
    counter(
        Integration,
        "nexus_integration_failures_total",
        &["sink"],
        "failures",
        "Deliveries to a sink that failed and were retried.",
    ),
    gauge(
        Integration,
        "nexus_integration_lag_events",
        &["sink"],
        "events",
        "Events between the integration relay's checkpoint and the head of the log.",
    ),
    counter(
        Integration,
        "nexus_integration_skipped_total",
        &["sink"],
        "events",
        "Events no route matched.",
    ),
    counter(
        Integration,
        "nexus_integration_unroutable_total",
        &["sink", "reason"],
        "events",
        "Events the broker could not route, sent to the unroutable queue.",
    ),
    counter(
        Integration,
        "nexus_integration_reconnects_total",
        &["sink"],
        "reconnects",
        "Reconnections of the RabbitMQ sink.",
    ),
    counter(
        Integration,
        "nexus_integration_dead_letters_total",
        &["sink"],
        "events",
        "Messages the embedded queue dead-lettered.",
    ),
    // The schema registry, emitted through the same recorder when it runs in the process.
    counter(
        Registry,
        "nexus_registry_http_requests_total",
        &["method", "route", "status"],
        "requests",
        "Registry HTTP requests answered.",
    ),
    histogram(
        Registry,
        "nexus_registry_http_request_duration_seconds",
        &["route"],
        "seconds",
        LATENCY_BUCKETS,
        "Time to answer a registry request.",
    ),
    counter(
        Registry,
        "nexus_registry_compatibility_checks_total",
        &["result"],
        "checks",
        "Compatibility checks, by result (compatible, incompatible).",
    ),
    counter(
        Registry,
        "nexus_registry_registrations_total",
        &[],
        "schemas",
        "Schemas registered (new versions).",
    ),
];

/// The catalogued metric `name`, if there is one.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// The catalogue as the Markdown table of `docs/metrics.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from runtime/src/telemetry/catalogue.rs by `UPDATE_DOCS=1 cargo test -p nexus-cli --test e2e metrics::`; do not edit. -->\n\
         # Metrics\n\n\
         Every metric Nexus exposes at `/metrics` (Prometheus text format). Histograms have the explicit buckets listed \
         (classic histograms, never summaries). Labels take a bounded set of values: aggregate, projection, relay and \
         consumer names, route templates, outcomes.\n\n\
         1-second values are available from the `nexus_live_*` gauges of the live endpoint (each scrape reads the last \
         complete second and the peak since the previous scrape); Prometheus holds everything else at the scrape interval \
         you configure (1 s in `nexus dev` set-ups, 15 s in production is plenty for `rate()` over 1 min and for the \
         1-minute granularity of the snapshot metrics).\n\n\
         Lag in seconds is the age of the oldest event the consumer has not processed yet, and 0 when it is caught up.\n\n\
         | metric | type | unit | labels | component | what it measures |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for m in CATALOGUE {
        let labels = if m.labels.is_empty() {
            "—".to_owned()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut help = m.help.to_owned();
        if !m.buckets.is_empty() {
            let buckets = m
                .buckets
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            help.push_str(&format!(" Buckets: {buckets}."));
        }
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.unit,
            labels,
            m.component.as_str(),
            help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_names_with_unit_suffixes() {
        let mut seen = std::collections::BTreeSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} is listed twice", m.name);
            assert!(m.name.starts_with("nexus_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                m.name
            );
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                MetricKind::Histogram => {
                    assert!(
                        m.name.ends_with("_seconds") || m.name.ends_with("_bytes"),
                        "{}",
                        m.name
                    );
                    assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                    assert!(!m.buckets.is_empty(), "{} has no buckets", m.name);
                }
                MetricKind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }
}
