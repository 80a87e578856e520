//! The Rust client of the query dashboard's notifications (feature `notify-client`).
//!
//! [`NotificationClient::connect`] starts a background task that holds one WebSocket
//! connection, reconnects after a drop with exponential backoff and full jitter (a random delay
//! in `[0, min(max_delay, min_delay · 2^attempt))`, the first attempt included, so clients
//! dropped together come back spread out), resumes from the last `resume` mark it got, and
//! declares the link dead when nothing arrives for the server's ping interval plus 10 s. The
//! credential travels in `Sec-WebSocket-Protocol`, never in the URL.
//!
//! A throttled or lagging client gets notifications out of position order, so its resume mark
//! can trail documents it already has; a resume replays those. The client remembers each
//! document delivered above the mark (at most about the server's mailbox bound, forgotten as
//! the mark passes it) and skips a replayed notification it already has, or trims the part of
//! a coalesced range it already delivered: nothing is delivered twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, PercentEncode, utf8_percent_encode};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::notification::{Coalesced, Notification, ResetReason, ServerMessage, Since};

/// What to follow and how to reconnect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The query dashboard's base URL (`http://127.0.0.1:8081`; `ws://` works too).
    pub url: String,
    /// A bearer token or API key, sent in `Sec-WebSocket-Protocol`.
    pub token: Option<String>,
    /// The projection.
    pub projection: String,
    /// Only this collection.
    pub collection: Option<String>,
    /// Only this document (with `collection`).
    pub id: Option<String>,
    /// Only documents whose fields equal these values (with `collection`).
    pub filter: Vec<(String, Value)>,
    /// Resume after this position on the first connection.
    pub since: Option<Since>,
    /// The backoff's base (default 500 ms).
    pub min_delay: Duration,
    /// The backoff's cap (default 20 s).
    pub max_delay: Duration,
    /// How long one connection attempt may take (default 10 s).
    pub connect_timeout: Duration,
    /// Events buffered for the application (default 1 024); the socket is not read meanwhile.
    pub buffer: usize,
}

impl ClientOptions {
    /// Following every document of `projection` at the dashboard at `url`.
    pub fn new(url: impl Into<String>, projection: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            projection: projection.into(),
            collection: None,
            id: None,
            filter: Vec::new(),
            since: None,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            buffer: 1024,
        }
    }
}

/// What the application gets.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Connected and subscribed; notifications from `position` on follow (after any replay).
    Subscribed {
        /// The projection's epoch.
        epoch: String,
        /// Its newest position when the subscription started.
        position: u64,
        /// Notifications replayed after the resume position, delivered next.
        replayed: u64,
    },
    /// A document changed (never a change already delivered). Per document, versions rise;
    /// across documents, a throttled client gets them in turn order, not position order.
    Notification(Box<Notification>),
    /// The position could not be resumed: refetch the documents, then go on.
    Reset {
        /// The projection's epoch now.
        epoch: String,
        /// Its newest position now.
        position: u64,
        /// Why.
        reason: ResetReason,
    },
    /// The server coalesces: more notifications than the limit arrive.
    Throttled {
        /// The limit per second.
        limit: u32,
    },
    /// The server refused the subscription; the client stops.
    Refused {
        /// The server's code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The connection dropped; the next attempt comes after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// The jittered delay before the next attempt.
        retry_in: Duration,
        /// Attempts since the last good connection.
        attempt: u32,
    },
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not an `http(s)://` or `ws(s)://` URL.
    #[error("`{0}` is not an http(s) or ws(s) URL")]
    InvalidUrl(String),
}

/// A running client; dropping it closes the connection.
#[derive(Debug)]
pub struct NotificationClient {
    events: mpsc::Receiver<ClientEvent>,
    position: Arc<Mutex<Resume>>,
    task: JoinHandle<()>,
}

/// Where the client resumes from, and what it delivered above that.
#[derive(Debug, Default)]
struct Resume {
    since: Option<Since>,
    above: Delivered,
}

/// The documents delivered above the resume mark, which a resume from the mark replays.
#[derive(Debug, Default)]
struct Delivered {
    by_document: HashMap<(String, String), Last>,
    /// Position → the document delivered at it (positions are unique within an epoch).
    by_position: BTreeMap<u64, (String, String)>,
}

/// A document's last notification delivered.
#[derive(Debug)]
struct Last {
    position: u64,
    aggregate_id: String,
    aggregate_version: u64,
}

impl Delivered {
    fn clear(&mut self) {
        self.by_document.clear();
        self.by_position.clear();
    }

    /// Forgets what is at or below `mark`: no resume replays it again.
    fn prune(&mut self, mark: u64) {
        while let Some(entry) = self.by_position.first_entry() {
            if *entry.key() > mark {
                break;
            }
            let document = entry.remove();
            self.by_document.remove(&document);
        }
    }

    /// `note` less what was already delivered of its document: `None` when it has nothing new.
    fn fresh(&self, mut note: Notification) -> Option<Notification> {
        let document = (note.collection.clone(), note.id.clone());
        let Some(last) = self.by_document.get(&document) else {
            return Some(note);
        };
        if note.position <= last.position {
            return None;
        }
        // A replay folds the changes after the mark, some of which this client had: the range
        // starts after the version it has (a range of another aggregate cannot be compared).
        if let Some(coalesced) = note.coalesced
            && note.aggregate_id == last.aggregate_id
            && coalesced.from_version <= last.aggregate_version
        {
            let count = coalesced.count.min(
                note.aggregate_version
                    .saturating_sub(last.aggregate_version),
            );
            note.coalesced = (count >= 2).then_some(Coalesced {
                count,
                from_version: last.aggregate_version + 1,
            });
        }
        Some(note)
    }

    fn remember(&mut self, note: &Notification) {
        let document = (note.collection.clone(), note.id.clone());
        let last = Last {
            position: note.position,
            aggregate_id: note.aggregate_id.clone(),
            aggregate_version: note.aggregate_version,
        };
        if let Some(old) = self.by_document.insert(document.clone(), last) {
            self.by_position.remove(&old.position);
        }
        self.by_position.insert(note.position, document);
    }

    fn len(&self) -> usize {
        self.by_document.len()
    }
}

impl Drop for NotificationClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NotificationClient {
    /// Starts following; the first connection is made in the background.
    pub fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        let base = ws_base(&options.url)?;
        let (sender, events) = mpsc::channel(options.buffer.max(1));
        let position = Arc::new(Mutex::new(Resume {
            since: options.since.clone(),
            above: Delivered::default(),
        }));
        let task = tokio::spawn(run(base, options, sender, Arc::clone(&position)));
        Ok(Self {
            events,
            position,
            task,
        })
    }

    /// The next event; `None` once the client stopped (refused, or closed for good).
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// The resume mark: every change up to it was delivered, to resume from in another
    /// process (which may then get again what was delivered above it).
    pub fn position(&self) -> Option<Since> {
        self.position
            .lock()
            .expect("position lock poisoned")
            .since
            .clone()
    }

    /// Documents remembered as delivered above the resume mark, so that a resume does not
    /// deliver them twice (bounded by the server's mailbox, `max_pending`).
    pub fn remembered(&self) -> usize {
        self.position
            .lock()
            .expect("position lock poisoned")
            .above
            .len()
    }
}

fn ws_base(url: &str) -> Result<String, ClientError> {
    let url = url.trim_end_matches('/');
    for (from, to) in [
        ("http://", "ws://"),
        ("https://", "wss://"),
        ("ws://", "ws://"),
        ("wss://", "wss://"),
    ] {
        if let Some(rest) = url.strip_prefix(from)
            && !rest.is_empty()
        {
            return Ok(format!("{to}{rest}"));
        }
    }
    Err(ClientError::InvalidUrl(crate::redact::url(url)))
}

/// `[0, min(max, min · 2^attempt))`, uniformly.
fn backoff(options: &ClientOptions, attempt: u32) -> Duration {
    let ceiling = options
        .min_delay
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(options.max_delay);
    let mut bytes = [0u8; 8];
    let random = if getrandom::fill(&mut bytes).is_ok() {
        u64::from_le_bytes(bytes)
    } else {
        u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    };
    ceiling.mul_f64(random as f64 / u64::MAX as f64)
}

/// What a query component keeps as it is: RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode_component(text: &str) -> PercentEncode<'_> {
    utf8_percent_encode(text, COMPONENT)
}

fn request_url(base: &str, options: &ClientOptions, since: Option<&Since>) -> String {
    let mut query = vec![format!(
        "projection={}",
        encode_component(&options.projection)
    )];
    if let Some(collection) = &options.collection {
        query.push(format!("collection={}", encode_component(collection)));
    }
    if let Some(id) = &options.id {
        query.push(format!("id={}", encode_component(id)));
    }
    for (field, value) in &options.filter {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        query.push(format!(
            "{}={}",
            encode_component(field),
            encode_component(&value)
        ));
    }
    if let Some(since) = since {
        query.push(format!("since={}", encode_component(&since.to_string())));
    }
    format!("{base}/notifications/ws?{}", query.join("&"))
}

/// How one connection ended.
enum Ended {
    /// Reconnect after a backoff.
    Retry(String),
    /// Stop for good.
    Stop,
}

async fn run(
    base: String,
    options: ClientOptions,
    events: mpsc::Sender<ClientEvent>,
    position: Arc<Mutex<Resume>>,
) {
    let mut attempt = 0u32;
    loop {
        let since = position
            .lock()
            .expect("position lock poisoned")
            .since
            .clone();
        let url = request_url(&base, &options, since.as_ref());
        let outcome = match connection(&url, &options, &events, &position, &mut attempt).await {
            Ended::Stop => return,
            Ended::Retry(reason) => reason,
        };
        let retry_in = backoff(&options, attempt);
        attempt = attempt.saturating_add(1);
        let event = ClientEvent::Disconnected {
            reason: outcome,
            retry_in,
            attempt,
        };
        if events.send(event).await.is_err() {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// A WebSocket connection to the dashboard.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The upgrade request for `url`, with the subprotocol and the credential in
/// `Sec-WebSocket-Protocol`.
fn upgrade_request(url: &str, options: &ClientOptions) -> Result<Request, Ended> {
    let mut request = url
        .into_client_request()
        .map_err(|err| Ended::Retry(format!("bad request: {err}")))?;
    let mut protocols = PROTOCOL.to_owned();
    if let Some(token) = &options.token {
        protocols.push_str(", nexus.bearer.");
        protocols.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
    }
    let value = HeaderValue::from_str(&protocols)
        .map_err(|_| Ended::Retry("the credential cannot travel in a header".into()))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", value);
    Ok(request)
}

/// Tells the application the server refused it, and stops.
async fn refused(events: &mpsc::Sender<ClientEvent>, code: String, message: String) -> Ended {
    let _ = events.send(ClientEvent::Refused { code, message }).await;
    Ended::Stop
}

/// Connects within the connect timeout; a refusal that retrying cannot change (a 4xx other
/// than 429) stops the client.
async fn open_socket(
    request: Request,
    options: &ClientOptions,
    events: &mpsc::Sender<ClientEvent>,
) -> Result<Socket, Ended> {
    let config = WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(options.connect_timeout, connect).await {
        Err(_) => Err(Ended::Retry("connect timed out".into())),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status();
            // 401/403/404/400 will not get better by retrying.
            if status.is_client_error() && status.as_u16() != 429 {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).chars().take(300).collect())
                    .unwrap_or_default();
                return Err(refused(events, status.as_u16().to_string(), body).await);
            }
            Err(Ended::Retry(format!("HTTP {status}")))
        }
        Ok(Err(err)) => Err(Ended::Retry(err.to_string())),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// The next text frame, `None` after a control frame; the connection ends on silence longer
/// than `silence`, on an error, or on a close frame (a close code in 4500..5000 is a refusal).
async fn next_text(
    socket: &mut Socket,
    silence: Duration,
    events: &mpsc::Sender<ClientEvent>,
) -> Result<Option<Utf8Bytes>, Ended> {
    let frame = match tokio::time::timeout(silence, socket.next()).await {
        Err(_) => {
            return Err(Ended::Retry(
                "no frame within the ping interval plus 10 s".into(),
            ));
        }
        Ok(None) => return Err(Ended::Retry("the server closed the connection".into())),
        Ok(Some(Err(err))) => return Err(Ended::Retry(err.to_string())),
        Ok(Some(Ok(frame))) => frame,
    };
    match frame {
        Message::Text(text) => Ok(Some(text)),
        Message::Close(close) => {
            let (code, reason) = close.map_or((1005, String::new()), |c| {
                (u16::from(c.code), c.reason.to_string())
            });
            if (4500..5000).contains(&code) {
                return Err(refused(events, code.to_string(), reason).await);
            }
            Err(Ended::Retry(format!(
                "closed by the server: {code} {reason}"
            )))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Binary(_) => {
            // Pongs to the server's pings go out with the next read or write.
            let _ = socket.flush().await;
            Ok(None)
        }
    }
}

/// What a server message means to the client.
enum Delivery {
    /// The server is ready and pings this often.
    Ready(Duration),
    /// Hand this to the application.
    Deliver(ClientEvent),
    /// Nothing for the application (a notification already delivered, a pong, …).
    Skip,
    /// The server refused the subscription.
    Refused { code: String, message: String },
}

/// Reads one server message, moving the resume `position` forward for what it delivers.
fn delivery(message: ServerMessage, position: &Mutex<Resume>) -> Delivery {
    let mut resume = position.lock().expect("position lock poisoned");
    let event = match message {
        ServerMessage::Ready {
            ping_interval_ms, ..
        } => return Delivery::Ready(Duration::from_millis(ping_interval_ms)),
        ServerMessage::Subscribed {
            epoch,
            position: at,
            replayed,
            ..
        } => {
            if resume.since.is_none() {
                resume.since = Some(Since {
                    epoch: epoch.clone(),
                    position: at,
                });
            }
            ClientEvent::Subscribed {
                epoch,
                position: at,
                replayed,
            }
        }
        ServerMessage::Notification(note) => match resume.take(note) {
            Some(note) => ClientEvent::Notification(Box::new(note)),
            None => return Delivery::Skip,
        },
        ServerMessage::Reset {
            epoch,
            position: at,
            reason,
            ..
        } => {
            resume.since = Some(Since {
                epoch: epoch.clone(),
                position: at,
            });
            resume.above.clear();
            ClientEvent::Reset {
                epoch,
                position: at,
                reason,
            }
        }
        ServerMessage::Throttled { limit, .. } => ClientEvent::Throttled { limit },
        ServerMessage::Error { code, message, .. } => {
            return Delivery::Refused { code, message };
        }
        // `closed` is for Server-Sent Events; a WebSocket gets a close frame.
        ServerMessage::Unsubscribed { .. } | ServerMessage::Pong | ServerMessage::Closed { .. } => {
            return Delivery::Skip;
        }
    };
    Delivery::Deliver(event)
}

impl Resume {
    /// Takes a notification in: what of it is new (`None`: nothing), moving the mark to its
    /// `resume` and remembering it while it is above the mark.
    fn take(&mut self, note: Notification) -> Option<Notification> {
        let known = self
            .since
            .as_ref()
            .filter(|k| k.epoch == note.epoch)
            .map(|k| k.position);
        if known.is_none() {
            self.above.clear();
        }
        let mark = note.resume.unwrap_or(note.position).max(known.unwrap_or(0));
        let epoch = note.epoch.clone();
        let fresh = if known.is_some_and(|k| note.position <= k) {
            None
        } else {
            self.above.fresh(note)
        };
        if let Some(fresh) = &fresh
            && fresh.position > mark
        {
            self.above.remember(fresh);
        }
        self.above.prune(mark);
        self.since = Some(Since {
            epoch,
            position: mark,
        });
        fresh
    }
}

/// One connection, from the upgrade until it ends; a `ready` from the server resets `attempt`.
async fn connection(
    url: &str,
    options: &ClientOptions,
    events: &mpsc::Sender<ClientEvent>,
    position: &Mutex<Resume>,
    attempt: &mut u32,
) -> Ended {
    let request = match upgrade_request(url, options) {
        Ok(request) => request,
        Err(ended) => return ended,
    };
    let mut socket = match open_socket(request, options, events).await {
        Ok(socket) => socket,
        Err(ended) => return ended,
    };
    let mut silence = Duration::from_secs(35);
    loop {
        let text = match next_text(&mut socket, silence, events).await {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(ended) => return ended,
        };
        let Ok(message) = serde_json::from_str::<ServerMessage>(&text) else {
            continue;
        };
        let event = match delivery(message, position) {
            Delivery::Ready(ping_interval) => {
                silence = ping_interval + Duration::from_secs(10);
                *attempt = 0;
                continue;
            }
            Delivery::Deliver(event) => event,
            Delivery::Skip => continue,
            Delivery::Refused { code, message } => return refused(events, code, message).await,
        };
        if events.send(event).await.is_err() {
            return Ended::Stop;
        }
    }
}

/// The subprotocol the client speaks.
pub(crate) const PROTOCOL: &str = "nexus.v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_growing_capped_ceiling() {
        let options = ClientOptions::new("http://x", "p");
        for attempt in 0..12 {
            let ceiling = Duration::from_millis(500)
                .saturating_mul(2u32.pow(attempt))
                .min(Duration::from_secs(20));
            let delays: Vec<Duration> = (0..200).map(|_| backoff(&options, attempt)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            let mean = delays.iter().sum::<Duration>() / 200;
            assert!(
                mean > ceiling / 4 && mean < ceiling * 3 / 4,
                "attempt {attempt}: mean {mean:?} of {ceiling:?}"
            );
        }
    }

    #[test]
    fn urls_become_websocket_urls_with_an_encoded_subscription() {
        assert_eq!(ws_base("http://h:1/").unwrap(), "ws://h:1");
        assert_eq!(ws_base("https://h").unwrap(), "wss://h");
        assert!(ws_base("ftp://h").is_err());
        let mut options = ClientOptions::new("http://h", "orders");
        options.collection = Some("orders".into());
        options.filter = vec![("customer.name".into(), Value::String("Ada L".into()))];
        let since = Since {
            epoch: "ab".into(),
            position: 7,
        };
        assert_eq!(
            request_url("ws://h", &options, Some(&since)),
            "ws://h/notifications/ws?projection=orders&collection=orders&customer.name=Ada%20L&since=ab%3A7"
        );
    }
}
