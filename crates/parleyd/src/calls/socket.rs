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

use super::{Action, Command, call_error, payload, refine_not_found, run_initiate, user_info};
use crate::http::error::{ApiError, Code};
use crate::state::AppState;

/// The biggest Socket.IO message we read: a 64 KiB SDP plus its envelope. socketioxide's
/// defaults (64 MiB messages, 16 MiB frames) would let one client make us buffer that much.
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

const CLIENT_EVENTS: [&str; 9] = [
    "call:initiate",
    "call:accept",
    "call:decline",
    "call:cancel",
    "call:end",
    "signal:offer",
    "signal:answer",
    "signal:ice",
    "media:state",
];

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Who a socket is, set by the handshake middleware.
#[derive(Clone)]
struct SocketAuth {
    conn: ConnId,
    session_id: i64,
    user: UserInfo,
    device_id: String,
    /// `calls.events_per_second` / `calls.events_burst` for this socket.
    bucket: Arc<Mutex<TokenBucket>>,
    /// The driver, reachable from the synchronous extractor.
    calls: super::Handle,
    /// Set once the driver has been told about this socket (`ensure_registered`).
    registered: Arc<AtomicBool>,
    /// `iceServers`, `iceTransportPolicy`, `ttlSecs` for the `session` event.
    ice: Arc<Value>,
}

/// The handshake refusal: `connect_error` with `{ message, data: { code } }` as the spec says.
/// socketioxide sends the error's Display as the message; the vendored parser patch
/// (vendor/README.md) sends a JSON object with a `message` key as the whole packet data.
#[derive(Debug)]
struct Unauthorized;

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"message":"UNAUTHORIZED","data":{"code":"UNAUTHORIZED"}}"#)
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
pub fn socket_layer(state: AppState) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .ws_max_message_size(MAX_MESSAGE_BYTES)
        .ws_max_frame_size(MAX_MESSAGE_BYTES)
        .max_payload(MAX_MESSAGE_BYTES as u64)
        // A vanished client (no close, e.g. a laptop lid) is noticed within about 20 s instead of
        // socketioxide's 45 s, so its peer hears `call:peer-reconnecting` while it still matters.
        .ping_interval(Duration::from_secs(10))
        .ping_timeout(Duration::from_secs(10))
        .with_state(state)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));
    (layer, io)
}

async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Unauthorized> {
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
        Some(id) if !id.is_empty() && id.len() <= 128 => id.to_owned(),
        _ => format!("socket-{}", socket.id),
    };
    let calls = &state.config.calls;
    let ice = serde_json::to_value(crate::relay::ice_servers(&state, user.id))
        .unwrap_or_else(|_| json!({}));
    socket.extensions.insert(SocketAuth {
        registered: Arc::new(AtomicBool::new(false)),
        ice: Arc::new(ice),
        conn: ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed)),
        session_id: session.id,
        user: user_info(&user),
        device_id,
        calls: state.calls.clone(),
        bucket: Arc::new(Mutex::new(TokenBucket::new(
            calls.events_per_second,
            calls.events_burst,
            Instant::now(),
        ))),
    });
    // Handlers go in before the CONNECT packet is sent: socketioxide drops events that arrive
    // before a handler exists, and clients flush buffered emits the moment they connect.
    for event in CLIENT_EVENTS {
        socket.on(event, on_event);
    }
    socket.on_fallback(on_unknown_event);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Hands the socket to the driver, once: from the connect handler, or from the first event if
/// that comes first (handlers run as separate tasks), so the driver always sees the socket
/// before anything it sends.
fn ensure_registered(socket: SocketRef, auth: &SocketAuth) {
    if auth.registered.swap(true, Ordering::AcqRel) {
        return;
    }
    let (reply, _ignored) = tokio::sync::oneshot::channel();
    auth.calls.send(Command::Connect {
        conn: auth.conn,
        socket,
        session_id: auth.session_id,
        user: auth.user.clone(),
        device_id: auth.device_id.clone(),
        ice: (*auth.ice).clone(),
        reply,
    });
}

async fn on_connect(socket: SocketRef) {
    match socket.extensions.get::<SocketAuth>() {
        Some(auth) => ensure_registered(socket.clone(), &auth),
        // The middleware always sets it; without it the socket cannot act for anyone.
        None => {
            let _ = socket.disconnect();
        }
    }
}

async fn on_disconnect(socket: SocketRef, State(state): State<AppState>) {
    if let Some(auth) = socket.extensions.get::<SocketAuth>() {
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

/// Acknowledges, or reports a failure as `call:error` when the client gave no callback.
fn answer(
    socket: &SocketRef,
    event: &str,
    ack: AckSender,
    has_ack: bool,
    result: Result<Value, ApiError>,
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
}

fn parse(name: &str, data: &Value) -> Result<Request, ApiError> {
    if name == "call:initiate" {
        return payload::initiate(data).map(Request::Initiate);
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
    auth: Option<SocketAuth>,
    outcome: Result<Pending, ApiError>,
}

enum Pending {
    /// Needs a database lookup (the callee) before it can be queued.
    Initiate(payload::Initiate),
    Queued {
        call_id: parley_call::CallId,
        reply: tokio::sync::oneshot::Receiver<Result<Reply, parley_call::Error>>,
    },
}

impl FromMessageParts<LocalAdapter> for Queued {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket<LocalAdapter>>,
        value: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Queued, Infallible> {
        let event = match Event::from_message_parts(socket, value, ack_id) {
            Ok(Event(name)) => name,
            Err(_) => String::new(),
        };
        let auth = socket.extensions.get::<SocketAuth>();
        if let Some(auth) = &auth {
            ensure_registered(SocketRef::from(socket.clone()), auth);
        }
        let outcome = match (
            &auth,
            TryData::<Value>::from_message_parts(socket, value, ack_id),
        ) {
            (None, _) => Err(ApiError::unauthorized()),
            (Some(_), Ok(TryData(Err(e)))) => {
                Err(ApiError::new(Code::InvalidPayload, format!("payload: {e}")))
            }
            (Some(auth), Ok(TryData(Ok(data)))) => queue(auth, &event, &data),
            (Some(_), Err(never)) => match never {},
        };
        Ok(Queued {
            event,
            auth,
            outcome,
        })
    }
}

/// Checks in the spec's order (payload shape, then the rate limit), then queues the command.
fn queue(auth: &SocketAuth, event: &str, data: &Value) -> Result<Pending, ApiError> {
    let request = parse(event, data)?;
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
    let (call_id, command) = match request {
        Request::Initiate(initiate) => return Ok(Pending::Initiate(initiate)),
        Request::Action(call_id, action) => {
            let command = Command::Action {
                action,
                origin,
                call_id: call_id.clone(),
                reply,
            };
            (call_id, command)
        }
        Request::Signal(call_id, kind, payload) => {
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
    })
}

/// Waits for the driver's answer and shapes the ack.
async fn finish(state: &AppState, auth: &SocketAuth, pending: Pending) -> Result<Value, ApiError> {
    let reply = match pending {
        Pending::Initiate(initiate) => {
            let origin = Origin::Socket(auth.conn);
            run_initiate(
                &state.calls,
                &state.store,
                auth.user.clone(),
                origin,
                initiate,
            )
            .await?
        }
        Pending::Queued { call_id, reply } => {
            let answer = reply
                .await
                .map_err(|_| ApiError::internal("the call driver dropped a request"))?;
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
        Reply::Call(call) => json!({ "ok": true, "call": call }),
        Reply::Relayed | Reply::Connected { .. } => json!({ "ok": true }),
    })
}
