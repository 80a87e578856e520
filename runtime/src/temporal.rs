//! Temporal queries: reads of history by time range through a read-only handle, with the
//! guardrails of requirement 12 (range cap, scan and time budgets, signed continuation tokens,
//! per-client rate limits) and state of an aggregate as of a time or a version.
//!
//! The read path is a [`History`]: a store handle with no append operation at all, opened
//! read-only (SQLite `mode=ro` with `query_only`, PostgreSQL read-only transactions), so a
//! temporal query cannot write even through a bug. The type system says so too:
//!
//! ```compile_fail
//! # async fn demo(history: nexus_runtime::temporal::SqliteHistory) {
//! // A read-only history is not an event store: there is no append path to call.
//! let store: &dyn nexus_runtime::EventStore = &history;
//! # }
//! ```
//!
//! A query resolves its time range to a window of keys (stream versions for one aggregate,
//! global positions across aggregates) and pins the log position it started at, once, on its
//! first page; every later page reads inside that window only, so a multi-page answer does not
//! shift under concurrent appends. Time bounds are half-open, `[from, to)`, in UTC.

mod history;
mod limiter;
mod query;
mod replay;
mod sqlite;
mod state;
mod token;

#[cfg(feature = "postgres")]
mod postgres;

pub use history::{History, KeyWindow, Pin, Scope};
pub use limiter::{RateDecision, SlidingWindowLimiter};
#[cfg(feature = "postgres")]
pub use postgres::PostgresHistory;
pub use query::{
    MAX_EVENT_TYPES, Page, PartialReason, TemporalError, TemporalLimits, TemporalQuery, TimeRange,
    run_page,
};
pub use replay::{ReplayError, ReplaySummary, replay_projection};
pub use sqlite::SqliteHistory;
pub use state::{AsOf, StateAsOf, StateError, state_as_of};
pub use token::{TokenError, TokenSigner};
