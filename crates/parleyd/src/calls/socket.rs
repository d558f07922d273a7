//! The realtime side: Socket.IO handshake auth, the client events, and their replies.
//!
//! Handlers only check, rate-limit and forward; every decision is the switchboard's.

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_call::{ConnId, Origin, Reply, SignalKind, TokenBucket, UserInfo};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Socket;

use super::limits::{DeviceSlot, PendingSlot, StatsRefusal};
use super::{
    Action, Command, call_error, callee_found, payload, refine_not_found, ring, user_info, user_key,
};
use crate::http::error::{ApiError, Code};
use crate::state::AppState;

/// How often the daemon checks the login sessions of connected sockets against the database:
/// `parley user passwd` / `disable` run in another process and only write the database, and
/// tokens expire on their own. A revoked or expired session's sockets are disconnected within
/// this time; `call:initiate` and `call:accept` also check the session themselves.
const SESSION_SWEEP: Duration = Duration::from_secs(2);

/// A client gets this long after opening its Engine.IO connection to send the Socket.IO
/// CONNECT with its token (real clients send it at once). socketioxide's default is 45 s, and
/// until then it keeps the connection's memory even after the client has gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The biggest Socket.IO message we read: a 64 KiB SDP plus its envelope. socketioxide's
/// defaults (64 MiB messages, 16 MiB frames) would let one client make us buffer that much.
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// How much tungstenite reads from a WebSocket at a time, and the read buffer every connection
/// keeps for its life. socketioxide's default is 4 KiB; almost every client message (pongs,
/// events, ICE candidates) is a few hundred bytes, and a bigger one (an SDP) reserves its own
/// length and is read in several steps. 1 KiB: 4.1 -> 1.0 KiB per idle connection in heaptrack
/// (docs/benchmarks.md, issue 14).
const WS_READ_BUFFER_BYTES: usize = 1024;

const CLIENT_EVENTS: [&str; 10] = [
    "call:initiate",
    "call:accept",
    "call:decline",
    "call:cancel",
    "call:end",
    "signal:offer",
    "signal:answer",
    "signal:ice",
    "media:state",
    "call:stats",
];

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Who a socket is, set by the handshake middleware. Kept behind an `Arc` in the socket's
/// extensions: every event reads it, and cloning the names and ids in it each time was an
/// allocation per string per event (issue 14). Its fields are held inline, not each behind an
/// `Arc` of its own: that `Arc` is the only handle, and five more allocations per socket were
/// about 0.3 KiB per idle connection (heaptrack, issue 14).
struct SocketAuth {
    conn: ConnId,
    user: UserInfo,
    /// `calls.events_per_second` / `calls.events_burst` for this socket.
    bucket: Mutex<TokenBucket>,
    /// The driver, reachable from the synchronous extractor.
    calls: super::Handle,
    /// Set once the driver has been told about this socket (`ensure_registered`).
    registered: AtomicBool,
    /// This socket's place among its user's devices (`calls.max_devices_per_user`), and the
    /// socket's deviceId and login session (kept there once, not here again: issue 14).
    device_slot: DeviceSlot,
    /// Calls this socket is a call device of, as far as it has seen: its own initiate or accept
    /// succeeded, or the switchboard relayed its signaling. Checked by `call:stats`, which may
    /// also come after the call ended (when the switchboard no longer knows the binding).
    bound: Mutex<Vec<parley_call::CallId>>,
}

impl SocketAuth {
    fn remember_bound(&self, call_id: &parley_call::CallId) {
        let Ok(mut bound) = self.bound.lock() else {
            return;
        };
        if !bound.contains(call_id) {
            // A device is in one call at a time; a few recent ones cover the report window.
            if bound.len() >= 4 {
                bound.remove(0);
            }
            bound.push(call_id.clone());
        }
    }

    fn is_bound(&self, call_id: &parley_call::CallId) -> bool {
        self.bound.lock().is_ok_and(|bound| bound.contains(call_id))
    }
}

/// The handshake refusal: `connect_error` with `{ message, data: { code } }` as the spec says
/// (`message` is the code too, as clients match on it). `why` goes to the log.
/// socketioxide sends the error's Display as the message; the vendored parser patch
/// (vendor/README.md) sends a JSON object with a `message` key as the whole packet data.
#[derive(Debug)]
struct Refusal {
    code: Code,
    why: &'static str,
}

#[allow(non_upper_case_globals)]
const Unauthorized: Refusal = Refusal {
    code: Code::Unauthorized,
    why: "missing, invalid or expired token",
};

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        log::debug!("realtime connection refused: {}", self.why);
        let body = json!({
            "message": self.code.as_str(),
            "data": { "code": self.code.as_str() },
        });
        write!(f, "{body}")
    }
}

/// Whether the client asked for an acknowledgement; without one, failures go out as
/// `call:error`. socketioxide's `AckSender` does not say, so this reads the ack id itself.
struct HasAck(bool);

impl FromMessageParts<LocalAdapter> for HasAck {
    type Error = Infallible;

    fn from_message_parts(
        _socket: &Arc<Socket<LocalAdapter>>,
        _value: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<HasAck, Infallible> {
        Ok(HasAck(ack_id.is_some()))
    }
}

/// The Socket.IO layer with Parley's limits and handlers. `state.calls` must be the handle of
/// the driver that will be spawned with the returned `SocketIo`.
pub fn socket_layer(state: AppState) -> (RealtimeLayer, SocketIo) {
    let pending = state.calls.limits.pending.clone();
    tokio::spawn(sweep_sessions(state.clone()));
    let (layer, io) = SocketIo::builder()
        .ws_max_message_size(MAX_MESSAGE_BYTES)
        .ws_max_frame_size(MAX_MESSAGE_BYTES)
        // Each frame is written as it is fed, so a burst (presence while many sign in) never
        // grows a connection's write buffer past one frame (vendor/README.md; 51 -> 44 KiB per
        // idle connection at 3,000, 71 -> 64 KiB at 5,000: docs/benchmarks.md); and the
        // vendored tungstenite frees that frame's buffer once it is written, where it used to
        // keep the largest frame's capacity for the connection's life (17.0 -> 13.2 KiB per
        // idle connection at 10,000).
        .ws_write_buffer_size(0)
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_payload(MAX_MESSAGE_BYTES as u64)
        // A vanished client (no close, e.g. a laptop lid) is noticed within about 20 s instead of
        // socketioxide's 45 s, so its peer hears `call:peer-reconnecting` while it still matters.
        .ping_interval(Duration::from_secs(10))
        .ping_timeout(Duration::from_secs(10))
        .connect_timeout(CONNECT_TIMEOUT)
        .with_state(state)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));
    (
        RealtimeLayer {
            sockets: layer,
            pending,
        },
        io,
    )
}

/// Disconnects the sockets of login sessions that were revoked (logout, `parley user passwd`,
/// `parley user disable`, removal) or expired, checking every [`SESSION_SWEEP`]. Runs until the
/// call driver stops.
async fn sweep_sessions(state: AppState) {
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.calls.is_stopped() {
            return;
        }
        let sessions = state.calls.limits.devices.sessions();
        if sessions.is_empty() {
            continue;
        }
        match state.store.unusable_sessions(&sessions).await {
            Ok(gone) => {
                for session_id in gone {
                    log::info!(
                        "session {session_id} was revoked or expired: disconnecting its sockets"
                    );
                    state.calls.disconnect_session(session_id).await;
                }
            }
            Err(e) => log::warn!("checking the sessions of connected sockets failed: {e}"),
        }
    }
}

/// Whether a socket's login session still stands (for actions that start or join a call).
async fn session_usable(state: &AppState, session_id: i64) -> Result<(), ApiError> {
    match state.store.unusable_sessions(&[session_id]).await {
        Ok(gone) if gone.is_empty() => Ok(()),
        Ok(_) => {
            state.calls.disconnect_session(session_id).await;
            Err(ApiError::unauthorized())
        }
        Err(e) => Err(ApiError::from(e)),
    }
}

async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Refusal> {
    let auth = auth.map_err(|_| Unauthorized)?;
    let token = auth
        .get("token")
        .and_then(Value::as_str)
        .ok_or(Unauthorized)?;
    let (session, user) = match state.store.session_user(token).await {
        Ok(Some(found)) => found,
        Ok(None) => return Err(Unauthorized),
        Err(e) => {
            log::error!("socket authentication failed on a database error: {e}");
            return Err(Unauthorized);
        }
    };
    // A client without a usable deviceId still gets a device: this socket alone. It cannot
    // resume after a reconnect, which is the documented cost of not sending one.
    let device_id = match auth.get("deviceId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= 128 => parley_call::DeviceId::from(id),
        _ => format!("socket-{}", socket.id).into(),
    };
    let device_slot = state
        .calls
        .limits
        .devices
        .claim(user.id, &device_id, session.id)
        .ok_or(Refusal {
            code: Code::RateLimited,
            why: "too many devices connected for this user (calls.max_devices_per_user); \
                  close another tab or app",
        })?;
    // Authenticated: this connection no longer counts against its address's unauthenticated
    // connections (http.max_unauthenticated_per_address).
    if let Some(slot) = socket.req_parts().extensions.get::<Arc<PendingSlot>>() {
        slot.release();
    }
    // Nothing reads the handshake request after this: socketioxide kept its headers, URI and
    // extensions for the socket's life, 0.85 KiB per idle connection (heaptrack, issue 14;
    // `release_req_parts` is a vendored patch, vendor/README.md).
    socket.release_req_parts();
    let calls = &state.config.calls;
    socket.extensions.insert(Arc::new(SocketAuth {
        device_slot,
        bound: Mutex::new(Vec::new()),
        registered: AtomicBool::new(false),
        conn: ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed)),
        user: user_info(&user),
        calls: state.calls.clone(),
        bucket: Mutex::new(TokenBucket::new(
            calls.events_per_second,
            calls.events_burst,
            Instant::now(),
        )),
    }));
    // Handlers go in before the CONNECT packet is sent: socketioxide drops events that arrive
    // before a handler exists, and clients flush buffered emits the moment they connect.
    // One fallback handler for every event, dispatching by name (`ClientEvent`): ten
    // `socket.on` registrations were a `HashMap` per socket, 0.7 KiB per idle connection
    // (heaptrack, issue 14).
    socket.on_fallback(on_client_event);
    socket.on_disconnect(on_disconnect);
    // Not one of presence's listeners until its `session` is sent (`SESSION_PENDING_ROOM`):
    // joined here, before the namespace lists the socket, so no broadcast falls in between.
    socket.join(super::driver::SESSION_PENDING_ROOM);
    Ok(())
}

/// A client event as the one fallback handler sees it: one of [`CLIENT_EVENTS`], read and
/// queued as its own handler did, or any other name. socketioxide picks a handler by the name
/// its parser reads; [`payload::event_name`] reads the same name (escapes left as written), so
/// the dispatch is the one ten `socket.on` registrations made.
enum ClientEvent {
    Known(Queued),
    Unknown(Event),
}

impl FromMessageParts<LocalAdapter> for ClientEvent {
    type Error = socketioxide::ParserError;

    fn from_message_parts(
        socket: &Arc<Socket<LocalAdapter>>,
        value: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<ClientEvent, Self::Error> {
        let known = value
            .as_str()
            .and_then(|data| payload::event_name(data))
            .is_some_and(|name| CLIENT_EVENTS.contains(&name));
        if known {
            let Ok(queued) = Queued::from_message_parts(socket, value, ack_id);
            Ok(ClientEvent::Known(queued))
        } else {
            Event::from_message_parts(socket, value, ack_id).map(ClientEvent::Unknown)
        }
    }
}

async fn on_client_event(
    socket: SocketRef,
    has_ack: HasAck,
    ack: AckSender,
    state: State<AppState>,
    event: ClientEvent,
) {
    match event {
        ClientEvent::Known(queued) => on_event(socket, has_ack, ack, state, queued).await,
        ClientEvent::Unknown(name) => on_unknown_event(socket, name, ack, has_ack).await,
    }
}

/// Hands the socket to the driver, once: from the connect handler, or from the first event if
/// that comes first (handlers run as separate tasks), so the driver always sees the socket
/// before anything it sends.
fn ensure_registered(socket: SocketRef, auth: &SocketAuth, state: &AppState) {
    if auth.registered.swap(true, Ordering::AcqRel) {
        return;
    }
    // `iceServers`, `iceTransportPolicy`, `ttlSecs` for the `session` event: made here, when
    // the driver needs them, not kept in the socket until then (issue 14).
    let ice = serde_json::to_value(crate::relay::ice_servers(state, auth.user.id))
        .unwrap_or_else(|_| json!({}));
    let (reply, _ignored) = tokio::sync::oneshot::channel();
    auth.calls.send(Command::Connect {
        conn: auth.conn,
        socket,
        session_id: auth.device_slot.session(),
        user: auth.user.clone(),
        device_id: auth.device_slot.device().clone(),
        ice,
        reply,
    });
}

async fn on_connect(socket: SocketRef, State(state): State<AppState>) {
    match socket.extensions.get::<Arc<SocketAuth>>() {
        Some(auth) => ensure_registered(socket.clone(), &auth, &state),
        // The middleware always sets it; without it the socket cannot act for anyone.
        None => {
            let _ = socket.disconnect();
        }
    }
}

async fn on_disconnect(socket: SocketRef, State(state): State<AppState>) {
    if let Some(auth) = socket.extensions.get::<Arc<SocketAuth>>() {
        auth.device_slot.release();
        state.calls.send(Command::Disconnect { conn: auth.conn });
    }
}

async fn on_unknown_event(
    socket: SocketRef,
    Event(name): Event,
    ack: AckSender,
    HasAck(has_ack): HasAck,
) {
    let error = ApiError::new(
        Code::InvalidPayload,
        format!("event: unknown event {name:?}"),
    );
    answer(&socket, &name, ack, has_ack, Err(error));
}

async fn on_event(
    socket: SocketRef,
    HasAck(has_ack): HasAck,
    ack: AckSender,
    State(state): State<AppState>,
    queued: Queued,
) {
    let Queued {
        event,
        auth,
        outcome,
    } = queued;
    let Some(auth) = auth else {
        return;
    };
    let result = match outcome {
        Ok(pending) => finish(&state, &auth, pending).await,
        Err(error) => Err(error),
    };
    answer(&socket, &event, ack, has_ack, result);
}

/// A successful acknowledgement: `{ ok: true }`, with `call` for the call actions. Serialised
/// straight into the packet; building a `serde_json::Value` first cost a map and a copy of
/// every field of the call per ack (issue 14).
#[derive(serde::Serialize)]
struct Ack {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    call: Option<parley_call::CallView>,
}

impl Ack {
    fn ok() -> Ack {
        Ack {
            ok: true,
            call: None,
        }
    }

    fn call(call: parley_call::CallView) -> Ack {
        Ack {
            ok: true,
            call: Some(call),
        }
    }
}

/// Acknowledges, or reports a failure as `call:error` when the client gave no callback.
fn answer(
    socket: &SocketRef,
    event: &str,
    ack: AckSender,
    has_ack: bool,
    result: Result<Ack, ApiError>,
) {
    match (result, has_ack) {
        (Ok(body), true) => {
            let _ = ack.send(&body);
        }
        (Ok(_), false) => {}
        (Err(error), true) => {
            let _ = ack.send(&json!({
                "ok": false,
                "error": { "code": error.code.as_str(), "message": error.message },
            }));
        }
        (Err(error), false) => {
            let _ = socket.emit(
                "call:error",
                &json!({ "event": event, "code": error.code.as_str(), "message": error.message }),
            );
        }
    }
}

/// What an event asks for, once its payload is checked.
enum Request {
    Initiate(payload::Initiate),
    Action(parley_call::CallId, Action),
    Signal(parley_call::CallId, SignalKind, parley_call::SignalPayload),
    Stats(parley_call::CallId, Box<payload::StatsReport>),
}

fn parse(name: &str, data: &Value) -> Result<Request, ApiError> {
    if name == "call:initiate" {
        return payload::initiate(data).map(Request::Initiate);
    }
    if name == "call:stats" {
        let (call_id, report) = payload::call_stats(data)?;
        return Ok(Request::Stats(call_id, Box::new(report)));
    }
    let map = payload::object(data)?;
    let call_id = payload::call_id(map)?;
    Ok(match name {
        "call:accept" => Request::Action(call_id, Action::Accept),
        "call:decline" => Request::Action(
            call_id,
            Action::Decline {
                message: payload::decline_message(map)?,
            },
        ),
        "call:cancel" => Request::Action(call_id, Action::Cancel),
        "call:end" => Request::Action(call_id, Action::End),
        "signal:offer" => Request::Signal(call_id, SignalKind::Offer, payload::sdp(map)?),
        "signal:answer" => Request::Signal(call_id, SignalKind::Answer, payload::sdp(map)?),
        "signal:ice" => Request::Signal(call_id, SignalKind::Ice, payload::candidate(map)?),
        "media:state" => {
            Request::Signal(call_id, SignalKind::MediaState, payload::media_state(map)?)
        }
        _ => {
            return Err(ApiError::new(
                Code::InvalidPayload,
                format!("event: unknown event {name:?}"),
            ));
        }
    })
}

/// An event checked, rate-limited and (for everything but initiate) already handed to the
/// driver. socketioxide runs extractors in the socket's receive loop, in arrival order, but runs
/// each handler as its own task; doing the hand-over here keeps a socket's events in order, so
/// an offer is never overtaken by the ICE candidates sent after it.
struct Queued {
    event: String,
    auth: Option<Arc<SocketAuth>>,
    outcome: Result<Pending, ApiError>,
}

enum Pending {
    /// Needs a database lookup (the callee) before it can be queued.
    Initiate(payload::Initiate),
    Queued {
        call_id: parley_call::CallId,
        reply: tokio::sync::oneshot::Receiver<Result<Reply, parley_call::Error>>,
        /// Whether success makes this socket a call device (accept; relayed signaling).
        binds: bool,
        /// Whether the login session is checked first (accept joins a call).
        check_session: bool,
    },
    /// `call:stats`: checked against the call (live or recently ended), then stored.
    Stats(parley_call::CallId, Box<payload::StatsReport>),
}

impl FromMessageParts<LocalAdapter> for Queued {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket<LocalAdapter>>,
        value: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Queued, Infallible> {
        // Not socketioxide's `Event`: it scans the whole packet again (issue 14).
        let event = value
            .as_str()
            .and_then(|data| payload::event_name(data))
            .unwrap_or_default()
            .to_owned();
        let auth = socket.extensions.get::<Arc<SocketAuth>>();
        if let Some(auth) = &auth
            && !auth.registered.load(Ordering::Acquire)
            && let Ok(State(state)) = State::<AppState>::from_message_parts(socket, value, ack_id)
        {
            ensure_registered(SocketRef::from(socket.clone()), auth, &state);
        }
        let outcome = match (&auth, sdp_shortcut(&event, value)) {
            (None, _) => Err(ApiError::unauthorized()),
            (Some(auth), Some(request)) => queue(auth, request),
            (Some(auth), None) => match TryData::<Value>::from_message_parts(socket, value, ack_id)
            {
                Ok(TryData(Err(e))) => {
                    Err(ApiError::new(Code::InvalidPayload, format!("payload: {e}")))
                }
                Ok(TryData(Ok(data))) => parse(&event, &data).and_then(|r| queue(auth, r)),
                Err(never) => match never {},
            },
        };
        Ok(Queued {
            event,
            auth,
            outcome,
        })
    }
}

/// An offer or answer in the plain case, read without building a `serde_json::Value` and with
/// its SDP kept as sent (`payload::sdp_event`, issue 14); `None` sends the event the generic
/// way (`TryData` and `parse`), which also makes every refusal.
fn sdp_shortcut(event: &str, value: &socketioxide::handler::Value) -> Option<Request> {
    let kind = match event {
        "signal:offer" => SignalKind::Offer,
        "signal:answer" => SignalKind::Answer,
        _ => return None,
    };
    match value {
        // Binary attachments are the generic path's to resolve.
        socketioxide::handler::Value::Str(data, None) => {
            let (call_id, sdp) = payload::sdp_event(data.as_str())?;
            Some(Request::Signal(call_id, kind, sdp))
        }
        _ => None,
    }
}

/// Checks in the spec's order (payload shape, already done by `parse` or `sdp_shortcut`, then
/// the rate limit), then queues the command.
fn queue(auth: &SocketAuth, request: Request) -> Result<Pending, ApiError> {
    let allowed = auth
        .bucket
        .lock()
        .map(|mut bucket| bucket.try_take(Instant::now()))
        // A poisoned lock means a panic elsewhere; refusing is safer than unlimited events.
        .unwrap_or(false);
    if !allowed {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many events from this socket; slow down (calls.events_per_second)",
        ));
    }
    let origin = Origin::Socket(auth.conn);
    let (reply, wait) = tokio::sync::oneshot::channel();
    let binds;
    let check_session;
    let (call_id, command) = match request {
        Request::Initiate(initiate) => return Ok(Pending::Initiate(initiate)),
        Request::Stats(call_id, report) => return Ok(Pending::Stats(call_id, report)),
        Request::Action(call_id, action) => {
            binds = action == Action::Accept;
            check_session = binds;
            let command = Command::Action {
                action,
                origin,
                call_id: call_id.clone(),
                reply,
            };
            (call_id, command)
        }
        Request::Signal(call_id, kind, payload) => {
            binds = true;
            check_session = false;
            let command = Command::Signal {
                conn: auth.conn,
                call_id: call_id.clone(),
                kind,
                payload,
                reply,
            };
            (call_id, command)
        }
    };
    if !auth.calls.send(command) {
        return Err(ApiError::internal(
            "the call driver has stopped (shutting down?)",
        ));
    }
    Ok(Pending::Queued {
        call_id,
        reply: wait,
        binds,
        check_session,
    })
}

/// Waits for the driver's answer and shapes the ack.
async fn finish(state: &AppState, auth: &SocketAuth, pending: Pending) -> Result<Ack, ApiError> {
    let reply = match pending {
        Pending::Initiate(initiate) => {
            let origin = Origin::Socket(auth.conn);
            // The session check and the callee lookup in one query (issue 14); a session that
            // no longer stands is refused whoever the callee, as when they were two queries.
            let found = state
                .store
                .callee_for_session(auth.device_slot.session(), user_key(&initiate.to))
                .await?;
            let Ok(found) = found else {
                state
                    .calls
                    .disconnect_session(auth.device_slot.session())
                    .await;
                return Err(ApiError::unauthorized());
            };
            let callee = callee_found(found)?;
            let reply = ring(
                &state.calls,
                auth.user.clone(),
                origin,
                callee,
                initiate.media,
            )
            .await?;
            if let Reply::Call(call) = &reply {
                auth.remember_bound(&call.id);
            }
            reply
        }
        Pending::Stats(call_id, report) => return record_stats(state, auth, call_id, report).await,
        Pending::Queued {
            call_id,
            reply,
            binds,
            check_session,
        } => {
            // The command is already queued (ordering); a revoked session's accept is undone
            // by the disconnect that `session_usable` triggers, and refused here.
            if check_session {
                session_usable(state, auth.device_slot.session()).await?;
            }
            let answer = reply
                .await
                .map_err(|_| ApiError::internal("the call driver dropped a request"))?;
            if binds && answer.is_ok() {
                auth.remember_bound(&call_id);
            }
            match answer {
                Ok(reply) => reply,
                Err(parley_call::Error::CallNotFound) => {
                    return Err(refine_not_found(&state.store, auth.user.id, &call_id).await);
                }
                Err(error) => return Err(call_error(&error)),
            }
        }
    };
    Ok(match reply {
        Reply::Call(call) => Ack::call(call),
        Reply::Relayed | Reply::Connected { .. } => Ack::ok(),
    })
}

/// `call:stats` (spec: "Call quality"): only a call device of the call may report (anyone else
/// gets `CALL_NOT_FOUND`, so the call's existence does not leak); while the call is active at
/// most once every 5 s per party, then once more within 60 s after it ended. The latest report
/// per party is stored; nothing is relayed.
async fn record_stats(
    state: &AppState,
    auth: &SocketAuth,
    call_id: parley_call::CallId,
    report: Box<payload::StatsReport>,
) -> Result<Ack, ApiError> {
    use parley_call::CallState;
    let not_found = || ApiError::new(Code::CallNotFound, "call not found");
    let user = auth.user.id;
    let lookup = call_id.clone();
    let live = state
        .calls
        .query(move |board| board.live_call(&lookup, user))
        .await?;
    let ended = match live {
        Some(call) if !auth.is_bound(&call_id) => {
            // A party's other device: not a call device of this call.
            let _ = call;
            return Err(not_found());
        }
        Some(call) if call.state == CallState::Active => false,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidState,
                "call quality is reported once the call is active",
            ));
        }
        None => {
            let row = state.store.call_by_id(&call_id.0).await?;
            let Some(row) = row.filter(|r| r.caller.id == user || r.callee.id == user) else {
                return Err(not_found());
            };
            if !auth.is_bound(&call_id) {
                return Err(not_found());
            }
            let ended_at = row.ended_at.unwrap_or(i64::MAX);
            let window = super::limits::STATS_AFTER_END.as_millis() as i64;
            if parley_store::unix_millis_now().saturating_sub(ended_at) > window {
                return Err(ApiError::new(
                    Code::InvalidState,
                    "the call ended more than 60 s ago; its final report is no longer taken",
                ));
            }
            true
        }
    };
    state
        .calls
        .limits
        .stats
        .admit(&call_id.0, user, ended, Instant::now())
        .map_err(|refusal| {
            ApiError::new(
                Code::RateLimited,
                match refusal {
                    StatsRefusal::TooSoon => {
                        "call:stats at most once every 5 s while the call is active"
                    }
                    StatsRefusal::FinalSent => {
                        "the final call:stats of this call was already taken"
                    }
                },
            )
        })?;
    state
        .store
        .save_call_stats(&call_id.0, user, parley_store::unix_millis_now(), &report)
        .await?;
    Ok(Ack::ok())
}

/// The Socket.IO layer plus the cap on unauthenticated connections per client address
/// (`http.max_unauthenticated_per_address`): a new Engine.IO connection (a `/socket.io/`
/// request without `sid`) takes a place for its address, kept in the request's extensions,
/// which engineioxide keeps until `authenticate` releases them; authenticating gives the place
/// back, and so does the connection going away. One over the cap is answered 429 `RATE_LIMITED`.
#[derive(Clone)]
pub struct RealtimeLayer {
    sockets: SocketIoLayer,
    pending: Arc<super::limits::Pending>,
}

impl<S: Clone> tower_layer::Layer<S> for RealtimeLayer {
    type Service = PendingLimit<<SocketIoLayer as tower_layer::Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        PendingLimit {
            inner: tower_layer::Layer::layer(&self.sockets, inner),
            pending: self.pending.clone(),
        }
    }
}

/// The service of [`RealtimeLayer`].
#[derive(Clone)]
pub struct PendingLimit<S> {
    inner: S,
    pending: Arc<super::limits::Pending>,
}

impl<S, B, RB> tower_service::Service<axum::http::Request<B>> for PendingLimit<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = axum::http::Response<RB>>,
    S::Future: Send + 'static,
    RB: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let opens_connection = request.uri().path().starts_with("/socket.io/")
            && !request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .any(|pair| pair.starts_with("sid="));
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        if let (true, Some(address)) = (opens_connection, peer) {
            match self.pending.claim(address) {
                Some(slot) => {
                    request.extensions_mut().insert(Arc::new(slot));
                }
                None => {
                    let refusal = ApiError::new(
                        Code::RateLimited,
                        "too many unauthenticated realtime connections from this address \
                         (http.max_unauthenticated_per_address)",
                    );
                    return Box::pin(async move {
                        Ok(axum::response::IntoResponse::into_response(refusal))
                    });
                }
            }
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(axum::body::Body::new))
        })
    }
}
