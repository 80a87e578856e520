//! The notification endpoints of the query dashboard: WebSocket and Server-Sent Events over
//! one subscription core (`crate::notify`), a ticket endpoint for browsers, and the JavaScript
//! client.
//!
//! Both transports take a subscription from the URL (`projection`, `collection`, `id`, `since`,
//! and any other parameter as a field filter, as the list endpoint reads them), so the first
//! frames arrive without another round trip; a WebSocket client may add and drop subscriptions
//! with `subscribe`/`unsubscribe` frames. The credential travels in the `Authorization` or
//! `X-API-Key` header, in `Sec-WebSocket-Protocol` as `nexus.bearer.<base64url>` (browsers
//! cannot set headers on a WebSocket), or as a single-use ticket of 30 s from
//! `POST /notifications/tickets` — never as the long-lived credential in a URL.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next as Middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use nexus_access::{AccessControl, Permission, Principal};

use super::error::ApiError;
use super::extract::Query;
use crate::notify::{
    ClientMessage, Next, NotificationHub, Scope, ServerMessage, Session, SessionLimits, Since,
    parse_filter_value,
};

/// The subprotocol the WebSocket endpoint speaks.
pub const PROTOCOL: &str = "nexus.v1";
/// The prefix of a credential carried in `Sec-WebSocket-Protocol`.
pub const BEARER_PROTOCOL_PREFIX: &str = "nexus.bearer.";
/// How long a ticket is valid.
const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tickets outstanding at once.
const MAX_TICKETS: usize = 10_000;

/// Bounds and timers of the notification endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyOptions {
    /// Per client: throttle, mailbox and subscriptions.
    pub session: SessionLimits,
    /// Most WebSocket and SSE connections open at once (default 10 000); one more is a 503.
    pub max_connections: usize,
    /// How often the server pings (default 25 s).
    pub ping_interval: Duration,
    /// A WebSocket client silent this long (no frame, no pong) is closed (default 35 s).
    pub idle_timeout: Duration,
    /// A write that takes longer closes the client as slow (default 10 s).
    pub write_timeout: Duration,
    /// The WebSocket read buffer (default 4 KiB; tungstenite's own is 128 KiB per socket).
    pub read_buffer: usize,
    /// The WebSocket write buffer (default 4 KiB).
    pub write_buffer: usize,
    /// Most bytes buffered for writing before a write fails (default 64 KiB).
    pub max_write_buffer: usize,
    /// Largest frame a client may send (default 16 KiB).
    pub max_message: usize,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        Self {
            session: SessionLimits::default(),
            max_connections: 10_000,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(35),
            write_timeout: Duration::from_secs(10),
            read_buffer: 4 << 10,
            write_buffer: 4 << 10,
            max_write_buffer: 64 << 10,
            max_message: 16 << 10,
        }
    }
}

pub(super) struct NotifyState {
    hub: NotificationHub,
    options: NotifyOptions,
    projections: BTreeSet<String>,
    connections: Arc<Semaphore>,
    tickets: Tickets,
}

/// The notification routes: `/notifications/ws`, `/notifications/sse` and
/// `/notifications/tickets` behind `read-models:read`, and `/notifications/client.js`.
pub(super) fn routes(
    hub: NotificationHub,
    options: NotifyOptions,
    projections: BTreeSet<String>,
    access: &AccessControl,
) -> Router {
    let state = Arc::new(NotifyState {
        hub,
        options,
        connections: Arc::new(Semaphore::new(options.max_connections.max(1))),
        projections,
        tickets: Tickets::default(),
    });
    let carriers = Arc::clone(&state);
    Router::new()
        .route("/notifications/ws", get(websocket))
        .route("/notifications/sse", get(sse))
        .route("/notifications/tickets", post(ticket))
        .route_layer(access.require(Permission::ReadModelsRead))
        .route_layer(axum::middleware::from_fn(move |request, next| {
            credential_carriers(Arc::clone(&carriers), request, next)
        }))
        .route("/notifications/client.js", get(client_js))
        .with_state(state)
}

/// The JavaScript client (no dependencies), served so pages can load it from the dashboard.
pub const CLIENT_JS: &str = include_str!("notify.js");

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

/// Moves a credential from `Sec-WebSocket-Protocol` or a ticket into the headers the access
/// layer reads.
async fn credential_carriers(
    state: Arc<NotifyState>,
    mut request: Request,
    next: Middleware,
) -> Response {
    let from_protocol = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
        .map(str::to_owned);
    if let Some(encoded) = from_protocol {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok());
        let Some(value) = token else {
            return ApiError::InvalidHeader(format!(
                "the `{BEARER_PROTOCOL_PREFIX}` subprotocol must carry a base64url credential"
            ))
            .into_response();
        };
        request.headers_mut().insert(header::AUTHORIZATION, value);
    } else if let Some(ticket) = ticket_of(request.uri().query()) {
        match state.tickets.redeem(&ticket) {
            Some(Some((name, value))) => {
                request.headers_mut().insert(name, value);
            }
            Some(None) => {}
            None => {
                return ApiError::Unauthenticated(
                    "the ticket is unknown, used or expired; ask /notifications/tickets for another".into(),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

fn ticket_of(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
        .map(str::to_owned)
}

/// The credential header a ticket stands for (`None`: anonymous).
type Credential = Option<(HeaderName, HeaderValue)>;

/// Single-use tickets: ticket → when it expires and the credential it stands for.
#[derive(Default)]
struct Tickets {
    inner: Mutex<HashMap<String, (Instant, Credential)>>,
}

impl Tickets {
    fn issue(&self, credential: Credential) -> Result<String, ApiError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
        let ticket: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut tickets = self.inner.lock().expect("tickets lock poisoned");
        let now = Instant::now();
        tickets.retain(|_, (expires, _)| *expires > now);
        if tickets.len() >= MAX_TICKETS {
            return Err(ApiError::TooManyConnections { limit: MAX_TICKETS });
        }
        tickets.insert(ticket.clone(), (now + TICKET_TTL, credential));
        Ok(ticket)
    }

    /// `None`: no such valid ticket; `Some(credential)` otherwise (the ticket is used up).
    fn redeem(&self, ticket: &str) -> Option<Credential> {
        let mut tickets = self.inner.lock().expect("tickets lock poisoned");
        let (expires, credential) = tickets.remove(ticket)?;
        (expires > Instant::now()).then_some(credential)
    }
}

async fn ticket(
    State(state): State<Arc<NotifyState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let credential = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")]
        .into_iter()
        .find_map(|name| headers.get(&name).cloned().map(|value| (name, value)));
    let ticket = state.tickets.issue(credential)?;
    Ok(Json(
        json!({ "ticket": ticket, "expires_in_ms": TICKET_TTL.as_millis() as u64 }),
    ))
}

/// A subscription named in a URL.
struct UrlSubscription {
    projection: String,
    scope: Scope,
    since: Option<Since>,
}

impl NotifyState {
    fn check_projection(&self, projection: &str) -> Result<(), ApiError> {
        if self.projections.contains(projection) {
            Ok(())
        } else {
            Err(ApiError::UnknownProjection {
                name: projection.chars().take(256).collect(),
                known: self.projections.iter().cloned().collect(),
            })
        }
    }

    fn url_subscription(
        &self,
        pairs: Vec<(String, String)>,
    ) -> Result<Option<UrlSubscription>, ApiError> {
        let (mut projection, mut collection, mut id, mut since) = (None, None, None, None);
        let mut filter = Vec::new();
        for (key, value) in pairs {
            match key.as_str() {
                "projection" => projection = Some(value),
                "collection" => collection = Some(value),
                "id" => id = Some(value),
                "since" => {
                    since = Some(
                        value
                            .parse::<Since>()
                            .map_err(|e| ApiError::InvalidParameter(e.to_string()))?,
                    )
                }
                "ticket" => {}
                _ => filter.push((key, parse_filter_value(&value))),
            }
        }
        let Some(projection) = projection else {
            if collection.is_some() || id.is_some() || since.is_some() || !filter.is_empty() {
                return Err(ApiError::InvalidParameter(
                    "a subscription in the URL needs `projection`".into(),
                ));
            }
            return Ok(None);
        };
        self.check_projection(&projection)?;
        let scope = Scope::new(collection, id, filter).map_err(ApiError::InvalidParameter)?;
        Ok(Some(UrlSubscription {
            projection,
            scope,
            since,
        }))
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| {
                metrics::counter!("nexus_notify_refused_connections_total").increment(1);
                ApiError::TooManyConnections {
                    limit: self.options.max_connections,
                }
            })
    }
}

/// The close code of a connection whose credential expired: reconnect with a fresh one.
pub const EXPIRED_CLOSE_CODE: u16 = 4401;
const EXPIRED_REASON: &str = "expired: the credential expired; reconnect with a fresh one";

/// When a connection of `principal` must end: its credential's expiry, on the runtime's clock.
fn expiry(principal: Option<&Principal>) -> Option<tokio::time::Instant> {
    let expires_at = principal?.expires_at?;
    let left = expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

/// Waits until `deadline`; forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn websocket(
    State(state): State<Arc<NotifyState>>,
    principal: Option<axum::Extension<Principal>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let initial = state.url_subscription(pairs)?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::InvalidHeader(format!(
            "this endpoint speaks WebSocket ({PROTOCOL}): {rejection}"
        ))
    })?;
    let permit = state.admit()?;
    let options = state.options;
    let expires = expiry(principal.as_deref());
    Ok(upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(options.read_buffer)
        .write_buffer_size(options.write_buffer)
        .max_write_buffer_size(options.max_write_buffer)
        .max_message_size(options.max_message)
        .max_frame_size(options.max_message)
        .on_upgrade(move |socket| async move {
            run_socket(state, socket, initial, started, expires).await;
            drop(permit);
        }))
}

/// What ended a WebSocket connection, for its close frame and metrics.
enum End {
    /// The client went away.
    Gone,
    /// Closed by the server with a code (4000–4499: reconnect; 4500+: do not).
    Close(u16, &'static str),
}

async fn run_socket(
    state: Arc<NotifyState>,
    mut socket: WebSocket,
    initial: Option<UrlSubscription>,
    started: Instant,
    expires: Option<tokio::time::Instant>,
) {
    let options = state.options;
    let mut session = state.hub.connect(options.session);
    let ready = ServerMessage::Ready {
        connection: session.id(),
        ping_interval_ms: options.ping_interval.as_millis() as u64,
        throttle_per_second: options.session.per_second,
    };
    if send(&mut socket, &encode(&ready), options.write_timeout)
        .await
        .is_err()
    {
        return;
    }
    metrics::histogram!("nexus_notify_connect_seconds").record(started.elapsed().as_secs_f64());
    if let Some(initial) = initial {
        let reply = subscribe(
            &mut session,
            "0".into(),
            &initial.projection,
            initial.scope,
            initial.since.as_ref(),
        )
        .await;
        if send(&mut socket, &encode(&reply), options.write_timeout)
            .await
            .is_err()
        {
            return;
        }
    }
    let end = serve_socket(&state, &mut socket, &mut session, expires).await;
    if let End::Close(code, reason) = end {
        let dropped = match code {
            4008 => Some("slow"),
            4001 => Some("idle"),
            EXPIRED_CLOSE_CODE => Some("expired"),
            _ => None,
        };
        if let Some(dropped) = dropped {
            metrics::counter!("nexus_notify_dropped_clients_total", "reason" => dropped)
                .increment(1);
        }
        tracing::debug!(
            connection = session.id(),
            code,
            reason,
            "closing notification socket"
        );
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(close)).await;
    }
}

async fn serve_socket(
    state: &NotifyState,
    socket: &mut WebSocket,
    session: &mut Session,
    expires: Option<tokio::time::Instant>,
) -> End {
    let options = state.options;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + options.ping_interval,
        options.ping_interval,
    );
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            received = socket.recv() => {
                last_heard = Instant::now();
                let text = match received {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Gone,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => return End::Close(4500, "binary frames are not part of nexus.v1"),
                    Some(Ok(Message::Text(text))) => text,
                };
                let reply = match serde_json::from_str::<ClientMessage>(&text) {
                    Err(err) => error("invalid_message", err.to_string(), None),
                    Ok(ClientMessage::Ping) => ServerMessage::Pong,
                    Ok(ClientMessage::Unsubscribe { sub }) => {
                        if session.unsubscribe(&sub) {
                            ServerMessage::Unsubscribed { sub }
                        } else {
                            error("unknown_subscription", format!("no subscription `{}`", short(&sub)), Some(sub))
                        }
                    }
                    Ok(ClientMessage::Subscribe { sub, projection, collection, id, filter, since }) => {
                        subscribe_message(state, session, sub, projection, collection, id, filter, since).await
                    }
                };
                if send(socket, &encode(&reply), options.write_timeout).await.is_err() {
                    return slow(session);
                }
            }
            next = session.next() => match next {
                Next::Closed(reason) => return End::Close(reason.code(), reason.as_str()),
                Next::Frame { text, committed } => {
                    if send(socket, &text, options.write_timeout).await.is_err() {
                        return slow(session);
                    }
                    if let Some(committed) = committed {
                        metrics::counter!("nexus_notify_sent_total").increment(1);
                        metrics::histogram!("nexus_notify_commit_to_send_seconds").record(committed.elapsed().as_secs_f64());
                    }
                }
            },
            () = until(expires) => return End::Close(EXPIRED_CLOSE_CODE, EXPIRED_REASON),
            _ = ping.tick() => {
                if last_heard.elapsed() > options.idle_timeout {
                    return End::Close(4001, "idle: no frame or pong within the idle timeout");
                }
                if tokio::time::timeout(options.write_timeout, socket.send(Message::Ping(Default::default()))).await.is_err() {
                    return slow(session);
                }
            }
        }
    }
}

fn slow(session: &Session) -> End {
    session.close(crate::notify::CloseReason::Slow);
    End::Close(4008, crate::notify::CloseReason::Slow.as_str())
}

#[expect(
    clippy::too_many_arguments,
    reason = "the fields of one subscribe frame"
)]
async fn subscribe_message(
    state: &NotifyState,
    session: &mut Session,
    sub: String,
    projection: String,
    collection: Option<String>,
    id: Option<String>,
    filter: Option<serde_json::Map<String, Value>>,
    since: Option<String>,
) -> ServerMessage {
    if sub.is_empty() || sub.len() > 64 {
        return error(
            "invalid_subscription",
            "`sub` must be 1 to 64 bytes".into(),
            None,
        );
    }
    if let Err(err) = state.check_projection(&projection) {
        return error("unknown_projection", err.to_string(), Some(sub));
    }
    let since = match since.map(|s| s.parse::<Since>()).transpose() {
        Ok(since) => since,
        Err(err) => return error("invalid_subscription", err.to_string(), Some(sub)),
    };
    let filter = filter.unwrap_or_default().into_iter().collect();
    match Scope::new(collection, id, filter) {
        Ok(scope) => subscribe(session, sub, &projection, scope, since.as_ref()).await,
        Err(message) => error("invalid_subscription", message, Some(sub)),
    }
}

async fn subscribe(
    session: &mut Session,
    sub: String,
    projection: &str,
    scope: Scope,
    since: Option<&Since>,
) -> ServerMessage {
    match session.subscribe(&sub, projection, scope, since).await {
        Ok(subscribed) => ServerMessage::Subscribed {
            sub,
            projection: projection.to_owned(),
            epoch: subscribed.epoch,
            position: subscribed.position,
            replayed: subscribed.replayed,
        },
        Err(err) => error("subscription_refused", err.to_string(), Some(sub)),
    }
}

fn error(code: &str, message: String, sub: Option<String>) -> ServerMessage {
    ServerMessage::Error {
        code: code.to_owned(),
        message,
        sub,
    }
}

fn short(text: &str) -> String {
    text.chars().take(64).collect()
}

async fn send(socket: &mut WebSocket, text: &str, timeout: Duration) -> Result<(), ()> {
    match tokio::time::timeout(timeout, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn encode(message: &ServerMessage) -> String {
    serde_json::to_string(message).unwrap_or_else(|_| "{}".to_owned())
}

async fn sse(
    State(state): State<Arc<NotifyState>>,
    principal: Option<axum::Extension<Principal>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut subscription = state.url_subscription(pairs)?.ok_or_else(|| {
        ApiError::InvalidParameter("name the subscription: `projection` is required".into())
    })?;
    if let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .ok()
            .and_then(|l| l.parse::<Since>().ok())
            .ok_or_else(|| {
                ApiError::InvalidHeader("Last-Event-ID must look like `epoch:position`".into())
            })?;
        subscription.since = Some(last);
    }
    let permit = state.admit()?;
    let options = state.options;
    let mut session = state.hub.connect(options.session);
    let first = subscribe(
        &mut session,
        "0".into(),
        &subscription.projection,
        subscription.scope,
        subscription.since.as_ref(),
    )
    .await;
    let first = sse_event(&first, subscription.since.as_ref());
    let expires = expiry(principal.as_deref());
    let stream = futures::stream::unfold(
        (Some(first), Some(session), permit),
        move |(first, session, permit)| async move {
            if let Some(first) = first {
                return Some((
                    Ok::<Event, std::convert::Infallible>(first),
                    (None, session, permit),
                ));
            }
            // After the closing event, the stream ends.
            let mut session = session?;
            let next = tokio::select! {
                next = session.next() => next,
                () = until(expires) => {
                    metrics::counter!("nexus_notify_dropped_clients_total", "reason" => "expired")
                        .increment(1);
                    let closed = ServerMessage::Closed {
                        code: EXPIRED_CLOSE_CODE,
                        reason: EXPIRED_REASON.to_owned(),
                    };
                    return Some((Ok(sse_event(&closed, None)), (None, None, permit)));
                }
            };
            match next {
                Next::Closed(reason) => {
                    metrics::counter!("nexus_notify_dropped_clients_total", "reason" => "slow")
                        .increment(1);
                    tracing::debug!(
                        connection = session.id(),
                        reason = reason.as_str(),
                        "closing notification stream"
                    );
                    None
                }
                Next::Frame { text, committed } => {
                    if let Some(committed) = committed {
                        metrics::counter!("nexus_notify_sent_total").increment(1);
                        metrics::histogram!("nexus_notify_commit_to_send_seconds")
                            .record(committed.elapsed().as_secs_f64());
                    }
                    let message: ServerMessage = match serde_json::from_str(&text) {
                        Ok(message) => message,
                        Err(_) => return None,
                    };
                    Some((Ok(sse_event(&message, None)), (None, Some(session), permit)))
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(options.ping_interval))
        .into_response())
}

/// An SSE event: the frame's type as the event name, the frame as data, and the
/// `epoch:position` id that `EventSource` sends back as `Last-Event-ID`: for a notification its
/// `resume` mark (its own position may be above changes still to come), for a reset or a
/// subscription the position they start from.
/// Until a notification moves it, a client that resumed goes on resuming from `resumed` (the
/// replay its `subscribed` announced is still to come), not from the newest position.
fn sse_event(message: &ServerMessage, resumed: Option<&Since>) -> Event {
    let (name, id) = match message {
        ServerMessage::Notification(n) => (
            "notification",
            Some(format!("{}:{}", n.epoch, n.resume.unwrap_or(n.position))),
        ),
        ServerMessage::Subscribed {
            epoch, position, ..
        } => (
            "subscribed",
            Some(resumed.map_or_else(|| format!("{epoch}:{position}"), Since::to_string)),
        ),
        ServerMessage::Reset {
            epoch, position, ..
        } => ("reset", Some(format!("{epoch}:{position}"))),
        ServerMessage::Throttled { .. } => ("throttled", None),
        ServerMessage::Error { .. } => ("refused", None),
        ServerMessage::Ready { .. } => ("ready", None),
        ServerMessage::Unsubscribed { .. } => ("unsubscribed", None),
        ServerMessage::Pong => ("pong", None),
        ServerMessage::Closed { .. } => ("closed", None),
    };
    let event = Event::default().event(name).data(encode(message));
    match id {
        Some(id) => event.id(id),
        None => event,
    }
}
