//! The secondary integration path: the embedded queue's semantics, the relay end to end on the
//! embedded store, and (feature `rabbitmq`) publishing to a real RabbitMQ broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nexus_runtime::checkpoint::{CheckpointStore, EmbeddedCheckpoints};
use nexus_runtime::integration::embedded::{EmbeddedQueue, NackOutcome, QueueError, QueueOptions};
use nexus_runtime::integration::{
    IntegrationRelay, IntegrationRelayHandle, IntegrationSink, RelayOptions, RelayState,
    RoutedEvent, RoutingTable, SinkError,
};
use nexus_runtime::{
    EventId, EventStore, ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId,
};

use crate::support::embedded;

const WAIT: Duration = Duration::from_secs(20);

fn new_event(event_type: &str, n: u32) -> NewEvent {
    NewEvent::from_json(
        event_type,
        1,
        format!(r#"{{"n":{n}}}"#),
        Metadata::correlated(format!("corr-{n}")),
    )
    .expect("valid JSON")
}

/// Appends one event of `event_type` to `stream` and returns the stored event.
async fn append(
    store: &Arc<dyn EventStore>,
    stream: &StreamId,
    event_type: &str,
    n: u32,
) -> EventId {
    store
        .append(stream, ExpectedVersion::Any, vec![new_event(event_type, n)])
        .await
        .expect("append")
        .event_ids[0]
}

async fn all_events(store: &Arc<dyn EventStore>) -> Vec<RecordedEvent> {
    store
        .read_all(LogPosition::START, 100_000)
        .await
        .expect("read the log")
}

fn routed(exchange: &str, routing_key: &str, event: &RecordedEvent) -> RoutedEvent {
    RoutedEvent {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        event: event.clone(),
    }
}

fn quick_options(name: &str) -> RelayOptions {
    RelayOptions {
        name: name.into(),
        batch_size: 16,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
    }
}

/// A store with `n` events of type `Happened` in stream `thing-a`, and the events.
async fn store_with_events(n: u32) -> (Arc<dyn EventStore>, Vec<RecordedEvent>, tempfile::TempDir) {
    let (store, dir) = embedded();
    let stream = StreamId::new("thing", "a");
    for i in 0..n {
        append(&store, &stream, "Happened", i).await;
    }
    let events = all_events(&store).await;
    (store, events, dir)
}

async fn open_queue(dir: &tempfile::TempDir, queue: &str, options: QueueOptions) -> EmbeddedQueue {
    let q = EmbeddedQueue::open(dir.path().join("events.queue.db")).expect("open the queue");
    q.declare_queue(queue, options).await.expect("declare");
    q.bind(queue, "ex", "thing.#").await.expect("bind");
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_acks_and_redelivers_nacked_messages() {
    let (_store, events, dir) = store_with_events(2).await;
    let q = open_queue(&dir, "q", QueueOptions::default()).await;
    let batch: Vec<_> = events
        .iter()
        .map(|e| routed("ex", "thing.Happened", e))
        .collect();
    assert_eq!(q.publish(&batch).await.unwrap(), 2);

    let got = q.receive("q", 10).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].event.id, events[0].id, "oldest first");
    assert_eq!(got[0].delivery, 1);
    assert_eq!(got[0].routing_key, "thing.Happened");
    assert_eq!(got[0].event.payload.get(), events[0].payload.get());
    assert!(
        q.receive("q", 10).await.unwrap().is_empty(),
        "leased messages are invisible"
    );

    q.ack(&got[0].receipt).await.unwrap();
    assert!(matches!(
        q.ack(&got[0].receipt).await,
        Err(QueueError::LeaseLost { .. })
    ));
    let outcome = q
        .nack(&got[1].receipt, "handler failed", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::Requeued);

    let again = q.receive("q", 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event.id, events[1].id);
    assert_eq!(again[0].delivery, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("handler failed"));
    q.ack(&again[0].receipt).await.unwrap();

    let depth = q.depth("q").await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.dead), (0, 0, 0));
    assert!(matches!(
        q.receive("nope", 1).await,
        Err(QueueError::UnknownQueue(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_redelivers_after_the_visibility_timeout() {
    let (_store, events, dir) = store_with_events(1).await;
    let options = QueueOptions {
        visibility_timeout: Duration::from_millis(150),
        max_deliveries: 5,
    };
    let q = open_queue(&dir, "q", options).await;
    q.publish(&[routed("ex", "thing.Happened", &events[0])])
        .await
        .unwrap();
    let first = q.receive("q", 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(q.receive("q", 1).await.unwrap().is_empty());
    let second = q
        .receive_wait("q", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "redelivered once the lease expired");
    assert_eq!(second[0].event.id, events[0].id);
    assert_eq!(second[0].delivery, 2);
    assert!(
        matches!(
            q.ack(&first[0].receipt).await,
            Err(QueueError::LeaseLost { .. })
        ),
        "an expired lease cannot ack"
    );
    q.ack(&second[0].receipt).await.unwrap();
    assert_eq!(q.depth("q").await.unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_dead_letters_after_max_deliveries() {
    let (_store, events, dir) = store_with_events(3).await;
    let options = QueueOptions {
        visibility_timeout: Duration::from_millis(100),
        max_deliveries: 2,
    };
    let q = open_queue(&dir, "q", options).await;
    let batch: Vec<_> = events
        .iter()
        .map(|e| routed("ex", "thing.Happened", e))
        .collect();
    q.publish(&batch).await.unwrap();

    // Event 0: nacked twice, then dead-lettered with the reason.
    for (attempt, expected) in [(1, NackOutcome::Requeued), (2, NackOutcome::DeadLettered)] {
        let got = q.receive("q", 1).await.unwrap();
        assert_eq!(got[0].event.id, events[0].id);
        assert_eq!(got[0].delivery, attempt);
        let outcome = q
            .nack(&got[0].receipt, &format!("boom {attempt}"), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(outcome, expected);
    }
    // Event 1: rejected outright.
    let got = q.receive("q", 1).await.unwrap();
    assert_eq!(got[0].event.id, events[1].id);
    q.reject(&got[0].receipt, "cannot parse").await.unwrap();
    // Event 2: received twice and never acked; the next receive dead-letters it.
    for _ in 0..2 {
        let got = q
            .receive_wait("q", 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got[0].event.id, events[2].id);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(q.receive("q", 10).await.unwrap().is_empty());

    let dead = q.dead_letters("q", 10).await.unwrap();
    let ids: Vec<EventId> = dead.iter().map(|d| d.event.id).collect();
    assert_eq!(ids, [events[0].id, events[1].id, events[2].id]);
    assert_eq!(dead[0].deliveries, 2);
    assert!(dead[0].reason.contains("boom 2"), "{}", dead[0].reason);
    assert_eq!(dead[1].reason, "cannot parse");
    assert!(
        dead[2].reason.contains("without an ack"),
        "{}",
        dead[2].reason
    );
    assert_eq!(dead[0].queue, "q");
    assert_eq!(dead[0].routing_key, "thing.Happened");

    let shown = q.dead_letter(dead[0].id).await.unwrap().expect("inspect");
    assert_eq!(shown.event.payload.get(), events[0].payload.get());
    assert_eq!(
        shown.event.metadata.correlation_id.as_deref(),
        Some("corr-0")
    );
    assert_eq!(q.depth("q").await.unwrap().dead, 3);

    assert!(q.redrive(dead[0].id).await.unwrap());
    assert!(!q.redrive(dead[0].id).await.unwrap(), "already redriven");
    let back = q.receive("q", 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].event.id, events[0].id);
    assert_eq!(back[0].delivery, 1, "a redriven message starts over");
    q.ack(&back[0].receipt).await.unwrap();
    assert_eq!(q.depth("q").await.unwrap().dead, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_routes_by_topic_bindings() {
    let (store, dir) = embedded();
    append(&store, &StreamId::new("order", "1"), "OrderPlaced", 0).await;
    append(&store, &StreamId::new("payment", "1"), "PaymentTaken", 1).await;
    let events = all_events(&store).await;
    let q = EmbeddedQueue::open(dir.path().join("q.db")).unwrap();
    for name in ["orders", "everything"] {
        q.declare_queue(name, QueueOptions::default())
            .await
            .unwrap();
    }
    q.bind("orders", "domain", "order.*").await.unwrap();
    q.bind("everything", "domain", "#").await.unwrap();
    q.bind("everything", "domain", "order.#").await.unwrap();
    let copies = q
        .publish(&[
            routed("domain", "order.OrderPlaced", &events[0]),
            routed("domain", "payment.PaymentTaken", &events[1]),
            routed("elsewhere", "order.OrderPlaced", &events[0]),
        ])
        .await
        .unwrap();
    assert_eq!(
        copies, 3,
        "two bindings of one queue give one copy; an unbound exchange none"
    );
    let orders = q.receive("orders", 10).await.unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].event.id, events[0].id);
    assert_eq!(q.receive("everything", 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_survives_reopen() {
    let (_store, events, dir) = store_with_events(3).await;
    let options = QueueOptions {
        visibility_timeout: Duration::from_millis(100),
        max_deliveries: 3,
    };
    {
        let q = open_queue(&dir, "q", options).await;
        let batch: Vec<_> = events
            .iter()
            .map(|e| routed("ex", "thing.Happened", e))
            .collect();
        q.publish(&batch).await.unwrap();
        let got = q.receive("q", 2).await.unwrap();
        q.ack(&got[0].receipt).await.unwrap();
        q.reject(&got[1].receipt, "bad").await.unwrap();
    }
    let q = EmbeddedQueue::open(dir.path().join("events.queue.db")).unwrap();
    let left = q.receive("q", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event.id, events[2].id);
    let dead = q.dead_letters("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, events[1].id);
    // The queue's options survived too: the lease expires after 100 ms.
    let again = q
        .receive_wait("q", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again[0].delivery, 2);
}

fn routing() -> RoutingTable {
    RoutingTable::new()
        .route("Order*", "orders", "{aggregate_type}.{event_type}")
        .unwrap()
        .route("Payment*", "payments", "payment.{event_type}")
        .unwrap()
}

/// Appends a mix of routed and unrouted events; returns (order ids, payment ids, audit count).
async fn append_mix(
    store: &Arc<dyn EventStore>,
    from: u32,
    count: u32,
) -> (Vec<EventId>, Vec<EventId>, u64) {
    let (mut orders, mut payments, mut audits) = (Vec::new(), Vec::new(), 0);
    for i in from..from + count {
        match i % 3 {
            0 => orders.push(
                append(
                    store,
                    &StreamId::new("order", format!("o{}", i % 5)),
                    "OrderPlaced",
                    i,
                )
                .await,
            ),
            1 => payments.push(
                append(
                    store,
                    &StreamId::new("payment", format!("p{i}")),
                    "PaymentTaken",
                    i,
                )
                .await,
            ),
            _ => {
                append(store, &StreamId::new("audit", "log"), "AuditRecorded", i).await;
                audits += 1;
            }
        }
    }
    (orders, payments, audits)
}

async fn queue_for_relay(dir: &tempfile::TempDir) -> Arc<EmbeddedQueue> {
    let q = EmbeddedQueue::open(dir.path().join("events.queue.db")).unwrap();
    q.declare_queue("orders", QueueOptions::default())
        .await
        .unwrap();
    q.declare_queue("payments", QueueOptions::default())
        .await
        .unwrap();
    q.bind("orders", "orders", "order.*").await.unwrap();
    q.bind("payments", "payments", "payment.#").await.unwrap();
    Arc::new(q)
}

/// Receives and acks everything in `queue`; returns event id → (routing key, times seen).
async fn drain(q: &EmbeddedQueue, queue: &str) -> HashMap<EventId, (String, u32)> {
    let mut seen: HashMap<EventId, (String, u32)> = HashMap::new();
    loop {
        let got = q.receive(queue, 100).await.unwrap();
        if got.is_empty() {
            return seen;
        }
        for message in got {
            seen.entry(message.event.id)
                .or_insert_with(|| (message.routing_key.clone(), 0))
                .1 += 1;
            q.ack(&message.receipt).await.unwrap();
        }
    }
}

async fn start(
    store: &Arc<dyn EventStore>,
    sink: Arc<dyn IntegrationSink>,
    checkpoints: &Arc<EmbeddedCheckpoints>,
    name: &str,
) -> IntegrationRelayHandle {
    let checkpoints: Arc<dyn CheckpointStore> = checkpoints.clone();
    IntegrationRelay::new(Arc::clone(store), sink, checkpoints, routing())
        .with_options(quick_options(name))
        .start()
        .await
        .expect("start the relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_every_routed_event_to_the_embedded_queue() {
    let (store, dir) = embedded();
    let q = queue_for_relay(&dir).await;
    let checkpoints = Arc::new(EmbeddedCheckpoints::open(dir.path().join("cp.db")).unwrap());
    let (orders, payments, audits) = append_mix(&store, 0, 60).await;
    let relay = start(&store, q.clone(), &checkpoints, "it").await;
    let head = store.head().await.unwrap();
    let status = relay.wait_for(head, WAIT).await.expect("relay catches up");
    assert_eq!(status.published, (orders.len() + payments.len()) as u64);
    assert_eq!(status.skipped, audits);
    assert_eq!(status.lag_events, 0);
    assert_eq!(status.state, RelayState::Running);

    // Events appended while it runs are relayed too.
    let (more_orders, more_payments, _) = append_mix(&store, 60, 3).await;
    relay
        .wait_for(store.head().await.unwrap(), WAIT)
        .await
        .unwrap();
    let stopped = relay.stop().await.unwrap();
    assert_eq!(stopped.state, RelayState::Stopped);

    let got_orders = drain(&q, "orders").await;
    let got_payments = drain(&q, "payments").await;
    let want_orders: HashSet<EventId> = orders.iter().chain(&more_orders).copied().collect();
    assert_eq!(
        got_orders.keys().copied().collect::<HashSet<_>>(),
        want_orders
    );
    assert_eq!(
        got_payments.keys().copied().collect::<HashSet<_>>(),
        payments.iter().chain(&more_payments).copied().collect()
    );
    assert!(
        got_orders
            .values()
            .all(|(key, _)| key == "order.OrderPlaced")
    );
    assert!(
        got_payments
            .values()
            .all(|(key, _)| key == "payment.PaymentTaken")
    );
    let saved = checkpoints.load("integration:it").await.unwrap();
    assert_eq!(saved, Some(store.head().await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_resumes_from_its_checkpoint_after_a_restart() {
    let (store, dir) = embedded();
    let q = queue_for_relay(&dir).await;
    let checkpoints = Arc::new(EmbeddedCheckpoints::open(dir.path().join("cp.db")).unwrap());
    let (o1, p1, _) = append_mix(&store, 0, 30).await;
    let relay = start(&store, q.clone(), &checkpoints, "restart").await;
    let first_head = store.head().await.unwrap();
    relay.wait_for(first_head, WAIT).await.unwrap();
    relay.stop().await.unwrap();
    let first_orders = drain(&q, "orders").await;
    let first_payments = drain(&q, "payments").await;

    // While it is down, more events commit; a new relay (new queue handle) resumes.
    let (o2, p2, _) = append_mix(&store, 30, 30).await;
    let q = Arc::new(EmbeddedQueue::open(q.path()).unwrap());
    let relay = start(&store, q.clone(), &checkpoints, "restart").await;
    assert_eq!(
        relay.status().checkpoint,
        first_head,
        "resumes from the checkpoint"
    );
    relay
        .wait_for(store.head().await.unwrap(), WAIT)
        .await
        .unwrap();
    relay.stop().await.unwrap();
    let second_orders = drain(&q, "orders").await;
    let second_payments = drain(&q, "payments").await;

    // Nothing lost across the restart, and nothing acked before it comes again.
    let all_orders: HashSet<EventId> = first_orders
        .keys()
        .chain(second_orders.keys())
        .copied()
        .collect();
    let all_payments: HashSet<EventId> = first_payments
        .keys()
        .chain(second_payments.keys())
        .copied()
        .collect();
    assert_eq!(all_orders, o1.iter().chain(&o2).copied().collect());
    assert_eq!(all_payments, p1.iter().chain(&p2).copied().collect());
    assert!(
        first_orders
            .keys()
            .all(|id| !second_orders.contains_key(id))
    );
    assert_eq!(second_orders.len(), o2.len());
    assert_eq!(second_payments.len(), p2.len());
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_every_event_from_postgres_under_concurrent_writers() {
    let Some(db) = crate::support::TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let q = queue_for_relay(&dir).await;
    let checkpoints = Arc::new(EmbeddedCheckpoints::open(dir.path().join("cp.db")).unwrap());
    let relay = start(&store, q.clone(), &checkpoints, "pg").await;
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { append_mix(&store, w * 1000, 45).await })
        })
        .collect();
    let (mut orders, mut payments) = (HashSet::new(), HashSet::new());
    for writer in writers {
        let (o, p, _) = writer.await.unwrap();
        orders.extend(o);
        payments.extend(p);
    }
    // On PostgreSQL the readable head trails commits while any transaction in the cluster
    // is still open (the visibility horizon), so wait until every appended event is readable.
    let appended = (orders.len() + payments.len()) as u64;
    let deadline = std::time::Instant::now() + WAIT;
    let head = loop {
        let head = store.head().await.unwrap();
        let readable = store.read_all(LogPosition::START, 10_000).await.unwrap();
        let routed = readable
            .iter()
            .filter(|e| e.event_type != "AuditRecorded")
            .count() as u64;
        if routed >= appended {
            break head;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events never became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.wait_for(head, WAIT).await.expect("relay catches up");
    relay.stop().await.unwrap();
    let got_orders = drain(&q, "orders").await;
    let got_payments = drain(&q, "payments").await;
    assert_eq!(got_orders.keys().copied().collect::<HashSet<_>>(), orders);
    assert_eq!(
        got_payments.keys().copied().collect::<HashSet<_>>(),
        payments
    );
}

/// A real embedded queue behind a switch that fails deliveries on demand.
struct Flaky {
    inner: Arc<EmbeddedQueue>,
    panic_next: AtomicU32,
    fail_next: AtomicU32,
    calls: AtomicU32,
}

#[async_trait]
impl IntegrationSink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn deliver(&self, batch: &[RoutedEvent]) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let panicking = self
            .panic_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        assert!(!panicking, "the sink blew up");
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        // Deliver first, then fail: the relay cannot tell, so it must deliver again.
        self.inner.deliver(batch).await?;
        if failing {
            return Err(SinkError::Unavailable {
                sink: "flaky".into(),
                source: "the confirm never arrived".into(),
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_retries_a_failing_sink_with_backoff_and_loses_nothing() {
    let (store, dir) = embedded();
    let q = queue_for_relay(&dir).await;
    let checkpoints = Arc::new(EmbeddedCheckpoints::open(dir.path().join("cp.db")).unwrap());
    let (orders, payments, _) = append_mix(&store, 0, 40).await;
    let sink = Arc::new(Flaky {
        inner: q.clone(),
        panic_next: AtomicU32::new(1),
        fail_next: AtomicU32::new(4),
        calls: AtomicU32::new(0),
    });
    let started = std::time::Instant::now();
    let relay = start(&store, sink.clone(), &checkpoints, "flaky").await;
    let status = relay
        .wait_for(store.head().await.unwrap(), WAIT)
        .await
        .unwrap();
    // One panic and four failures waited 5 + 10 + 20 + 40 + 40 ms (capped at 40).
    assert!(started.elapsed() >= Duration::from_millis(115));
    assert_eq!(status.failures, 5);
    assert!(sink.calls.load(Ordering::SeqCst) >= 6);
    assert_eq!(status.consecutive_failures, 0);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("confirm never arrived")
    );
    relay.stop().await.unwrap();
    let got_orders = drain(&q, "orders").await;
    let got_payments = drain(&q, "payments").await;
    assert_eq!(
        got_orders.keys().copied().collect::<HashSet<_>>(),
        orders.iter().copied().collect()
    );
    assert_eq!(
        got_payments.keys().copied().collect::<HashSet<_>>(),
        payments.iter().copied().collect()
    );

    // A sink that never recovers: the relay keeps retrying, stops on request, and keeps
    // its checkpoint where the last confirmed batch left it.
    let before = checkpoints.load("integration:flaky").await.unwrap();
    append_mix(&store, 40, 3).await;
    sink.fail_next.store(u32::MAX, Ordering::SeqCst);
    let relay = start(&store, sink.clone(), &checkpoints, "flaky").await;
    let mut status = relay.status();
    for _ in 0..200 {
        status = relay.status();
        if status.failures >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.state, RelayState::Retrying);
    assert!(status.lag_events >= 2, "{status:?}");
    let stopped = tokio::time::timeout(Duration::from_secs(5), relay.stop())
        .await
        .expect("stops promptly while retrying")
        .unwrap();
    assert_eq!(stopped.state, RelayState::Stopped);
    assert_eq!(checkpoints.load("integration:flaky").await.unwrap(), before);
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    //! Against the RabbitMQ server of `NEXUS_TEST_RABBITMQ_URL`.

    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use lapin::options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, ExchangeDeleteOptions,
        QueueDeleteOptions,
    };
    use lapin::types::AMQPValue;
    use lapin::{Channel, Connection, ConnectionProperties};
    use nexus_runtime::checkpoint::{CheckpointStore, EmbeddedCheckpoints};
    use nexus_runtime::integration::rabbitmq::{QueueSpec, RabbitMqOptions, RabbitMqSink};
    use nexus_runtime::integration::{
        IntegrationRelay, IntegrationRelayHandle, RelayOptions, RoutingTable, headers,
    };
    use nexus_runtime::{EventId, EventStore, RecordedEvent, StreamId};

    use super::{WAIT, all_events, append};
    use crate::support::embedded;

    fn url() -> Option<String> {
        crate::support::service_url("NEXUS_TEST_RABBITMQ_URL")
    }

    /// Names unique to one test, and the broker objects to delete at its end.
    struct Broker {
        connection: Connection,
        channel: Channel,
        exchange: String,
        queue: QueueSpec,
    }

    impl Broker {
        async fn new(url: &str, test: &str) -> Self {
            let id = uuid::Uuid::now_v7().simple().to_string();
            let exchange = format!("nexus-test-{test}-{id}");
            let queue = QueueSpec::new(format!("{exchange}.consumer"), exchange.clone(), "#");
            let connection = Connection::connect(url, ConnectionProperties::default())
                .await
                .expect("connect the test consumer");
            let channel = connection.create_channel().await.expect("open a channel");
            Self {
                connection,
                channel,
                exchange,
                queue,
            }
        }

        fn options(&self, url: &str) -> RabbitMqOptions {
            let mut options = RabbitMqOptions::new(url);
            options.connection_name = format!("{}-sink", self.exchange);
            options.queues = vec![self.queue.clone()];
            options
        }

        fn routing(&self) -> RoutingTable {
            RoutingTable::new()
                .route("*", self.exchange.clone(), "{aggregate_type}.{event_type}")
                .unwrap()
        }

        /// Gets messages from `queue` until `want` distinct event ids arrived or time is up.
        async fn collect(
            &self,
            queue: &str,
            want: usize,
        ) -> HashMap<EventId, lapin::message::BasicGetMessage> {
            let mut got = HashMap::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while got.len() < want && tokio::time::Instant::now() < deadline {
                match self
                    .channel
                    .basic_get(queue.into(), BasicGetOptions::default())
                    .await
                    .expect("basic.get")
                {
                    Some(message) => {
                        message
                            .delivery
                            .acker
                            .ack(BasicAckOptions::default())
                            .await
                            .expect("ack");
                        let event: RecordedEvent = serde_json::from_slice(&message.delivery.data)
                            .expect("body is a recorded event");
                        got.insert(event.id, message);
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            got
        }

        async fn cleanup(self) {
            for queue in [self.queue.name.clone(), self.queue.dead_letter_queue()] {
                let _ = self
                    .channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in [self.exchange.clone(), self.queue.dead_letter_exchange()] {
                let _ = self
                    .channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = self.connection.close(200, "done".into()).await;
        }
    }

    async fn relay(
        store: &Arc<dyn EventStore>,
        sink: Arc<RabbitMqSink>,
        dir: &tempfile::TempDir,
        routing: RoutingTable,
        batch_size: usize,
    ) -> IntegrationRelayHandle {
        let checkpoints: Arc<dyn CheckpointStore> =
            Arc::new(EmbeddedCheckpoints::open(dir.path().join("cp.db")).unwrap());
        IntegrationRelay::new(Arc::clone(store), sink, checkpoints, routing)
            .with_options(RelayOptions {
                name: "rabbit".into(),
                batch_size,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
            })
            .start()
            .await
            .unwrap()
    }

    fn text(message: &lapin::message::BasicGetMessage, key: &str) -> Option<String> {
        let headers = message.delivery.properties.headers().as_ref()?;
        match headers.inner().get(key)? {
            AMQPValue::LongString(value) => Some(value.to_string()),
            other => panic!("header {key} is {other:?}"),
        }
    }

    fn number(message: &lapin::message::BasicGetMessage, key: &str) -> Option<i64> {
        let headers = message.delivery.properties.headers().as_ref()?;
        match headers.inner().get(key)? {
            AMQPValue::LongLongInt(value) => Some(*value),
            other => panic!("header {key} is {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_publishes_persistent_confirmed_messages_with_headers() {
        let Some(url) = url() else { return };
        let broker = Broker::new(&url, "headers").await;
        let (store, dir) = embedded();
        for i in 0..25 {
            append(
                &store,
                &StreamId::new("order", format!("{}", i % 4)),
                "OrderPlaced",
                i,
            )
            .await;
        }
        let sink = Arc::new(
            RabbitMqSink::connect(broker.options(&url))
                .await
                .expect("connect"),
        );
        let relay = relay(&store, sink, &dir, broker.routing(), 10).await;
        let status = relay
            .wait_for(store.head().await.unwrap(), WAIT)
            .await
            .unwrap();
        assert_eq!(status.published, 25);
        relay.stop().await.unwrap();

        let events = all_events(&store).await;
        let got = broker.collect(&broker.queue.name, events.len()).await;
        assert_eq!(
            got.len(),
            events.len(),
            "every event reaches the bound queue"
        );
        for event in &events {
            let message = &got[&event.id];
            let properties = &message.delivery.properties;
            assert_eq!(
                properties.message_id().as_ref().map(|m| m.to_string()),
                Some(event.id.to_string())
            );
            assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
            assert_eq!(
                properties.kind().as_ref().map(|t| t.to_string()).as_deref(),
                Some("OrderPlaced")
            );
            assert_eq!(message.delivery.routing_key.as_str(), "order.OrderPlaced");
            assert_eq!(
                text(message, headers::EVENT_TYPE).as_deref(),
                Some("OrderPlaced")
            );
            assert_eq!(
                text(message, headers::STREAM),
                Some(event.stream.to_string())
            );
            assert_eq!(
                number(message, headers::VERSION),
                Some(event.version as i64)
            );
            assert_eq!(
                number(message, headers::POSITION),
                Some(event.position as i64)
            );
            assert_eq!(
                text(message, headers::CORRELATION_ID),
                event.metadata.correlation_id
            );
        }
        broker.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unroutable_events_and_overlong_routing_keys_go_to_the_unroutable_queue() {
        use nexus_runtime::integration::rabbitmq::unroutable_headers;

        let Some(url) = url() else { return };
        let mut broker = Broker::new(&url, "unroutable").await;
        // Only orders are bound: invoices route nowhere.
        broker.queue.binding_keys = vec!["order.*".into()];
        let unroutable = format!("{}.unroutable", broker.exchange);
        let mut options = broker.options(&url);
        options.unroutable_queue = unroutable.clone();
        let (store, dir) = embedded();
        let order = append(&store, &StreamId::new("order", "1"), "OrderPlaced", 1).await;
        let invoice = append(&store, &StreamId::new("invoice", "1"), "InvoiceSent", 2).await;
        let long_type = format!("Long{}", "x".repeat(247));
        let long = append(&store, &StreamId::new("order", "2"), &long_type, 3).await;
        let sink = Arc::new(RabbitMqSink::connect(options).await.expect("connect"));
        let relay = relay(&store, sink, &dir, broker.routing(), 10).await;
        relay
            .wait_for(store.head().await.unwrap(), WAIT)
            .await
            .expect("the relay is not blocked by what it cannot route");
        // It goes on with later events.
        let later = append(&store, &StreamId::new("order", "3"), "OrderPlaced", 4).await;
        relay
            .wait_for(store.head().await.unwrap(), WAIT)
            .await
            .unwrap();
        relay.stop().await.unwrap();

        let delivered = broker.collect(&broker.queue.name, 2).await;
        let ids: HashSet<EventId> = delivered.keys().copied().collect();
        assert_eq!(ids, HashSet::from([order, later]));
        let parked = broker.collect(&unroutable, 2).await;
        let ids: HashSet<EventId> = parked.keys().copied().collect();
        assert_eq!(
            ids,
            HashSet::from([invoice, long]),
            "nothing dropped silently"
        );
        let reason =
            |id: &EventId| text(&parked[id], unroutable_headers::REASON).unwrap_or_default();
        assert!(
            reason(&invoice).contains("no queue is bound"),
            "{}",
            reason(&invoice)
        );
        assert!(reason(&long).contains("routing key"), "{}", reason(&long));
        assert_eq!(
            text(&parked[&invoice], unroutable_headers::EXCHANGE),
            Some(broker.exchange.clone())
        );
        assert_eq!(
            text(&parked[&invoice], unroutable_headers::ROUTING_KEY).as_deref(),
            Some("invoice.InvoiceSent")
        );
        assert_eq!(
            text(&parked[&long], headers::EVENT_TYPE),
            Some(long_type.clone())
        );
        let _ = broker
            .channel
            .queue_delete(unroutable.as_str().into(), QueueDeleteOptions::default())
            .await;
        broker.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_message_lands_in_the_dead_letter_queue() {
        let Some(url) = url() else { return };
        let broker = Broker::new(&url, "dlq").await;
        let (store, dir) = embedded();
        let id = append(&store, &StreamId::new("order", "1"), "OrderPlaced", 7).await;
        let sink = Arc::new(
            RabbitMqSink::connect(broker.options(&url))
                .await
                .expect("connect"),
        );
        let relay = relay(&store, sink, &dir, broker.routing(), 10).await;
        relay
            .wait_for(store.head().await.unwrap(), WAIT)
            .await
            .unwrap();
        relay.stop().await.unwrap();

        let message = broker
            .channel
            .basic_get(
                broker.queue.name.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
            .expect("the message is in the queue");
        message
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
        let dead = broker.collect(&broker.queue.dead_letter_queue(), 1).await;
        let message = dead
            .get(&id)
            .expect("the rejected message is dead-lettered");
        let headers = message.delivery.properties.headers().as_ref().unwrap();
        assert!(
            headers.contains_key("x-death"),
            "RabbitMQ records why: {headers:?}"
        );
        assert_eq!(
            text(message, headers::EVENT_TYPE).as_deref(),
            Some("OrderPlaced")
        );
        broker.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_connection_loses_nothing() {
        let Some(url) = url() else { return };
        let broker = Broker::new(&url, "reconnect").await;
        let (store, dir) = embedded();
        let sink = Arc::new(
            RabbitMqSink::connect(broker.options(&url))
                .await
                .expect("connect"),
        );
        let relay = relay(&store, sink.clone(), &dir, broker.routing(), 5).await;

        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..300 {
                    append(
                        &store,
                        &StreamId::new("order", format!("{}", i % 7)),
                        "OrderPlaced",
                        i,
                    )
                    .await;
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        };
        // Close the sink's connection repeatedly while events stream through it.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sink.close_connection().await;
        }
        writer.await.unwrap();
        let status = relay
            .wait_for(store.head().await.unwrap(), WAIT)
            .await
            .expect("recovers and catches up");
        relay.stop().await.unwrap();

        let events = all_events(&store).await;
        let got = broker.collect(&broker.queue.name, events.len()).await;
        let want: HashSet<EventId> = events.iter().map(|e| e.id).collect();
        let have: HashSet<EventId> = got.keys().copied().collect();
        assert_eq!(
            want.difference(&have).count(),
            0,
            "nothing confirmed is lost"
        );
        assert!(status.published >= events.len() as u64);
        assert!(
            sink.connections_opened() >= 2,
            "the sink reconnected after its connection was closed"
        );
        broker.cleanup().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_broker_is_retried_without_advancing_the_checkpoint() {
        // No server needed: nothing listens on port 1 of the loopback interface.
        let (store, dir) = embedded();
        append(&store, &StreamId::new("order", "1"), "OrderPlaced", 1).await;
        let mut options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:1/%2f");
        options.connect_timeout = Duration::from_millis(500);
        let routing = RoutingTable::new().route("*", "nowhere", "#").unwrap();
        let relay = relay(
            &store,
            Arc::new(RabbitMqSink::new(options)),
            &dir,
            routing,
            10,
        )
        .await;
        let mut status = relay.status();
        for _ in 0..200 {
            status = relay.status();
            if status.failures >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(status.failures >= 2, "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("unavailable"),
            "{status:?}"
        );
        assert_eq!(status.checkpoint, nexus_runtime::LogPosition::START);
        assert_eq!(status.lag_events, 1);
        relay.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflicting_queue_declaration_fails_at_connect() {
        let Some(url) = url() else { return };
        let broker = Broker::new(&url, "conflict").await;
        // The queue exists already, without a dead-letter exchange.
        broker
            .channel
            .queue_declare(
                broker.queue.name.as_str().into(),
                lapin::options::QueueDeclareOptions::durable(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let err = RabbitMqSink::connect(broker.options(&url))
            .await
            .expect_err("the declaration conflicts");
        assert!(
            matches!(err, nexus_runtime::integration::SinkError::Topology { ref what, .. } if what.contains(&broker.queue.name)),
            "{err:?}"
        );
        broker.cleanup().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quorum_queue_dead_letters_after_its_delivery_limit() {
        let Some(url) = url() else { return };
        let mut broker = Broker::new(&url, "quorum").await;
        broker.queue = broker.queue.clone().quorum(Some(2));
        let (store, dir) = embedded();
        let id = append(&store, &StreamId::new("order", "1"), "OrderPlaced", 3).await;
        let sink = Arc::new(
            RabbitMqSink::connect(broker.options(&url))
                .await
                .expect("connect"),
        );
        let relay = relay(&store, sink, &dir, broker.routing(), 10).await;
        relay
            .wait_for(store.head().await.unwrap(), WAIT)
            .await
            .unwrap();
        relay.stop().await.unwrap();

        // Each nack with requeue hands the message back; the third return exceeds the limit.
        let mut deliveries = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            let got = broker
                .channel
                .basic_get(
                    broker.queue.name.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .unwrap();
            let Some(message) = got else {
                if deliveries > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            deliveries += 1;
            message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(deliveries, 3, "delivered once plus two redeliveries");
        let dead = broker.collect(&broker.queue.dead_letter_queue(), 1).await;
        assert!(
            dead.contains_key(&id),
            "dead-lettered after the delivery limit"
        );
        broker.cleanup().await;
    }
}
