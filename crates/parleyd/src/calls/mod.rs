//! Calls: the async shell around `parley_call::Switchboard`.
//!
//! One driver task owns the switchboard (no `Arc<Mutex<..>>`). Socket.IO handlers
//! (`socket.rs`) and HTTP handlers (`http.rs`) are thin: they validate the payload
//! (`payload.rs`), rate-limit, send a [`Command`] with a oneshot for the reply, and map the
//! answer. The driver feeds one command to the switchboard, then carries out its outputs in
//! order, awaiting call-log writes before later replies so an acknowledged action is recorded.
//!
//! Wiring (serve.rs): [`driver`] to make the [`Handle`] that goes into `AppState` and the
//! [`Driver`]; [`restore_calls`] before listeners open; [`socket_layer`] once the state exists; then
//! [`Driver::spawn`] with the `SocketIo`; at shutdown [`Handle::shutdown`].

mod driver;
pub mod http;
mod limits;
pub mod openapi;
pub mod payload;
mod socket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_call::{
    CallId, ConnId, Error as CallError, Media, Now, Origin, Reply, SignalKind, SignalPayload,
    TokenBucket, UserInfo,
};
use parley_config::Config;
use parley_store::Store;
use tokio::sync::{mpsc, oneshot};

pub use driver::Driver;
pub use socket::{PendingLimit, RealtimeLayer, socket_layer};

use crate::http::error::{ApiError, Code};

/// What handlers ask of the driver.
pub(crate) enum Command {
    Connect {
        conn: ConnId,
        socket: socketioxide::extract::SocketRef,
        session_id: i64,
        user: UserInfo,
        device_id: parley_call::DeviceId,
        /// The `iceServers`, `iceTransportPolicy`, `ttlSecs` part of the `session` event,
        /// computed by the handler (the driver has no `AppState`).
        ice: serde_json::Value,
        reply: oneshot::Sender<Result<Reply, CallError>>,
    },
    Disconnect {
        conn: ConnId,
    },
    Initiate {
        origin: Origin,
        caller: UserInfo,
        callee: UserInfo,
        media: Media,
        reply: oneshot::Sender<Result<Reply, CallError>>,
    },
    Action {
        action: Action,
        origin: Origin,
        call_id: CallId,
        reply: oneshot::Sender<Result<Reply, CallError>>,
    },
    Signal {
        conn: ConnId,
        call_id: CallId,
        kind: SignalKind,
        payload: SignalPayload,
        reply: oneshot::Sender<Result<Reply, CallError>>,
    },
    RevokeSession {
        session_id: i64,
        done: oneshot::Sender<()>,
    },
    /// A read of the switchboard; the closure sends its own answer.
    Query(Box<dyn FnOnce(&parley_call::Switchboard) + Send>),
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The call actions that take only a call id (and, for decline, a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Accept,
    Decline { message: Option<String> },
    Cancel,
    End,
}

/// The cheap, cloneable way into the driver. Lives in `AppState.calls`.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    /// Per-user limits on HTTP call initiations (sockets carry their own bucket).
    http_initiations: Arc<Mutex<HashMap<i64, TokenBucket>>>,
    events_per_second: u32,
    events_burst: u32,
    /// The realtime limits' bookkeeping (devices, unauthenticated connections, stats window).
    pub(crate) limits: Arc<Limits>,
}

/// What the realtime shell counts, shared by every socket.
pub(crate) struct Limits {
    pub(crate) devices: Arc<limits::Devices>,
    pub(crate) pending: Arc<limits::Pending>,
    pub(crate) stats: limits::StatsWindow,
}

impl Handle {
    /// Whether the driver has stopped (shutdown), so background tasks can end too.
    pub(crate) fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }

    /// Disconnects every socket authenticated with this login session (logout calls this).
    pub async fn disconnect_session(&self, session_id: i64) {
        let (done, wait) = oneshot::channel();
        if self
            .commands
            .send(Command::RevokeSession { session_id, done })
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Ends every ringing call with `server_shutdown`, records it, leaves active calls active
    /// (the next start restores them), and stops the driver.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Runs `read` against the switchboard and returns its answer.
    pub(crate) async fn query<T: Send + 'static>(
        &self,
        read: impl FnOnce(&parley_call::Switchboard) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (answer, wait) = oneshot::channel();
        let command = Command::Query(Box::new(move |board| {
            let _ = answer.send(read(board));
        }));
        self.commands.send(command).map_err(|_| driver_gone())?;
        wait.await.map_err(|_| driver_gone())
    }

    /// Takes one HTTP initiation token for `user` (`calls.events_per_second` / `events_burst`).
    pub(crate) fn http_initiation_allowed(&self, user: i64) -> bool {
        let now = Instant::now();
        let Ok(mut buckets) = self.http_initiations.lock() else {
            // Poisoned by a panic elsewhere: refusing is safer than no limit.
            return false;
        };
        buckets
            .entry(user)
            .or_insert_with(|| TokenBucket::new(self.events_per_second, self.events_burst, now))
            .try_take(now)
    }

    /// Sends a command built around a reply channel and waits for the answer.
    pub(crate) async fn request(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<Reply, CallError>>) -> Command,
    ) -> Result<Result<Reply, CallError>, ApiError> {
        let (reply, wait) = oneshot::channel();
        self.commands
            .send(build(reply))
            .map_err(|_| driver_gone())?;
        wait.await.map_err(|_| driver_gone())
    }

    /// Queues a command without waiting (disconnects, and the connect that must be queued
    /// before any event of the same socket).
    pub(crate) fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }
}

fn driver_gone() -> ApiError {
    ApiError::internal("the call driver has stopped (shutting down?)")
}

/// Makes the handle and the driver that serves it. The driver starts with [`Driver::spawn`] once
/// the Socket.IO handle exists.
pub fn driver(config: &Config, store: Store) -> (Handle, Driver) {
    let (commands, receiver) = mpsc::unbounded_channel();
    let board_config = parley_call::Config {
        ring_timeout: Duration::from_secs(config.calls.ring_timeout_secs),
        reconnect_grace: Duration::from_secs(config.calls.reconnect_grace_secs),
        ..parley_call::Config::default()
    };
    let handle = Handle {
        commands,
        http_initiations: Arc::new(Mutex::new(HashMap::new())),
        events_per_second: config.calls.events_per_second,
        events_burst: config.calls.events_burst,
        limits: Arc::new(Limits {
            devices: limits::Devices::new(config.calls.max_devices_per_user),
            pending: limits::Pending::new(config.http.max_unauthenticated_per_address),
            stats: limits::StatsWindow::default(),
        }),
    };
    (handle, Driver::new(board_config, store, receiver))
}

/// Start-up: hands the calls the log still shows live (whatever stopped the previous
/// process) to the switchboard, which restores the active ones and ends the rest
/// (`Switchboard::restore` holds the rule); the endings are written before any listener opens.
pub async fn restore_calls(store: &Store, driver: &mut Driver) -> anyhow::Result<()> {
    let rows = store.live_calls().await?;
    let records = rows
        .iter()
        .map(|row| {
            http::record_from_row(row).map_err(|e| {
                anyhow::anyhow!(
                    "call {} in the call log cannot be read: {}",
                    row.id,
                    e.message
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let summary = driver.restore(records).await?;
    if summary.restored > 0 || summary.closed > 0 {
        log::info!(
            "restored {} call(s), closed {} (reason server_restart: ringing when the previous \
             process stopped, or not resumable)",
            summary.restored,
            summary.closed
        );
    }
    Ok(())
}

/// Reads both clocks once for an input.
pub(crate) fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_ms: parley_store::unix_millis_now(),
    }
}

/// A fresh, unguessable call id.
pub(crate) fn new_call_id() -> CallId {
    CallId(format!("{:032x}", rand::random::<u128>()))
}

pub(crate) fn user_info(user: &parley_store::User) -> UserInfo {
    UserInfo {
        id: user.id,
        username: user.username.clone(),
        display_name: user.display_name.clone(),
    }
}

/// The protocol error for a switchboard refusal: the code is the core's (`Error::error_code`),
/// the message its Display; an internal one is logged and not shown.
pub(crate) fn call_error(error: &CallError) -> ApiError {
    match error.error_code() {
        Code::Internal => ApiError::internal(error),
        code => ApiError::new(code, error.to_string()),
    }
}

/// `CALL_NOT_FOUND` from the switchboard only means "not live". For a party of an ended call
/// the honest answer is `INVALID_STATE`; for anyone else the call stays invisible.
pub(crate) async fn refine_not_found(store: &Store, user: i64, call_id: &CallId) -> ApiError {
    match store.call_by_id(&call_id.0).await {
        Ok(Some(row)) if row.caller.id == user || row.callee.id == user => {
            ApiError::new(Code::InvalidState, "the call has already ended")
        }
        Ok(_) => ApiError::new(Code::CallNotFound, "call not found"),
        Err(e) => ApiError::from(e),
    }
}

/// Runs an action and maps refusals, including the ended-call refinement.
pub(crate) async fn run_action(
    handle: &Handle,
    store: &Store,
    user: i64,
    origin: Origin,
    call_id: CallId,
    action: Action,
) -> Result<Reply, ApiError> {
    let id = call_id.clone();
    let answer = handle
        .request(|reply| Command::Action {
            action,
            origin,
            call_id: id,
            reply,
        })
        .await?;
    match answer {
        Ok(reply) => Ok(reply),
        Err(CallError::CallNotFound) => Err(refine_not_found(store, user, &call_id).await),
        Err(error) => Err(call_error(&error)),
    }
}

/// Resolves `to` (a user id or a username, any case) to a user, or `USER_NOT_FOUND`.
pub(crate) async fn resolve_callee(
    store: &Store,
    to: &payload::Recipient,
) -> Result<UserInfo, ApiError> {
    let found = match to {
        payload::Recipient::Id(id) => store.user_by_id(*id).await?,
        payload::Recipient::Name(name) => store.user_by_username(name).await?,
    };
    callee_found(found)
}

/// The callee a lookup found, or `USER_NOT_FOUND` (none, or disabled).
pub(crate) fn callee_found(found: Option<parley_store::User>) -> Result<UserInfo, ApiError> {
    match found {
        Some(user) if !user.disabled => Ok(user_info(&user)),
        _ => Err(ApiError::new(Code::UserNotFound, "to: no such user")),
    }
}

/// How the store is asked for a recipient.
pub(crate) fn user_key(to: &payload::Recipient) -> parley_store::UserKey<'_> {
    match to {
        payload::Recipient::Id(id) => parley_store::UserKey::Id(*id),
        payload::Recipient::Name(name) => parley_store::UserKey::Name(name),
    }
}

/// `call` (a `Call` as JSON) with `quality`: the requesting user's side, or `null`.
pub(crate) async fn with_quality(
    store: &Store,
    user: i64,
    mut call: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let quality = match call.get("id").and_then(serde_json::Value::as_str) {
        Some(id) => store.call_quality(id, user).await?,
        None => None,
    };
    if let Some(fields) = call.as_object_mut() {
        fields.insert("quality".into(), serde_json::json!(quality));
    }
    Ok(call)
}

/// `quality` for each `HistoryEntry` of a page, in one query.
pub(crate) async fn add_quality(
    store: &Store,
    user: i64,
    entries: &mut [serde_json::Value],
) -> Result<(), ApiError> {
    let ids: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            e.get("id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut found = store.calls_quality(user, &ids).await?;
    for entry in entries.iter_mut() {
        let quality = entry
            .get("id")
            .and_then(serde_json::Value::as_str)
            .and_then(|id| found.remove(id));
        if let Some(fields) = entry.as_object_mut() {
            fields.insert("quality".into(), serde_json::json!(quality));
        }
    }
    Ok(())
}

/// Initiate, shared by the socket event and `POST /calls`.
pub(crate) async fn run_initiate(
    handle: &Handle,
    store: &Store,
    caller: UserInfo,
    origin: Origin,
    request: payload::Initiate,
) -> Result<Reply, ApiError> {
    let callee = resolve_callee(store, &request.to).await?;
    ring(handle, caller, origin, callee, request.media).await
}

/// Asks the switchboard to start a call to a callee already looked up.
pub(crate) async fn ring(
    handle: &Handle,
    caller: UserInfo,
    origin: Origin,
    callee: UserInfo,
    media: Media,
) -> Result<Reply, ApiError> {
    let answer = handle
        .request(|reply| Command::Initiate {
            origin,
            caller,
            callee,
            media,
            reply,
        })
        .await?;
    answer.map_err(|error| call_error(&error))
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// The OpenAPI document lists the codes by hand; this keeps it equal to the one definition.
    #[test]
    fn the_openapi_error_codes_are_the_core_codes() {
        let document: serde_json::Value =
            serde_json::from_str(super::openapi::DOCUMENT).expect("valid JSON");
        let listed: Vec<String> = document["components"]["schemas"]["Error"]["properties"]["error"]
            ["properties"]["code"]["enum"]
            .as_array()
            .expect("the Error schema lists its codes")
            .iter()
            .map(|c| c.as_str().expect("codes are strings").to_owned())
            .collect();
        let core: Vec<String> = Code::ALL.iter().map(|c| c.as_str().to_owned()).collect();
        assert_eq!(listed, core);
    }

    #[test]
    fn a_switchboard_refusal_keeps_its_code_and_an_internal_one_says_nothing() {
        let refusal = super::call_error(&parley_call::Error::RecipientBusy);
        assert_eq!(refusal.code, Code::RecipientBusy);
        let internal = super::call_error(&parley_call::Error::UnknownValue {
            kind: "status",
            value: "x".into(),
        });
        assert_eq!(internal.code, Code::Internal);
        assert!(!internal.message.contains("status"));
    }
}
