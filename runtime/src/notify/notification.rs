//! What travels: a notification, the frames around it, and the resume position.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::EventId;

/// What happened to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Written (created or replaced).
    Upsert,
    /// Deleted.
    Delete,
    /// Written, and no longer matching the filter of the subscription it is delivered to
    /// (sent only to filter subscriptions, so a filtered list can drop it).
    Left,
}

/// Several changes of one document delivered as one (latest wins) because the client was
/// throttled or behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coalesced {
    /// Changes this notification stands for (2 or more).
    pub count: u64,
    /// The aggregate version of the oldest of them; the notification's own is the newest.
    pub from_version: u64,
}

impl Coalesced {
    /// What an older notification (its own coalescing, version and aggregate) and a newer one
    /// of the same document stand for together. The version range is the newer aggregate's;
    /// when the older came from another aggregate, the range starts at the newer's first.
    pub fn merge(
        older: Option<Coalesced>,
        older_version: u64,
        older_aggregate: &str,
        newer: Option<Coalesced>,
        newer_aggregate: &str,
        newer_version: u64,
    ) -> Coalesced {
        let count = older.map_or(1, |c| c.count) + newer.map_or(1, |c| c.count);
        let from_version = if older_aggregate == newer_aggregate {
            older.map_or(older_version, |c| c.from_version)
        } else {
            newer.map_or(newer_version, |c| c.from_version)
        };
        Coalesced {
            count,
            from_version,
        }
    }
}

/// One changed document of one projection commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The projection whose read model changed.
    pub projection: String,
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// Written or deleted.
    pub op: Op,
    /// The aggregate type of the event that changed it (the last one, if several in a commit).
    pub aggregate_type: String,
    /// The aggregate id of that event.
    pub aggregate_id: String,
    /// The aggregate's version after that event.
    pub aggregate_version: u64,
    /// That event's id.
    pub event_id: EventId,
    /// That event's position in the global log.
    pub log_position: u64,
    /// The position of the change this notification carries: increases by one per notification
    /// of this projection within an epoch. A throttled or lagging client may get them out of
    /// order (a waiting document keeps its turn and takes its newer changes), so resume from
    /// `resume`, not from this.
    pub position: u64,
    /// Where this client resumes from (`since`): every change of the projection at or below it
    /// has been delivered to this client or folded into a notification delivered. It never
    /// decreases, and equals `position` unless the client is throttled or behind. A resume
    /// from it replays what came after it, including changes of documents this client already
    /// got above it: skip a notification whose document was delivered at an equal or higher
    /// `position` (the Rust and JavaScript clients do). Set per client as it is sent; absent
    /// in the server's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<u64>,
    /// The read model's generation; positions of different epochs are not comparable.
    pub epoch: String,
    /// When the event was stored.
    pub recorded_at: DateTime<Utc>,
    /// When the projection committed the change.
    pub committed_at: DateTime<Utc>,
    /// The correlation id of the request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Set when this notification replaces older ones of the same document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesced: Option<Coalesced>,
}

/// Why a client must refetch instead of trusting a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// The position is older than the history the server keeps.
    TooOld,
    /// The read model was rebuilt or the server restarted: positions start over.
    EpochChanged,
    /// The replay would not fit the client's queue.
    TooManyToReplay,
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The first frame of a connection.
    Ready {
        /// The connection's id (for logs).
        connection: u64,
        /// How often the server pings; a client may call the link dead after this plus 10 s of silence.
        ping_interval_ms: u64,
        /// Most notifications per second this connection gets.
        throttle_per_second: u32,
    },
    /// A subscription is live from `position` on (after any replay it announced).
    Subscribed {
        /// The client's name for the subscription.
        sub: String,
        /// Its projection.
        projection: String,
        /// The projection's epoch.
        epoch: String,
        /// The projection's newest position when the subscription started: read this before
        /// fetching documents, so nothing falls between the fetch and the stream.
        position: u64,
        /// Notifications replayed from the history after `since`, delivered next.
        replayed: u64,
    },
    /// A subscription ended.
    Unsubscribed {
        /// The client's name for it.
        sub: String,
    },
    /// A document changed.
    Notification(Notification),
    /// The client's position cannot be resumed: refetch the documents, then go on from here.
    Reset {
        /// The projection.
        projection: String,
        /// Its epoch now.
        epoch: String,
        /// Its newest position now.
        position: u64,
        /// Why.
        reason: ResetReason,
    },
    /// Notifications are arriving faster than the limit: documents are coalesced (latest wins).
    Throttled {
        /// The limit per second.
        limit: u32,
        /// Documents waiting.
        pending: usize,
    },
    /// A request was refused.
    Error {
        /// A stable code.
        code: String,
        /// What was wrong.
        message: String,
        /// The subscription it concerns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
    },
    /// The answer to a client's `ping`.
    Pong,
    /// The server ends the stream (Server-Sent Events, which have no close frame; a WebSocket
    /// gets a close frame with the same code): 4000–4499 reconnect (4401: with a fresh
    /// credential), 4500 and above do not.
    Closed {
        /// The close code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Starts (or replaces) a subscription.
    Subscribe {
        /// The client's name for it, unique on the connection.
        sub: String,
        /// The projection.
        projection: String,
        /// Only this collection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collection: Option<String>,
        /// Only this document (needs `collection`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Only documents whose fields equal these values (the list endpoint's filters; needs `collection`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<Map<String, Value>>,
        /// Resume after this `epoch:position`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// Ends a subscription.
    Unsubscribe {
        /// The client's name for it.
        sub: String,
    },
    /// Asks for a `pong`.
    Ping,
}

/// A resume position: `epoch:position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The epoch the position belongs to.
    pub epoch: String,
    /// The last resume mark the client got (a notification's `resume`).
    pub position: u64,
}

/// A resume position that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("resume position `{0}` must look like `epoch:position`")]
pub struct SinceError(pub String);

impl std::str::FromStr for Since {
    type Err = SinceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (epoch, position) = text
            .rsplit_once(':')
            .ok_or_else(|| SinceError(text.chars().take(64).collect()))?;
        let position = position
            .parse()
            .map_err(|_| SinceError(text.chars().take(64).collect()))?;
        let valid_epoch = !epoch.is_empty()
            && epoch.len() <= 64
            && epoch.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid_epoch {
            return Err(SinceError(text.chars().take(64).collect()));
        }
        Ok(Self {
            epoch: epoch.to_owned(),
            position,
        })
    }
}

impl std::fmt::Display for Since {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_epoch_and_position_and_refuses_the_rest() {
        let since: Since = "a1b2-c3:42".parse().unwrap();
        assert_eq!((since.epoch.as_str(), since.position), ("a1b2-c3", 42));
        assert_eq!(since.to_string(), "a1b2-c3:42");
        for bad in [
            "",
            "42",
            ":42",
            "e:",
            "e:x",
            "e:-1",
            "e f:1",
            &format!("{}:1", "e".repeat(65)),
        ] {
            assert!(bad.parse::<Since>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn frames_are_tagged_by_type() {
        let text = serde_json::to_string(&ServerMessage::Pong).unwrap();
        assert_eq!(text, r#"{"type":"pong"}"#);
        let subscribe: ClientMessage = serde_json::from_str(
            r#"{"type":"subscribe","sub":"s","projection":"orders","collection":"orders","filter":{"status":"confirmed"}}"#,
        )
        .unwrap();
        assert!(matches!(
            subscribe,
            ClientMessage::Subscribe {
                filter: Some(_),
                ..
            }
        ));
        assert!(
            serde_json::from_str::<ClientMessage>(
                r#"{"type":"subscribe","sub":"s","projection":"o","x":1}"#
            )
            .is_err()
        );
    }
}
