//! The RabbitMQ sink: durable topic exchanges, persistent messages and publisher confirms.
//!
//! Every routed event is published as a persistent message (delivery mode 2) to a durable
//! topic exchange, and a delivery counts as done only when the broker acked every message of
//! the batch; a nack fails the delivery. Queues listed in the options are declared durable,
//! bound to their exchange, and given their own dead-letter exchange (`<queue>.dlx`, fanout)
//! and dead-letter queue (`<queue>.dlq`), so a consumer's reject lands there.
//!
//! Messages are published `mandatory`: one no binding takes comes back (basic.return), and
//! goes, like one whose routing key is longer than AMQP's 255 bytes, to the unroutable queue
//! (`nexus.unroutable` by default, declared durable) with headers saying where it was meant
//! to go and why it did not, so an operator sees it and nothing blocks the relay.
//!
//! The connection is opened on first use and reopened on the next delivery after any failure,
//! so a broker restart or a dropped connection costs a retry, never a message.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tracing::{debug, info, warn};

use super::sink::{IntegrationSink, RoutedEvent, SinkError, headers};
use crate::event::RecordedEvent;

/// The kind of a declared queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A classic durable queue.
    #[default]
    Classic,
    /// A replicated quorum queue. With a delivery limit, a message returned to the queue
    /// (nacked with requeue, or left unacked by a consumer that went away) more than that many
    /// times is dead-lettered, like the embedded queue's `max_deliveries`.
    Quorum {
        /// Redeliveries allowed before the message is dead-lettered.
        delivery_limit: Option<u32>,
    },
}

/// A durable queue the sink declares and binds, with its own dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue's name.
    pub name: String,
    /// The topic exchange it is bound to.
    pub exchange: String,
    /// Its binding keys (topic patterns, e.g. `order.*` or `#`).
    pub binding_keys: Vec<String>,
    /// Classic or quorum.
    pub queue_type: QueueType,
}

impl QueueSpec {
    /// A queue bound to `exchange` with one binding key.
    pub fn new(
        name: impl Into<String>,
        exchange: impl Into<String>,
        binding_key: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            exchange: exchange.into(),
            binding_keys: vec![binding_key.into()],
            queue_type: QueueType::Classic,
        }
    }

    /// The same queue as a quorum queue, dead-lettering after `delivery_limit` redeliveries.
    pub fn quorum(mut self, delivery_limit: Option<u32>) -> Self {
        self.queue_type = QueueType::Quorum { delivery_limit };
        self
    }

    /// The queue's dead-letter exchange: `<queue>.dlx`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.name)
    }

    /// The queue's dead-letter queue: `<queue>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.name)
    }
}

/// Where the broker is and what to declare there.
#[derive(Debug, Clone)]
pub struct RabbitMqOptions {
    /// The AMQP URI, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub uri: String,
    /// The connection name the broker shows, and the sink's name in logs and metrics.
    pub connection_name: String,
    /// Exchanges to declare up front (others are declared on first publish).
    pub exchanges: Vec<String>,
    /// Queues to declare and bind, each with its dead-letter exchange and queue.
    pub queues: Vec<QueueSpec>,
    /// Longest wait for the connection to open.
    pub connect_timeout: Duration,
    /// Longest wait for the broker to confirm a batch.
    pub confirm_timeout: Duration,
    /// The durable queue that receives events no binding took or whose routing key AMQP
    /// cannot carry.
    pub unroutable_queue: String,
}

/// Headers the sink adds to a message it sends to the unroutable queue.
pub mod unroutable_headers {
    /// The exchange the event was meant for.
    pub const EXCHANGE: &str = "nexus-unroutable-exchange";
    /// The routing key it was meant to carry.
    pub const ROUTING_KEY: &str = "nexus-unroutable-routing-key";
    /// Why it did not get there.
    pub const REASON: &str = "nexus-unroutable-reason";
}

impl RabbitMqOptions {
    /// Options for the broker at `uri`, declaring nothing up front.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            connection_name: "nexus-integration".into(),
            exchanges: Vec::new(),
            queues: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            unroutable_queue: "nexus.unroutable".into(),
        }
    }
}

/// The live connection and its confirm-mode channel.
struct Live {
    connection: Arc<Connection>,
    channel: Channel,
    exchanges: HashSet<String>,
}

impl Live {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Publishes routed events to RabbitMQ with publisher confirms; an [`IntegrationSink`].
pub struct RabbitMqSink {
    options: RabbitMqOptions,
    live: tokio::sync::Mutex<Option<Live>>,
    /// The current connection, reachable without waiting for a delivery in flight.
    current: std::sync::Mutex<Option<Arc<Connection>>>,
    /// Connections opened so far.
    opened: AtomicU64,
}

impl std::fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSink")
            .field("connection_name", &self.options.connection_name)
            .field("queues", &self.options.queues)
            .finish_non_exhaustive()
    }
}

impl RabbitMqSink {
    /// A sink that connects on first delivery.
    pub fn new(options: RabbitMqOptions) -> Self {
        Self {
            options,
            live: tokio::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
            opened: AtomicU64::new(0),
        }
    }

    /// How many connections this sink opened: 1 plus one per reconnect.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A sink that connects and declares its topology now, so a wrong URI or a conflicting
    /// declaration shows at start-up.
    pub async fn connect(options: RabbitMqOptions) -> Result<Self, SinkError> {
        let sink = Self::new(options);
        let mut live = sink.live.lock().await;
        *live = Some(sink.open().await?);
        drop(live);
        Ok(sink)
    }

    /// Closes the current connection, if any; the next delivery opens a new one.
    ///
    /// Confirms still pending on the closed connection fail, so their batch is delivered
    /// again: this never loses a message. Use it before shutting down, or to rotate the
    /// connection.
    pub async fn close_connection(&self) {
        let connection = self
            .current
            .lock()
            .expect("current connection lock poisoned")
            .take();
        if let Some(connection) = connection
            && let Err(err) = connection
                .close(200, "closed by the application".into())
                .await
        {
            debug!(error = %err, "closing the RabbitMQ connection failed");
        }
    }

    fn unavailable(&self, err: impl std::error::Error + Send + Sync + 'static) -> SinkError {
        SinkError::Unavailable {
            sink: self.options.connection_name.clone(),
            source: Box::new(err),
        }
    }

    fn topology(&self, what: String, err: lapin::Error) -> SinkError {
        SinkError::Topology {
            sink: self.options.connection_name.clone(),
            what,
            source: Box::new(err),
        }
    }

    /// Opens a connection, a confirm-mode channel, and declares the configured topology.
    async fn open(&self) -> Result<Live, SinkError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.options.connection_name.clone().into());
        let connection = tokio::time::timeout(
            self.options.connect_timeout,
            Connection::connect(&self.options.uri, properties),
        )
        .await
        .map_err(|_| SinkError::Timeout {
            sink: self.options.connection_name.clone(),
            timeout_ms: millis(self.options.connect_timeout),
        })?
        .map_err(|e| self.unavailable(e))?;
        let connection = Arc::new(connection);
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.unavailable(e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut live = Live {
            connection: Arc::clone(&connection),
            channel,
            exchanges: HashSet::new(),
        };
        for exchange in &self.options.exchanges {
            self.declare_exchange(&mut live, exchange).await?;
        }
        for queue in &self.options.queues {
            self.declare_queue(&mut live, queue).await?;
        }
        let unroutable = &self.options.unroutable_queue;
        let name = short(unroutable).map_err(|reason| {
            self.topology(
                format!("unroutable queue `{unroutable}`"),
                lapin_other(reason),
            )
        })?;
        live.channel
            .queue_declare(name, QueueDeclareOptions::durable(), FieldTable::default())
            .await
            .map_err(|e| self.topology(format!("unroutable queue `{unroutable}`"), e))?;
        *self
            .current
            .lock()
            .expect("current connection lock poisoned") = Some(connection);
        let opened = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        if opened > 1 {
            metrics::counter!("nexus_integration_reconnects_total", "sink" => self.options.connection_name.clone())
                .increment(1);
        }
        info!(sink = %self.options.connection_name, connections = opened, "connected to RabbitMQ");
        Ok(live)
    }

    async fn declare_exchange(&self, live: &mut Live, exchange: &str) -> Result<(), SinkError> {
        if live.exchanges.contains(exchange) {
            return Ok(());
        }
        let name = short(exchange).map_err(|reason| {
            self.topology(format!("exchange `{exchange}`"), lapin_other(reason))
        })?;
        live.channel
            .exchange_declare(
                name,
                ExchangeKind::Topic,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.topology(format!("exchange `{exchange}`"), e))?;
        live.exchanges.insert(exchange.to_owned());
        Ok(())
    }

    async fn declare_queue(&self, live: &mut Live, spec: &QueueSpec) -> Result<(), SinkError> {
        let (dlx, dlq) = (spec.dead_letter_exchange(), spec.dead_letter_queue());
        let what = |kind: &str, name: &str| format!("{kind} `{name}`");
        for name in [&spec.name, &dlx, &dlq] {
            short(name)
                .map_err(|reason| self.topology(what("queue", name), lapin_other(reason)))?;
        }
        self.declare_exchange(live, &spec.exchange).await?;
        let channel = &live.channel;
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.topology(what("dead-letter exchange", &dlx), e))?;
        channel
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.topology(what("dead-letter queue", &dlq), e))?;
        channel
            .queue_bind(
                dlq.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.topology(what("dead-letter binding of", &dlq), e))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(dlx.as_str())),
        );
        if let QueueType::Quorum { delivery_limit } = spec.queue_type {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            if let Some(limit) = delivery_limit {
                arguments.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongInt(i32::try_from(limit).unwrap_or(i32::MAX)),
                );
            }
        }
        channel
            .queue_declare(
                spec.name.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .map_err(|e| self.topology(what("queue", &spec.name), e))?;
        for key in &spec.binding_keys {
            let key_name = short(key)
                .map_err(|reason| self.topology(what("binding key", key), lapin_other(reason)))?;
            channel
                .queue_bind(
                    spec.name.as_str().into(),
                    spec.exchange.as_str().into(),
                    key_name,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    self.topology(format!("binding of `{}` with `{key}`", spec.name), e)
                })?;
        }
        Ok(())
    }

    /// Publishes the batch on `live` and waits for every confirm; what no binding takes, or
    /// what AMQP cannot route, goes to the unroutable queue.
    async fn publish(&self, live: &mut Live, batch: &[RoutedEvent]) -> Result<(), SinkError> {
        for routed in batch {
            self.declare_exchange(live, &routed.exchange).await?;
        }
        let mut pending = Vec::with_capacity(batch.len());
        let mut unroutable: Vec<(&RoutedEvent, String)> = Vec::new();
        for routed in batch {
            let routing_key = match short(&routed.routing_key) {
                Ok(key) => key,
                Err(reason) => {
                    unroutable.push((routed, format!("the routing key cannot be sent: {reason}")));
                    continue;
                }
            };
            let confirm = self
                .send(
                    live,
                    &routed.exchange,
                    routing_key,
                    routed,
                    properties(&routed.event),
                )
                .await?;
            pending.push((routed, confirm));
        }
        let confirmed = async {
            for (routed, confirm) in pending {
                if let Some(reason) = self.confirmed(routed, confirm).await? {
                    unroutable.push((routed, reason));
                }
            }
            Ok::<_, SinkError>(())
        };
        self.within_confirm_timeout(confirmed).await?;
        if unroutable.is_empty() {
            return Ok(());
        }
        let queue = self.options.unroutable_queue.clone();
        let mut pending = Vec::with_capacity(unroutable.len());
        for (routed, reason) in unroutable {
            warn!(
                sink = %self.options.connection_name, exchange = %routed.exchange,
                event_id = %routed.event.id, %reason, queue = %queue,
                "unroutable event sent to the unroutable queue"
            );
            metrics::counter!(
                "nexus_integration_unroutable_total",
                "sink" => self.options.connection_name.clone(),
                "exchange" => routed.exchange.clone()
            )
            .increment(1);
            let properties = with_unroutable_headers(properties(&routed.event), routed, &reason);
            let key = short(&queue).map_err(|reason| {
                self.topology(format!("unroutable queue `{queue}`"), lapin_other(reason))
            })?;
            let confirm = self.send(live, "", key, routed, properties).await?;
            pending.push((routed, confirm));
        }
        let confirmed = async {
            for (routed, confirm) in pending {
                if let Some(reason) = self.confirmed(routed, confirm).await? {
                    return Err(SinkError::Rejected {
                        sink: self.options.connection_name.clone(),
                        event_id: routed.event.id.to_string(),
                        exchange: String::new(),
                        reason: format!("the unroutable queue `{queue}` did not take it: {reason}"),
                    });
                }
            }
            Ok(())
        };
        self.within_confirm_timeout(confirmed).await
    }

    /// Publishes one event, `mandatory`, and returns its pending confirm.
    async fn send(
        &self,
        live: &Live,
        exchange: &str,
        routing_key: ShortString,
        routed: &RoutedEvent,
        properties: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, SinkError> {
        let body = serde_json::to_vec(&routed.event).map_err(|e| SinkError::Backend {
            sink: self.options.connection_name.clone(),
            source: Box::new(e),
        })?;
        live.channel
            .basic_publish(
                exchange.into(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Waits for one confirm: `None` when the broker took the message, the reason when it
    /// returned it as unroutable.
    async fn confirmed(
        &self,
        routed: &RoutedEvent,
        confirm: lapin::PublisherConfirm,
    ) -> Result<Option<String>, SinkError> {
        match confirm.await.map_err(|e| self.unavailable(e))? {
            Confirmation::Ack(None) => Ok(None),
            Confirmation::Ack(Some(returned)) => Ok(Some(format!(
                "no queue is bound to exchange `{}` for routing key `{}` ({} {})",
                routed.exchange, routed.routing_key, returned.reply_code, returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(SinkError::Rejected {
                sink: self.options.connection_name.clone(),
                event_id: routed.event.id.to_string(),
                exchange: routed.exchange.clone(),
                reason: "the broker nacked the message".into(),
            }),
            Confirmation::NotRequested => Err(SinkError::Backend {
                sink: self.options.connection_name.clone(),
                source: "publisher confirms are not enabled on the channel".into(),
            }),
        }
    }

    async fn within_confirm_timeout(
        &self,
        confirmed: impl std::future::Future<Output = Result<(), SinkError>>,
    ) -> Result<(), SinkError> {
        tokio::time::timeout(self.options.confirm_timeout, confirmed)
            .await
            .map_err(|_| SinkError::Timeout {
                sink: self.options.connection_name.clone(),
                timeout_ms: millis(self.options.confirm_timeout),
            })?
    }

    /// Forgets the live connection after a failure and closes it in the background.
    fn discard(&self, live: Live) {
        let mut current = self
            .current
            .lock()
            .expect("current connection lock poisoned");
        if current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &live.connection))
        {
            *current = None;
        }
        drop(current);
        let connection = live.connection;
        if connection.status().connected() {
            tokio::spawn(async move {
                let _ = connection
                    .close(200, "reconnecting after an error".into())
                    .await;
            });
        }
    }
}

#[async_trait]
impl IntegrationSink for RabbitMqSink {
    fn name(&self) -> &str {
        &self.options.connection_name
    }

    async fn deliver(&self, batch: &[RoutedEvent]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.take_if(|live| !live.usable()) {
            warn!(sink = %self.options.connection_name, "RabbitMQ connection lost, reconnecting");
            self.discard(live);
        }
        if guard.is_none() {
            *guard = Some(self.open().await?);
        }
        let live = guard.as_mut().expect("a live connection was just ensured");
        let result = self.publish(live, batch).await;
        if let Err(err) = &result
            && !matches!(err, SinkError::Rejected { .. })
            && let Some(live) = guard.take()
        {
            self.discard(live);
        }
        result
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn short(value: &str) -> Result<ShortString, String> {
    ShortString::try_new(value).map_err(|e| e.to_string())
}

fn lapin_other(reason: String) -> lapin::Error {
    lapin::Error::from(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        reason,
    ))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `properties` with the headers that say where an unroutable event was meant to go and why
/// it did not.
fn with_unroutable_headers(
    properties: BasicProperties,
    routed: &RoutedEvent,
    reason: &str,
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (key, value) in [
        (unroutable_headers::EXCHANGE, routed.exchange.as_str()),
        (unroutable_headers::ROUTING_KEY, routed.routing_key.as_str()),
        (unroutable_headers::REASON, reason),
    ] {
        table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    properties.with_headers(table)
}

/// The AMQP properties of an event's message: persistent, JSON, id and headers.
fn properties(event: &RecordedEvent) -> BasicProperties {
    let mut table = FieldTable::default();
    let mut text = |key: &str, value: &str| {
        table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    };
    text(headers::EVENT_TYPE, &event.event_type);
    text(headers::STREAM, &event.stream.to_string());
    text(headers::AGGREGATE_TYPE, event.stream.aggregate_type());
    text(headers::AGGREGATE_ID, event.stream.aggregate_id());
    if let Some(correlation_id) = &event.metadata.correlation_id {
        text(headers::CORRELATION_ID, correlation_id);
    }
    let mut number = |key: &str, value: u64| {
        table.insert(
            key.into(),
            AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    };
    number(headers::VERSION, event.version);
    number(headers::POSITION, event.position);
    number(headers::SCHEMA_VERSION, u64::from(event.schema_version));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event.id.to_string().into())
        .with_timestamp(u64::try_from(event.recorded_at.timestamp()).unwrap_or_default())
        .with_app_id("nexus".into())
        .with_headers(table);
    if let Ok(event_type) = ShortString::try_new(event.event_type.as_str()) {
        properties = properties.with_type(event_type);
    }
    if let Some(correlation_id) = event
        .metadata
        .correlation_id
        .as_deref()
        .and_then(|id| ShortString::try_new(id).ok())
    {
        properties = properties.with_correlation_id(correlation_id);
    }
    properties
}
