//! `nexus bench notify`: real-time notifications under load. A server process (this binary,
//! hidden subcommand `bench notify-server`) runs the embedded store, a projection and the query
//! dashboard with notifications; this process opens N WebSocket clients, each following one
//! document (plus a few following the whole projection, which the throttle coalesces), while
//! the server appends events at a fixed rate over D documents.
//!
//! Reported: connection establishment (TCP connect to the `subscribed` frame) two ways: the N
//! clients connecting `--connect-concurrency` at a time before the load (a herd: its p99 is
//! mostly queueing, about concurrency / accept rate, and says how fast the server takes
//! connections), with the phases each reached (TCP connected, upgraded, `ready`), and
//! `--probes` clients connecting one by one, spread over the load, which is what a user
//! opening a page on a busy dashboard waits; commit-to-client
//! latency (the notification's `committed_at` to its arrival; one clock, one machine; for a
//! coalesced notification that is the commit of the newest change, the one it carries), how far
//! a throttled watcher's resume mark trails the positions it gets, the most
//! notifications any client got in any sliding second against the throttle, the server's memory
//! per connection (its RSS growth while the clients connect, idle) and the server's CPU per
//! 1 000 notifications sent (its CPU time under load minus the same load with no client, the
//! ceiling measured in the same run).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::{NotifyOptions, QueryDashboard, ServeOptions, serve_with};
use nexus_runtime::notify::{NotificationHub, SessionLimits};
use nexus_runtime::projection::{Changes, Projection, ProjectionError, ProjectionRunner};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};

use super::Outcome;
use super::bench::{latency_ms, round};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct NotifyArgs {
    /// WebSocket clients, each following one document.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Extra clients following the whole projection (throttled and coalesced).
    #[arg(long, default_value_t = 10)]
    watchers: usize,
    /// Documents the events spread over.
    #[arg(long, default_value_t = 1000)]
    documents: usize,
    /// Events appended per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The per-client throttle (notifications per second).
    #[arg(long, default_value_t = 100)]
    throttle: u32,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Clients that connect one by one, evenly spread, while the events flow (each measured
    /// to its `subscribed` frame, then closed): connection establishment under load.
    #[arg(long, default_value_t = 100)]
    probes: usize,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct NotifyServerArgs {
    /// The per-client throttle.
    #[arg(long, default_value_t = 100)]
    throttle: u32,
    /// Documents the events spread over.
    #[arg(long, default_value_t = 1000)]
    documents: usize,
}

/// One document per counter.
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
        changes.put(
            "counters",
            event.stream.aggregate_id(),
            json!({ "n": event.version }),
        );
        Ok(())
    }
}

/// The server process: serves, then on `load <rate> <seconds>` appends and answers
/// `done <events> <seconds>`; `stop` ends it.
pub(crate) fn run_server(args: NotifyServerArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(async move {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn EventStore> =
            Arc::new(EmbeddedStore::open(dir.path().join("events.db"))?);
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Arc::clone(&store)));
        let hub = NotificationHub::default();
        let runner = ProjectionRunner::new(Arc::clone(&store), bus, dir.path().join("read-models"))
            .with_notifications(hub.clone());
        let projection = runner.spawn(Counters)?;
        let options = NotifyOptions {
            session: SessionLimits {
                per_second: args.throttle,
                ..SessionLimits::default()
            },
            max_connections: 20_000,
            ..NotifyOptions::default()
        };
        let dashboard = QueryDashboard::new(runner.health())
            .read_model(&projection)
            .with_notifications(hub, options)
            .router();
        let listener = nexus_runtime::http::listen("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let serve = ServeOptions {
            max_connections: 20_000,
            ..ServeOptions::default()
        };
        tokio::spawn(serve_with(
            listener,
            dashboard,
            serve,
            std::future::pending(),
        ));
        output::line(&url)?;
        let (send, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["load", rate, seconds] => {
                    let (events, took) =
                        load(&store, args.documents, rate.parse()?, seconds.parse()?).await;
                    output::line(&format!("done {events} {}", took.as_secs_f64()))?;
                }
                _ => break,
            }
        }
        projection.stop().await;
        Ok(Outcome::Clean)
    })
}

/// Appends `rate` events a second for `seconds`, spread over `documents` streams, from 16
/// concurrent writers each keeping its share of the pace.
async fn load(
    store: &Arc<dyn EventStore>,
    documents: usize,
    rate: u64,
    seconds: u64,
) -> (u64, Duration) {
    const WRITERS: u64 = 16;
    let started = Instant::now();
    let total = rate * seconds;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mine = total / WRITERS + u64::from(w < total % WRITERS);
                let interval = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
                let mut appended = 0;
                for i in 0..mine {
                    let due = started + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let doc = (i * WRITERS + w) as usize % documents;
                    let stream = StreamId::new("counter", format!("d-{doc}"));
                    let Ok(event) = NewEvent::from_json("Bumped", 1, "{}", Metadata::default())
                    else {
                        continue;
                    };
                    if store
                        .append(&stream, ExpectedVersion::Any, vec![event])
                        .await
                        .is_ok()
                    {
                        appended += 1;
                    }
                }
                appended
            })
        })
        .collect();
    let mut appended = 0;
    for writer in writers {
        appended += writer.await.unwrap_or(0);
    }
    (appended, started.elapsed())
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(args: &NotifyArgs) -> anyhow::Result<(Self, String)> {
        let exe = std::env::current_exe().context("cannot find the nexus executable")?;
        let mut child = std::process::Command::new(exe)
            .args([
                "bench",
                "notify-server",
                "--throttle",
                &args.throttle.to_string(),
            ])
            .args(["--documents", &args.documents.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to start the notification server process")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut url = String::new();
        stdout.read_line(&mut url)?;
        anyhow::ensure!(
            url.starts_with("http://"),
            "the server process printed `{}`",
            url.trim()
        );
        Ok((
            Self {
                child,
                stdin,
                stdout,
            },
            url.trim().to_owned(),
        ))
    }

    /// Runs a load phase; the events appended, and the server's CPU seconds meanwhile.
    fn load(&mut self, rate: u64, seconds: u64) -> anyhow::Result<(u64, f64, f64)> {
        let before = self.cpu_seconds()?;
        writeln!(self.stdin, "load {rate} {seconds}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let cpu = self.cpu_seconds()? - before;
        let mut words = line.split_whitespace().skip(1);
        let events = words
            .next()
            .and_then(|w| w.parse().ok())
            .context("bad load answer")?;
        let took = words
            .next()
            .and_then(|w| w.parse().ok())
            .context("bad load answer")?;
        Ok((events, took, cpu))
    }

    fn rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kib / 1024.0)
    }

    /// User plus system CPU seconds of the server process.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("bad stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "stop");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    connect: Option<f64>,
    /// Seconds from the start to: the TCP connection made (the kernel completes it before
    /// the server accepts), the upgrade answered (`101`: the server accepted, read the
    /// request, checked access and upgraded), the `ready` frame (the session made) and the
    /// `subscribed` frame (the subscription set up); `connect` is the last.
    phases: [Option<f64>; 3],
    arrivals: Vec<Instant>,
    latencies: Vec<f64>,
    coalesced: u64,
    /// Per notification, how far the client's resume mark trailed the position it carried.
    resume_lags: Vec<u64>,
    failed: Option<String>,
}

/// One client; it holds its connect slot (`permit`) until it is subscribed, and leaves then
/// if `once`.
async fn client(
    url: String,
    stop: tokio::sync::watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    once: bool,
) -> Seen {
    let started = Instant::now();
    let mut permit = Some(permit);
    let mut seen = Seen::default();
    let mut request = match url.into_client_request() {
        Ok(request) => request,
        Err(err) => {
            seen.failed = Some(err.to_string());
            return seen;
        }
    };
    request.headers_mut().insert(
        "sec-websocket-protocol",
        nexus_runtime::http::NOTIFY_PROTOCOL
            .parse()
            .expect("a valid header"),
    );
    let address = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let stream = match tokio::net::TcpStream::connect(&address).await {
        Ok(stream) => stream,
        Err(err) => {
            seen.failed = Some(err.to_string());
            return seen;
        }
    };
    let _ = stream.set_nodelay(true);
    seen.phases[0] = Some(started.elapsed().as_secs_f64());
    let mut socket = match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => socket,
        Err(err) => {
            seen.failed = Some(err.to_string());
            return seen;
        }
    };
    seen.phases[1] = Some(started.elapsed().as_secs_f64());
    let mut stop = stop;
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = stop.wait_for(|s| *s) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                seen.failed = Some(err.to_string());
                break;
            }
            None => {
                seen.failed = Some("closed by the server".into());
                break;
            }
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("ready") => seen.phases[2] = Some(started.elapsed().as_secs_f64()),
            Some("subscribed") => {
                seen.connect = Some(started.elapsed().as_secs_f64());
                permit.take();
                if once {
                    break;
                }
            }
            Some("notification") => {
                let now = chrono::Utc::now();
                seen.arrivals.push(Instant::now());
                if let Some(committed) = frame["committed_at"]
                    .as_str()
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                {
                    seen.latencies.push(
                        (now - committed).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6,
                    );
                }
                if frame.get("coalesced").is_some() {
                    seen.coalesced += 1;
                }
                if let (Some(position), Some(resume)) =
                    (frame["position"].as_u64(), frame["resume"].as_u64())
                {
                    seen.resume_lags.push(position.saturating_sub(resume));
                }
            }
            _ => {}
        }
    }
    seen
}

/// Every commit-to-client latency `seen` measured.
fn latencies_of(seen: &[Seen]) -> Vec<f64> {
    seen.iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect()
}

/// Fills in the latency targets of `report`.
fn mark_targets(report: &mut Value) {
    let under = |latency: &str, limit: f64| {
        json!(report[latency]["p99"].as_f64().is_some_and(|p| p < limit))
    };
    let all = under("commit_to_client_ms", 100.0);
    let documents = under("commit_to_client_ms_document_clients", 100.0);
    let connect = under("connect_ms", 500.0);
    let connect_under_load = under("connect_under_load_ms", 500.0);
    report["targets"]["commit_to_client_p99_under_100ms"] = all;
    report["targets"]["commit_to_client_p99_under_100ms_document_clients"] = documents;
    report["targets"]["connect_p99_under_500ms"] = connect;
    report["targets"]["connect_under_load_p99_under_500ms"] = connect_under_load;
}

/// The most arrivals within any one second.
fn max_per_second(arrivals: &[Instant]) -> usize {
    let mut max = 0;
    let mut start = 0;
    for (end, at) in arrivals.iter().enumerate() {
        while *at >= arrivals[start] + Duration::from_secs(1) {
            start += 1;
        }
        max = max.max(end - start + 1);
    }
    max
}

/// Connects the document clients and the watchers, `--connect-concurrency` at a time; returns
/// their tasks once every one subscribed or failed, and how long that took.
async fn connect_all(
    args: &NotifyArgs,
    base: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (Vec<tokio::task::JoinHandle<Seen>>, Duration) {
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients + args.watchers {
        let url = if i < args.clients {
            format!(
                "{base}/notifications/ws?projection=counters&collection=counters&id=d-{}",
                i % args.documents.max(1)
            )
        } else {
            format!("{base}/notifications/ws?projection=counters")
        };
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        tasks.push(tokio::spawn(client(url, stop.clone(), permit, false)));
    }
    // Every slot back: every client subscribed or failed.
    let _ = gate
        .acquire_many(args.connect_concurrency.max(1) as u32)
        .await;
    (tasks, began.elapsed())
}

/// Connects `count` clients one by one, spread over 80 % of `load`, each following one of
/// `documents` documents, and returns what each saw.
async fn probe(
    (count, load, documents): (usize, Duration, usize),
    base: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Seen> {
    let every = load.mul_f64(0.8) / count.max(1) as u32;
    let documents = documents.max(1);
    let mut probes = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..count {
        let url = format!(
            "{base}/notifications/ws?projection=counters&collection=counters&id=d-{}",
            i % documents
        );
        let slot = Arc::new(tokio::sync::Semaphore::new(1));
        let Ok(permit) = slot.acquire_owned().await else {
            break;
        };
        probes.push(tokio::spawn(client(url, stop.clone(), permit, true)));
        tokio::time::sleep(every).await;
    }
    let mut seen = Vec::new();
    for probe in probes {
        seen.push(probe.await.unwrap_or_default());
    }
    seen
}

/// When the clients reached each phase of their connection, from the start of the connect:
/// TCP connected, upgraded, `ready`.
fn connect_phases(seen: &[Seen]) -> Value {
    let phase = |i: usize| {
        let mut at: Vec<f64> = seen.iter().filter_map(|s| s.phases[i]).collect();
        latency_ms(&mut at)
    };
    json!({
        "tcp_connected": phase(0),
        "upgraded": phase(1),
        "ready": phase(2),
    })
}

pub(crate) fn run(args: NotifyArgs) -> anyhow::Result<Outcome> {
    let (mut server, url) = Server::start(&args)?;
    let base = url.replacen("http", "ws", 1);
    let runtime = super::tokio_runtime()?;
    // The ceiling: the same load with no client connected.
    let (baseline_events, _, baseline_cpu) = server.load(args.rate, args.seconds.min(5))?;
    let idle_rss = server.rss_mb()?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (tasks, connect_wall) = runtime.block_on(connect_all(&args, &base, &stop));
    // Let the server settle, then measure it idle with every client connected.
    std::thread::sleep(Duration::from_secs(1));
    let connected_rss = server.rss_mb()?;
    // Probes connect while the events flow, from half a second in, spread over the load.
    let probes = runtime.spawn(probe(
        (
            args.probes,
            Duration::from_secs(args.seconds),
            args.documents,
        ),
        base.clone(),
        stop.clone(),
    ));
    let (events, took, cpu) = server.load(args.rate, args.seconds)?;
    std::thread::sleep(Duration::from_secs(1));
    let _ = stop_tx.send(true);
    let seen: Vec<Seen> = runtime.block_on(async {
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap_or_default());
        }
        seen
    });
    let probed: Vec<Seen> = runtime.block_on(probes).unwrap_or_default();
    let mut under_load: Vec<f64> = probed.iter().filter_map(|s| s.connect).collect();
    let probe_failures = probed.iter().filter(|s| s.failed.is_some()).count();
    let connections = args.clients + args.watchers;
    let failed: Vec<&String> = seen.iter().filter_map(|s| s.failed.as_ref()).collect();
    let mut connect: Vec<f64> = seen.iter().filter_map(|s| s.connect).collect();
    let connect_phases = connect_phases(&seen);
    let mut latencies = latencies_of(&seen);
    // Apart: clients within their throttle (one document each) and watchers of the whole
    // projection, whose notifications wait for the throttle by design (coalesced, latest wins).
    let split = args.clients.min(seen.len());
    let mut followers = latencies_of(&seen[..split]);
    let mut watchers = latencies_of(&seen[split..]);
    // `latency_ms` reports seconds as milliseconds: positions go in as thousandths.
    let mut resume_lags: Vec<f64> = seen[split..]
        .iter()
        .flat_map(|s| s.resume_lags.iter().map(|lag| *lag as f64 / 1000.0))
        .collect();
    let delivered: usize = seen.iter().map(|s| s.arrivals.len()).sum();
    let coalesced: u64 = seen.iter().map(|s| s.coalesced).sum();
    let max_rate = seen
        .iter()
        .map(|s| max_per_second(&s.arrivals))
        .max()
        .unwrap_or(0);
    let watcher_rate = seen[args.clients..]
        .iter()
        .map(|s| max_per_second(&s.arrivals))
        .max()
        .unwrap_or(0);
    let notify_cpu =
        (cpu - baseline_cpu * args.seconds as f64 / args.seconds.min(5) as f64).max(0.0);
    let report = json!({
        "bench": "notify",
        "connections": connections,
        "connected": connect.len(),
        "failed": failed.len(),
        "first_failure": failed.first(),
        "documents": args.documents,
        "offered_rate": args.rate,
        "achieved_rate": round(events as f64 / took),
        "events": events,
        "notifications_delivered": delivered,
        "coalesced_notifications": coalesced,
        "connect_ms": latency_ms(&mut connect),
        "connect_phases_ms_from_start": connect_phases,
        "connect_wall_s": round(connect_wall.as_secs_f64()),
        "connect_concurrency": args.connect_concurrency,
        "connect_under_load_ms": latency_ms(&mut under_load),
        "connect_under_load_failed": probe_failures,
        "commit_to_client_ms": latency_ms(&mut latencies),
        "commit_to_client_ms_document_clients": latency_ms(&mut followers),
        "commit_to_client_ms_throttled_watchers": latency_ms(&mut watchers),
        "resume_lag_positions_throttled_watchers": latency_ms(&mut resume_lags),
        "throttle_per_second": args.throttle,
        "max_per_client_per_sliding_second": max_rate,
        "max_per_watcher_per_sliding_second": watcher_rate,
        "server_rss_idle_mb": round(idle_rss),
        "server_rss_connected_mb": round(connected_rss),
        "server_memory_per_connection_kb": round((connected_rss - idle_rss) * 1024.0 / connections.max(1) as f64),
        "server_cpu_s_under_load": round(cpu),
        "server_cpu_s_same_load_no_clients": round(baseline_cpu * args.seconds as f64 / args.seconds.min(5) as f64),
        "baseline_events": baseline_events,
        "server_cpu_ms_per_1000_notifications": round(notify_cpu * 1000.0 / (delivered.max(1) as f64 / 1000.0)),
        "targets": {
            "commit_to_client_p99_under_100ms": null,
            "commit_to_client_p99_under_100ms_document_clients": null,
            "connect_p99_under_500ms": null,
            "connect_under_load_p99_under_500ms": null,
            "per_client_rate_within_throttle": max_rate <= args.throttle as usize,
        },
    });
    let mut report = report;
    mark_targets(&mut report);
    drop(server);
    if args.json {
        output::line(&report.to_string())?;
    } else {
        output::json(&report)?;
    }
    Ok(Outcome::Clean)
}
