//! Notifications end to end over real sockets: a projection runner publishing to a hub, the
//! query dashboard serving WebSocket and SSE, the Rust client and raw WebSocket clients.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::access::{AccessControl, AuthConfig, TokenRequest, issue_hs256};
use nexus_runtime::http::{NotifyOptions, QueryDashboard, ServeOptions, serve_with};
use nexus_runtime::notify::client::{ClientEvent, ClientOptions, NotificationClient};
use nexus_runtime::notify::{HubOptions, NotificationHub, ResetReason, SessionLimits};
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, ProjectionHandle, ProjectionRunner, ReadModels,
};
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};

use crate::support;

/// One document per counter: its count and the parity of it.
struct Counters;

#[async_trait]
impl Projection for Counters {
    fn name(&self) -> &str {
        "counters"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let id = event.stream.aggregate_id();
        changes.put(
            "counters",
            id,
            json!({"n": event.version, "parity": if event.version.is_multiple_of(2) { "even" } else { "odd" }}),
        );
        Ok(())
    }
}

struct System {
    store: Arc<dyn EventStore>,
    runner: ProjectionRunner,
    read_models: ReadModels,
    hub: NotificationHub,
    projection: Option<ProjectionHandle>,
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    #[cfg(feature = "postgres")]
    _db: Option<support::TestDb>,
}

/// The client's next event within `secs` seconds; fails saying what was waited for.
async fn next_within(client: &mut NotificationClient, secs: u64, waiting_for: &str) -> ClientEvent {
    tokio::time::timeout(Duration::from_secs(secs), client.next())
        .await
        .unwrap_or_else(|_| panic!("{waiting_for}: nothing within {secs} s"))
        .unwrap_or_else(|| panic!("{waiting_for}: the client ended"))
}

/// Appends one `Bumped` event with `payload` to counter `id`.
async fn bump_once(store: &Arc<dyn EventStore>, id: &str, payload: &str, metadata: Metadata) {
    let event = NewEvent::from_json("Bumped", 1, payload, metadata).unwrap();
    store
        .append(
            &StreamId::new("counter", id),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .unwrap();
}

impl System {
    async fn start(options: NotifyOptions) -> Self {
        Self::start_with(options, AccessControl::open()).await
    }

    async fn start_with(options: NotifyOptions, access: AccessControl) -> Self {
        Self::start_serving(options, access, ServeOptions::default()).await
    }

    async fn start_serving(
        options: NotifyOptions,
        access: AccessControl,
        serving: ServeOptions,
    ) -> Self {
        let (store, dir) = support::embedded();
        let read_models = ReadModels::sqlite(dir.path().join("read-models"));
        Self::serve(
            store,
            dir,
            read_models,
            (options, serving),
            access,
            HubOptions::default(),
        )
    }

    /// The same with the read models in a fresh PostgreSQL database (`None`: no server).
    #[cfg(feature = "postgres")]
    async fn start_on_postgres(options: NotifyOptions) -> Option<Self> {
        let db = support::TestDb::create().await?;
        let (store, dir) = support::embedded();
        let read_models = ReadModels::postgres(&db.url, ReadModels::DEFAULT_POSTGRES_SCHEMA)
            .await
            .expect("the PostgreSQL read models open");
        let mut system = Self::serve(
            store,
            dir,
            read_models,
            (options, ServeOptions::default()),
            AccessControl::open(),
            HubOptions::default(),
        );
        system._db = Some(db);
        Some(system)
    }

    /// A runner and a dashboard sharing a new hub over `store` and `read_models`.
    fn serve(
        store: Arc<dyn EventStore>,
        dir: tempfile::TempDir,
        read_models: ReadModels,
        (options, serving): (NotifyOptions, ServeOptions),
        access: AccessControl,
        history: HubOptions,
    ) -> Self {
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
        let hub = NotificationHub::new(history);
        let runner =
            ProjectionRunner::with_read_models(Arc::clone(&store), bus, read_models.clone())
                .with_notifications(hub.clone());
        let projection = runner.spawn(Counters).unwrap();
        let dashboard = QueryDashboard::new(runner.health())
            .with_access(access)
            .read_model(&projection)
            .with_notifications(hub.clone(), options)
            .router();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(listener, dashboard, serving, async move {
            let _ = stopped.await;
        }));
        Self {
            store,
            runner,
            read_models,
            hub,
            projection: Some(projection),
            url,
            shutdown: Some(shutdown),
            _dir: dir,
            #[cfg(feature = "postgres")]
            _db: None,
        }
    }

    /// What a restarted dashboard process does: the projection and the server stop, and a new
    /// hub, runner and dashboard (keeping `history` notifications) start over the same store
    /// and read models, on another port.
    async fn restart(mut self, options: NotifyOptions, history: HubOptions) -> Self {
        if let Some(projection) = self.projection.take() {
            projection.stop().await;
        }
        let _ = self.shutdown.take().unwrap().send(());
        #[cfg(feature = "postgres")]
        let db = self._db.take();
        #[allow(unused_mut, reason = "only PostgreSQL keeps a database")]
        let mut system = Self::serve(
            self.store,
            self._dir,
            self.read_models,
            (options, ServeOptions::default()),
            AccessControl::open(),
            history,
        );
        #[cfg(feature = "postgres")]
        {
            system._db = db;
        }
        system
    }

    fn ws(&self, query: &str) -> String {
        format!(
            "{}/notifications/ws?{query}",
            self.url.replacen("http", "ws", 1)
        )
    }

    /// Appends `count` events to counter `id`, one append each, with a correlation id.
    async fn bump(&self, id: &str, count: u64) {
        for _ in 0..count {
            bump_once(
                &self.store,
                id,
                "{}",
                Metadata::correlated(format!("corr-{id}")),
            )
            .await;
        }
    }
}

impl System {
    /// Appends `count` events to counter `id`, each committed (and published) before the next.
    async fn bump_each(&self, id: &str, count: u64) {
        for _ in 0..count {
            let before = self.hub.position("counters").1;
            self.bump(id, 1).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.hub.position("counters").1 == before {
                assert!(Instant::now() < deadline, "the projection publishes");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

fn options(per_second: u32, max_pending: usize) -> NotifyOptions {
    NotifyOptions {
        session: SessionLimits {
            per_second,
            max_pending,
            ..SessionLimits::default()
        },
        ..NotifyOptions::default()
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str) -> Socket {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "nexus.v1".parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "nexus.v1");
    socket
}

/// The next JSON text frame, within `within`.
async fn frame(socket: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_in_order_per_document_under_load_or_is_coalesced_into_a_later_one() {
    let system = System::start(options(100_000, 4096)).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client =
            NotificationClient::connect(ClientOptions::new(&system.url, "counters")).unwrap();
        assert!(matches!(
            client.next().await,
            Some(ClientEvent::Subscribed { .. })
        ));
        clients.push(client);
    }
    let (documents, per_document) = (25u64, 40u64);
    let writers: Vec<_> = (0..documents)
        .map(|d| {
            let store = Arc::clone(&system.store);
            tokio::spawn(async move {
                for _ in 0..per_document {
                    let id = format!("c-{d}");
                    let metadata = Metadata::correlated(format!("corr-{id}"));
                    bump_once(&store, &id, "{}", metadata).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for client in &mut clients {
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut changes = 0u64;
        let mut last_resume = 0;
        while versions.values().filter(|v| **v == per_document).count() < documents as usize {
            let event = next_within(client, 20, "notifications keep coming").await;
            let ClientEvent::Notification(note) = event else {
                continue;
            };
            // A client behind gets positions in turn order; its resume mark only goes up.
            let resume = note.resume.expect("a resume mark");
            assert!(resume >= last_resume, "the resume mark goes up");
            last_resume = resume;
            let before = versions
                .insert(note.id.clone(), note.aggregate_version)
                .unwrap_or(0);
            match note.coalesced {
                None => assert_eq!(
                    note.aggregate_version,
                    before + 1,
                    "{} skipped a version",
                    note.id
                ),
                Some(c) => {
                    assert_eq!(
                        c.from_version,
                        before + 1,
                        "the coalesced range starts after the last delivered"
                    );
                    assert_eq!(c.count, note.aggregate_version - before);
                }
            }
            changes += note.coalesced.map_or(1, |c| c.count);
            assert_eq!(note.aggregate_type, "counter");
            assert_eq!(note.aggregate_id, note.id);
            assert_eq!(
                note.correlation_id.as_deref(),
                Some(format!("corr-{}", note.id).as_str())
            );
            assert!(note.committed_at >= note.recorded_at);
            assert!(note.log_position > 0);
        }
        assert_eq!(
            changes,
            documents * per_document,
            "every change delivered or folded into a later one"
        );
    }
}

/// The protocol's rule, as a client without the library applies it: resume from the last
/// `resume` mark, and skip a notification whose document was delivered at an equal or higher
/// position (a resume replays what came after the mark).
#[derive(Default)]
struct RawFollower {
    /// Document → the position and version delivered.
    delivered: HashMap<String, (u64, u64)>,
    mark: u64,
}

impl RawFollower {
    fn take(&mut self, note: &Value) {
        assert_eq!(note["type"], "notification", "{note}");
        let id = note["id"].as_str().unwrap().to_owned();
        let (position, version) = (
            note["position"].as_u64().unwrap(),
            note["aggregate_version"].as_u64().unwrap(),
        );
        let resume = note["resume"].as_u64().expect("a resume mark");
        assert!(resume >= self.mark, "the mark goes up: {note}");
        self.mark = resume;
        let (seen_at, before) = self.delivered.get(&id).copied().unwrap_or((0, 0));
        if position > seen_at {
            let from = note
                .get("coalesced")
                .map_or(version, |c| c["from_version"].as_u64().unwrap());
            assert!(from <= before + 1, "no version missed: {note}");
            assert!(version > before, "nothing twice: {note}");
            self.delivered.insert(id, (position, version));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_stream_resumes_with_nothing_missed_and_nothing_twice() {
    let system = System::start(options(100_000, 4096)).await;
    let mut socket = open(&system.ws("projection=counters&collection=counters")).await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    let subscribed = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(subscribed["type"], "subscribed");
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();

    let writer = {
        let store = Arc::clone(&system.store);
        tokio::spawn(async move {
            for round in 0..60u64 {
                let id = format!("c-{}", round % 6);
                bump_once(&store, &id, "{}", Metadata::default()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut follower = RawFollower::default();
    for _ in 0..8 {
        follower.take(&frame(&mut socket, Duration::from_secs(10)).await.unwrap());
    }
    let mark = follower.mark;
    // Killed without a close frame, as a dropped network would.
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut socket = open(&system.ws(&format!(
        "projection=counters&collection=counters&since={epoch}:{mark}"
    )))
    .await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    let resumed = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(resumed["type"], "subscribed", "{resumed}");
    writer.await.unwrap();
    loop {
        let note = frame(&mut socket, Duration::from_secs(10))
            .await
            .expect("the rest arrives");
        follower.take(&note);
        if follower.delivered.len() == 6 && follower.delivered.values().all(|(_, v)| *v == 10) {
            break;
        }
    }
    assert!(
        frame(&mut socket, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_throttle_gets_coalesced_notifications_with_the_right_final_versions() {
    let limit = 50;
    let system = System::start(options(limit, 4096)).await;
    // Frames are stamped on a thread of their own, away from the server's scheduler.
    let url = system.ws("projection=counters");
    let (frames, mut stamped) = tokio::sync::mpsc::unbounded_channel::<(Instant, Value)>();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut socket = open(&url).await;
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message
                        && frames
                            .send((Instant::now(), serde_json::from_str(&text).unwrap()))
                            .is_err()
                    {
                        break;
                    }
                }
            });
    });
    async fn next(
        stamped: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    ) -> Option<(Instant, Value)> {
        tokio::time::timeout(Duration::from_secs(10), stamped.recv())
            .await
            .ok()
            .flatten()
    }
    assert_eq!(next(&mut stamped).await.unwrap().1["type"], "ready");
    assert_eq!(next(&mut stamped).await.unwrap().1["type"], "subscribed");
    let (documents, per_document) = (5u64, 60u64);
    for _ in 0..per_document {
        for d in 0..documents {
            system.bump(&format!("c-{d}"), 1).await;
        }
    }
    let mut arrivals = Vec::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut changes = 0;
    let mut throttled = false;
    while versions.values().filter(|v| **v == per_document).count() < documents as usize {
        let (at, message) = next(&mut stamped).await.expect("the final versions arrive");
        match message["type"].as_str().unwrap() {
            "throttled" => {
                throttled = true;
                assert_eq!(message["limit"], limit);
            }
            "notification" => {
                arrivals.push(at);
                let version = message["aggregate_version"].as_u64().unwrap();
                let before = versions
                    .insert(message["id"].as_str().unwrap().to_owned(), version)
                    .unwrap_or(0);
                assert!(version > before, "versions only go up");
                if let Some(c) = message.get("coalesced") {
                    assert_eq!(c["from_version"].as_u64().unwrap(), before + 1);
                    assert_eq!(c["count"].as_u64().unwrap(), version - before);
                }
                changes += message
                    .get("coalesced")
                    .map_or(1, |c| c["count"].as_u64().unwrap());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(throttled, "the client was told it is throttled");
    assert_eq!(changes, documents * per_document);
    assert!(
        arrivals.len() < (documents * per_document) as usize / 2,
        "coalesced: {} frames",
        arrivals.len()
    );
    for (i, at) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .take_while(|t| **t < *at + Duration::from_secs(1))
            .count();
        assert!(
            within <= limit as usize,
            "{within} notifications within one second"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_disconnected_as_slow_without_holding_back_the_others() {
    let mut notify = options(100_000, 64);
    notify.write_timeout = Duration::from_secs(1);
    let system = System::start(notify).await;
    // The slow client: a socket with a tiny receive buffer that is never read.
    let addr = system.url.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr.parse().unwrap()).await.unwrap();
    slow.write_all(
        format!(
            "GET /notifications/ws?projection=counters HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: nexus.v1\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut following = ClientOptions::new(&system.url, "counters");
    following.collection = Some("counters".into());
    following.id = Some("c-7".into());
    let mut fast = NotificationClient::connect(following).unwrap();
    assert!(matches!(
        fast.next().await,
        Some(ClientEvent::Subscribed { .. })
    ));

    let (documents, per_document) = (400u64, 10u64);
    let started = Instant::now();
    for round in 0..per_document {
        let store = Arc::clone(&system.store);
        let appends: Vec<_> = (0..documents)
            .map(|d| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let padded = format!("{{\"pad\":\"{}\"}}", "x".repeat(400));
                    bump_once(&store, &format!("c-{d}"), &padded, Metadata::default()).await;
                })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        let _ = round;
    }
    let mut version = 0;
    while version < per_document {
        match tokio::time::timeout(Duration::from_secs(20), fast.next())
            .await
            .expect("the fast client is not held back")
            .unwrap()
        {
            ClientEvent::Notification(note) => {
                assert_eq!(note.id, "c-7");
                version = note.aggregate_version;
            }
            ClientEvent::Disconnected { reason, .. } => {
                panic!("the fast client was dropped: {reason}")
            }
            _ => {}
        }
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // The slow client's socket is closed by the server: reading drains what was buffered, then ends.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, slow.read(&mut buf)).await {
            Err(_) => panic!(
                "the slow client was never disconnected ({} bytes read)",
                received.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        received.len() < (documents * per_document * 400) as usize,
        "it did not get everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_read_model_resets_its_subscribers_and_old_positions() {
    let mut system = System::start(options(100_000, 4096)).await;
    let mut client =
        NotificationClient::connect(ClientOptions::new(&system.url, "counters")).unwrap();
    let Some(ClientEvent::Subscribed { epoch, .. }) = client.next().await else {
        panic!("subscribed")
    };
    system.bump("c-1", 3).await;
    let mut version = 0;
    while version < 3 {
        let Some(ClientEvent::Notification(note)) = client.next().await else {
            panic!("notification")
        };
        version = note.aggregate_version;
    }
    // Rebuild: stop the projection, drop its read model, start it again from nothing.
    system.projection.take().unwrap().stop().await;
    let path =
        ProjectionRunner::read_model_path(&system._dir.path().join("read-models"), "counters");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    system.projection = Some(system.runner.spawn(Counters).unwrap());
    let event = next_within(&mut client, 10, "the reset after the rebuild").await;
    let ClientEvent::Reset {
        epoch: new_epoch,
        reason,
        ..
    } = event
    else {
        panic!("expected a reset, got {event:?}")
    };
    assert_eq!(reason, ResetReason::EpochChanged);
    assert_ne!(new_epoch, epoch);
    // The rebuild replays the three events under the new epoch (a commit may hold several).
    let mut version = 0;
    while version < 3 {
        let event = next_within(&mut client, 10, "the replay under the new epoch").await;
        let ClientEvent::Notification(note) = event else {
            panic!("expected a notification, got {event:?}")
        };
        assert_eq!(note.epoch, new_epoch);
        assert_eq!(
            note.coalesced
                .map_or(note.aggregate_version, |c| c.from_version),
            version + 1
        );
        version = note.aggregate_version;
    }
    // A client coming back with a position of the old epoch is told to refetch.
    let mut socket = open(&system.ws(&format!("projection=counters&since={epoch}:3"))).await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "subscribed"
    );
    let reset = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str()),
        (Some("reset"), Some("epoch_changed"))
    );
    assert_eq!(system.hub.position("counters").0, new_epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_change_on_an_open_socket_and_filters_use_the_list_language() {
    let system = System::start(options(100_000, 4096)).await;
    let mut socket = open(&system.ws("")).await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    let subscribe = json!({"type": "subscribe", "sub": "odd", "projection": "counters", "collection": "counters", "filter": {"parity": "odd"}});
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "subscribed"
    );
    system.bump_each("c-1", 4).await;
    // Odd counts, and each even one as the document leaving the filter.
    for (version, op) in [(1, "upsert"), (2, "left"), (3, "upsert"), (4, "left")] {
        let note = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (note["aggregate_version"].as_u64(), note["op"].as_str()),
            (Some(version), Some(op)),
            "{note}"
        );
    }
    // Replace it with one document, resuming from where it was.
    let since = format!("{}:{}", system.hub.position("counters").0, 4);
    let subscribe = json!({"type": "subscribe", "sub": "odd", "projection": "counters", "collection": "counters", "id": "c-2", "since": since});
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "subscribed"
    );
    system.bump_each("c-1", 1).await;
    system.bump_each("c-2", 1).await;
    let note = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (note["id"].as_str(), note["aggregate_version"].as_u64()),
        (Some("c-2"), Some(1))
    );
    // A second subscription of the same projection is refused; bad frames get an error, not a close.
    let second = json!({"type": "subscribe", "sub": "other", "projection": "counters"});
    socket
        .send(Message::Text(second.to_string().into()))
        .await
        .unwrap();
    let refused = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("subscription_refused"))
    );
    socket
        .send(Message::Text("{\"type\":\"nope\"}".into()))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["code"],
        "invalid_message"
    );
    socket
        .send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "pong"
    );
    socket
        .send(Message::Text(
            json!({"type": "unsubscribe", "sub": "odd"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "unsubscribed"
    );
    system.bump("c-2", 1).await;
    assert!(
        frame(&mut socket, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing after unsubscribing"
    );
}

/// Reads an SSE response until `count` events with ids arrived: (id, event, data) of each.
async fn sse_events(
    url: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> Vec<(String, String, Value)> {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let path = &url[url.find(&addr).unwrap() + addr.len()..];
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let last = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<(String, String, Value)> = text
            .split("\n\n")
            .filter_map(|block| {
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_owned)
                };
                Some((
                    field("id: ")?,
                    field("event: ")?,
                    serde_json::from_str(&field("data: ")?).ok()?,
                ))
            })
            .collect();
        if events.len() >= count {
            return events;
        }
        let Ok(n) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await else {
            panic!("events did not arrive: {text}")
        };
        let n = n.unwrap();
        assert!(n > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_the_same_notifications_and_resumes_from_last_event_id() {
    let system = System::start(options(100_000, 4096)).await;
    system.bump_each("c-1", 2).await;
    let url = format!(
        "{}/notifications/sse?projection=counters&collection=counters&id=c-1",
        system.url
    );
    // Resume after the first of two.
    let epoch = system.hub.position("counters").0;
    let events = sse_events(&url, Some(&format!("{epoch}:1")), 2).await;
    // Until the replay it announced arrives, the stream goes on resuming from where it asked.
    assert_eq!(
        (
            events[0].0.as_str(),
            events[0].1.as_str(),
            events[0].2["replayed"].as_u64()
        ),
        (format!("{epoch}:1").as_str(), "subscribed", Some(1))
    );
    // A notification's id is its resume mark (its own position, for a client that keeps up).
    assert_eq!(
        (events[1].0.as_str(), events[1].1.as_str()),
        (format!("{epoch}:2").as_str(), "notification")
    );
    assert_eq!(events[1].2["resume"], 2);
    assert_eq!(events[1].2["aggregate_version"], 2);
    system.bump_each("c-1", 1).await;
    let events = sse_events(&url, Some(&format!("{epoch}:2")), 2).await;
    assert_eq!(
        (
            events[1].0.as_str(),
            events[1].2["aggregate_version"].as_u64()
        ),
        (format!("{epoch}:3").as_str(), Some(3))
    );
    // An old epoch gets a reset whose id carries the new position.
    let events = sse_events(&url, Some("0ld:9"), 2).await;
    assert_eq!(
        (events[1].1.as_str(), events[1].0.clone()),
        ("reset", format!("{epoch}:3"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_need_read_models_read_with_the_token_in_the_subprotocol_or_a_ticket() {
    const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes!";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let config = AuthConfig {
        issuer: Some("nexus-test".to_owned()),
        audience: Some("nexus".to_owned()),
        hs256_secret_file: Some("secret".into()),
        anonymous: Some(Vec::new()),
        ..AuthConfig::default()
    };
    let access = AccessControl::load(&config, dir.path()).await.unwrap();
    let system = System::start_with(options(100, 4096), access).await;
    let token = |role: &str| {
        issue_hs256(
            SECRET.as_bytes(),
            &TokenRequest {
                issuer: "nexus-test",
                audience: "nexus",
                subject: "tester",
                roles: &[role.to_owned()],
                roles_claim: "roles",
                ttl: Duration::from_secs(60),
                kid: None,
            },
        )
        .unwrap()
    };
    // Without a credential: 401 before any upgrade.
    let err = tokio_tungstenite::connect_async(system.ws("projection=counters"))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("{err}")
    };
    assert_eq!(response.status(), 401);
    // The Rust client carries the token in Sec-WebSocket-Protocol.
    let mut options = ClientOptions::new(&system.url, "counters");
    options.token = Some(token("reader"));
    let mut client = NotificationClient::connect(options.clone()).unwrap();
    assert!(matches!(
        client.next().await,
        Some(ClientEvent::Subscribed { .. })
    ));
    // A role without read-models:read is refused for good (no reconnection loop).
    options.token = Some(token("nobody"));
    let mut refused = NotificationClient::connect(options).unwrap();
    assert!(
        matches!(refused.next().await, Some(ClientEvent::Refused { code, .. }) if code == "403")
    );
    assert!(refused.next().await.is_none());
    // A ticket stands for the credential once.
    let mut http = tokio::net::TcpStream::connect(system.url.trim_start_matches("http://"))
        .await
        .unwrap();
    http.write_all(
        format!(
            "POST /notifications/tickets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            token("reader")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).await.unwrap();
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let ticket = body["ticket"].as_str().unwrap();
    let mut socket = open(&system.ws(&format!("projection=counters&ticket={ticket}"))).await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    let again = tokio_tungstenite::connect_async(
        system.ws(&format!("projection=counters&ticket={ticket}")),
    )
    .await
    .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = again else {
        panic!("{again}")
    };
    assert_eq!(response.status(), 401, "a ticket is used once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_bad_subscriptions_are_refused_before_the_upgrade() {
    let mut notify = options(100, 4096);
    notify.max_connections = 2;
    let system = System::start(notify).await;
    let _a = open(&system.ws("projection=counters")).await;
    let _b = open(&system.ws("projection=counters")).await;
    let err = tokio_tungstenite::connect_async(system.ws("projection=counters"))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("{err}")
    };
    assert_eq!(response.status(), 503);
    for (query, status) in [
        ("projection=nope", 404),
        ("projection=counters&since=x", 400),
        ("projection=counters&id=1", 400),
    ] {
        let err = tokio_tungstenite::connect_async(system.ws(query))
            .await
            .unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("{err}")
        };
        assert_eq!(response.status(), status, "{query}");
    }
}

/// The server's connection cap bounds HTTP requests in flight; a WebSocket leaves it once
/// upgraded, so notification clients are capped by `NotifyOptions::max_connections` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_are_not_held_to_the_http_connection_cap() {
    let serving = ServeOptions {
        max_connections: 2,
        ..ServeOptions::default()
    };
    let system = System::start_serving(options(100, 4096), AccessControl::open(), serving).await;
    let mut sockets = Vec::new();
    for _ in 0..6 {
        let mut socket = open(&system.ws("projection=counters")).await;
        let ready = frame(&mut socket, Duration::from_secs(10)).await.unwrap();
        assert_eq!(ready["type"], "ready");
        let subscribed = frame(&mut socket, Duration::from_secs(10)).await.unwrap();
        assert_eq!(subscribed["type"], "subscribed");
        sockets.push(socket);
    }
    system.bump("c-0", 1).await;
    for socket in &mut sockets {
        let note = frame(socket, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            (note["type"].as_str(), note["id"].as_str()),
            (Some("notification"), Some("c-0"))
        );
    }
}

/// Reads notifications from `socket` until `count` arrived: (position, id, version, op) each.
async fn notes(socket: &mut Socket, count: usize) -> Vec<(u64, String, u64, String)> {
    let mut notes = Vec::new();
    while notes.len() < count {
        let note = frame(socket, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("a notification after {notes:?}"));
        assert_eq!(note["type"], "notification", "{note} after {notes:?}");
        // One at a time, nothing waits behind it: the client resumes from the note itself.
        assert_eq!(note["resume"], note["position"], "{note}");
        notes.push((
            note["position"].as_u64().unwrap(),
            note["id"].as_str().unwrap().to_owned(),
            note["aggregate_version"].as_u64().unwrap(),
            note["op"].as_str().unwrap().to_owned(),
        ));
    }
    notes
}

/// Opens a socket subscribed to `counters` after `since`: the `subscribed` frame, then the
/// socket (a `reset`, if any, is the next frame).
async fn resume(system: &System, since: &str) -> (Value, Socket) {
    let mut socket = open(&system.ws(&format!(
        "projection=counters&collection=counters&since={since}"
    )))
    .await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    let subscribed = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    (subscribed, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_dashboard_resumes_from_the_read_models_log_or_says_reset() {
    restarts_resume(System::start(options(100_000, 4096)).await).await;
    #[cfg(feature = "postgres")]
    match System::start_on_postgres(options(100_000, 4096)).await {
        Some(system) => restarts_resume(system).await,
        None => support::skip("no PostgreSQL for the read models (NEXUS_TEST_POSTGRES_URL)"),
    }
}

/// A restart keeps the epoch and resumes from the read model's notification log, within its
/// bound; a read model changed without notifications starts a new epoch.
async fn restarts_resume(system: System) {
    system.bump_each("c-1", 3).await;
    let (epoch, _) = system.hub.position("counters");
    // A client saw positions 1 to 3 and went away; 4 and 5 were published to nobody.
    system.bump_each("c-2", 1).await;
    system.bump_each("c-3", 1).await;
    let mut system = system
        .restart(
            options(100_000, 4096),
            HubOptions {
                history: 2,
                ..HubOptions::default()
            },
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while system.hub.position("counters") != (epoch.clone(), 5) {
        assert!(
            Instant::now() < deadline,
            "the new process continues the epoch: {:?}",
            system.hub.position("counters")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Same read model, same epoch: what was missed comes from the log, once, in order.
    let (subscribed, mut socket) = resume(&system, &format!("{epoch}:3")).await;
    assert_eq!(
        (
            subscribed["epoch"].as_str(),
            subscribed["position"].as_u64(),
            subscribed["replayed"].as_u64()
        ),
        (Some(epoch.as_str()), Some(5), Some(2))
    );
    let expected = |list: &[(u64, &str, u64)]| -> Vec<(u64, String, u64, String)> {
        list.iter()
            .map(|(p, id, v)| (*p, (*id).to_owned(), *v, "upsert".to_owned()))
            .collect()
    };
    assert_eq!(
        notes(&mut socket, 2).await,
        expected(&[(4, "c-2", 1), (5, "c-3", 1)])
    );
    system.bump_each("c-1", 1).await;
    assert_eq!(notes(&mut socket, 1).await, expected(&[(6, "c-1", 4)]));
    assert!(
        frame(&mut socket, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing twice"
    );

    // The log keeps the newest two (positions 5 and 6): older positions get a reset.
    let (_, mut socket) = resume(&system, &format!("{epoch}:3")).await;
    let reset = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (
            reset["type"].as_str(),
            reset["reason"].as_str(),
            reset["position"].as_u64()
        ),
        (Some("reset"), Some("too_old"), Some(6)),
        "{reset}"
    );
    let (subscribed, mut socket) = resume(&system, &format!("{epoch}:4")).await;
    assert_eq!(subscribed["replayed"], 2);
    assert_eq!(
        notes(&mut socket, 2).await,
        expected(&[(5, "c-3", 1), (6, "c-1", 4)])
    );

    // A read model that moved on while nothing logged its notifications starts a new epoch.
    system.projection.take().unwrap().stop().await;
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&system.store)));
    let quiet = ProjectionRunner::with_read_models(
        Arc::clone(&system.store),
        bus,
        system.read_models.clone(),
    );
    let unnotified = quiet.spawn(Counters).unwrap();
    system.bump("c-4", 1).await;
    let read_model = unnotified.read_model();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_model.get("counters", "c-4").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the quiet runner applies c-4");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unnotified.stop().await;
    let system = system
        .restart(options(100_000, 4096), HubOptions::default())
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while system.hub.position("counters").0 == epoch {
        assert!(Instant::now() < deadline, "a new epoch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, mut socket) = resume(&system, &format!("{epoch}:6")).await;
    let reset = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str()),
        (Some("reset"), Some("epoch_changed")),
        "{reset}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_stops_matching_a_filter_is_notified_as_left() {
    let system = System::start(options(100_000, 4096)).await;
    let mut socket = open(&system.ws("projection=counters&collection=counters&parity=even")).await;
    assert_eq!(
        frame(&mut socket, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    let subscribed = frame(&mut socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(subscribed["type"], "subscribed");
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    // 1 is odd and the document did not exist before: nothing. 2 enters, 3 leaves.
    system.bump_each("c-1", 3).await;
    let seen = notes(&mut socket, 2).await;
    let summary: Vec<(u64, &str)> = seen.iter().map(|n| (n.2, n.3.as_str())).collect();
    assert_eq!(summary, [(2, "upsert"), (3, "left")]);
    // A replay tells the same story.
    let mut replay = open(&system.ws(&format!(
        "projection=counters&collection=counters&parity=even&since={epoch}:2"
    )))
    .await;
    assert_eq!(
        frame(&mut replay, Duration::from_secs(5)).await.unwrap()["type"],
        "ready"
    );
    assert_eq!(
        frame(&mut replay, Duration::from_secs(5)).await.unwrap()["replayed"],
        1
    );
    let replayed = notes(&mut replay, 1).await;
    assert_eq!((replayed[0].2, replayed[0].3.as_str()), (3, "left"));
    // 4 enters again; another document that never matched is not announced.
    system.bump_each("c-1", 1).await;
    system.bump_each("c-2", 1).await;
    for socket in [&mut socket, &mut replay] {
        let seen = notes(socket, 1).await;
        assert_eq!(
            (seen[0].1.as_str(), seen[0].2, seen[0].3.as_str()),
            ("c-1", 4, "upsert")
        );
        assert!(
            frame(socket, Duration::from_millis(300)).await.is_none(),
            "c-2 was never even"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() {
    const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes!";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let config = AuthConfig {
        issuer: Some("nexus-test".to_owned()),
        audience: Some("nexus".to_owned()),
        hs256_secret_file: Some("secret".into()),
        anonymous: Some(Vec::new()),
        leeway_secs: 0,
        ..AuthConfig::default()
    };
    let access = AccessControl::load(&config, dir.path()).await.unwrap();
    let system = System::start_with(options(100, 4096), access).await;
    let token = |ttl: u64| {
        issue_hs256(
            SECRET.as_bytes(),
            &TokenRequest {
                issuer: "nexus-test",
                audience: "nexus",
                subject: "tester",
                roles: &["reader".to_owned()],
                roles_claim: "roles",
                ttl: Duration::from_secs(ttl),
                kid: None,
            },
        )
        .unwrap()
    };
    let expires = |token: &str| -> u64 {
        let claims = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                .unwrap(),
        )
        .unwrap();
        claims["exp"].as_u64().unwrap()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };

    // WebSocket: a close frame with 4401 at expiry, not before.
    let short = token(2);
    let mut request = system
        .ws("projection=counters")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!(
            "nexus.v1, nexus.bearer.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &short)
        )
        .parse()
        .unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(close))) => break close.expect("a close code"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let at = now();
    assert_eq!(u16::from(close.code), 4401, "{close:?}");
    assert!(close.reason.contains("expired"), "{close:?}");
    let exp = expires(&short) as f64;
    assert!(
        at >= exp - 0.05 && at < exp + 2.0,
        "closed at {at}, token expired at {exp}"
    );

    // Server-Sent Events: a `closed` event with the same code, then the stream ends.
    let short = token(2);
    let mut stream = tokio::net::TcpStream::connect(system.url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "GET /notifications/sse?projection=counters HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Accept: text/event-stream\r\nAuthorization: Bearer {short}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut text))
        .await
        .expect("the stream ends")
        .unwrap();
    let at = now();
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let closed = text
        .split("\n\n")
        .find(|block| block.contains("event: closed"))
        .unwrap_or_else(|| panic!("a closed event: {text}"));
    assert!(closed.contains("\"code\":4401"), "{closed}");
    let exp = expires(&short) as f64;
    assert!(
        at >= exp - 0.05 && at < exp + 2.0,
        "ended at {at}, expiry {exp}"
    );
}

/// A TCP proxy in front of the dashboard whose connections can be cut, as a dropped network
/// cuts them: no close frame.
struct Proxy {
    url: String,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(to: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let to = to.trim_start_matches("http://").to_owned();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { url, cut }
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Per document, what the application got: (position, version) of the last notification.
#[derive(Default)]
struct Received {
    last: HashMap<String, (u64, u64)>,
    changes: u64,
    notifications: u64,
}

impl Received {
    /// Checks a notification: its range starts right after the version the document had
    /// (nothing missed, nothing twice) and its count is the versions it covers.
    fn take(&mut self, note: &nexus_runtime::notify::Notification) {
        let (_, before) = self.last.get(&note.id).copied().unwrap_or((0, 0));
        let (from, count) = note
            .coalesced
            .map_or((note.aggregate_version, 1), |c| (c.from_version, c.count));
        assert_eq!(
            from,
            before + 1,
            "{}: nothing missed, nothing twice",
            note.id
        );
        assert_eq!(count, note.aggregate_version - before, "{}", note.id);
        self.last
            .insert(note.id.clone(), (note.position, note.aggregate_version));
        self.changes += count;
        self.notifications += 1;
    }

    fn done(&self, documents: u64, version: u64) -> bool {
        self.last.len() as u64 == documents && self.last.values().all(|(_, v)| *v == version)
    }
}

/// Appends `per_document` events to each of `documents` counters, a round every 25 ms or so.
fn write_rounds(system: &System, documents: u64, per_document: u64) -> tokio::task::JoinHandle<()> {
    let store = Arc::clone(&system.store);
    tokio::spawn(async move {
        for _ in 0..per_document {
            for d in 0..documents {
                bump_once(&store, &format!("c-{d}"), "{}", Metadata::default()).await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// A throttled watcher gets its documents out of position order, so its resume mark trails
/// documents it already has. Its link is cut mid-stream while it holds such documents: it
/// resumes from the mark, and per document the final version arrives with nothing missed and
/// nothing delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_client_cut_off_mid_stream_resumes_from_its_mark_with_nothing_missed_or_twice()
{
    let max_pending = 4096;
    let system = System::start(options(50, max_pending)).await;
    let proxy = Proxy::start(&system.url).await;
    let mut following = ClientOptions::new(&proxy.url, "counters");
    following.min_delay = Duration::from_millis(50);
    let mut client = NotificationClient::connect(following).unwrap();
    assert!(matches!(
        client.next().await,
        Some(ClientEvent::Subscribed { .. })
    ));
    let (documents, per_document) = (20u64, 60u64);
    let writer = write_rounds(&system, documents, per_document);
    let mut received = Received::default();
    let (mut cut_above, mut reconnected, mut replayed) = (0, false, 0);
    while !received.done(documents, per_document) {
        let event = next_within(&mut client, 20, "the final versions arrive").await;
        match event {
            ClientEvent::Notification(note) => {
                received.take(&note);
                assert!(client.remembered() <= max_pending);
                if cut_above == 0 && received.notifications >= 20 && client.remembered() > 0 {
                    cut_above = client.remembered();
                    proxy.cut();
                }
            }
            ClientEvent::Subscribed { replayed: r, .. } => {
                reconnected = cut_above > 0;
                replayed = r;
            }
            ClientEvent::Reset { reason, .. } => panic!("the mark is resumable: {reason:?}"),
            ClientEvent::Disconnected { .. } | ClientEvent::Throttled { .. } => {}
            ClientEvent::Refused { code, message } => panic!("refused: {code} {message}"),
        }
    }
    writer.await.unwrap();
    assert!(
        cut_above > 0 && reconnected,
        "cut while holding documents above the mark"
    );
    assert!(replayed > 0, "the resume replayed what followed the mark");
    assert_eq!(
        received.changes,
        documents * per_document,
        "every change once"
    );
    assert!(
        received.notifications < documents * per_document / 2,
        "coalesced: {} notifications",
        received.notifications
    );
    let more = tokio::time::timeout(Duration::from_millis(500), client.next()).await;
    assert!(
        !matches!(more, Ok(Some(ClientEvent::Notification(_)))),
        "nothing more: {more:?}"
    );
}

/// The documents a client remembers above its resume mark (to skip what a resume replays) are
/// at most those that waited in its mailbox: with as many hot documents as nearly fill a
/// mailbox of 16, it remembers nearly 16 and never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_remembers_at_most_a_mailbox_of_documents_above_its_mark() {
    let max_pending = 16;
    let system = System::start(options(50, max_pending)).await;
    let mut client =
        NotificationClient::connect(ClientOptions::new(&system.url, "counters")).unwrap();
    assert!(matches!(
        client.next().await,
        Some(ClientEvent::Subscribed { .. })
    ));
    let (documents, per_document) = (max_pending as u64 - 1, 40u64);
    let writer = write_rounds(&system, documents, per_document);
    let mut received = Received::default();
    let mut most = 0;
    while !received.done(documents, per_document) {
        let event = next_within(&mut client, 20, "the final versions arrive").await;
        match event {
            ClientEvent::Notification(note) => {
                received.take(&note);
                most = most.max(client.remembered());
            }
            ClientEvent::Throttled { .. } => {}
            other => panic!("the client keeps its one connection: {other:?}"),
        }
    }
    writer.await.unwrap();
    assert!(
        most <= max_pending && most >= max_pending / 2,
        "remembered at most {most} documents (mailbox {max_pending})"
    );
    assert_eq!(
        client.remembered(),
        0,
        "all delivered: the mark passed them"
    );
}
