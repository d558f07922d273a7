//! The one task that owns the switchboard. It selects on commands and the next deadline, feeds
//! one input, then carries out the outputs in order.

use std::collections::HashMap;
use std::time::Duration;

use parley_call::{CallRecord, ConnId, Error as CallError, Output, Reply, RequestId, Switchboard};
use parley_store::Store;
use parley_store::calls::CallWrite;
use serde_json::json;
use socketioxide::extract::SocketRef;
use tokio::sync::{mpsc, oneshot};

use super::{Action, Command, new_call_id, now};

/// What the driver needs to send `session` once the switchboard has registered a socket.
struct PendingSession {
    socket: SocketRef,
    user: parley_call::UserInfo,
    device_id: String,
    ice: serde_json::Value,
}

pub struct Driver {
    board: Switchboard,
    store: Store,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Registered sockets, for emits.
    sockets: HashMap<ConnId, SocketRef>,
    replies: HashMap<RequestId, oneshot::Sender<Result<Reply, CallError>>>,
    sessions: HashMap<RequestId, PendingSession>,
    next_request: u64,
}

impl Driver {
    pub(super) fn new(
        config: parley_call::Config,
        store: Store,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Driver {
        Driver {
            board: Switchboard::new(config),
            store,
            commands,
            sockets: HashMap::new(),
            replies: HashMap::new(),
            sessions: HashMap::new(),
            next_request: 0,
        }
    }

    /// Starts the driver. It runs until `Handle::shutdown` (or every handle is dropped).
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        loop {
            let deadline = self.board.poll_timeout().map(|(at, _)| at);
            let command = tokio::select! {
                command = self.commands.recv() => command,
                () = sleep_until(deadline) => {
                    self.board.handle_timeout(now());
                    self.carry_out().await;
                    continue;
                }
            };
            let Some(command) = command else {
                // Every handle is gone: the daemon is exiting without a shutdown call.
                break;
            };
            if let Command::Shutdown { done } = command {
                self.board.handle_shutdown(now());
                self.carry_out().await;
                for socket in self.sockets.values() {
                    let _ = socket.clone().disconnect();
                }
                let _ = done.send(());
                log::info!("call driver stopped");
                break;
            }
            self.feed(command);
            self.carry_out().await;
        }
    }

    fn request(&mut self, reply: oneshot::Sender<Result<Reply, CallError>>) -> RequestId {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        self.replies.insert(request, reply);
        request
    }

    fn feed(&mut self, command: Command) {
        let now = now();
        match command {
            Command::Connect {
                conn,
                socket,
                session_id,
                user,
                device_id,
                ice,
                reply,
            } => {
                if !socket.connected() {
                    // Gone before we got to it: its disconnect command follows and is ignored.
                    let _ = reply.send(Err(CallError::DeviceRequired("socket closed")));
                    return;
                }
                let request = self.request(reply);
                self.sockets.insert(conn, socket.clone());
                self.sessions.insert(
                    request,
                    PendingSession {
                        socket,
                        user: user.clone(),
                        device_id: device_id.clone(),
                        ice,
                    },
                );
                self.board
                    .handle_connect(request, conn, session_id, user, device_id, now);
            }
            Command::Disconnect { conn } => {
                self.sockets.remove(&conn);
                self.board.handle_disconnect(conn, now);
            }
            Command::Initiate {
                origin,
                caller,
                callee,
                media,
                reply,
            } => {
                let request = self.request(reply);
                self.board.handle_initiate(
                    request,
                    origin,
                    caller,
                    callee,
                    media,
                    new_call_id(),
                    now,
                );
            }
            Command::Action {
                action,
                origin,
                call_id,
                reply,
            } => {
                let request = self.request(reply);
                match action {
                    Action::Accept => self.board.handle_accept(request, origin, &call_id, now),
                    Action::Decline { message } => self
                        .board
                        .handle_decline(request, origin, &call_id, message, now),
                    Action::Cancel => self.board.handle_cancel(request, origin, &call_id, now),
                    Action::End => self.board.handle_end(request, origin, &call_id, now),
                }
            }
            Command::Signal {
                conn,
                call_id,
                kind,
                payload,
                reply,
            } => {
                let request = self.request(reply);
                self.board
                    .handle_signal(request, conn, &call_id, kind, payload, now);
            }
            Command::RevokeSession { session_id, done } => {
                self.board.handle_session_revoked(session_id, now);
                let _ = done.send(());
            }
            Command::Query(read) => read(&self.board),
            Command::Shutdown { .. } => unreachable!("run() handles shutdown before feed"),
        }
    }

    /// Carries out every pending output, in order.
    async fn carry_out(&mut self) {
        while let Some(output) = self.board.poll_output() {
            match output {
                Output::Emit { conn, event } => {
                    if let Some(socket) = self.sockets.get(&conn) {
                        // A socket that closed meanwhile gets nothing; its disconnect is queued.
                        let _ = socket.emit(event.name(), &event);
                    }
                }
                Output::Broadcast { event } => {
                    // A burst of thousands of presence changes becomes events of at most 64, so
                    // no socket has to buffer one huge frame (the spec lets the server split or
                    // coalesce presence as it likes).
                    let events: Vec<parley_call::Event> = match &event {
                        parley_call::Event::Presence { changes } if changes.len() > 64 => changes
                            .chunks(64)
                            .map(|chunk| parley_call::Event::Presence {
                                changes: chunk.to_vec(),
                            })
                            .collect(),
                        _ => vec![event],
                    };
                    for event in &events {
                        for socket in self.sockets.values() {
                            let _ = socket.emit(event.name(), event);
                        }
                    }
                }
                Output::Persist(record) => self.persist(&record).await,
                Output::Reply { request, result } => {
                    if let Some(session) = self.sessions.remove(&request)
                        && let Ok(Reply::Connected { active_call }) = &result
                    {
                        let mut payload = json!({
                            "user": session.user,
                            "deviceId": session.device_id,
                            "activeCall": active_call,
                        });
                        if let (Some(fields), serde_json::Value::Object(ice)) =
                            (payload.as_object_mut(), session.ice)
                        {
                            fields.extend(ice);
                        }
                        let _ = session.socket.emit("session", &payload);
                    }
                    if let Some(reply) = self.replies.remove(&request) {
                        let _ = reply.send(result);
                    }
                }
                Output::Disconnect { conn } => {
                    if let Some(socket) = self.sockets.remove(&conn) {
                        let _ = socket.disconnect();
                    }
                }
            }
        }
    }

    /// Writes a call record, retrying briefly: losing a record is worse than a slow ack.
    async fn persist(&self, record: &CallRecord) {
        let write = CallWrite {
            id: &record.id.0,
            caller_id: record.caller.id,
            callee_id: record.callee.id,
            media: record.media.as_str(),
            state: record.state.as_str(),
            status: record.status.map(|s| s.as_str()),
            reason: record.reason.map(|r| r.as_str()),
            ended_by: record.ended_by,
            message: record.message.as_deref(),
            created_at: record.created_at_ms,
            answered_at: record.answered_at_ms,
            ended_at: record.ended_at_ms,
        };
        for attempt in 1..=5u32 {
            match self.store.save_call(&write).await {
                Ok(()) => return,
                Err(e) if attempt < 5 => {
                    log::warn!("writing call {} failed (attempt {attempt}): {e}", record.id);
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => log::error!(
                    "call {} could not be written to the call log: {e}; check the database \
                     (disk full? file permissions?)",
                    record.id
                ),
            }
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
