//! A restart of the RabbitMQ broker while the integration relay publishes: every event reaches
//! the external consumer's queue at least once, and repeats carry the same event id.
//!
//! `nexus up` runs no integration relay, so this test runs one as a library would: the
//! embedded store, a RabbitMQ sink declaring a durable queue, and a writer appending orders
//! through the command handler while the private broker is stopped and started again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{Connection, ConnectionProperties};
use nexus_runtime::checkpoint::{CheckpointStore, EmbeddedCheckpoints};
use nexus_runtime::integration::rabbitmq::{QueueSpec, RabbitMqOptions, RabbitMqSink};
use nexus_runtime::integration::{IntegrationRelay, RelayOptions, RoutingTable};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{CommandHandler, EventId, EventStore, Metadata, RecordedEvent, Repository};

use super::load::Rng;
use super::servers::RabbitMq;
use super::{report, verify};
use crate::events::{Order, OrderCommand};

const EXCHANGE: &str = "faults";
const QUEUE: &str = "faults.orders";

/// Appends orders (four events each) until `stop`; counts the commands.
async fn write_orders(store: Arc<dyn EventStore>, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) {
    let commands = CommandHandler::new(Repository::<Order>::new(store));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("o-{n}");
        let script = [
            OrderCommand::PlaceOrder {
                customer: "ada".into(),
            },
            OrderCommand::AddItem {
                sku: "tea".into(),
                quantity: 2,
                unit_price_cents: 150,
            },
            OrderCommand::ConfirmOrder,
        ];
        for command in &script {
            commands
                .execute(&id, command, Metadata::default())
                .await
                .expect("the embedded store accepts the command");
            written.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Takes every message from the queue: how often each event id arrived.
async fn drain(url: &str, want: usize) -> HashMap<EventId, u32> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect the test consumer");
    let channel = connection.create_channel().await.expect("open a channel");
    let mut seen: HashMap<EventId, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut idle = 0;
    // Until every event arrived and the queue stayed empty a moment (repeats come last).
    while tokio::time::Instant::now() < deadline && (seen.len() < want || idle < 20) {
        match channel
            .basic_get(QUEUE.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            Some(message) => {
                idle = 0;
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                let event: RecordedEvent = serde_json::from_slice(&message.delivery.data)
                    .expect("the body is a recorded event");
                *seen.entry(event.id).or_default() += 1;
            }
            None => {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    seen
}

#[test]
fn a_rabbitmq_restart_under_the_integration_relay_loses_no_event() {
    let _one_fault_at_a_time = super::exclusive();
    let Some(mut broker) = RabbitMq::start() else {
        return;
    };
    let (mut rng, seed) = Rng::from_env();
    report(&format!("rabbitmq relay: seed {seed}"));
    let url = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(dir.path().join("events.db")).unwrap());
    let mut options = RabbitMqOptions::new(&url);
    options.exchanges = vec![EXCHANGE.to_owned()];
    options.queues = vec![QueueSpec::new(QUEUE, EXCHANGE, "#")];
    let sink = Arc::new(RabbitMqSink::new(options));
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(EmbeddedCheckpoints::open(dir.path().join("checkpoints.db")).unwrap());
    let routing = RoutingTable::new()
        .route("*", EXCHANGE, "{aggregate_type}.{event_type}")
        .unwrap();
    let relay = runtime
        .block_on(
            IntegrationRelay::new(Arc::clone(&store), sink.clone(), checkpoints, routing)
                .with_options(RelayOptions {
                    name: "faults".into(),
                    batch_size: 64,
                    initial_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                })
                .start(),
        )
        .expect("start the relay");

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = runtime.spawn(write_orders(
        Arc::clone(&store),
        Arc::clone(&stop),
        Arc::clone(&written),
    ));
    let progress = |count: u64| {
        let target = written.load(Ordering::Relaxed) + count;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while written.load(Ordering::Relaxed) < target && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    progress(100);
    std::thread::sleep(Duration::from_millis(rng.between(100, 1000)));
    broker.restart(Duration::from_millis(rng.between(200, 1500)));
    progress(100);
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer).expect("the writer finished");

    let (events, status, seen) = runtime.block_on(async {
        let events = verify::all_events(store.as_ref()).await;
        let last = events.last().expect("events were written");
        let head = nexus_runtime::LogPosition {
            commit: last.commit,
            position: last.position,
        };
        let status = relay
            .wait_for(head, Duration::from_secs(60))
            .await
            .expect("the relay delivers up to the head after the restart");
        let seen = drain(&url, events.len()).await;
        (events, status, seen)
    });
    let missing: Vec<String> = events
        .iter()
        .filter(|e| !seen.contains_key(&e.id))
        .map(|e| format!("{} v{} ({})", e.stream, e.version, e.id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never reached the queue, the first: {:?}",
        missing.len(),
        events.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        seen.len(),
        events.len(),
        "the queue holds events the store does not"
    );
    assert!(
        sink.connections_opened() >= 2,
        "the relay reconnected after the restart ({} connections)",
        sink.connections_opened()
    );
    let repeats: u32 = seen.values().map(|n| n - 1).sum();
    report(&format!(
        "rabbitmq relay: 1 x broker restart while publishing; {} events in the store, every one delivered ({} repeats, each with its event id), {} connections, {} relay failures retried",
        events.len(),
        repeats,
        sink.connections_opened(),
        status.failures
    ));
}
