//! The switchboard: every live call and every connected device, and the rules between them.
//!
//! It is one object rather than one machine per call because the checks `CALLER_BUSY`,
//! `RECIPIENT_OFFLINE` and `RECIPIENT_BUSY`, presence and device take-over all need the global
//! view. Inputs arrive through `handle_*` methods, each with the current `Now`; results are drained
//! with `poll_output`; `poll_timeout` says when `handle_timeout` must be called next.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::devices::Devices;
use crate::output::{
    Ended, Error, Event, Output, PresenceChange, Reply, Signal, SignalKind, SignalPayload,
};
use crate::types::{
    CallId, CallRecord, CallState, CallView, ConnId, DeviceId, Media, Now, PresenceStatus, Reason,
    RequestId, Status, UserId, UserInfo,
};

/// The most changes one `presence:update` carries; a window with more sends several events, in
/// order (the spec lets the server split or coalesce presence as it likes). Every event is one
/// WebSocket frame per connected socket, so while thousands sign in at once (a restart) fewer,
/// larger events are what keeps the fan-out affordable: with 64 a burst of 10,000 sign-ins at
/// 5,000 a second cost the daemon 10 s of CPU and lost connections to their connect timeout,
/// with 1,024 it cost 3 s and lost none (docs/benchmarks.md). The bound keeps one frame near
/// 36 KiB, which is what a socket whose client reads slowly holds of it.
pub const PRESENCE_CHANGES_PER_EVENT: usize = 1024;

/// How long presence changes are collected before they go out: the whole window the spec
/// allows ("Presence": at most 250 ms). Each flush is a frame to every signed-in socket (10,000
/// writes with 10,000 devices connected), so under steady churn the window sets the cost: 250 ms
/// makes a fifth fewer flushes than 200 (docs/benchmarks.md, issue 14).
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(250);

/// Timings, taken from the `[calls]` config section by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a call rings before it ends as missed (`calls.ring_timeout_secs`).
    pub ring_timeout: Duration,
    /// How long an active call survives a call device's disconnect (`calls.reconnect_grace_secs`).
    pub reconnect_grace: Duration,
    /// Presence changes are collected this long, then sent as one event: [`PRESENCE_WINDOW`].
    pub presence_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_timeout: Duration::from_secs(30),
            reconnect_grace: Duration::from_secs(15),
            presence_window: PRESENCE_WINDOW,
        }
    }
}

/// What `Switchboard::restore` did with the calls the log showed live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Active calls put back, waiting for their devices.
    pub restored: usize,
    /// Calls ended `server_restart` (ringing, or not resumable).
    pub closed: usize,
}

/// Which party of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Caller,
    Callee,
}

/// The switchboard's timers. `poll_timeout` names the earliest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    RingTimeout(CallId),
    ReconnectGrace(CallId, Side),
    PresenceFlush,
}

/// Where a command came from. Socket commands act for their connection's device; HTTP commands
/// act for a user and name a device only when the action binds one (initiate, accept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Socket(ConnId),
    Http {
        user: UserId,
        device_id: Option<String>,
    },
}

#[derive(Clone, Debug)]
struct Connection {
    user: UserId,
    device: DeviceId,
    session_id: i64,
}

/// A call's device on one side. `conn` is `None` while the device is away within its grace.
#[derive(Clone, Debug)]
struct Binding {
    device: DeviceId,
    conn: Option<ConnId>,
    grace_deadline: Option<Instant>,
}

#[derive(Clone, Debug)]
struct LiveCall {
    record: CallRecord,
    caller: Binding,
    /// Set when the callee accepts.
    callee: Option<Binding>,
    /// Callee connections that are ringing (only while ringing).
    ringing: BTreeSet<ConnId>,
    ring_deadline: Option<Instant>,
}

impl LiveCall {
    fn binding_mut(&mut self, side: Side) -> Option<&mut Binding> {
        match side {
            Side::Caller => Some(&mut self.caller),
            Side::Callee => self.callee.as_mut(),
        }
    }

    fn side_of_user(&self, user: UserId) -> Side {
        if self.record.caller.id == user {
            Side::Caller
        } else {
            Side::Callee
        }
    }

    /// Which bound side this connection speaks for, if any.
    fn side_of_conn(&self, conn: ConnId) -> Option<Side> {
        if self.caller.conn == Some(conn) {
            Some(Side::Caller)
        } else if self.callee.as_ref().is_some_and(|b| b.conn == Some(conn)) {
            Some(Side::Callee)
        } else {
            None
        }
    }

    fn conn_of(&self, side: Side) -> Option<ConnId> {
        match side {
            Side::Caller => self.caller.conn,
            Side::Callee => self.callee.as_ref().and_then(|b| b.conn),
        }
    }

    /// Every connection that must hear about this call ending.
    fn involved_conns(&self) -> BTreeSet<ConnId> {
        let mut conns: BTreeSet<ConnId> = self.ringing.clone();
        conns.extend(self.caller.conn);
        conns.extend(self.callee.as_ref().and_then(|b| b.conn));
        conns
    }

    /// The one place a call's state changes, so every transition is logged with its cause.
    fn set_state(&mut self, new: CallState, why: &str) {
        log::debug!(
            "call {}: {} -> {} ({why})",
            self.record.id,
            self.record.state,
            new
        );
        self.record.state = new;
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Caller => Side::Callee,
        Side::Callee => Side::Caller,
    }
}

/// How a call ended, gathered so `end_call` has one signature for every ending.
struct Ending {
    status: Status,
    reason: Reason,
    ended_by: Option<UserId>,
    message: Option<String>,
    /// The device whose action ended the call; it hears `call:ended` even if not a call device.
    sender: Option<ConnId>,
    request: Option<RequestId>,
}

impl Ending {
    fn by_server(status: Status, reason: Reason) -> Ending {
        Ending {
            status,
            reason,
            ended_by: None,
            message: None,
            sender: None,
            request: None,
        }
    }
}

pub struct Switchboard {
    config: Config,
    conns: HashMap<ConnId, Connection>,
    /// Connected devices per user: deviceId -> connection.
    devices: HashMap<UserId, Devices>,
    calls: BTreeMap<CallId, LiveCall>,
    /// Each user's live (ringing or active) call; both parties are entered.
    live_by_user: HashMap<UserId, CallId>,
    outputs: VecDeque<Output>,
    presence_dirty: BTreeSet<UserId>,
    /// What clients were last told; users absent from the map were last seen offline.
    presence_published: HashMap<UserId, PresenceStatus>,
    presence_deadline: Option<Instant>,
}

impl Switchboard {
    pub fn new(config: Config) -> Switchboard {
        Switchboard {
            config,
            conns: HashMap::new(),
            devices: HashMap::new(),
            calls: BTreeMap::new(),
            live_by_user: HashMap::new(),
            outputs: VecDeque::new(),
            presence_dirty: BTreeSet::new(),
            presence_published: HashMap::new(),
            presence_deadline: None,
        }
    }

    // ----- outputs and timers -------------------------------------------------------------

    /// The next thing for the shell to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest pending timer. The shell calls `handle_timeout` when it is reached.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let mut earliest: Option<(Instant, Timer)> =
            self.presence_deadline.map(|at| (at, Timer::PresenceFlush));
        let mut consider = |at: Instant, timer: Timer| {
            if earliest.as_ref().is_none_or(|(current, _)| at < *current) {
                earliest = Some((at, timer));
            }
        };
        for (id, call) in &self.calls {
            if let Some(at) = call.ring_deadline {
                consider(at, Timer::RingTimeout(id.clone()));
            }
            if let Some(at) = call.caller.grace_deadline {
                consider(at, Timer::ReconnectGrace(id.clone(), Side::Caller));
            }
            if let Some(at) = call.callee.as_ref().and_then(|b| b.grace_deadline) {
                consider(at, Timer::ReconnectGrace(id.clone(), Side::Callee));
            }
        }
        earliest
    }

    // ----- queries (no state change) -----------------------------------------------------

    /// The directory status of a user right now (not the coalesced, published one).
    pub fn user_status(&self, user: UserId) -> PresenceStatus {
        if self.live_by_user.contains_key(&user) {
            PresenceStatus::Busy
        } else if self.devices.get(&user).is_some_and(|d| !d.is_empty()) {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        }
    }

    /// The user's live call, if any.
    pub fn live_call_of(&self, user: UserId) -> Option<CallView> {
        let id = self.live_by_user.get(&user)?;
        self.calls.get(id).map(|call| call.record.view())
    }

    /// A live call by id, only if `user` is a party (the log answers for ended calls).
    pub fn live_call(&self, id: &CallId, user: UserId) -> Option<CallView> {
        self.calls
            .get(id)
            .filter(|call| call.record.is_party(user))
            .map(|call| call.record.view())
    }

    pub fn live_call_count(&self) -> usize {
        self.calls.len()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The user a connection belongs to.
    pub fn connection_user(&self, conn: ConnId) -> Option<UserId> {
        self.conns.get(&conn).map(|c| c.user)
    }

    // ----- connections --------------------------------------------------------------------

    /// A socket authenticated as `user` with `device_id`. Takes over a device already connected
    /// with the same id, resumes a call waiting for this device, and rings a new callee device.
    pub fn handle_connect(
        &mut self,
        request: RequestId,
        conn: ConnId,
        session_id: i64,
        user: UserInfo,
        device_id: DeviceId,
        now: Now,
    ) {
        if self.conns.contains_key(&conn) {
            // The shell numbers connections uniquely; a repeat is a shell bug, not a client's.
            log::warn!("connection {conn:?} registered twice; keeping the first registration");
            let active_call = self.live_call_of(user.id);
            self.reply(request, Ok(Reply::Connected { active_call }));
            return;
        }
        // The socket this device had before, if any: it is replaced below.
        let previous = self
            .devices
            .entry(user.id)
            .or_default()
            .insert(device_id.clone(), conn);
        self.conns.insert(
            conn,
            Connection {
                user: user.id,
                device: device_id.clone(),
                session_id,
            },
        );

        let mut emits: Vec<(ConnId, Event)> = Vec::new();
        if let Some(old) = previous {
            // Same device, newer socket: the old socket is closed and the new one inherits its
            // place in the call, so a page reload does not drop the call.
            self.conns.remove(&old);
            self.outputs.push_back(Output::Disconnect { conn: old });
            if let Some(call_id) = self.live_by_user.get(&user.id).cloned()
                && let Some(call) = self.calls.get_mut(&call_id)
            {
                // The new socket is re-added to the ringing set below, with its own
                // `call:incoming`, because a reloaded page has no ringing state of its own.
                call.ringing.remove(&old);
                if let Some(side) = call.side_of_conn(old) {
                    if let Some(binding) = call.binding_mut(side) {
                        binding.conn = Some(conn);
                    }
                    if let Some(peer) = call.conn_of(other(side)) {
                        emits.push((
                            peer,
                            Event::PeerResumed {
                                call_id: call_id.clone(),
                            },
                        ));
                    }
                }
            }
        }

        if let Some(call_id) = self.live_by_user.get(&user.id).cloned()
            && let Some(call) = self.calls.get_mut(&call_id)
        {
            let side = call.side_of_user(user.id);
            match call.record.state {
                CallState::Ringing if side == Side::Callee && !call.ringing.contains(&conn) => {
                    call.ringing.insert(conn);
                    emits.push((
                        conn,
                        Event::Incoming {
                            call: call.record.view(),
                        },
                    ));
                }
                CallState::Active => {
                    let resumable = call
                        .binding_mut(side)
                        .filter(|b| b.conn.is_none() && b.device == device_id);
                    if let Some(binding) = resumable {
                        binding.conn = Some(conn);
                        binding.grace_deadline = None;
                        log::debug!("call {call_id}: {side:?} device resumed");
                        match call.conn_of(other(side)) {
                            Some(peer) => emits.push((
                                peer,
                                Event::PeerResumed {
                                    call_id: call_id.clone(),
                                },
                            )),
                            // Both were away (a server restart): this side waits for the
                            // other, and hears `call:peer-resumed` when it is back.
                            None => emits.push((
                                conn,
                                Event::PeerReconnecting {
                                    call_id: call_id.clone(),
                                },
                            )),
                        }
                    }
                }
                _ => {}
            }
        }

        let active_call = self.live_call_of(user.id);
        self.reply(request, Ok(Reply::Connected { active_call }));
        for (target, event) in emits {
            self.emit(target, event);
        }
        self.mark_presence(user.id, now);
    }

    /// A socket went away (closed, timed out, or closed by us).
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Now) {
        let Some(connection) = self.conns.remove(&conn) else {
            // Already replaced by a take-over or revoked: nothing is bound to it any more.
            return;
        };
        if let Some(devices) = self.devices.get_mut(&connection.user) {
            devices.remove_if_bound(&connection.device, conn);
            if devices.is_empty() {
                self.devices.remove(&connection.user);
            }
        }
        self.mark_presence(connection.user, now);

        let Some(call_id) = self.live_by_user.get(&connection.user).cloned() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match call.record.state {
            CallState::Ringing => {
                if call.caller.conn == Some(conn) {
                    // The socket is gone: it must not be sent the ending.
                    call.caller.conn = None;
                    self.end_call(
                        &call_id,
                        Ending::by_server(Status::Cancelled, Reason::ConnectionLost),
                        now,
                    );
                } else if call.ringing.remove(&conn) && call.ringing.is_empty() {
                    self.end_call(
                        &call_id,
                        Ending::by_server(Status::Missed, Reason::ConnectionLost),
                        now,
                    );
                }
            }
            CallState::Active => {
                if let Some(side) = call.side_of_conn(conn) {
                    let grace = now.instant + self.config.reconnect_grace;
                    if let Some(binding) = call.binding_mut(side) {
                        binding.conn = None;
                        binding.grace_deadline = Some(grace);
                    }
                    log::debug!("call {call_id}: {side:?} device lost, waiting for it");
                    if let Some(peer) = call.conn_of(other(side)) {
                        self.emit(
                            peer,
                            Event::PeerReconnecting {
                                call_id: call_id.clone(),
                            },
                        );
                    }
                }
            }
            CallState::Ended => {}
        }
    }

    /// A session was logged out: close its sockets now, with the usual disconnect consequences.
    pub fn handle_session_revoked(&mut self, session_id: i64, now: Now) {
        let mut revoked: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session_id == session_id)
            .map(|(conn, _)| *conn)
            .collect();
        revoked.sort();
        for conn in revoked {
            self.outputs.push_back(Output::Disconnect { conn });
            self.handle_disconnect(conn, now);
        }
    }

    // ----- call actions ---------------------------------------------------------------------

    /// `call:initiate` / `POST /calls`. The shell has checked the payload and rate limit and found
    /// the callee (`USER_NOT_FOUND` is its answer); the remaining checks run here in the spec's
    /// order. Offline and busy attempts are persisted before the refusal.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_initiate(
        &mut self,
        request: RequestId,
        origin: Origin,
        caller: UserInfo,
        callee: UserInfo,
        media: Media,
        call_id: CallId,
        now: Now,
    ) {
        if caller.id == callee.id {
            return self.reply(request, Err(Error::SelfCall));
        }
        if self.live_by_user.contains_key(&caller.id) {
            return self.reply(request, Err(Error::CallerBusy));
        }
        let caller_conn = match self.resolve_device(caller.id, &origin) {
            Ok(conn) => conn,
            Err(error) => return self.reply(request, Err(error)),
        };
        let caller_device = self
            .conns
            .get(&caller_conn)
            .map(|c| c.device.clone())
            .unwrap_or_default();
        let mut record = CallRecord {
            id: call_id.clone(),
            caller,
            callee,
            media,
            state: CallState::Ringing,
            status: None,
            reason: None,
            ended_by: None,
            message: None,
            created_at_ms: now.unix_ms,
            answered_at_ms: None,
            ended_at_ms: None,
            caller_device: Some(caller_device.to_string()),
            callee_device: None,
        };
        let callee_conns: BTreeSet<ConnId> = self
            .devices
            .get(&record.callee.id)
            .map(|devices| devices.conns().collect())
            .unwrap_or_default();
        let refusal = if callee_conns.is_empty() {
            Some((Status::Missed, Reason::Offline, Error::RecipientOffline))
        } else if self.live_by_user.contains_key(&record.callee.id) {
            Some((Status::Busy, Reason::Busy, Error::RecipientBusy))
        } else {
            None
        };
        if let Some((status, reason, error)) = refusal {
            // Never live: the record is born ended so the callee's history shows the attempt.
            record.state = CallState::Ended;
            record.status = Some(status);
            record.reason = Some(reason);
            record.ended_at_ms = Some(now.unix_ms);
            log::debug!("call {call_id}: refused at initiate ({reason})");
            self.outputs.push_back(Output::Persist(record));
            return self.reply(request, Err(error));
        }

        let call = LiveCall {
            caller: Binding {
                device: caller_device,
                conn: Some(caller_conn),
                grace_deadline: None,
            },
            callee: None,
            ringing: callee_conns.clone(),
            ring_deadline: Some(now.instant + self.config.ring_timeout),
            record,
        };
        let (caller_id, callee_id) = (call.record.caller.id, call.record.callee.id);
        let view = call.record.view();
        log::debug!("call {call_id}: ringing {} device(s)", callee_conns.len());
        self.outputs.push_back(Output::Persist(call.record.clone()));
        self.calls.insert(call_id.clone(), call);
        self.live_by_user.insert(caller_id, call_id.clone());
        self.live_by_user.insert(callee_id, call_id);
        self.reply(request, Ok(Reply::Call(view.clone())));
        for conn in callee_conns {
            self.emit(conn, Event::Incoming { call: view.clone() });
        }
        self.mark_presence(caller_id, now);
        self.mark_presence(callee_id, now);
    }

    /// `call:accept`: the first callee device to accept wins; the others stop ringing.
    pub fn handle_accept(
        &mut self,
        request: RequestId,
        origin: Origin,
        call_id: &CallId,
        now: Now,
    ) {
        let result = self.accept(&origin, call_id, now);
        match result {
            Ok((view, caller_conn, others)) => {
                self.outputs.push_back(Output::Persist(
                    self.calls
                        .get(call_id)
                        .expect("accept just updated this live call")
                        .record
                        .clone(),
                ));
                self.reply(request, Ok(Reply::Call(view.clone())));
                if let Some(conn) = caller_conn {
                    self.emit(conn, Event::Accepted { call: view });
                }
                for conn in others {
                    self.emit(
                        conn,
                        Event::AnsweredElsewhere {
                            call_id: call_id.clone(),
                        },
                    );
                }
            }
            Err(error) => self.reply(request, Err(error)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn accept(
        &mut self,
        origin: &Origin,
        call_id: &CallId,
        now: Now,
    ) -> Result<(CallView, Option<ConnId>, BTreeSet<ConnId>), Error> {
        let (user, _) = self.actor(origin)?;
        let call = self.party_call(call_id, user)?;
        if call.record.caller.id == user {
            return Err(Error::Forbidden("only the callee can accept a call"));
        }
        if call.record.state != CallState::Ringing {
            return Err(Error::InvalidState("the call was already answered"));
        }
        let conn = self.resolve_device(user, origin)?;
        let device = self
            .conns
            .get(&conn)
            .map(|c| c.device.clone())
            .unwrap_or_default();
        let call = self
            .calls
            .get_mut(call_id)
            .expect("party_call found this live call");
        if !call.ringing.remove(&conn) {
            // Every connected callee device rings, so this is a device connected as another user.
            return Err(Error::Forbidden("this device is not ringing for the call"));
        }
        let others = std::mem::take(&mut call.ringing);
        call.ring_deadline = None;
        call.record.callee_device = Some(device.to_string());
        call.callee = Some(Binding {
            device,
            conn: Some(conn),
            grace_deadline: None,
        });
        call.record.answered_at_ms = Some(now.unix_ms);
        call.set_state(CallState::Active, "accepted");
        Ok((call.record.view(), call.caller.conn, others))
    }

    /// `call:decline` (callee, while ringing), with an optional short message for the caller.
    pub fn handle_decline(
        &mut self,
        request: RequestId,
        origin: Origin,
        call_id: &CallId,
        message: Option<String>,
        now: Now,
    ) {
        let checked = self.actor(&origin).and_then(|(user, sender)| {
            let call = self.party_call(call_id, user)?;
            if call.record.caller.id == user {
                return Err(Error::Forbidden(
                    "only the callee can decline; the caller cancels",
                ));
            }
            if call.record.state != CallState::Ringing {
                return Err(Error::InvalidState("the call was answered; end it instead"));
            }
            Ok((user, sender))
        });
        match checked {
            Ok((user, sender)) => self.end_call(
                call_id,
                Ending {
                    status: Status::Declined,
                    reason: Reason::Declined,
                    ended_by: Some(user),
                    message,
                    sender,
                    request: Some(request),
                },
                now,
            ),
            Err(error) => self.reply(request, Err(error)),
        }
    }

    /// `call:cancel` (caller, while ringing).
    pub fn handle_cancel(
        &mut self,
        request: RequestId,
        origin: Origin,
        call_id: &CallId,
        now: Now,
    ) {
        let checked = self.actor(&origin).and_then(|(user, sender)| {
            let call = self.party_call(call_id, user)?;
            if call.record.callee.id == user {
                return Err(Error::Forbidden(
                    "only the caller can cancel; the callee declines",
                ));
            }
            if call.record.state != CallState::Ringing {
                return Err(Error::InvalidState("the call was answered; end it instead"));
            }
            Ok((user, sender))
        });
        match checked {
            Ok((user, sender)) => self.end_call(
                call_id,
                Ending {
                    status: Status::Cancelled,
                    reason: Reason::Cancelled,
                    ended_by: Some(user),
                    message: None,
                    sender,
                    request: Some(request),
                },
                now,
            ),
            Err(error) => self.reply(request, Err(error)),
        }
    }

    /// `call:end`: either party, any live state; while ringing it is a cancel or a decline.
    pub fn handle_end(&mut self, request: RequestId, origin: Origin, call_id: &CallId, now: Now) {
        let checked = self.actor(&origin).and_then(|(user, sender)| {
            let call = self.party_call(call_id, user)?;
            let caller = call.record.caller.id == user;
            let (status, reason) = match (call.record.state, caller) {
                (CallState::Ringing, true) => (Status::Cancelled, Reason::Cancelled),
                (CallState::Ringing, false) => (Status::Declined, Reason::Declined),
                _ => (Status::Completed, Reason::Hangup),
            };
            Ok(Ending {
                status,
                reason,
                ended_by: Some(user),
                message: None,
                sender,
                request: Some(request),
            })
        });
        match checked {
            Ok(ending) => self.end_call(call_id, ending, now),
            Err(error) => self.reply(request, Err(error)),
        }
    }

    /// `signal:*` and `media:state`: relayed only between the two call devices of an active call.
    pub fn handle_signal(
        &mut self,
        request: RequestId,
        conn: ConnId,
        call_id: &CallId,
        kind: SignalKind,
        payload: SignalPayload,
        _now: Now,
    ) {
        let checked = self.actor(&Origin::Socket(conn)).and_then(|(user, _)| {
            let call = self.party_call(call_id, user)?;
            if call.record.state != CallState::Active {
                return Err(Error::InvalidState("signaling is allowed only once the call is accepted"));
            }
            let side = call.side_of_conn(conn).ok_or(Error::Forbidden(
                "this device is not bound to the call; only the two call devices exchange signaling",
            ))?;
            Ok((user, call.conn_of(other(side))))
        });
        match checked {
            Ok((user, peer)) => {
                self.reply(request, Ok(Reply::Relayed));
                // A peer within its reconnect grace misses this message; it renegotiates with a
                // fresh offer when it resumes, so queueing would only deliver stale SDP.
                if let Some(peer) = peer {
                    self.emit(
                        peer,
                        Event::Signal(Signal {
                            kind,
                            call_id: call_id.clone(),
                            from: user,
                            payload,
                        }),
                    );
                }
            }
            Err(error) => self.reply(request, Err(error)),
        }
    }

    /// Fires every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        let mut ring_expired = Vec::new();
        let mut grace_expired = Vec::new();
        for (id, call) in &self.calls {
            if call.ring_deadline.is_some_and(|at| at <= now.instant) {
                ring_expired.push(id.clone());
            }
            let caller_gone = call
                .caller
                .grace_deadline
                .is_some_and(|at| at <= now.instant);
            let callee_gone = call
                .callee
                .as_ref()
                .and_then(|b| b.grace_deadline)
                .is_some_and(|at| at <= now.instant);
            if caller_gone || callee_gone {
                grace_expired.push(id.clone());
            }
        }
        for id in ring_expired {
            self.end_call(
                &id,
                Ending::by_server(Status::Missed, Reason::NoAnswer),
                now,
            );
        }
        for id in grace_expired {
            self.end_call(
                &id,
                Ending::by_server(Status::Completed, Reason::ConnectionLost),
                now,
            );
        }
        if self.presence_deadline.is_some_and(|at| at <= now.instant) {
            self.flush_presence();
        }
    }

    /// SIGTERM. A restart ends no answered call by itself (spec "Restarts"): media does not
    /// pass through signaling, so an active call stays active, in memory and in the log, and
    /// the next start restores it (`restore`). A call still ringing ends `missed` with
    /// `server_shutdown`: nobody answered it, and nobody would be there to ring it after the
    /// restart. Its devices hear the ending before their sockets close.
    pub fn handle_shutdown(&mut self, now: Now) {
        let ringing: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, call)| call.record.state == CallState::Ringing)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ringing {
            self.end_call(
                &id,
                Ending::by_server(Status::Missed, Reason::ServerShutdown),
                now,
            );
        }
    }

    /// Start-up: `calls` are the calls the log still shows live, left by the previous process
    /// however it stopped. This is the one place that decides what a stop does to a call.
    /// Each active call comes back with both devices away in their reconnect grace, counted
    /// from `now`; a device that connects again with its `deviceId` resumes it (see
    /// `handle_connect`), and a side that does not come back ends it `connection_lost` as for
    /// any dropped device. A call still ringing was never answered and nobody rings it any
    /// more: it ends `missed` with `server_restart` (a graceful stop already ended its ringing
    /// calls, so only a crash leaves one). A live record that cannot be resumed (no device
    /// recorded, as in logs written before devices were kept, or a party already in a
    /// restored call) ends the same way: `completed` if it was answered, else `missed`.
    /// Call this once, before any connection.
    pub fn restore(&mut self, calls: Vec<CallRecord>, now: Now) -> Restored {
        let mut summary = Restored::default();
        for record in calls {
            let id = record.id.clone();
            let parties = [record.caller.id, record.callee.id];
            let resumable = record.state == CallState::Active
                && record.answered_at_ms.is_some()
                && !self.calls.contains_key(&id)
                && parties.iter().all(|u| !self.live_by_user.contains_key(u));
            let devices = record
                .caller_device
                .clone()
                .zip(record.callee_device.clone());
            let grace = now.instant + self.config.reconnect_grace;
            let away = |device: String| Binding {
                device: device.into(),
                conn: None,
                grace_deadline: Some(grace),
            };
            let call = match devices {
                Some((caller, callee)) if resumable => LiveCall {
                    caller: away(caller),
                    callee: Some(away(callee)),
                    ringing: BTreeSet::new(),
                    ring_deadline: None,
                    record,
                },
                _ => {
                    // Entered as live only so that `end_call` records and announces it the one
                    // way every ending goes; none of its devices is connected yet.
                    let status = if record.answered_at_ms.is_some() {
                        Status::Completed
                    } else {
                        Status::Missed
                    };
                    let call = LiveCall {
                        caller: Binding {
                            device: record.caller_device.as_deref().unwrap_or_default().into(),
                            conn: None,
                            grace_deadline: None,
                        },
                        callee: None,
                        ringing: BTreeSet::new(),
                        ring_deadline: None,
                        record,
                    };
                    if self.calls.contains_key(&id) {
                        // The same id twice: the log's unique key makes this impossible; keep
                        // the first rather than end a restored call.
                        continue;
                    }
                    self.calls.insert(id.clone(), call);
                    self.end_call(&id, Ending::by_server(status, Reason::ServerRestart), now);
                    summary.closed += 1;
                    continue;
                }
            };
            log::debug!("call {id}: restored, waiting for both devices");
            self.calls.insert(id.clone(), call);
            for user in parties {
                self.live_by_user.insert(user, id.clone());
                self.mark_presence(user, now);
            }
            summary.restored += 1;
        }
        summary
    }

    /// The shell could not write a record of `call_id` (disk full, failing device): the change
    /// it carried is refused, and the call cannot go on unrecorded. `last_recorded` is the call
    /// as the log last stored it, `None` if never. The shell withholds a change's events until
    /// its record is written, so a call the log never stored was announced to nobody: it
    /// vanishes. Any other live call ends as the server's doing, from its recorded state:
    /// `completed` if recorded answered, else `missed`, reason `connection_lost`; every device of
    /// both parties hears it (a withheld `call:answered-elsewhere` left other devices ringing).
    pub fn handle_write_failed(
        &mut self,
        call_id: &CallId,
        last_recorded: Option<&CallRecord>,
        now: Now,
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            // Already ended: its ending is what failed, and the shell keeps retrying that.
            return;
        };
        let parties = [call.record.caller.id, call.record.callee.id];
        let Some(recorded) = last_recorded else {
            log::debug!("call {call_id}: dropped, its first record could not be written");
            self.calls.remove(call_id);
            for user in parties {
                if self.live_by_user.get(&user) == Some(call_id) {
                    self.live_by_user.remove(&user);
                }
                self.mark_presence(user, now);
            }
            return;
        };
        call.record.answered_at_ms = recorded.answered_at_ms;
        for user in parties {
            if let Some(devices) = self.devices.get(&user) {
                call.ringing.extend(devices.conns());
            }
        }
        let status = if recorded.answered_at_ms.is_some() {
            Status::Completed
        } else {
            Status::Missed
        };
        self.end_call(
            call_id,
            Ending::by_server(status, Reason::ConnectionLost),
            now,
        );
    }

    // ----- internals -------------------------------------------------------------------------

    fn reply(&mut self, request: RequestId, result: Result<Reply, Error>) {
        self.outputs.push_back(Output::Reply { request, result });
    }

    fn emit(&mut self, conn: ConnId, event: Event) {
        self.outputs.push_back(Output::Emit { conn, event });
    }

    /// The acting user and, for sockets, the acting connection.
    fn actor(&self, origin: &Origin) -> Result<(UserId, Option<ConnId>), Error> {
        match origin {
            Origin::Socket(conn) => {
                self.conns
                    .get(conn)
                    .map(|c| (c.user, Some(*conn)))
                    .ok_or(Error::DeviceRequired(
                        "this socket is not registered; reconnect it",
                    ))
            }
            Origin::Http { user, .. } => Ok((*user, None)),
        }
    }

    /// The live call `id` if `user` is a party; otherwise it does not exist for them.
    fn party_call(&self, id: &CallId, user: UserId) -> Result<&LiveCall, Error> {
        self.calls
            .get(id)
            .filter(|call| call.record.is_party(user))
            .ok_or(Error::CallNotFound)
    }

    /// The connection an action binds to the call.
    fn resolve_device(&self, user: UserId, origin: &Origin) -> Result<ConnId, Error> {
        match origin {
            Origin::Socket(conn) => match self.conns.get(conn) {
                Some(c) if c.user == user => Ok(*conn),
                _ => Err(Error::DeviceRequired(
                    "this socket is not registered; reconnect it",
                )),
            },
            Origin::Http {
                device_id: Some(device),
                ..
            } => self
                .devices
                .get(&user)
                .and_then(|devices| devices.get(device))
                .ok_or(Error::DeviceRequired(
                    "`deviceId` is not a connected device of yours; connect a socket with it first",
                )),
            Origin::Http {
                device_id: None, ..
            } => {
                let devices = self.devices.get(&user);
                match devices.map(|d| d.len()).unwrap_or(0) {
                    1 => Ok(devices
                        .and_then(|d| d.conns().next())
                        .expect("the map has exactly one entry")),
                    0 => Err(Error::DeviceRequired(
                        "you have no connected device; connect a socket before calling",
                    )),
                    _ => Err(Error::DeviceRequired(
                        "you have several connected devices; name one with `deviceId`",
                    )),
                }
            }
        }
    }

    /// Ends a live call: records it, replies to the requester, tells every involved device.
    fn end_call(&mut self, call_id: &CallId, ending: Ending, now: Now) {
        let Some(mut call) = self.calls.remove(call_id) else {
            return;
        };
        let mut recipients = call.involved_conns();
        recipients.extend(ending.sender);
        call.record.status = Some(ending.status);
        call.record.reason = Some(ending.reason);
        call.record.ended_by = ending.ended_by;
        call.record.message = ending.message;
        call.record.ended_at_ms = Some(now.unix_ms);
        call.set_state(CallState::Ended, ending.reason.as_str());
        for user in [call.record.caller.id, call.record.callee.id] {
            if self.live_by_user.get(&user) == Some(call_id) {
                self.live_by_user.remove(&user);
            }
            self.mark_presence(user, now);
        }
        let ended = Ended {
            call_id: call_id.clone(),
            status: ending.status,
            reason: ending.reason,
            ended_by: call.record.ended_by,
            duration_secs: call.record.duration_secs(),
            message: call.record.message.clone(),
        };
        let view = call.record.view();
        self.outputs.push_back(Output::Persist(call.record));
        if let Some(request) = ending.request {
            self.reply(request, Ok(Reply::Call(view)));
        }
        for conn in recipients {
            self.emit(conn, Event::Ended(ended.clone()));
        }
    }

    fn mark_presence(&mut self, user: UserId, now: Now) {
        self.presence_dirty.insert(user);
        if self.presence_deadline.is_none() {
            self.presence_deadline = Some(now.instant + self.config.presence_window);
        }
    }

    /// Sends each touched user's latest status once, skipping users whose status came back to
    /// what clients already know (a reload within the window costs nothing).
    fn flush_presence(&mut self) {
        self.presence_deadline = None;
        let mut changes = Vec::new();
        for user in std::mem::take(&mut self.presence_dirty) {
            let status = self.user_status(user);
            let known = self
                .presence_published
                .get(&user)
                .copied()
                .unwrap_or(PresenceStatus::Offline);
            if status != known {
                changes.push(PresenceChange {
                    user_id: user,
                    status,
                });
                if status == PresenceStatus::Offline {
                    self.presence_published.remove(&user);
                } else {
                    self.presence_published.insert(user, status);
                }
            }
        }
        // Several events when there are many changes: see `PRESENCE_CHANGES_PER_EVENT`.
        while !changes.is_empty() {
            let rest = changes.split_off(changes.len().min(PRESENCE_CHANGES_PER_EVENT));
            self.outputs.push_back(Output::Broadcast {
                event: Event::Presence { changes },
            });
            changes = rest;
        }
    }
}
