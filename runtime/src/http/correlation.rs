//! The correlation id of every request: the caller's `x-correlation-id`, else the trace id of
//! its `traceparent`, else a new UUIDv7. The request runs in a `tracing` span carrying it (so
//! a 5xx cause is logged under it), the command path stores it in the events' metadata, and
//! the response returns it in `x-correlation-id` for the caller to quote.
//!
//! The same span is the request's OpenTelemetry server span (`{method} {route}`): it continues
//! the caller's W3C `traceparent`/`tracestate`, and the response returns the span's own
//! `traceparent` (or, with tracing off, the caller's unchanged).

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::event::EventId;
use crate::telemetry::trace;

/// Header carrying the correlation id in and out.
pub(crate) const CORRELATION_ID: &str = "x-correlation-id";
/// The W3C trace context header.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The W3C trace state header, passed on with `traceparent`.
pub(crate) const TRACESTATE: &str = "tracestate";
/// The causation id header.
pub(crate) const CAUSATION_ID: &str = "x-causation-id";
/// Longest correlation or causation id accepted.
pub(crate) const MAX_ID_LEN: usize = 128;
/// Longest `tracestate` passed on (W3C: 32 members; 512 bytes is what vendors propagate).
const MAX_TRACESTATE_LEN: usize = 512;

tokio::task_local! {
    /// The correlation id of the request this task is answering.
    static CURRENT: std::sync::Arc<str>;
}

/// The correlation id of the request being answered, when called inside one.
pub(crate) fn current() -> Option<std::sync::Arc<str>> {
    CURRENT.try_with(std::sync::Arc::clone).ok()
}

/// Middleware: gives the request a correlation id, a span, and the id in the response.
pub(crate) async fn correlate(mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let given = headers
        .get(CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_id(v, MAX_ID_LEN))
        .map(str::to_owned);
    let id = match given {
        Some(id) => id,
        None => {
            let id = headers
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(trace_id)
                .map_or_else(|| EventId::new().to_string(), str::to_owned);
            // An invalid header is the handler's to refuse; only a missing one is filled in.
            if !request.headers().contains_key(CORRELATION_ID)
                && let Ok(value) = HeaderValue::from_str(&id)
            {
                request.headers_mut().insert(CORRELATION_ID, value);
            }
            id
        }
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "http_request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        correlation_id = %id,
        causation_id = tracing::field::Empty,
    );
    if let Some(causation) = request
        .headers()
        .get(CAUSATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_id(v, MAX_ID_LEN))
    {
        span.record("causation_id", causation);
    }
    // W3C trace context in: the request's span continues the caller's trace.
    let incoming = incoming_trace_context(request.headers());
    if let Some((traceparent, tracestate)) = &incoming {
        trace::set_parent(&span, traceparent, tracestate.as_deref());
    }
    let mut response = CURRENT
        .scope(
            id.as_str().into(),
            next.run(request).instrument(span.clone()),
        )
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    // And out: this request's span when it is traced, else the caller's context unchanged.
    let outgoing = trace::headers(&span).or(incoming);
    let headers = response.headers_mut();
    if let Some((traceparent, tracestate)) = outgoing {
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(value) = tracestate.and_then(|s| HeaderValue::from_str(&s).ok()) {
            headers.insert(TRACESTATE, value);
        }
    }
    if !headers.contains_key(CORRELATION_ID)
        && let Ok(value) = HeaderValue::from_str(&id)
    {
        headers.insert(CORRELATION_ID, value);
    }
    response
}

/// A request's valid `traceparent` and its `tracestate` (at most 512 bytes, as W3C allows
/// implementations to cut it), or `None`.
fn incoming_trace_context(headers: &axum::http::HeaderMap) -> Option<(String, Option<String>)> {
    let traceparent = headers.get(TRACEPARENT)?.to_str().ok()?.trim();
    trace_id(traceparent)?;
    let tracestate = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_TRACESTATE_LEN && v.is_ascii())
        .map(str::to_owned);
    Some((traceparent.to_owned(), tracestate))
}

/// Whether `id` is 1 to `max` visible ASCII characters.
pub(crate) fn valid_id(id: &str, max: usize) -> bool {
    !id.is_empty() && id.len() <= max && id.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) use crate::telemetry::trace::trace_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_accepts_only_valid_traceparents() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(valid), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
