//! NATS JetStream bus: one file-backed stream of committed events, one durable pull consumer
//! per projection, publications de-duplicated by event id (`Nats-Msg-Id`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, header};
use async_trait::async_trait;
use futures::StreamExt;

use super::{Acker, BusConsumer, BusError, Delivery, EventBus};
use crate::event::{LogPosition, RecordedEvent};

/// Where and how events are kept in JetStream.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The JetStream stream name.
    pub stream: String,
    /// Subjects are `{subject_prefix}.{partition}.{aggregate_type}`.
    pub subject_prefix: String,
    /// How long JetStream remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
    /// How long a delivered, unacknowledged message waits before redelivery. Longer than the
    /// longest retry backoff, so a retrying consumer is not handed the same event twice.
    pub ack_wait: Duration,
    /// Deliveries a consumer may hold unacknowledged.
    pub max_ack_pending: i64,
    /// Messages a consumer asks for per pull request (it asks again when half have arrived).
    pub pull_batch: usize,
    /// How long a pull request waits on the server for messages before it expires.
    pub pull_expires: Duration,
    /// How often the server signals an open pull request it has nothing to deliver on; two
    /// missed in a row are reported (at most half of `pull_expires`), and the stream pulls
    /// again. It bounds a silence: in `nexus bench bus --backend nats` a consumer was seen with
    /// no pull request on the server (`waiting_pulls=0`, nothing unacknowledged, 14,800
    /// messages pending) until the heartbeats were missed, so with 15 s it stood still 30 s.
    pub idle_heartbeat: Duration,
}

impl NatsOptions {
    /// The defaults with the events in stream `name` under subjects `nexus.<name in lower case>.>`,
    /// so systems sharing one NATS server keep their events apart (streams must not overlap).
    pub fn for_stream(name: &str) -> Self {
        Self {
            stream: name.to_owned(),
            subject_prefix: format!("nexus.{}", token(&name.to_lowercase())),
            ..Self::default()
        }
    }
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            stream: "NEXUS_EVENTS".into(),
            subject_prefix: "nexus.events".into(),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(600),
            max_ack_pending: 20_000,
            pull_batch: 200,
            pull_expires: Duration::from_secs(30),
            idle_heartbeat: Duration::from_secs(2),
        }
    }
}

/// The JetStream bus.
#[derive(Clone)]
pub struct JetStreamBus {
    context: jetstream::Context,
    stream: stream::Stream,
    options: NatsOptions,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("stream", &self.options.stream)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::Unavailable(Box::new(err))
}

/// A subject token from free text: NATS subjects cannot hold `.`, `*`, `>` or whitespace.
fn token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl JetStreamBus {
    /// Connects to `url` and creates the stream if it does not exist.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, BusError> {
        crate::telemetry::ensure_recorder();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(unavailable)?;
        let context = jetstream::new(client);
        let stream = context
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                subjects: vec![format!("{}.>", options.subject_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: options.duplicate_window,
                ..stream::Config::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Self {
            context,
            stream,
            options,
        })
    }

    /// Publishes committed events in order and waits until JetStream has stored each one.
    ///
    /// Publishing an event again within the duplicate window is acknowledged as a duplicate
    /// and stores nothing.
    pub async fn publish(&self, events: &[RecordedEvent]) -> Result<(), BusError> {
        let started = std::time::Instant::now();
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let subject = format!(
                "{}.{}.{}",
                self.options.subject_prefix,
                event.partition,
                token(event.stream.aggregate_type())
            );
            let payload = serde_json::to_vec(event).map_err(|e| BusError::Backend(Box::new(e)))?;
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_MESSAGE_ID, event.id.to_string().as_str());
            // The producer's trace context, for tools that read it from the message headers.
            if let Some(traceparent) = &event.metadata.traceparent {
                headers.insert("traceparent", traceparent.as_str());
            }
            let ack = self
                .context
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(unavailable)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        metrics::counter!("nexus_bus_published_total", "bus" => "nats")
            .increment(events.len() as u64);
        metrics::histogram!("nexus_bus_publish_seconds", "bus" => "nats")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The log position of the last event the stream holds, or `None` when it holds none.
    ///
    /// A relay compares it with its checkpoint on start: a stream that holds less than the
    /// checkpoint claims (deleted, purged, or a server that lost writes it had not synced)
    /// is published again from the store.
    pub async fn last_stored(&self) -> Result<Option<LogPosition>, BusError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(unavailable)?;
        let (messages, last_sequence) = (info.state.messages, info.state.last_sequence);
        if messages == 0 {
            return Ok(None);
        }
        let message = self
            .stream
            .get_raw_message(last_sequence)
            .await
            .map_err(unavailable)?;
        let event: RecordedEvent =
            serde_json::from_slice(&message.payload).map_err(|e| BusError::Malformed {
                sequence: last_sequence,
                source: Box::new(e),
            })?;
        Ok(Some(event.log_position()))
    }

    /// The number of messages the stream holds.
    pub async fn stored_messages(&self) -> Result<u64, BusError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(unavailable)?.state.messages)
    }
}

struct NatsAcker(async_nats::jetstream::Message);

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.0.ack().await.map_err(BusError::Unavailable)
    }
}

struct NatsConsumer {
    consumer: consumer::PullConsumer,
    client: async_nats::Client,
    options: NatsOptions,
    messages: Option<consumer::pull::Stream>,
    /// The client's connection count when `messages` was opened.
    opened_on: u64,
    delivered: metrics::Counter,
    pending: metrics::Gauge,
}

impl NatsConsumer {
    /// Connections the client has made so far (the first, then each reconnect).
    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// Whether `err` leaves the message stream whole: two idle heartbeats missed while the
    /// connection it was opened on is still up. Everything the server delivered is then in
    /// the stream's subscription, and the stream pulls again when its pull request expires, so
    /// reading on loses nothing. After a reconnect, deliveries in flight may have been lost
    /// (until the ack wait): that is an error.
    fn transient(&self, err: &consumer::pull::MessagesError) -> bool {
        err.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat
            && self.client.connection_state() == async_nats::connection::State::Connected
            && self.connects() == self.opened_on
    }

    /// Logs a transient error with the consumer's state on the server, which says why it was
    /// silent (no pull request waiting, or as many deliveries unacknowledged as it may hold).
    async fn log_transient(&self, err: &consumer::pull::MessagesError) {
        let name = &self.consumer.cached_info().name;
        let error = crate::redact::error_chain(err);
        match tokio::time::timeout(INFO_TIMEOUT, self.consumer.get_info()).await {
            Ok(Ok(info)) => tracing::warn!(
                consumer = %name, %error, waiting_pulls = info.num_waiting,
                ack_pending = info.num_ack_pending, max_ack_pending = info.config.max_ack_pending,
                stream_pending = info.num_pending,
                "the pull stream was silent on a live connection; reading on"
            ),
            _ => tracing::warn!(
                consumer = %name, %error,
                "the pull stream was silent on a live connection; reading on"
            ),
        }
    }
}

/// How long a consumer's state on the server is waited for, for a log line.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait]
impl BusConsumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if self.messages.is_none() {
                let options = &self.options;
                let stream = self
                    .consumer
                    .stream()
                    .max_messages_per_batch(options.pull_batch.max(1))
                    .expires(options.pull_expires)
                    .heartbeat(options.idle_heartbeat.min(options.pull_expires / 2))
                    .messages()
                    .await
                    .map_err(unavailable)?;
                self.opened_on = self.connects();
                self.messages = Some(stream);
            }
            let messages = self.messages.as_mut().expect("opened just above");
            match messages.next().await {
                Some(Ok(message)) => {
                    let (sequence, pending) = message
                        .info()
                        .map(|i| (i.stream_sequence, i.pending))
                        .unwrap_or((0, 0));
                    self.delivered.increment(1);
                    self.pending.set(pending as f64);
                    let event: RecordedEvent = match serde_json::from_slice(&message.payload) {
                        Ok(event) => event,
                        Err(err) => {
                            // Not ours: terminate it so it is not redelivered forever.
                            let _ = message.ack_with(jetstream::AckKind::Term).await;
                            return Err(BusError::Malformed {
                                sequence,
                                source: Box::new(err),
                            });
                        }
                    };
                    return Ok(Delivery::with_acker(event, Box::new(NatsAcker(message))));
                }
                Some(Err(err)) if self.transient(&err) => self.log_transient(&err).await,
                Some(Err(err)) => {
                    // A lost connection or a failed pull: reopen the message stream.
                    self.messages = None;
                    return Err(unavailable(err));
                }
                None => self.messages = None,
            }
        }
    }
}

#[async_trait]
impl EventBus for JetStreamBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn replays_from_position(&self) -> bool {
        false
    }

    /// JetStream tracks a durable consumer's acknowledgements itself; a new consumer starts at
    /// the beginning of the stream and the projection skips what it has already applied.
    async fn consumer(
        &self,
        consumer: &str,
        _from: LogPosition,
    ) -> Result<Box<dyn BusConsumer>, BusError> {
        let name = token(consumer);
        let delivered = metrics::counter!("nexus_bus_delivered_total", "bus" => "nats", "consumer" => name.clone());
        delivered.increment(0);
        let pending = metrics::gauge!("nexus_bus_pending_messages", "bus" => "nats", "consumer" => name.clone());
        metrics::counter!("nexus_bus_published_total", "bus" => "nats").increment(0);
        let _registered = metrics::histogram!("nexus_bus_publish_seconds", "bus" => "nats");
        let consumer = self
            .stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    max_ack_pending: self.options.max_ack_pending,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..consumer::pull::Config::default()
                },
            )
            .await
            .map_err(unavailable)?;
        Ok(Box::new(NatsConsumer {
            consumer,
            client: self.context.client(),
            options: self.options.clone(),
            messages: None,
            opened_on: 0,
            delivered,
            pending,
        }))
    }
}
