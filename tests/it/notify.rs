//! Notifications end to end against the `nexus` binary: the JavaScript client in headless
//! Chromium against `nexus up` (tests/it/notify/browser.mjs), Rust clients riding out a restart
//! of the dashboard's process with jittered backoff, and `nexus watch`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_runtime::notify::client::{ClientEvent, ClientOptions, NotificationClient};
use serde_json::{Value, json};

use crate::up::Up;

/// The browser run, all steps.
const RUN_LIMIT: Duration = Duration::from_secs(90);

fn token(data: &Path) -> String {
    let out = crate::support::nexus()
        .args(["token", "issue", "--role", "admin", "--data-dir"])
        .arg(data)
        .output()
        .expect("run nexus token issue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_javascript_client_shows_live_updates_and_resumes_after_a_drop_in_chromium() {
    let Some((chromium, modules)) = crate::support::available(crate::console::browser()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    let token = token(&data);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/it/notify/browser.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .env("NEXUS_NOTIFY_NODE_MODULES", &modules)
        .env("NEXUS_NOTIFY_CHROMIUM", &chromium)
        .env("NEXUS_NOTIFY_QUERY_URL", &up.query_url)
        .env("NEXUS_NOTIFY_COMMAND_URL", &up.command_url)
        .env("NEXUS_NOTIFY_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match status {
        Some(status) => assert!(status.success(), "a browser step failed:\n{report}"),
        None => panic!("the browser run took over {RUN_LIMIT:?}:\n{report}"),
    }
}

/// A free loopback port (bound and released; good enough for a test that binds it at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nexus up` on fixed ports, so a restart comes back where clients look for it.
fn up_on(data: &Path, command_port: u16, query_port: u16) -> Child {
    let mut child = crate::support::nexus()
        .args(["up", "--json", "--registry-port", "0", "--command-port"])
        .arg(command_port.to_string())
        .arg("--query-port")
        .arg(query_port.to_string())
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nexus up");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(
        first.contains("query_dashboard"),
        "nexus up printed {first}"
    );
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    child
}

fn place(command_url: &str, id: &str, body: Value) -> Value {
    let (status, answer) = crate::up::http(
        "POST",
        &format!("{command_url}/commands/order/{id}"),
        &[],
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");
    answer
}

/// `n` clients following order `r-1` of the dashboard at `query_url` (first retry within
/// 400 ms), each subscribed.
async fn subscribed_watchers(query_url: &str, n: usize) -> Vec<NotificationClient> {
    let mut watchers = Vec::new();
    for _ in 0..n {
        let mut options = ClientOptions::new(query_url, "orders");
        options.collection = Some("orders".into());
        options.id = Some("r-1".into());
        options.min_delay = Duration::from_millis(400);
        let mut client = NotificationClient::connect(options).unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .unwrap();
        assert!(
            matches!(event, Some(ClientEvent::Subscribed { .. })),
            "{event:?}"
        );
        watchers.push(client);
    }
    watchers
}

/// Follows one client through the dashboard's restart until it gets version 2 of `r-1`: each
/// retry waits at most the backoff's ceiling, and it resumes with only the change it missed.
/// Returns the delay before its first retry.
async fn back_after_the_restart(client: &mut NotificationClient) -> Duration {
    let mut delay = None;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("the client comes back")
            .unwrap();
        match event {
            ClientEvent::Disconnected {
                retry_in, attempt, ..
            } => {
                assert!(
                    retry_in <= Duration::from_millis(400) * 2u32.pow(attempt - 1),
                    "{retry_in:?} at attempt {attempt}"
                );
                delay.get_or_insert(retry_in);
            }
            // The new process continues the read model's epoch: the client resumes
            // from its position and gets the change it missed, with nothing to refetch.
            ClientEvent::Reset { .. } => panic!("a restart is not a new epoch: {event:?}"),
            ClientEvent::Notification(n) if n.aggregate_version == 2 => break,
            ClientEvent::Notification(n) => panic!("only the missed change: {n:?}"),
            ClientEvent::Subscribed { .. } | ClientEvent::Throttled { .. } => {}
            ClientEvent::Refused { code, message } => panic!("refused: {code} {message}"),
        }
    }
    delay.expect("the client saw the drop")
}

#[test]
fn clients_come_back_with_jittered_backoff_after_the_dashboard_restarts_and_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (command_port, query_port) = (free_port(), free_port());
    let command_url = format!("http://127.0.0.1:{command_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");
    let mut up = up_on(&data, command_port, query_port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients = 12;
    let mut watchers = runtime.block_on(subscribed_watchers(&query_url, clients));
    place(
        &command_url,
        "r-1",
        json!({"type": "PlaceOrder", "customer": "ada"}),
    );
    runtime.block_on(async {
        for client in &mut watchers {
            let event = tokio::time::timeout(Duration::from_secs(10), client.next())
                .await
                .unwrap();
            assert!(
                matches!(event, Some(ClientEvent::Notification(ref n)) if n.aggregate_version == 1),
                "{event:?}"
            );
        }
    });

    // The dashboard's process dies and comes back on the same ports.
    let _ = up.kill();
    let _ = up.wait();
    let mut up = up_on(&data, command_port, query_port);
    place(
        &command_url,
        "r-1",
        json!({"type": "AddItem", "sku": "s", "quantity": 1, "unit_price_cents": 5}),
    );
    let mut first_delays = Vec::new();
    runtime.block_on(async {
        for client in &mut watchers {
            first_delays.push(back_after_the_restart(client).await);
        }
    });
    // The document as the notification said, then live notifications again.
    let (status, order) = crate::up::http(
        "GET",
        &format!("{query_url}/read-models/orders/orders/r-1?wait_for=order/r-1@2"),
        &[],
        None,
    );
    assert_eq!(status, 200, "{order}");
    place(&command_url, "r-1", json!({"type": "ConfirmOrder"}));
    runtime.block_on(async {
        for client in &mut watchers {
            loop {
                let event = tokio::time::timeout(Duration::from_secs(20), client.next())
                    .await
                    .expect("live notifications go on")
                    .unwrap();
                if let ClientEvent::Notification(n) = event
                    && n.aggregate_version == 3
                {
                    break;
                }
            }
        }
    });
    // Full jitter: the first retries are spread over the window, not all at once.
    first_delays.sort();
    let spread = first_delays[first_delays.len() - 1] - first_delays[0];
    assert!(
        spread > Duration::from_millis(100),
        "first retries bunched: {first_delays:?}"
    );
    let _ = up.kill();
    let _ = up.wait();
}

#[test]
fn nexus_watch_prints_notifications_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    let mut watch = crate::support::nexus()
        .args([
            "watch",
            "orders/orders/w-1",
            "--json",
            "--count",
            "2",
            "--url",
            &up.query_url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nexus watch");
    // Lines arrive on a channel so that every wait below has a bound.
    let stdout = watch.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("nexus watch printed no {what} within 20 s"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {line}"))
    };
    let subscribed = next("subscription line");
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    place(
        &up.command_url,
        "w-1",
        json!({"type": "PlaceOrder", "customer": "ada"}),
    );
    // The hub coalesces the notifications of a document that a client has not taken yet
    // (latest wins), so two commands sent back to back may rightly arrive as one notification
    // and `--count 2` would wait on. The second command goes once the first one's is out.
    let first = next("first notification")["notification"].clone();
    assert_eq!(
        (first["id"].as_str(), first["aggregate_version"].as_u64()),
        (Some("w-1"), Some(1)),
        "{first}"
    );
    place(
        &up.command_url,
        "w-1",
        json!({"type": "AddItem", "sku": "s", "quantity": 2, "unit_price_cents": 5}),
    );
    let last = next("second notification")["notification"].clone();
    assert_eq!(
        (last["id"].as_str(), last["aggregate_version"].as_u64()),
        (Some("w-1"), Some(2)),
        "{last}"
    );
    assert!(last["event_id"].is_string() && last["correlation_id"].is_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "nexus watch did not stop after two notifications"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        lines.recv_timeout(Duration::from_secs(1)).is_err(),
        "nexus watch printed past --count 2"
    );
}
