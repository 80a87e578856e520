//! End-to-end tests: each module drives the `nexus` binary as a process.

mod audit;
mod check;
mod console;
mod dashboards;
mod dlq;
mod doctor;
// The sample orders domain `nexus up` runs, so the fault suite can rebuild its read model.
#[allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    reason = "shared with the generated projects, where these items are public"
)]
#[path = "../../templates/project/crates/events/src/lib.rs"]
mod events;
mod faces;
mod faults;
mod metrics;
mod new;
mod notify;
mod openapi_conformance;
// The request reader of the `nexus` binary's own OTLP receiver (`bench store --tracing-overhead`).
#[path = "../../cli/src/otlp_request.rs"]
mod otlp_request;
#[allow(
    dead_code,
    unreachable_pub,
    reason = "shared with the generated projects, where these items are public"
)]
#[path = "../../templates/project/services/query-dashboard/src/projection.rs"]
mod projection;
mod registry;
mod replay;
mod saga;
mod support;
mod traces;
mod up;
