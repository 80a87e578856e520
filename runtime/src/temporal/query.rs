//! One page of a temporal query: validate the range, resolve and pin on the first page, scan
//! within the scan and time budgets, and hand out a signed continuation token when it stops early.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::history::{History, Pin, Scope};
use super::token::{Cursor, TokenError, TokenSigner};
use crate::event::RecordedEvent;
use crate::store::ReadError;

/// Events read from the store per round trip.
const BATCH: usize = 500;
/// Most event types one query may filter on.
pub const MAX_EVENT_TYPES: usize = 16;

/// The guardrails of temporal queries; every one is configurable.
#[derive(Debug, Clone)]
pub struct TemporalLimits {
    /// Longest time range one query may cover.
    pub max_range: Duration,
    /// Most events one page may examine before it stops with `partial: true`.
    pub max_scan: usize,
    /// Longest one page may run before it stops with `partial: true`.
    pub max_duration: Duration,
    /// Requests each client may make per `rate_window`.
    pub rate_limit: usize,
    /// The rolling window of the rate limit.
    pub rate_window: Duration,
    /// Most clients the rate limiter tracks at once.
    pub max_clients: usize,
    /// How long a continuation token stays valid.
    pub token_ttl: Duration,
}

impl Default for TemporalLimits {
    fn default() -> Self {
        Self {
            max_range: Duration::from_secs(90 * 24 * 3600),
            max_scan: 10_000,
            max_duration: Duration::from_secs(30),
            rate_limit: 10,
            rate_window: Duration::from_secs(60),
            max_clients: 100_000,
            token_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A half-open time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporalQuery {
    /// One aggregate, one aggregate type, or the whole log.
    pub scope: Scope,
    /// The time range.
    pub range: TimeRange,
    /// Only these event types (any when empty).
    pub event_types: Vec<String>,
    /// Most events one page examines (at most the configured scan limit).
    pub page_size: Option<usize>,
}

impl TemporalQuery {
    /// What binds a continuation token to this query and caller.
    pub(crate) fn fingerprint_text(&self, client: &str) -> String {
        let mut types = self.event_types.clone();
        types.sort();
        format!(
            "{client}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.scope.describe(),
            self.range.from.timestamp_micros(),
            self.range.to.timestamp_micros(),
            types.join(","),
            self.page_size.unwrap_or(0)
        )
    }

    /// A JSON description for audit records (metadata only, never payloads).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "scope": self.scope.describe(),
            "from": self.range.from,
            "to": self.range.to,
            "event_types": self.event_types,
            "page_size": self.page_size,
        })
    }
}

/// Why a page stopped before the end of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialReason {
    /// It examined as many events as one page may.
    ScanLimit,
    /// It ran as long as one page may.
    TimeLimit,
}

impl PartialReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScanLimit => "scan_limit",
            Self::TimeLimit => "time_limit",
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The matching events, in key order (version for one aggregate, log position otherwise).
    pub events: Vec<RecordedEvent>,
    /// True when the page stopped early; `next_token` then carries the rest.
    pub partial: bool,
    /// Why it stopped early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<PartialReason>,
    /// Events examined by this page.
    pub scanned: usize,
    /// Events returned by this page.
    pub returned: usize,
    /// How long the page took.
    pub duration_ms: u64,
    /// The log position the query is pinned at (the same on every page).
    pub as_of: Pin,
    /// Resumes the query where this page stopped; present exactly when `partial`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// Why a temporal query was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemporalError {
    /// `from` is not before `to`.
    #[error("the range is empty or reversed: from {from} is not before to {to}")]
    ReversedRange {
        /// The start.
        from: DateTime<Utc>,
        /// The end.
        to: DateTime<Utc>,
    },
    /// The range is longer than the configured limit.
    #[error("the range covers {requested_days:.1} days; the limit is {limit_days} days")]
    RangeTooLong {
        /// Days asked for.
        requested_days: f64,
        /// The limit, in days.
        limit_days: u64,
    },
    /// Too many event types.
    #[error("at most {max} event types may be given, got {given}")]
    TooManyTypes {
        /// The limit.
        max: usize,
        /// How many were given.
        given: usize,
    },
    /// The page size is zero.
    #[error("the page size must be at least 1")]
    BadPageSize,
    /// The continuation token is not acceptable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The aggregate has no events at all.
    #[error("`{0}` has no events")]
    UnknownStream(String),
    /// The store failed.
    #[error("failed to read history")]
    Read(#[from] ReadError),
}

impl TemporalQuery {
    /// Checks the query against `limits` before any I/O.
    pub fn validate(&self, limits: &TemporalLimits) -> Result<(), TemporalError> {
        let TimeRange { from, to } = self.range;
        if from >= to {
            return Err(TemporalError::ReversedRange { from, to });
        }
        let span = (to - from).to_std().unwrap_or(Duration::MAX);
        if span > limits.max_range {
            return Err(TemporalError::RangeTooLong {
                requested_days: span.as_secs_f64() / 86_400.0,
                limit_days: limits.max_range.as_secs() / 86_400,
            });
        }
        if self.event_types.len() > MAX_EVENT_TYPES {
            return Err(TemporalError::TooManyTypes {
                max: MAX_EVENT_TYPES,
                given: self.event_types.len(),
            });
        }
        if self.page_size == Some(0) {
            return Err(TemporalError::BadPageSize);
        }
        Ok(())
    }

    fn matches(&self, event: &RecordedEvent) -> bool {
        event.recorded_at >= self.range.from
            && event.recorded_at < self.range.to
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && match &self.scope {
                Scope::Stream(stream) => &event.stream == stream,
                Scope::AggregateType(kind) => event.stream.aggregate_type() == kind,
                Scope::All => true,
            }
    }

    fn key(&self, event: &RecordedEvent) -> u64 {
        match self.scope {
            Scope::Stream(_) => event.version,
            _ => event.position,
        }
    }
}

/// Runs one page of `query` for `client`, resuming from `token` when given.
///
/// The first page pins the log and resolves the range to a key window; a token carries both,
/// so a resumed page reads exactly the rest. A page examines at most the page size (at most
/// `limits.max_scan`) events and runs at most `limits.max_duration`; when it stops early it is
/// `partial` with a token, even if nothing it examined matched.
pub async fn run_page(
    history: &dyn History,
    signer: &TokenSigner,
    limits: &TemporalLimits,
    query: &TemporalQuery,
    client: &str,
    token: Option<&str>,
) -> Result<Page, TemporalError> {
    query.validate(limits)?;
    let started = Instant::now();
    let fingerprint = query.fingerprint_text(client);
    let cursor = match token {
        Some(token) => signer.verify(token, &fingerprint)?,
        None => {
            let pin = history.pin(&query.scope).await?;
            let window = history
                .window(&query.scope, query.range.from, query.range.to, pin)
                .await?;
            match window {
                Some(window) => Cursor {
                    pin,
                    after: window.first.saturating_sub(1),
                    last: window.last,
                },
                None => {
                    if let Scope::Stream(stream) = &query.scope
                        && history.version_at(stream, None, pin).await?.is_none()
                    {
                        return Err(TemporalError::UnknownStream(format!(
                            "{}/{}",
                            stream.aggregate_type(),
                            stream.aggregate_id()
                        )));
                    }
                    return Ok(finish(Vec::new(), 0, started, pin, None, None));
                }
            }
        }
    };
    let budget = query
        .page_size
        .unwrap_or(limits.max_scan)
        .min(limits.max_scan)
        .max(1);
    let mut after = cursor.after;
    let mut scanned = 0;
    let mut events = Vec::new();
    let stopped = loop {
        if after >= cursor.last {
            break None;
        }
        if scanned >= budget {
            break Some(PartialReason::ScanLimit);
        }
        if started.elapsed() >= limits.max_duration {
            break Some(PartialReason::TimeLimit);
        }
        let want = BATCH.min(budget - scanned);
        let rows = history
            .scan(&query.scope, after, cursor.last, cursor.pin, want)
            .await?;
        scanned += rows.len();
        let complete = rows.len() < want;
        for event in rows {
            after = query.key(&event);
            if query.matches(&event) {
                events.push(event);
            }
        }
        if complete {
            break None;
        }
    };
    let next =
        stopped.map(|_| signer.sign(&fingerprint, &Cursor { after, ..cursor }, limits.token_ttl));
    Ok(finish(events, scanned, started, cursor.pin, stopped, next))
}

fn finish(
    events: Vec<RecordedEvent>,
    scanned: usize,
    started: Instant,
    pin: Pin,
    reason: Option<PartialReason>,
    next_token: Option<String>,
) -> Page {
    Page {
        returned: events.len(),
        events,
        partial: reason.is_some(),
        reason,
        scanned,
        duration_ms: started.elapsed().as_millis() as u64,
        as_of: pin,
        next_token,
    }
}
