//! The load: clients sending orders (place, add item, add item, confirm) to the command
//! service, each command with an `Idempotency-Key` and sent again with the same key until an
//! answer arrives, whatever dies in between. The ledger records every acknowledged command.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The event types each step of an order's script appends, in order.
pub(crate) const SCRIPT_EVENTS: [&str; 4] =
    ["OrderPlaced", "ItemAdded", "ItemAdded", "OrderConfirmed"];

/// Customers orders are spread over, so several clients update the same customer documents.
const CUSTOMERS: [&str; 5] = ["ada", "grace", "linus", "barbara", "edsger"];

/// How long a client keeps sending one command again before it records it as never acknowledged.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A small xorshift generator: the suite's faults are random but reproducible from a seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator for `seed` (`NEXUS_FAULT_SEED` when set, else the clock), and the seed.
    pub(crate) fn from_env() -> (Self, u64) {
        let seed = std::env::var("NEXUS_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        (Self(seed | 1), seed)
    }

    /// The next number in `[low, high)`.
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low).max(1)
    }
}

/// One command the command service acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    /// The order (aggregate id).
    pub(crate) order: String,
    /// The step of the script (0 = place, 3 = confirm).
    pub(crate) step: usize,
    /// The ids of the events the answer named.
    pub(crate) event_ids: Vec<String>,
    /// The stream version after the command.
    pub(crate) version: u64,
}

/// What the load did.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Every acknowledged command.
    pub(crate) acks: Vec<Ack>,
    /// Requests sent, first tries and repeats.
    pub(crate) requests: u64,
    /// Commands sent again because no answer came (connection refused, reset, timed out, 5xx).
    pub(crate) resent: u64,
    /// Answers flagged as replays of an earlier attempt (`"replayed": true`).
    pub(crate) replayed: u64,
    /// Answers no retry can explain (4xx other than the expected, malformed bodies).
    pub(crate) unexpected: Vec<String>,
    /// Commands never acknowledged within [`COMMAND_DEADLINE`].
    pub(crate) unacknowledged: Vec<String>,
}

impl Ledger {
    /// The orders that were started.
    pub(crate) fn orders(&self) -> std::collections::BTreeSet<&str> {
        self.acks.iter().map(|a| a.order.as_str()).collect()
    }
}

/// The command service URL clients send to; the fault driver moves it after a restart.
#[derive(Debug, Clone)]
pub(crate) struct Target(Arc<RwLock<String>>);

impl Target {
    pub(crate) fn new(url: &str) -> Self {
        Self(Arc::new(RwLock::new(url.to_owned())))
    }

    pub(crate) fn set(&self, url: &str) {
        *self.0.write().unwrap() = url.to_owned();
    }

    fn get(&self) -> String {
        self.0.read().unwrap().clone()
    }
}

/// Clients sending orders until [`Load::finish`].
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
    ledger: Arc<Mutex<Ledger>>,
    acknowledged: Arc<AtomicU64>,
}

impl Load {
    /// Starts `clients` clients sending to `target`; order ids start with `run`.
    pub(crate) fn start(clients: usize, target: &Target, run: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|client| {
                let (stop, ledger, acknowledged, target) = (
                    Arc::clone(&stop),
                    Arc::clone(&ledger),
                    Arc::clone(&acknowledged),
                    target.clone(),
                );
                let run = run.to_owned();
                std::thread::spawn(move || {
                    let mut sender = Sender {
                        target,
                        ledger,
                        acknowledged,
                    };
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        // A started order is always finished, so every order ends complete.
                        sender.order(&format!("{run}-c{client}-{n}"), client + n);
                        n += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            clients,
            ledger,
            acknowledged,
        }
    }

    /// Commands acknowledged so far.
    pub(crate) fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` more commands were acknowledged (at most `timeout`).
    pub(crate) fn wait_for_progress(&self, count: u64, timeout: Duration) {
        let start = self.acknowledged();
        let deadline = Instant::now() + timeout;
        while self.acknowledged() < start + count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops starting orders, lets every client finish its current one, returns the ledger.
    pub(crate) fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().expect("a load client panicked");
        }
        std::mem::take(&mut *self.ledger.lock().unwrap())
    }
}

struct Sender {
    target: Target,
    ledger: Arc<Mutex<Ledger>>,
    acknowledged: Arc<AtomicU64>,
}

impl Sender {
    /// Sends the four commands of one order.
    fn order(&mut self, order: &str, seed: usize) {
        let script = [
            json!({"type": "PlaceOrder", "customer": CUSTOMERS[seed % CUSTOMERS.len()]}),
            json!({"type": "AddItem", "sku": "tea", "quantity": 1 + seed % 3, "unit_price_cents": 150}),
            json!({"type": "AddItem", "sku": "cake", "quantity": 2, "unit_price_cents": 320}),
            json!({"type": "ConfirmOrder"}),
        ];
        for (step, command) in script.iter().enumerate() {
            if !self.command(order, step, command) {
                return;
            }
        }
    }

    /// Sends one command until it is acknowledged; false when it never was.
    fn command(&mut self, order: &str, step: usize, command: &Value) -> bool {
        let key = format!("{order}-step-{step}");
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let mut first = true;
        loop {
            let url = format!("{}/commands/order/{order}", self.target.get());
            let answer = request(
                "POST",
                &url,
                &[("Idempotency-Key", &key)],
                Some(command),
                Duration::from_secs(10),
            );
            let mut ledger = self.ledger.lock().unwrap();
            ledger.requests += 1;
            if !first {
                ledger.resent += 1;
            }
            first = false;
            match answer {
                Ok((200, body)) => {
                    let event_ids: Vec<String> = body["event_ids"]
                        .as_array()
                        .map(|ids| {
                            ids.iter()
                                .filter_map(|id| id.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    if body["replayed"] == json!(true) {
                        ledger.replayed += 1;
                    }
                    if event_ids.is_empty() {
                        ledger.unexpected.push(format!(
                            "{order} step {step}: 200 without event ids: {body}"
                        ));
                    }
                    ledger.acks.push(Ack {
                        order: order.to_owned(),
                        step,
                        event_ids,
                        version: body["version"].as_u64().unwrap_or(0),
                    });
                    self.acknowledged.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                // No answer, or the service is not ready (503) or failed (5xx): send it again.
                Err(_) | Ok((500..=599, _)) => {}
                Ok((status, body)) => {
                    ledger
                        .unexpected
                        .push(format!("{order} step {step}: {status} {body}"));
                    return false;
                }
            }
            if Instant::now() >= deadline {
                ledger.unacknowledged.push(format!("{order} step {step}"));
                return false;
            }
            drop(ledger);
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`: the status and the JSON body (`Null` when
/// the body is not JSON), or why no complete answer arrived.
pub(crate) fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let address = host
        .parse::<std::net::SocketAddr>()
        .map_err(|e| e.to_string())?;
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(&body);
    stream
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    parse_response(&response)
}

/// The status and JSON body of a complete HTTP/1.1 response (`Content-Length` or chunked).
fn parse_response(response: &[u8]) -> Result<(u16, Value), String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer ended within its head")?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status line")?;
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(body).ok_or("the chunked body ended early")?
    } else {
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(body.len());
        if body.len() < length {
            return Err("the body ended early".to_owned());
        }
        body[..length].to_owned()
    };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}
