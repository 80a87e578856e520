//! What the suite asserts after a fault: every acknowledged command has its events in the
//! store exactly once, the read models the query dashboard serves equal a rebuild from the
//! store (document by document), and every service answers.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::projection::{ProjectionRunner, ReadModels};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::store::postgres::PostgresStore;
use nexus_runtime::{EventStore, LogPosition, RecordedEvent};
use serde_json::Value;

use super::load::{Ledger, SCRIPT_EVENTS, request};
use super::nexus::{Layout, Urls};
use crate::projection::OrderSummaries;

/// A read model's documents by collection and id.
pub(crate) type Documents = BTreeMap<(String, String), Value>;

/// The collections of the orders projection.
const COLLECTIONS: [&str; 2] = [OrderSummaries::ORDERS, OrderSummaries::CUSTOMERS];

/// What one verification found, for the report.
#[derive(Debug)]
pub(crate) struct Verified {
    /// Acknowledged commands whose events were found exactly once.
    pub(crate) commands: usize,
    /// Events in the store, each matched to an acknowledged command.
    pub(crate) events: usize,
    /// Orders (streams) whose events are exactly their script's, in order.
    pub(crate) orders: usize,
    /// Read-model documents compared with the rebuild.
    pub(crate) documents: usize,
    /// How long the served read models took to equal the rebuild.
    pub(crate) converged_in: Duration,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} acknowledged commands -> {} events exactly once in {} orders; {} read-model documents equal a rebuild from the store (after {} ms)",
            self.commands,
            self.events,
            self.orders,
            self.documents,
            self.converged_in.as_millis()
        )
    }
}

/// A runtime for the library calls of a check.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Opens the store `nexus up` writes, as a second reader beside it.
pub(crate) async fn open_store(layout: &Layout, data: &Path) -> Arc<dyn EventStore> {
    match &layout.postgres {
        Some(url) => Arc::new(
            PostgresStore::connect(url)
                .await
                .expect("open the PostgreSQL store"),
        ),
        None => {
            Arc::new(EmbeddedStore::open(data.join("events.db")).expect("open the embedded store"))
        }
    }
}

/// Every event in the store, in log order.
pub(crate) async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut after = LogPosition::START;
    loop {
        let page = store.read_all(after, 1000).await.expect("read the log");
        let Some(last) = page.last() else {
            return events;
        };
        after = LogPosition {
            commit: last.commit,
            position: last.position,
        };
        events.extend(page);
    }
}

/// Verifies the run: exactly-once in the store, read models equal to a rebuild within
/// `converge_within`, and every service answering. Panics with what differs.
pub(crate) fn verify(
    layout: &Layout,
    data: &Path,
    urls: &Urls,
    ledger: &Ledger,
    converge_within: Duration,
) -> Verified {
    let started = Instant::now();
    assert!(
        ledger.unexpected.is_empty(),
        "answers no fault explains: {:#?}",
        &ledger.unexpected[..ledger.unexpected.len().min(10)]
    );
    assert!(
        ledger.unacknowledged.is_empty(),
        "commands never acknowledged within their deadline: {:?}",
        ledger.unacknowledged
    );
    let runtime = runtime();
    let (events, expected) = runtime.block_on(async {
        let store = open_store(layout, data).await;
        let events = all_events(store.as_ref()).await;
        let expected = rebuild(store, events.last().map_or(0, |e| e.position)).await;
        (events, expected)
    });
    let orders = exactly_once(ledger, &events);
    let converged_in = converge(&urls.query, &expected, started, converge_within);
    services_answer(urls);
    Verified {
        commands: ledger.acks.len(),
        events: events.len(),
        orders,
        documents: expected.len(),
        converged_in,
    }
}

/// Asserts that each acknowledged command's events are in the store exactly once, that the
/// store holds no other event, and that each order's stream is its script's events in order;
/// returns the number of orders.
///
/// `nexus up` also runs the order-fulfilment saga, but only a submitted order starts it: the
/// load confirms its orders directly, so no saga, inventory or payment stream may appear, and
/// one that does is named as what it is.
pub(crate) fn exactly_once(ledger: &Ledger, events: &[RecordedEvent]) -> usize {
    let mut by_id: HashMap<String, Vec<&RecordedEvent>> = HashMap::new();
    for event in events {
        by_id.entry(event.id.to_string()).or_default().push(event);
    }
    let mut problems = Vec::new();
    let mut acknowledged_ids = 0usize;
    for ack in &ledger.acks {
        if ack.version != ack.step as u64 + 1 {
            problems.push(format!(
                "{} step {} answered version {}",
                ack.order, ack.step, ack.version
            ));
        }
        for id in &ack.event_ids {
            acknowledged_ids += 1;
            match by_id.get(id).map(Vec::as_slice) {
                Some([event]) if event.stream.aggregate_id() == ack.order => {}
                Some([event]) => problems.push(format!(
                    "event {id} of {} step {} is in stream {}",
                    ack.order, ack.step, event.stream
                )),
                Some(found) => problems.push(format!(
                    "event {id} of {} step {} is stored {} times",
                    ack.order,
                    ack.step,
                    found.len()
                )),
                None => problems.push(format!(
                    "acknowledged event {id} of {} step {} is not in the store",
                    ack.order, ack.step
                )),
            }
        }
    }
    if events.len() != acknowledged_ids {
        problems.push(format!(
            "the store holds {} events, the acknowledged commands {acknowledged_ids}",
            events.len()
        ));
    }
    let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
    for event in events {
        if event.stream.aggregate_type() != "order" {
            problems.push(format!(
                "the store holds {} of stream {}, which no command of the load caused",
                event.event_type, event.stream
            ));
            continue;
        }
        streams
            .entry(event.stream.aggregate_id())
            .or_default()
            .push(event);
    }
    for (order, stream) in &streams {
        let types: Vec<(u64, &str)> = stream
            .iter()
            .map(|e| (e.version, e.event_type.as_str()))
            .collect();
        let script: Vec<(u64, &str)> = (1u64..).zip(SCRIPT_EVENTS).collect();
        if types != script {
            problems.push(format!("order {order} holds {types:?}"));
        }
    }
    let started = ledger.orders().len();
    if streams.len() != started {
        problems.push(format!(
            "{} orders acknowledged, {} streams stored",
            started,
            streams.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} exactly-once violations, the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    streams.len()
}

/// Rebuilds the orders projection from the store into a fresh read model and returns its
/// documents once it has applied the log up to `head`.
pub(crate) async fn rebuild(store: Arc<dyn EventStore>, head: u64) -> Documents {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bus = Arc::new(InProcessBus::new(Arc::clone(&store)));
    let runner = ProjectionRunner::with_read_models(store, bus, ReadModels::sqlite(dir.path()));
    let projection = runner
        .spawn(OrderSummaries)
        .expect("start the rebuild projection");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let at = projection
            .read_model()
            .checkpoint()
            .await
            .expect("read the rebuild's checkpoint")
            .map_or(0, |c| c.position);
        if at >= head {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild reached position {at} of {head} in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut documents = Documents::new();
    for collection in COLLECTIONS {
        let mut offset = 0;
        loop {
            let page = projection
                .read_model()
                .list(collection, &[], 1000, offset)
                .await
                .expect("list the rebuild's documents");
            let len = page.len();
            for (id, document) in page {
                documents.insert((collection.to_owned(), id), document);
            }
            if len < 1000 {
                break;
            }
            offset += len;
        }
    }
    projection.stop().await;
    documents
}

/// The documents the query dashboard at `query_url` serves, page by page.
pub(crate) fn served_documents(query_url: &str) -> Result<Documents, String> {
    let mut documents = Documents::new();
    for collection in COLLECTIONS {
        let mut offset = 0u64;
        loop {
            let url =
                format!("{query_url}/read-models/orders/{collection}?limit=1000&offset={offset}");
            let (status, page) = request("GET", &url, &[], None, Duration::from_secs(10))?;
            if status != 200 {
                return Err(format!("{url} answered {status}: {page}"));
            }
            for item in page["items"].as_array().into_iter().flatten() {
                let id = item["id"].as_str().unwrap_or_default().to_owned();
                documents.insert((collection.to_owned(), id), item["document"].clone());
            }
            match page["next_offset"].as_u64() {
                Some(next) => offset = next,
                None => break,
            }
        }
    }
    Ok(documents)
}

/// Waits until the served read models equal `expected` (measured from `since`, at most
/// `within`); panics with the differences and the projection's health otherwise.
pub(crate) fn converge(
    query_url: &str,
    expected: &Documents,
    since: Instant,
    within: Duration,
) -> Duration {
    let mut last = Err("not read yet".to_owned());
    while since.elapsed() < within {
        last = served_documents(query_url);
        if last.as_ref().is_ok_and(|served| served == expected) {
            return since.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = request(
        "GET",
        &format!("{query_url}/health"),
        &[],
        None,
        Duration::from_secs(5),
    );
    let served = match last {
        Ok(served) => served,
        Err(err) => panic!("the query dashboard did not serve its read models: {err}"),
    };
    let mut differences: Vec<String> = expected
        .iter()
        .filter(|(key, document)| served.get(*key) != Some(*document))
        .map(|(key, document)| {
            format!(
                "{key:?}: served {}, rebuilt {document}",
                served
                    .get(key)
                    .map_or("nothing".to_owned(), Value::to_string)
            )
        })
        .collect();
    differences.extend(
        served
            .keys()
            .filter(|key| !expected.contains_key(*key))
            .map(|key| format!("{key:?}: served but not in the rebuild")),
    );
    panic!(
        "the served read model differs from a rebuild from the store in {} documents {} ms after the fault; health {health:?}; the first: {:#?}",
        differences.len(),
        since.elapsed().as_millis(),
        &differences[..differences.len().min(10)]
    );
}

/// Asserts that the command service, the query dashboard and the schema registry answer.
pub(crate) fn services_answer(urls: &Urls) {
    for url in [
        format!("{}/health", urls.command),
        format!("{}/health", urls.query),
        format!("{}/subjects", urls.registry),
    ] {
        let answer = request("GET", &url, &[], None, Duration::from_secs(10));
        assert!(
            matches!(answer, Ok((200, _))),
            "{url} does not answer: {answer:?}"
        );
    }
}
