//! The one task that owns the switchboard. It selects on commands, call-log write results and
//! the next deadline, feeds one input, then carries out the outputs in order.
//!
//! Call-log writes never block this loop (issue 10: one slow or failing write used to stall
//! every call's signaling). A `Persist` goes to the writer task, which commits whatever queued
//! up in one transaction; meanwhile the outputs that depend on that call (its replies and its
//! events) wait behind the write, in order, while every other call is served. Once the record is
//! committed they go out; if it cannot be written, the change is refused: the requester gets
//! `INTERNAL`, nobody is told of the change, and the switchboard ends or drops the call
//! (`Switchboard::handle_write_failed`). An ended record that failed is retried until written.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parley_call::{
    CallId, CallRecord, CallState, ConnId, Error as CallError, Event, Output, Reply, RequestId,
    Switchboard,
};
use parley_store::Store;
use parley_store::calls::CallWrite;
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::sync::{mpsc, oneshot};

use super::{Action, Command, new_call_id, now};

/// At most this many records per transaction: a bound on one commit's size and latency.
const MAX_BATCH: usize = 256;
/// How often the writer retries ended records it could not write (disk full, failing device).
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// How long shutdown waits for the writes in flight (their replies and events follow them).
const SHUTDOWN_WRITES: Duration = Duration::from_secs(10);
/// The Socket.IO room of the sockets that have not had their `session` event yet: presence goes
/// to every other socket of the namespace as one broadcast, which socketioxide encodes once for
/// every socket (issue 14: encoding it per socket was most of a call setup's CPU with 1,000 idle
/// connections). A socket joins it in the handshake middleware (`authenticate`), before the
/// namespace lists it, and leaves it right after its `session`, so it hears presence only after
/// its `session`, as the spec orders. The room holds the sockets still connecting, not the
/// idle ones: a room membership kept for every idle socket (socketioxide's room index keeps a
/// set of rooms per socket) was about 0.25 KiB per idle connection (heaptrack, issue 14).
pub(super) const SESSION_PENDING_ROOM: &str = "parley:session-pending";

/// What the driver needs to send `session` once the switchboard has registered a socket.
struct PendingSession {
    socket: SocketRef,
    user: parley_call::UserInfo,
    device_id: parley_call::DeviceId,
    ice: serde_json::Value,
}

pub struct Driver {
    board: Switchboard,
    store: Store,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Registered sockets, for emits.
    sockets: HashMap<ConnId, SocketRef>,
    /// The namespace's broadcasts (presence), from `spawn`.
    io: Option<SocketIo>,
    replies: HashMap<RequestId, oneshot::Sender<Result<Reply, CallError>>>,
    sessions: HashMap<RequestId, PendingSession>,
    next_request: u64,
    /// The call each pending request is about, so that its reply waits for that call's write.
    request_calls: HashMap<RequestId, CallId>,
    /// Calls with a write in flight, and their later outputs, waiting in order.
    gates: HashMap<CallId, VecDeque<Output>>,
    /// The last committed snapshot of each live call that has one.
    recorded: HashMap<CallId, CallRecord>,
    jobs: mpsc::UnboundedSender<WriteJob>,
    written: mpsc::UnboundedReceiver<Written>,
    /// The writer's ends of the two channels, until `spawn` starts it.
    writer: Option<(
        mpsc::UnboundedReceiver<WriteJob>,
        mpsc::UnboundedSender<Written>,
    )>,
}

/// One record for the writer.
struct WriteJob {
    record: CallRecord,
    /// An ending of a call the log shows live: if it cannot be written now, retry until it is,
    /// so the log does not keep a call live that ended (the requester still got `INTERNAL`).
    keep_trying: bool,
}

/// The writer's answer for one job.
struct Written {
    record: CallRecord,
    result: Result<(), String>,
}

impl Driver {
    pub(super) fn new(
        config: parley_call::Config,
        store: Store,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Driver {
        let (jobs, job_receiver) = mpsc::unbounded_channel();
        let (written_sender, written) = mpsc::unbounded_channel();
        Driver {
            board: Switchboard::new(config),
            store,
            commands,
            sockets: HashMap::new(),
            io: None,
            replies: HashMap::new(),
            sessions: HashMap::new(),
            next_request: 0,
            request_calls: HashMap::new(),
            gates: HashMap::new(),
            recorded: HashMap::new(),
            jobs,
            written,
            writer: Some((job_receiver, written_sender)),
        }
    }

    /// Start-up, before `spawn` and before any listener opens: gives the switchboard the calls
    /// the log showed live and writes the endings it decides, so the log is settled before the
    /// first client arrives. The restored calls' records are the log's current ones.
    pub async fn restore(
        &mut self,
        calls: Vec<CallRecord>,
    ) -> anyhow::Result<parley_call::Restored> {
        let live: Vec<CallRecord> = calls.clone();
        let summary = self.board.restore(calls, now());
        let mut endings = Vec::new();
        while let Some(output) = self.board.poll_output() {
            // Nobody is connected yet: only the records matter (presence is computed afresh).
            if let Output::Persist(record) = output {
                endings.push(record);
            }
        }
        let writes: Vec<CallWrite<'_>> = endings.iter().map(call_write).collect();
        self.store.save_calls(&writes).await?;
        for record in live {
            if !endings.iter().any(|ended| ended.id == record.id) {
                self.recorded.insert(record.id.clone(), record);
            }
        }
        Ok(summary)
    }

    /// Starts the driver and its call-log writer. It runs until `Handle::shutdown` (or every
    /// handle is dropped).
    pub fn spawn(mut self, io: SocketIo) -> tokio::task::JoinHandle<()> {
        self.io = Some(io);
        let (jobs, written) = self.writer.take().expect("spawn is called once");
        let writer = tokio::spawn(write_calls(self.store.clone(), jobs, written));
        tokio::spawn(self.run(writer))
    }

    async fn run(mut self, writer: tokio::task::JoinHandle<()>) {
        loop {
            let deadline = self.board.poll_timeout().map(|(at, _)| at);
            let command = tokio::select! {
                Some(written) = self.written.recv() => {
                    self.handle_written(written);
                    continue;
                }
                command = self.commands.recv() => command,
                () = sleep_until(deadline) => {
                    self.board.handle_timeout(now());
                    self.carry_out();
                    continue;
                }
            };
            let Some(command) = command else {
                // Every handle is gone: the daemon is exiting without a shutdown call.
                break;
            };
            if let Command::Shutdown { done } = command {
                self.board.handle_shutdown(now());
                self.carry_out();
                self.finish_writes().await;
                for socket in self.sockets.values() {
                    let _ = socket.clone().disconnect();
                }
                // Closing the job channel lets the writer make its last attempt and stop.
                drop(self.jobs);
                if tokio::time::timeout(SHUTDOWN_WRITES, writer).await.is_err() {
                    log::error!("the call log writer did not finish within {SHUTDOWN_WRITES:?}");
                }
                let _ = done.send(());
                log::info!("call driver stopped");
                break;
            }
            self.feed(command);
            self.carry_out();
        }
    }

    /// Shutdown: waits (bounded) until every write in flight is answered, so the endings are
    /// recorded and their events sent before the sockets close.
    async fn finish_writes(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WRITES;
        while !self.gates.is_empty() {
            match tokio::time::timeout_at(deadline, self.written.recv()).await {
                Ok(Some(written)) => self.handle_written(written),
                _ => {
                    log::error!(
                        "{} call record(s) still unwritten at shutdown; the next start closes \
                         them as the log shows them",
                        self.gates.len()
                    );
                    break;
                }
            }
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
                let call_id = new_call_id();
                self.request_calls.insert(request, call_id.clone());
                self.board
                    .handle_initiate(request, origin, caller, callee, media, call_id, now);
            }
            Command::Action {
                action,
                origin,
                call_id,
                reply,
            } => {
                let request = self.request(reply);
                self.request_calls.insert(request, call_id.clone());
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
                self.request_calls.insert(request, call_id.clone());
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

    /// Takes every pending output of the switchboard: what concerns a call with a write in
    /// flight waits behind it; a `Persist` starts a write; the rest goes out now.
    fn carry_out(&mut self) {
        while let Some(output) = self.board.poll_output() {
            let Some(call) = self.call_of(&output) else {
                self.carry(output);
                continue;
            };
            if let Some(held) = self.gates.get_mut(&call) {
                held.push_back(output);
            } else if let Output::Persist(record) = output {
                self.start_write(record);
            } else {
                self.carry(output);
            }
        }
    }

    /// The call an output is about, if any: replies by the request's call, events by theirs.
    fn call_of(&self, output: &Output) -> Option<CallId> {
        match output {
            Output::Persist(record) => Some(record.id.clone()),
            Output::Reply {
                result: Ok(Reply::Connected { active_call }),
                ..
            } => active_call.as_ref().map(|call| call.id.clone()),
            Output::Reply { request, .. } => self.request_calls.get(request).cloned(),
            Output::Emit { event, .. } => match event {
                Event::Incoming { call } | Event::Accepted { call } => Some(call.id.clone()),
                Event::AnsweredElsewhere { call_id }
                | Event::PeerReconnecting { call_id }
                | Event::PeerResumed { call_id } => Some(call_id.clone()),
                Event::Ended(ended) => Some(ended.call_id.clone()),
                Event::Signal(signal) => Some(signal.call_id.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn start_write(&mut self, record: CallRecord) {
        let keep_trying =
            record.state == CallState::Ended && self.recorded.contains_key(&record.id);
        self.gates.insert(record.id.clone(), VecDeque::new());
        if self
            .jobs
            .send(WriteJob {
                record,
                keep_trying,
            })
            .is_err()
        {
            // Only after shutdown dropped the writer; nothing is fed after that.
            log::error!("call log writer gone: a call record was not written");
        }
    }

    /// A write finished: release what waited for it, or refuse the change it carried.
    fn handle_written(&mut self, written: Written) {
        let id = written.record.id.clone();
        let Some(mut held) = self.gates.remove(&id) else {
            return;
        };
        match written.result {
            Ok(()) => {
                if written.record.state == CallState::Ended {
                    self.recorded.remove(&id);
                } else {
                    self.recorded.insert(id.clone(), written.record);
                }
                while let Some(output) = held.pop_front() {
                    if let Output::Persist(record) = output {
                        self.start_write(record);
                        if let Some(gate) = self.gates.get_mut(&id) {
                            *gate = held;
                        }
                        return;
                    }
                    self.carry(output);
                }
            }
            Err(error) => {
                log::error!(
                    "call {id} could not be written to the call log: {error}; the change was \
                     refused (INTERNAL) and the call ended; check the database's disk (full? \
                     failing? read-only?)"
                );
                let last_recorded = self.recorded.remove(&id);
                let mut ending = None;
                for output in held {
                    match output {
                        // A later ending of a call the log shows live still has to be recorded.
                        Output::Persist(record) => {
                            if record.state == CallState::Ended {
                                ending = Some(record);
                            }
                        }
                        Output::Reply {
                            request,
                            result:
                                Ok(Reply::Call(_))
                                | Ok(Reply::Relayed)
                                | Err(CallError::RecipientOffline)
                                | Err(CallError::RecipientBusy),
                        } => self.carry(Output::Reply {
                            request,
                            result: Err(CallError::NotRecorded),
                        }),
                        // The call did end in memory: its parties must hear it.
                        Output::Emit {
                            event: Event::Ended(_),
                            ..
                        } => self.carry(output),
                        // Announcements of the unrecorded change.
                        Output::Emit { .. } => {}
                        other => self.carry(other),
                    }
                }
                match (ending, &last_recorded) {
                    (Some(record), Some(_)) => {
                        self.recorded.insert(id.clone(), record.clone());
                        self.start_write(record);
                    }
                    _ => {
                        let failed_ending = written.record.state == CallState::Ended;
                        self.board
                            .handle_write_failed(&id, last_recorded.as_ref(), now());
                        // The ending `handle_write_failed` makes must retry until written (an
                        // ending that failed itself is already in the writer's backlog).
                        if let Some(record) = last_recorded
                            && !failed_ending
                        {
                            self.recorded.insert(id.clone(), record);
                        }
                        self.carry_out();
                    }
                }
            }
        }
    }

    /// Carries out one output now.
    fn carry(&mut self, output: Output) {
        match output {
            Output::Emit { conn, event } => {
                if let Some(socket) = self.sockets.get(&conn) {
                    // A socket that closed meanwhile gets nothing; its disconnect is queued.
                    let _ = socket.emit(event.name(), &event);
                }
            }
            Output::Broadcast { event } => {
                // No registered socket means nobody to tell.
                let Some(io) = self.io.as_ref().filter(|_| !self.sockets.is_empty()) else {
                    return;
                };
                broadcast_now(io.except(SESSION_PENDING_ROOM).emit(event.name(), &event));
            }
            Output::Persist(record) => self.start_write(record),
            Output::Reply { request, result } => {
                self.request_calls.remove(&request);
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
                    // From now on it hears presence (after its `session`, as the spec orders).
                    // `leave_all`, not `leave`: socketioxide's room index keeps an emptied set
                    // of rooms for a socket that left its last room one by one.
                    session.socket.leave_all();
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

/// The call-log writer: commits what queued up since the last commit in one transaction (with
/// `synchronous=FULL`, one fsync for the lot), answers each job, and retries the endings it
/// could not write until they are written.
async fn write_calls(
    store: Store,
    mut jobs: mpsc::UnboundedReceiver<WriteJob>,
    written: mpsc::UnboundedSender<Written>,
) {
    let mut backlog: Vec<CallRecord> = Vec::new();
    loop {
        let first = if backlog.is_empty() {
            jobs.recv().await
        } else {
            match tokio::time::timeout(RETRY_INTERVAL, jobs.recv()).await {
                Ok(job) => job,
                Err(_) => {
                    retry_backlog(&store, &mut backlog).await;
                    continue;
                }
            }
        };
        let Some(first) = first else {
            retry_backlog(&store, &mut backlog).await;
            if !backlog.is_empty() {
                log::error!(
                    "{} ended call(s) could not be written before exit; the next start closes \
                     them as the log shows them",
                    backlog.len()
                );
            }
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let writes: Vec<CallWrite<'_>> = batch.iter().map(|job| call_write(&job.record)).collect();
        let results: Vec<Result<(), String>> = match store.save_calls(&writes).await {
            Ok(()) => vec![Ok(()); batch.len()],
            Err(error) if batch.len() == 1 => vec![Err(error.to_string())],
            Err(_) => {
                // One record that cannot be written must not sink the others with it.
                let mut results = Vec::with_capacity(writes.len());
                for write in &writes {
                    results.push(store.save_call(write).await.map_err(|e| e.to_string()));
                }
                results
            }
        };
        drop(writes);
        let any_written = results.iter().any(Result::is_ok);
        for (job, result) in batch.into_iter().zip(results) {
            if result.is_err() && job.keep_trying {
                backlog.push(job.record.clone());
            }
            let _ = written.send(Written {
                record: job.record,
                result,
            });
        }
        if any_written && !backlog.is_empty() {
            // The database takes writes again: do not wait for the timer.
            retry_backlog(&store, &mut backlog).await;
        }
    }
}

async fn retry_backlog(store: &Store, backlog: &mut Vec<CallRecord>) {
    if backlog.is_empty() {
        return;
    }
    let writes: Vec<CallWrite<'_>> = backlog.iter().map(call_write).collect();
    match store.save_calls(&writes).await {
        Ok(()) => {
            log::info!(
                "wrote {} ended call(s) that had failed to reach the call log",
                writes.len()
            );
            drop(writes);
            backlog.clear();
        }
        Err(error) => log::debug!("call log still refuses {} record(s): {error}", writes.len()),
    }
}

fn call_write(record: &CallRecord) -> CallWrite<'_> {
    CallWrite {
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
        caller_device: record.caller_device.as_deref(),
        callee_device: record.callee_device.as_deref(),
    }
}

/// Runs a broadcast to completion now, in order with the driver's other emits. socketioxide's
/// in-process adapter (the only one Parley uses) completes it on the first poll.
fn broadcast_now(
    broadcast: impl std::future::Future<Output = Result<(), socketioxide::BroadcastError>>,
) {
    let mut broadcast = std::pin::pin!(broadcast);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    if broadcast.as_mut().poll(&mut context).is_pending() {
        log::error!("a presence broadcast did not complete at once and was dropped");
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
