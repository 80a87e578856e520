//! The embedded integration queue: durable named queues in their own SQLite file.
//!
//! It mirrors the RabbitMQ set-up in one process: events are published to an exchange with a
//! routing key, every queue with a matching binding (topic rules: `*` is one dot-separated
//! word, `#` any number of them) gets a copy, and consumers receive, ack and nack. A received
//! message is invisible to other receivers until its visibility timeout passes; one that was
//! delivered `max_deliveries` times without an ack moves to its queue's dead-letter table,
//! where it can be listed, inspected and redriven.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::Notify;

use super::sink::{IntegrationSink, RoutedEvent, SinkError};
use crate::event::RecordedEvent;
use crate::store::BoxError;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS queues (
    name                  TEXT PRIMARY KEY,
    visibility_timeout_ms INTEGER NOT NULL,
    max_deliveries        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    queue       TEXT NOT NULL,
    exchange    TEXT NOT NULL,
    binding_key TEXT NOT NULL,
    PRIMARY KEY (queue, exchange, binding_key)
);
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    exchange    TEXT    NOT NULL,
    routing_key TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    visible_at  INTEGER NOT NULL,
    lease       TEXT,
    last_error  TEXT,
    UNIQUE (queue, message_id)
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    exchange         TEXT    NOT NULL,
    routing_key      TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    deliveries       INTEGER NOT NULL,
    reason           TEXT    NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, id);
";

/// How a queue hands out messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays invisible to other receivers before it is handed out again.
    pub visibility_timeout: Duration,
    /// How many deliveries without an ack a message gets before it is dead-lettered.
    pub max_deliveries: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue file could not be opened.
    #[error("embedded queue file `{}` is unavailable", path.display())]
    Unavailable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// No queue of that name was declared.
    #[error("queue `{0}` is not declared")]
    UnknownQueue(String),
    /// A queue, exchange or binding name is not acceptable.
    #[error("invalid {kind} `{name}`: {reason}")]
    InvalidName {
        /// What was named: queue, exchange or binding key.
        kind: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The receipt's lease is over: its visibility timeout passed (the message may be with
    /// another receiver now) or it was acked, nacked or dead-lettered already.
    #[error("message {message} of queue `{queue}` is no longer leased to this receipt")]
    LeaseLost {
        /// The queue.
        queue: String,
        /// The message's sequence number.
        message: i64,
    },
    /// A stored message could not be decoded.
    #[error("stored message {message} of queue `{queue}` is corrupt")]
    Corrupt {
        /// The queue.
        queue: String,
        /// The message's sequence number.
        message: i64,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The SQLite backend failed.
    #[error("embedded queue backend failed")]
    Backend(#[source] BoxError),
}

impl From<rusqlite::Error> for QueueError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Backend(Box::new(err))
    }
}

/// Proof of one delivery, needed to ack or nack it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    queue: String,
    message: i64,
    lease: String,
}

impl Receipt {
    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message's sequence number in its queue.
    pub fn message(&self) -> i64 {
        self.message
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Ack or nack with this.
    pub receipt: Receipt,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The event it carries.
    pub event: RecordedEvent,
    /// Which delivery this is, starting at 1.
    pub delivery: u32,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// Why the previous delivery failed, if one did and said so.
    pub last_error: Option<String>,
}

/// A message that was dead-lettered, with why.
#[derive(Debug, Clone)]
pub struct QueueDeadLetter {
    /// Its id in the dead-letter table.
    pub id: i64,
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The event it carries.
    pub event: RecordedEvent,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// Why it was dead-lettered (the last error, or that it was never acked).
    pub reason: String,
    /// When it was first enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// The message will be delivered again.
    Requeued,
    /// It had used up its deliveries and moved to the dead-letter table.
    DeadLettered,
}

/// How many messages a queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting to be received (including ones whose lease expired).
    pub ready: u64,
    /// Messages received and not yet acked or nacked, within their visibility timeout.
    pub in_flight: u64,
    /// Messages in the dead-letter table.
    pub dead: u64,
}

/// The embedded integration queue; it is also an [`IntegrationSink`].
#[derive(Clone)]
pub struct EmbeddedQueue {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Longest sleep of [`EmbeddedQueue::receive_wait`] between looks, so expiring leases are noticed.
const WAIT_POLL: Duration = Duration::from_millis(50);

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn time_of(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn check_name(kind: &'static str, name: &str) -> Result<(), QueueError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > 255 {
        "is longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(QueueError::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    })
}

/// Whether `routing_key` matches the topic `binding_key`: words are dot-separated,
/// `*` matches exactly one word and `#` zero or more.
pub fn topic_matches(binding_key: &str, routing_key: &str) -> bool {
    fn matches(pattern: &[&str], words: &[&str]) -> bool {
        match pattern.split_first() {
            None => words.is_empty(),
            Some((&"#", rest)) => (0..=words.len()).any(|skip| matches(rest, &words[skip..])),
            Some((&word, rest)) => words.split_first().is_some_and(|(first, others)| {
                (word == "*" || word == *first) && matches(rest, others)
            }),
        }
    }
    let pattern: Vec<&str> = binding_key.split('.').collect();
    let words: Vec<&str> = if routing_key.is_empty() {
        Vec::new()
    } else {
        routing_key.split('.').collect()
    };
    matches(&pattern, &words)
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, QueueError> {
        let path = path.as_ref().to_path_buf();
        let unavailable = |source: BoxError| QueueError::Unavailable {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| unavailable(Box::new(e)))?;
        }
        let conn = Connection::open(&path)
            .and_then(|conn| {
                conn.busy_timeout(Duration::from_secs(5))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.execute_batch(SCHEMA)?;
                Ok(conn)
            })
            .map_err(|e| unavailable(Box::new(e)))?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
            notify: Arc::new(Notify::new()),
        })
    }

    /// The queue file that goes with an event store file: `events.db` → `events.queue.db`.
    pub fn path_beside(store_path: &Path) -> PathBuf {
        let stem = store_path
            .file_stem()
            .map_or_else(|| "nexus".into(), |s| s.to_string_lossy().into_owned());
        store_path.with_file_name(format!("{stem}.queue.db"))
    }

    /// The file this queue lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("queue connection lock poisoned");
            f(&mut conn)
        })
        .await
        .map_err(|e| QueueError::Backend(Box::new(e)))?
    }

    /// Declares `queue` with `options`, or updates the options of an existing one.
    pub async fn declare_queue(
        &self,
        queue: &str,
        options: QueueOptions,
    ) -> Result<(), QueueError> {
        check_name("queue", queue)?;
        let queue = queue.to_owned();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO queues (name, visibility_timeout_ms, max_deliveries) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET visibility_timeout_ms = excluded.visibility_timeout_ms, \
                 max_deliveries = excluded.max_deliveries",
                params![queue, millis(options.visibility_timeout), options.max_deliveries.max(1)],
            )?;
            Ok(())
        })
        .await
    }

    /// Binds `queue` to `exchange`: messages published there whose routing key matches the
    /// topic pattern `binding_key` get a copy in the queue.
    pub async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        binding_key: &str,
    ) -> Result<(), QueueError> {
        check_name("queue", queue)?;
        check_name("exchange", exchange)?;
        check_name("binding key", binding_key)?;
        let (queue, exchange, binding_key) = (
            queue.to_owned(),
            exchange.to_owned(),
            binding_key.to_owned(),
        );
        self.run(move |conn| {
            queue_options(conn, &queue)?;
            conn.execute(
                "INSERT OR IGNORE INTO bindings (queue, exchange, binding_key) VALUES (?1, ?2, ?3)",
                params![queue, exchange, binding_key],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes `queue` with its bindings, messages and dead letters.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        let queue = queue.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            for table in ["bindings", "messages", "dead_letters"] {
                tx.execute(&format!("DELETE FROM {table} WHERE queue = ?1"), [&queue])?;
            }
            tx.execute("DELETE FROM queues WHERE name = ?1", [&queue])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Publishes events: each goes to every queue bound to its exchange with a matching key.
    ///
    /// An event already waiting in a queue (same event id) is not enqueued there twice, so
    /// a relay's redelivery after a failure does not duplicate pending messages. Returns the
    /// number of copies enqueued.
    pub async fn publish(&self, batch: &[RoutedEvent]) -> Result<u64, QueueError> {
        let mut rows = Vec::with_capacity(batch.len());
        for routed in batch {
            let body = serde_json::to_string(&routed.event)
                .map_err(|e| QueueError::Backend(Box::new(e)))?;
            rows.push((
                routed.event.id.to_string(),
                routed.exchange.clone(),
                routed.routing_key.clone(),
                body,
            ));
        }
        let enqueued = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let bindings: Vec<(String, String, String)> = tx
                    .prepare_cached("SELECT queue, exchange, binding_key FROM bindings ORDER BY queue")?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                let now = now_ms();
                let mut enqueued = 0;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO messages (queue, message_id, exchange, routing_key, body, enqueued_at, visible_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (queue, message_id) DO NOTHING",
                    )?;
                    for (message_id, exchange, routing_key, body) in &rows {
                        let mut last_queue: Option<&str> = None;
                        for (queue, bound_exchange, binding_key) in &bindings {
                            if bound_exchange != exchange
                                || last_queue == Some(queue.as_str())
                                || !topic_matches(binding_key, routing_key)
                            {
                                continue;
                            }
                            last_queue = Some(queue.as_str());
                            enqueued += insert.execute(params![
                                queue, message_id, exchange, routing_key, body, now
                            ])? as u64;
                        }
                    }
                }
                tx.commit()?;
                Ok(enqueued)
            })
            .await?;
        self.notify.notify_waiters();
        Ok(enqueued)
    }

    /// Receives up to `max` messages of `queue` that are visible now, oldest first.
    ///
    /// Each is leased to the caller for the queue's visibility timeout. A message whose lease
    /// expired after its last allowed delivery is dead-lettered here instead of handed out.
    pub async fn receive(&self, queue: &str, max: usize) -> Result<Vec<QueuedMessage>, QueueError> {
        let queue = queue.to_owned();
        let raw = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let options = queue_options(&tx, &queue)?;
                let now = now_ms();
                let mut taken = Vec::new();
                loop {
                    let want = max.saturating_sub(taken.len());
                    if want == 0 {
                        break;
                    }
                    let candidates: Vec<(i64, u32)> = tx
                        .prepare_cached(
                            "SELECT id, deliveries FROM messages WHERE queue = ?1 AND visible_at <= ?2 \
                             ORDER BY id LIMIT ?3",
                        )?
                        .query_map(params![queue, now, want as i64], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    if candidates.is_empty() {
                        break;
                    }
                    let mut dead_lettered = false;
                    for (id, deliveries) in candidates {
                        if deliveries >= options.max_deliveries {
                            let reason = format!(
                                "delivered {deliveries} times without an ack (visibility timeout passed)"
                            );
                            dead_letter(&tx, id, &reason, now)?;
                            dead_lettered = true;
                            continue;
                        }
                        let lease = uuid::Uuid::now_v7().to_string();
                        tx.execute(
                            "UPDATE messages SET deliveries = deliveries + 1, visible_at = ?2, lease = ?3 WHERE id = ?1",
                            params![id, now + millis(options.visibility_timeout), lease],
                        )?;
                        let row = tx
                            .prepare_cached(
                                "SELECT id, exchange, routing_key, body, deliveries, enqueued_at, last_error \
                                 FROM messages WHERE id = ?1",
                            )?
                            .query_row([id], RawMessage::from_row)?;
                        taken.push((row, lease));
                    }
                    if !dead_lettered {
                        break;
                    }
                }
                tx.commit()?;
                Ok((queue, taken))
            })
            .await?;
        let (queue, taken) = raw;
        taken
            .into_iter()
            .map(|(row, lease)| row.into_message(&queue, lease))
            .collect()
    }

    /// Like [`receive`](Self::receive), but waits up to `timeout` for at least one message.
    pub async fn receive_wait(
        &self,
        queue: &str,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<QueuedMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.receive(queue, max).await?;
            let now = tokio::time::Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let pause = (deadline - now).min(WAIT_POLL);
            let _ = tokio::time::timeout(pause, notified).await;
        }
    }

    /// Acknowledges a delivery: the message is done and removed.
    pub async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        let receipt = receipt.clone();
        self.run(move |conn| {
            let removed = conn.execute(
                "DELETE FROM messages WHERE id = ?1 AND lease = ?2 AND visible_at > ?3",
                params![receipt.message, receipt.lease, now_ms()],
            )?;
            if removed == 0 {
                return Err(lease_lost(&receipt));
            }
            Ok(())
        })
        .await
    }

    /// Refuses a delivery: the message is delivered again after `delay`, or dead-lettered if it
    /// used up its deliveries. `reason` is kept as the message's last error.
    pub async fn nack(
        &self,
        receipt: &Receipt,
        reason: &str,
        delay: Duration,
    ) -> Result<NackOutcome, QueueError> {
        let receipt = receipt.clone();
        let reason = reason.to_owned();
        let outcome = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = now_ms();
                let deliveries: Option<u32> = tx
                    .query_row(
                        "SELECT deliveries FROM messages WHERE id = ?1 AND lease = ?2 AND visible_at > ?3",
                        params![receipt.message, receipt.lease, now],
                        |row| row.get(0),
                    )
                    .optional()?;
                let Some(deliveries) = deliveries else {
                    return Err(lease_lost(&receipt));
                };
                let options = queue_options(&tx, &receipt.queue)?;
                let outcome = if deliveries >= options.max_deliveries {
                    let reason = format!("{reason} (after {deliveries} deliveries)");
                    dead_letter(&tx, receipt.message, &reason, now)?;
                    NackOutcome::DeadLettered
                } else {
                    tx.execute(
                        "UPDATE messages SET visible_at = ?2, lease = NULL, last_error = ?3 WHERE id = ?1",
                        params![receipt.message, now + millis(delay), reason],
                    )?;
                    NackOutcome::Requeued
                };
                tx.commit()?;
                Ok(outcome)
            })
            .await?;
        self.notify.notify_waiters();
        Ok(outcome)
    }

    /// Refuses a delivery for good: the message moves to the dead-letter table now.
    pub async fn reject(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        let receipt = receipt.clone();
        let reason = reason.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let leased: Option<i64> = tx
                .query_row(
                    "SELECT id FROM messages WHERE id = ?1 AND lease = ?2 AND visible_at > ?3",
                    params![receipt.message, receipt.lease, now],
                    |row| row.get(0),
                )
                .optional()?;
            if leased.is_none() {
                return Err(lease_lost(&receipt));
            }
            dead_letter(&tx, receipt.message, &reason, now)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// How many messages `queue` holds, by state.
    pub async fn depth(&self, queue: &str) -> Result<QueueDepth, QueueError> {
        let queue = queue.to_owned();
        self.run(move |conn| {
            queue_options(conn, &queue)?;
            let now = now_ms();
            let (ready, in_flight): (i64, i64) = conn.query_row(
                "SELECT COALESCE(SUM(visible_at <= ?2), 0), COALESCE(SUM(visible_at > ?2), 0) \
                 FROM messages WHERE queue = ?1",
                params![queue, now],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let dead: i64 = conn.query_row(
                "SELECT count(*) FROM dead_letters WHERE queue = ?1",
                [&queue],
                |row| row.get(0),
            )?;
            Ok(QueueDepth {
                ready: ready as u64,
                in_flight: in_flight as u64,
                dead: dead as u64,
            })
        })
        .await
    }

    /// The dead letters of `queue`, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<QueueDeadLetter>, QueueError> {
        let queue = queue.to_owned();
        let rows = self
            .run(move |conn| {
                Ok(conn
                    .prepare_cached(&format!(
                        "SELECT {DEAD_COLUMNS} FROM dead_letters WHERE queue = ?1 ORDER BY id LIMIT ?2"
                    ))?
                    .query_map(params![queue, limit as i64], RawDeadLetter::from_row)?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(RawDeadLetter::into_dead_letter)
            .collect()
    }

    /// One dead letter by id, with its full event.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<QueueDeadLetter>, QueueError> {
        let row = self
            .run(move |conn| {
                Ok(conn
                    .query_row(
                        &format!("SELECT {DEAD_COLUMNS} FROM dead_letters WHERE id = ?1"),
                        [id],
                        RawDeadLetter::from_row,
                    )
                    .optional()?)
            })
            .await?;
        row.map(RawDeadLetter::into_dead_letter).transpose()
    }

    /// Moves a dead letter back to its queue with a fresh delivery count; false if no such id.
    pub async fn redrive(&self, id: i64) -> Result<bool, QueueError> {
        let moved = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let moved = tx.execute(
                    "INSERT INTO messages (queue, message_id, exchange, routing_key, body, enqueued_at, visible_at) \
                     SELECT queue, message_id, exchange, routing_key, body, enqueued_at, ?2 \
                     FROM dead_letters WHERE id = ?1 \
                     ON CONFLICT (queue, message_id) DO NOTHING",
                    params![id, now_ms()],
                )?;
                let deleted = tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
                tx.commit()?;
                Ok(moved > 0 || deleted > 0)
            })
            .await?;
        self.notify.notify_waiters();
        Ok(moved)
    }
}

const DEAD_COLUMNS: &str =
    "id, queue, exchange, routing_key, body, deliveries, reason, enqueued_at, dead_lettered_at";

fn queue_options(conn: &Connection, queue: &str) -> Result<QueueOptions, QueueError> {
    conn.query_row(
        "SELECT visibility_timeout_ms, max_deliveries FROM queues WHERE name = ?1",
        [queue],
        |row| {
            Ok(QueueOptions {
                visibility_timeout: Duration::from_millis(row.get::<_, i64>(0)?.max(0) as u64),
                max_deliveries: row.get(1)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| QueueError::UnknownQueue(queue.to_owned()))
}

fn dead_letter(conn: &Connection, id: i64, reason: &str, now: i64) -> Result<(), QueueError> {
    conn.execute(
        "INSERT INTO dead_letters (queue, message_id, exchange, routing_key, body, enqueued_at, deliveries, reason, dead_lettered_at) \
         SELECT queue, message_id, exchange, routing_key, body, enqueued_at, deliveries, ?2, ?3 \
         FROM messages WHERE id = ?1",
        params![id, reason, now],
    )?;
    conn.execute("DELETE FROM messages WHERE id = ?1", [id])?;
    tracing::warn!(message = id, reason, "integration message dead-lettered");
    metrics::counter!("nexus_integration_dead_letters_total", "sink" => "embedded").increment(1);
    Ok(())
}

fn lease_lost(receipt: &Receipt) -> QueueError {
    QueueError::LeaseLost {
        queue: receipt.queue.clone(),
        message: receipt.message,
    }
}

struct RawMessage {
    id: i64,
    exchange: String,
    routing_key: String,
    body: String,
    deliveries: u32,
    enqueued_at: i64,
    last_error: Option<String>,
}

impl RawMessage {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            exchange: row.get(1)?,
            routing_key: row.get(2)?,
            body: row.get(3)?,
            deliveries: row.get(4)?,
            enqueued_at: row.get(5)?,
            last_error: row.get(6)?,
        })
    }

    fn into_message(self, queue: &str, lease: String) -> Result<QueuedMessage, QueueError> {
        let event = serde_json::from_str(&self.body).map_err(|source| QueueError::Corrupt {
            queue: queue.to_owned(),
            message: self.id,
            source,
        })?;
        Ok(QueuedMessage {
            receipt: Receipt {
                queue: queue.to_owned(),
                message: self.id,
                lease,
            },
            exchange: self.exchange,
            routing_key: self.routing_key,
            event,
            delivery: self.deliveries,
            enqueued_at: time_of(self.enqueued_at),
            last_error: self.last_error,
        })
    }
}

struct RawDeadLetter {
    id: i64,
    queue: String,
    exchange: String,
    routing_key: String,
    body: String,
    deliveries: u32,
    reason: String,
    enqueued_at: i64,
    dead_lettered_at: i64,
}

impl RawDeadLetter {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            queue: row.get(1)?,
            exchange: row.get(2)?,
            routing_key: row.get(3)?,
            body: row.get(4)?,
            deliveries: row.get(5)?,
            reason: row.get(6)?,
            enqueued_at: row.get(7)?,
            dead_lettered_at: row.get(8)?,
        })
    }

    fn into_dead_letter(self) -> Result<QueueDeadLetter, QueueError> {
        let event = serde_json::from_str(&self.body).map_err(|source| QueueError::Corrupt {
            queue: self.queue.clone(),
            message: self.id,
            source,
        })?;
        Ok(QueueDeadLetter {
            id: self.id,
            queue: self.queue,
            exchange: self.exchange,
            routing_key: self.routing_key,
            event,
            deliveries: self.deliveries,
            reason: self.reason,
            enqueued_at: time_of(self.enqueued_at),
            dead_lettered_at: time_of(self.dead_lettered_at),
        })
    }
}

#[async_trait]
impl IntegrationSink for EmbeddedQueue {
    fn name(&self) -> &str {
        "embedded"
    }

    async fn deliver(&self, batch: &[RoutedEvent]) -> Result<(), SinkError> {
        self.publish(batch)
            .await
            .map(drop)
            .map_err(|err| SinkError::Backend {
                sink: "embedded".into(),
                source: Box::new(err),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn topic_bindings_follow_amqp_rules() {
        for (binding, key, expected) in [
            ("order.*", "order.OrderPlaced", true),
            ("order.*", "order", false),
            ("order.*", "order.a.b", false),
            ("order.#", "order", true),
            ("order.#", "order.a.b", true),
            ("#", "anything.at.all", true),
            ("#", "", true),
            ("*.Placed", "order.Placed", true),
            ("*.Placed", "Placed", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(topic_matches(binding, key), expected, "{binding} ~ {key}");
        }
    }
}
