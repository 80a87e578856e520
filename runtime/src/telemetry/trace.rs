//! Trace context across the system: continued from a request's W3C `traceparent` and
//! `tracestate`, written into the metadata of the events a command appends, and continued from
//! there by every consumer (the relay links to it, a projection's delivery span is its child).
//!
//! With feature `otel` these use the OpenTelemetry context of `tracing` spans (present when the
//! application installed the layer from [`super::otel`]); without it, or without that layer,
//! they do nothing and return `None`, and the request's own `traceparent` is what events keep.

use tracing::Span;

/// The target of the per-event span a projection runs each event under, which gives the log
/// lines of that work the event's correlation and causation ids. It lies outside
/// `nexus_runtime`, so the OTLP layers Nexus sets up never export it: the exported spans of the
/// projection path are per batch (`process {projection}`, `apply`, `commit {projection}`).
pub const DELIVERY_TARGET: &str = "nexus::delivery";

/// The `traceparent` of `span`, when OpenTelemetry records it.
pub fn traceparent(span: &Span) -> Option<String> {
    imp::headers(span).map(|(traceparent, _)| traceparent)
}

/// The `traceparent` and `tracestate` (if any) of `span`, when OpenTelemetry records it.
pub fn headers(span: &Span) -> Option<(String, Option<String>)> {
    imp::headers(span)
}

/// Makes `span` a child of the remote context `traceparent` (with its `tracestate`); an
/// invalid `traceparent` is ignored, so the span starts a trace of its own.
pub fn set_parent(span: &Span, traceparent: &str, tracestate: Option<&str>) {
    imp::set_parent(span, traceparent, tracestate);
}

/// Adds a link from `span` to the context `traceparent`, if it is valid.
pub fn add_link(span: &Span, traceparent: &str) {
    imp::add_link(span, traceparent);
}

/// Adds a link from `span` to the span `other`, when OpenTelemetry records both.
pub fn link_span(span: &Span, other: &Span) {
    imp::link_span(span, other);
}

/// The trace id of a valid version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let valid = hex(version, 2)
        && *version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(*trace)
}

#[cfg(feature = "otel")]
mod imp {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    fn extract(traceparent: &str, tracestate: Option<&str>) -> opentelemetry::Context {
        match tracestate {
            // Without a trace state (the case of every event's metadata) the header is parsed
            // directly, without the propagator's map: this runs once per event delivered.
            None => parse(traceparent).map_or_else(opentelemetry::Context::new, |cx| {
                opentelemetry::Context::new().with_remote_span_context(cx)
            }),
            Some(state) => {
                let mut carrier = HashMap::with_capacity(2);
                carrier.insert("traceparent".to_owned(), traceparent.to_owned());
                carrier.insert("tracestate".to_owned(), state.to_owned());
                TraceContextPropagator::new().extract(&carrier)
            }
        }
    }

    /// A valid version-00 `traceparent` as a remote span context.
    fn parse(traceparent: &str) -> Option<SpanContext> {
        let trace = super::trace_id(traceparent)?;
        let mut parts = traceparent.trim().split('-').skip(2);
        let span = parts.next()?;
        let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
        let cx = SpanContext::new(
            TraceId::from_hex(trace).ok()?,
            SpanId::from_hex(span).ok()?,
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        cx.is_valid().then_some(cx)
    }

    pub(super) fn headers(span: &Span) -> Option<(String, Option<String>)> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        let traceparent = carrier.remove("traceparent")?;
        let tracestate = carrier.remove("tracestate").filter(|s| !s.is_empty());
        Some((traceparent, tracestate))
    }

    pub(super) fn set_parent(span: &Span, traceparent: &str, tracestate: Option<&str>) {
        if span.is_disabled() {
            return;
        }
        let cx = extract(traceparent, tracestate);
        if cx.span().span_context().is_valid() {
            // Fails only once the span has started recording children: nothing to continue then.
            let _ = span.set_parent(cx);
        }
    }

    pub(super) fn link_span(span: &Span, other: &Span) {
        if span.is_disabled() || other.is_disabled() {
            return;
        }
        let linked = other.context().span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }

    pub(super) fn add_link(span: &Span, traceparent: &str) {
        if span.is_disabled() {
            return;
        }
        let cx = extract(traceparent, None);
        let linked = cx.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use tracing::Span;

    pub(super) fn headers(_: &Span) -> Option<(String, Option<String>)> {
        None
    }

    pub(super) fn set_parent(_: &Span, _: &str, _: Option<&str>) {}

    pub(super) fn add_link(_: &Span, _: &str) {}

    pub(super) fn link_span(_: &Span, _: &Span) {}
}
