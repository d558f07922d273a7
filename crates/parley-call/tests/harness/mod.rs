//! A virtual-clock harness around the switchboard: three users, named devices, and a compact
//! text rendering of what one input produced, so each test reads as one line of specification.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use parley_call::{
    CallId, CallRecord, CallState, Config, ConnId, Event, Media, Now, Origin, Output, Reply,
    RequestId, SignalKind, SignalPayload, Switchboard, UserId, UserInfo,
};

pub const ALICE: UserId = 1;
pub const BOB: UserId = 2;
pub const CAROL: UserId = 3;

/// Devices: alice's phone, bob's laptop and phone, carol's laptop.
pub const A1: ConnId = ConnId(11);
pub const B1: ConnId = ConnId(21);
pub const B2: ConnId = ConnId(22);
pub const C1: ConnId = ConnId(31);

pub fn user(id: UserId) -> UserInfo {
    let name = match id {
        ALICE => "alice",
        BOB => "bob",
        CAROL => "carol",
        _ => "someone",
    };
    UserInfo {
        id,
        username: name.to_owned(),
        display_name: name.to_uppercase(),
    }
}

pub fn conn_name(conn: ConnId) -> String {
    match conn {
        A1 => "A1".into(),
        B1 => "B1".into(),
        B2 => "B2".into(),
        C1 => "C1".into(),
        // Fresh sockets from `Harness::fresh_conn`: one per test input at most.
        ConnId(n) if n >= 1000 => "N".into(),
        ConnId(n) => format!("#{n}"),
    }
}

pub fn conn_user(conn: ConnId) -> UserId {
    match conn.0 / 10 {
        1 => ALICE,
        2 => BOB,
        3 => CAROL,
        _ => (conn.0 / 10) as UserId,
    }
}

/// The device id a connection uses (a reconnecting socket reuses it with a new `ConnId`).
pub fn device_of(conn: ConnId) -> String {
    conn_name(conn).to_lowercase()
}

pub const CALL: &str = "call-1";

pub fn call_id() -> CallId {
    CallId(CALL.to_owned())
}

pub fn config() -> Config {
    Config {
        ring_timeout: Duration::from_secs(30),
        reconnect_grace: Duration::from_secs(15),
        presence_window: parley_call::PRESENCE_WINDOW,
    }
}

pub struct Harness {
    pub board: Switchboard,
    pub now: Now,
    next_request: u64,
    next_conn: u64,
    /// Every output ever drained, for tests that look at history.
    pub log: Vec<Output>,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            board: Switchboard::new(config()),
            now: Now {
                instant: Instant::now(),
                unix_ms: 1_795_000_000_000,
            },
            next_request: 1,
            next_conn: 100,
            log: Vec::new(),
        }
    }

    pub fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// A fresh connection number for a socket of `user` (for reconnects).
    pub fn fresh_conn(&mut self, user: UserId) -> ConnId {
        self.next_conn += 1;
        let _ = user;
        ConnId(self.next_conn * 1000)
    }

    pub fn drain(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some(output) = self.board.poll_output() {
            outputs.push(output);
        }
        self.log.extend(outputs.iter().cloned());
        outputs
    }

    pub fn advance(&mut self, by: Duration) {
        self.now = self.now.after(by);
    }

    /// Runs timers the way the shell does: jump to each deadline until none is due by `until`.
    pub fn run_until(&mut self, until: Now) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some((at, _timer)) = self.board.poll_timeout() {
            if at > until.instant {
                break;
            }
            let step = at.saturating_duration_since(self.now.instant);
            self.now = self.now.after(step);
            self.board.handle_timeout(self.now);
            outputs.extend(self.drain());
        }
        self.now = until;
        outputs
    }

    pub fn connect(&mut self, conn: ConnId) -> Vec<Output> {
        self.connect_as(conn, conn_user(conn), &device_of(conn))
    }

    pub fn connect_as(&mut self, conn: ConnId, user_id: UserId, device: &str) -> Vec<Output> {
        let request = self.request();
        self.board.handle_connect(
            request,
            conn,
            user_id * 100,
            user(user_id),
            device.into(),
            self.now,
        );
        self.drain()
    }

    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Output> {
        self.board.handle_disconnect(conn, self.now);
        self.drain()
    }

    pub fn initiate(&mut self, from: ConnId, to: UserId) -> Vec<Output> {
        self.initiate_from(Origin::Socket(from), conn_user(from), to)
    }

    pub fn initiate_from(&mut self, origin: Origin, caller: UserId, to: UserId) -> Vec<Output> {
        let request = self.request();
        self.board.handle_initiate(
            request,
            origin,
            user(caller),
            user(to),
            Media::Video,
            call_id(),
            self.now,
        );
        self.drain()
    }

    pub fn accept(&mut self, conn: ConnId) -> Vec<Output> {
        let request = self.request();
        self.board
            .handle_accept(request, Origin::Socket(conn), &call_id(), self.now);
        self.drain()
    }

    pub fn decline(&mut self, conn: ConnId, message: Option<&str>) -> Vec<Output> {
        let request = self.request();
        self.board.handle_decline(
            request,
            Origin::Socket(conn),
            &call_id(),
            message.map(str::to_owned),
            self.now,
        );
        self.drain()
    }

    pub fn cancel(&mut self, conn: ConnId) -> Vec<Output> {
        let request = self.request();
        self.board
            .handle_cancel(request, Origin::Socket(conn), &call_id(), self.now);
        self.drain()
    }

    pub fn end(&mut self, conn: ConnId) -> Vec<Output> {
        let request = self.request();
        self.board
            .handle_end(request, Origin::Socket(conn), &call_id(), self.now);
        self.drain()
    }

    pub fn offer(&mut self, conn: ConnId) -> Vec<Output> {
        let request = self.request();
        self.board.handle_signal(
            request,
            conn,
            &call_id(),
            SignalKind::Offer,
            SignalPayload::Sdp {
                sdp: parley_call::SdpText::from_text("v=0"),
            },
            self.now,
        );
        self.drain()
    }

    pub fn shutdown(&mut self) -> Vec<Output> {
        self.board.handle_shutdown(self.now);
        self.drain()
    }

    /// The last snapshot of the call this harness sent to the log.
    pub fn last_record(&self) -> Option<CallRecord> {
        self.log.iter().rev().find_map(|o| match o {
            Output::Persist(record) if record.id == call_id() => Some(record.clone()),
            _ => None,
        })
    }

    /// A new process after `downtime`: a fresh switchboard given what this one left in the log
    /// (the call as last recorded, if it was not ended), with no device connected yet.
    pub fn restart_after(&self, downtime: Duration) -> (Harness, Vec<Output>) {
        let mut next = Harness::new();
        next.now = self.now.after(downtime);
        let live: Vec<CallRecord> = self
            .last_record()
            .into_iter()
            .filter(|r| r.state != CallState::Ended)
            .collect();
        next.board.restore(live, next.now);
        let outputs = next.drain();
        (next, outputs)
    }
}

/// The states a call can be in for the transition tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixture {
    /// alice (A1) called bob; bob's B1 and B2 ring.
    Ringing,
    /// bob accepted on B1 one second after the call started.
    Active,
    /// Active, then alice's A1 dropped (within the reconnect grace).
    ActiveCallerAway,
    /// Active, then bob's B1 dropped (within the reconnect grace).
    ActiveCalleeAway,
    /// Ringing, then alice cancelled.
    Ended,
    /// Active, then the server stopped and started again 60 s later: the call is restored and
    /// neither A1 nor B1 is back yet (bob's phone B2 and carol are connected).
    Restored,
    /// Restored, then alice's A1 connected again with its deviceId; bob's B1 is still away.
    RestoredCallerBack,
}

impl Fixture {
    pub const ALL: [Fixture; 7] = [
        Fixture::Ringing,
        Fixture::Active,
        Fixture::ActiveCallerAway,
        Fixture::ActiveCalleeAway,
        Fixture::Ended,
        Fixture::Restored,
        Fixture::RestoredCallerBack,
    ];

    pub fn build(self) -> Harness {
        if matches!(self, Fixture::Restored | Fixture::RestoredCallerBack) {
            let before = Fixture::Active.build();
            before.board.live_call(&call_id(), ALICE).expect("active");
            let (mut h, _) = before.restart_after(Duration::from_secs(60));
            h.connect(B2);
            h.connect(C1);
            h.advance(Duration::from_secs(2));
            if self == Fixture::RestoredCallerBack {
                h.connect(A1);
            }
            let settle = h.now.after(Duration::from_millis(500));
            h.run_until(settle);
            return h;
        }
        let mut h = Harness::new();
        for conn in [A1, B1, B2, C1] {
            h.connect(conn);
        }
        h.initiate(A1, BOB);
        match self {
            Fixture::Ringing => {}
            Fixture::Active | Fixture::ActiveCallerAway | Fixture::ActiveCalleeAway => {
                h.advance(Duration::from_secs(1));
                h.accept(B1);
            }
            Fixture::Ended => {
                h.cancel(A1);
            }
            Fixture::Restored | Fixture::RestoredCallerBack => unreachable!("built above"),
        }
        h.advance(Duration::from_secs(2));
        match self {
            Fixture::ActiveCallerAway => {
                h.disconnect(A1);
            }
            Fixture::ActiveCalleeAway => {
                h.disconnect(B1);
            }
            _ => {}
        }
        // Let presence settle so transition tests only see what the input caused.
        let settle = h.now.after(Duration::from_millis(500));
        h.run_until(settle);
        h
    }
}

/// Every input the transition tests apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    AcceptByCallee,
    AcceptByCalleeOtherDevice,
    AcceptByCaller,
    AcceptByStranger,
    DeclineByCallee,
    DeclineByCaller,
    CancelByCaller,
    CancelByCallee,
    EndByCaller,
    EndByCallee,
    EndByStranger,
    OfferFromCaller,
    OfferFromCallee,
    OfferFromCalleeOtherDevice,
    OfferFromStranger,
    RingTimeout,
    GraceTimeout,
    CallerDisconnects,
    CalleeDisconnects,
    CalleeOtherDeviceDisconnects,
    CallerReconnects,
    CalleeReconnects,
    CalleeNewDevice,
    Shutdown,
}

impl Input {
    pub const ALL: [Input; 24] = [
        Input::AcceptByCallee,
        Input::AcceptByCalleeOtherDevice,
        Input::AcceptByCaller,
        Input::AcceptByStranger,
        Input::DeclineByCallee,
        Input::DeclineByCaller,
        Input::CancelByCaller,
        Input::CancelByCallee,
        Input::EndByCaller,
        Input::EndByCallee,
        Input::EndByStranger,
        Input::OfferFromCaller,
        Input::OfferFromCallee,
        Input::OfferFromCalleeOtherDevice,
        Input::OfferFromStranger,
        Input::RingTimeout,
        Input::GraceTimeout,
        Input::CallerDisconnects,
        Input::CalleeDisconnects,
        Input::CalleeOtherDeviceDisconnects,
        Input::CallerReconnects,
        Input::CalleeReconnects,
        Input::CalleeNewDevice,
        Input::Shutdown,
    ];

    pub fn apply(self, h: &mut Harness) -> Vec<Output> {
        match self {
            Input::AcceptByCallee => h.accept(B1),
            Input::AcceptByCalleeOtherDevice => h.accept(B2),
            Input::AcceptByCaller => h.accept(A1),
            Input::AcceptByStranger => h.accept(C1),
            Input::DeclineByCallee => h.decline(B1, None),
            Input::DeclineByCaller => h.decline(A1, None),
            Input::CancelByCaller => h.cancel(A1),
            Input::CancelByCallee => h.cancel(B1),
            Input::EndByCaller => h.end(A1),
            Input::EndByCallee => h.end(B1),
            Input::EndByStranger => h.end(C1),
            Input::OfferFromCaller => h.offer(A1),
            Input::OfferFromCallee => h.offer(B1),
            Input::OfferFromCalleeOtherDevice => h.offer(B2),
            Input::OfferFromStranger => h.offer(C1),
            Input::RingTimeout => {
                // The fixture is 2.5 s old; the ring deadline is 30 s after initiate.
                let until = h.now.after(Duration::from_secs(28));
                h.run_until(until)
            }
            Input::GraceTimeout => {
                let until = h.now.after(Duration::from_secs(15));
                h.run_until(until)
            }
            Input::CallerDisconnects => h.disconnect(A1),
            Input::CalleeDisconnects => h.disconnect(B1),
            Input::CalleeOtherDeviceDisconnects => h.disconnect(B2),
            Input::CallerReconnects => {
                let conn = h.fresh_conn(ALICE);
                h.connect_as(conn, ALICE, &device_of(A1))
            }
            Input::CalleeReconnects => {
                let conn = h.fresh_conn(BOB);
                h.connect_as(conn, BOB, &device_of(B1))
            }
            Input::CalleeNewDevice => {
                let conn = h.fresh_conn(BOB);
                h.connect_as(conn, BOB, "b3")
            }
            Input::Shutdown => h.shutdown(),
        }
    }
}

/// Renders what one input did, omitting presence (tested on its own):
/// `reply=<ok|CODE> log=<state>:<status>/<reason>:<endedBy> emit=<conn><event>,...`
/// plus `live=<state>` for the call afterwards, or `live=none`.
pub fn render(h: &Harness, outputs: &[Output]) -> String {
    let mut parts = Vec::new();
    for output in outputs {
        match output {
            Output::Reply { result, .. } => parts.push(match result {
                Ok(Reply::Call(_)) | Ok(Reply::Relayed) => "reply=ok".to_owned(),
                Ok(Reply::Connected { active_call }) => format!(
                    "reply=session({})",
                    active_call
                        .as_ref()
                        .map(|c| c.state.as_str())
                        .unwrap_or("null")
                ),
                Err(error) => format!("reply={}", error.code()),
            }),
            Output::Persist(record) => parts.push(format!("log={}", render_record(record))),
            Output::Emit { conn, event } => {
                parts.push(format!("{}<{}", conn_name(*conn), short_event(event)))
            }
            Output::Disconnect { conn } => parts.push(format!("close:{}", conn_name(*conn))),
            Output::Broadcast { .. } => {}
        }
    }
    let live = h
        .board
        .live_call(&call_id(), ALICE)
        .map(|c| c.state.as_str().to_owned())
        .unwrap_or_else(|| "none".to_owned());
    parts.push(format!("live={live}"));
    parts.join(" ")
}

pub fn render_record(record: &CallRecord) -> String {
    if record.state != CallState::Ended {
        return record.state.to_string();
    }
    let by = match record.ended_by {
        Some(ALICE) => "alice",
        Some(BOB) => "bob",
        Some(_) => "other",
        None => "server",
    };
    format!(
        "ended:{}/{}:{by}",
        record.status.map(|s| s.as_str()).unwrap_or("-"),
        record.reason.map(|r| r.as_str()).unwrap_or("-"),
    )
}

fn short_event(event: &Event) -> String {
    match event {
        Event::Ended(ended) => format!("ended({})", ended.status),
        other => other.name().trim_start_matches("call:").to_owned(),
    }
}

/// Builds `fixture`, applies `input`, and compares the rendering with `expected`.
#[track_caller]
pub fn check(fixture: Fixture, input: Input, expected: &str) {
    let mut h = fixture.build();
    let outputs = input.apply(&mut h);
    let actual = render(&h, &outputs);
    assert_eq!(actual, expected, "\n{fixture:?} + {input:?}");
}
