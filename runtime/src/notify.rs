//! Real-time notifications: after a projection commits, one notification per changed document
//! goes to every client subscribed to it, in order, throttled and resumable.
//!
//! The [`NotificationHub`] is the one in-process seam. A [`crate::projection::ProjectionRunner`]
//! given a hub publishes to it after each read-model commit (never before, so a client that
//! refetches on a notification reads the new document). The hub numbers each projection's
//! notifications (`position`, within an `epoch` that changes when the read model is rebuilt or
//! the process restarts), keeps the newest in a bounded history ring, and routes each one to the
//! [`Session`]s whose subscriptions match it through an index (document, collection, projection),
//! so a publish costs the matching subscribers, not all of them. A session is one client's
//! bounded mailbox: a notification for a document already waiting replaces it in place (latest
//! wins, the version range is reported, the document keeps its turn), a token bucket sized so no
//! sliding second exceeds the limit paces delivery, each notification carries the client's
//! `resume` mark (positions leave out of order once documents wait), and a client whose mailbox
//! overflows is closed as `slow` and resumes from its last mark. Transports (WebSocket and SSE in `http::notify`, feature `http`) only move frames.
//! [`client`] (feature `notify-client`) is the Rust client: reconnection with exponential
//! backoff and full jitter, and resume from the last mark without delivering a change twice.

#[cfg(feature = "notify-client")]
pub mod client;
mod filter;
mod hub;
mod notification;
mod session;

pub use filter::{Scope, parse_filter_value};
pub(crate) use hub::new_epoch;
pub use hub::{Change, HubOptions, NotificationHub};
pub use notification::{
    ClientMessage, Coalesced, Notification, Op, ResetReason, ServerMessage, Since, SinceError,
};
pub use session::{CloseReason, Next, Session, SessionLimits, SubscribeError, Subscribed};
