//! The three signaling scenarios. Each checks every event it expects (payload included) and
//! counts a missing, late (past a 10 s timeout), misrouted or malformed event as an error;
//! latencies are only taken from events that passed the checks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Error;
use crate::procstat::{self, Reading};
use crate::sio::{Client, Incoming, ack_ok};
use crate::stats::{Samples, Summary, ms};
use crate::users::UserCred;

/// How long any single expected event may take before it counts as lost.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub http: SocketAddr,
    /// Its process id, for RSS and CPU readings (none: those columns stay empty).
    pub pid: Option<u32>,
    /// Its database (`<data_dir>/parley.db`), to check the call log rows (none: not checked).
    pub database: Option<PathBuf>,
}

impl Target {
    fn reading(&self) -> Option<Reading> {
        self.pid.and_then(|pid| procstat::read(pid).ok())
    }
}

/// Error count plus the first few messages, shared by many tasks.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    pub fn add(&self, what: impl Into<String>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut samples = self
            .samples
            .lock()
            .expect("the error list is never poisoned: no code panics holding it");
        if samples.len() < 20 {
            samples.push(what.into());
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn samples(&self) -> Vec<String> {
        self.samples
            .lock()
            .expect("the error list is never poisoned: no code panics holding it")
            .clone()
    }
}

/// A simulated user with its live socket.
pub struct Connected {
    pub user: UserCred,
    pub device_id: String,
    pub client: Client,
}

fn device_id(user: &UserCred) -> String {
    format!("loadgen-{}", user.username)
}

/// The `session` event must describe this very user and device, with no live call.
fn check_session(session: &Incoming, user: &UserCred, device: &str) -> Result<(), Error> {
    let data = &session.data;
    let ok = data["user"]["id"].as_i64() == Some(user.id)
        && data["deviceId"].as_str() == Some(device)
        && data["iceServers"].is_array()
        && data["activeCall"].is_null();
    if ok {
        Ok(())
    } else {
        Err(Error::Unexpected(format!(
            "session for user {} device {device} was {data}",
            user.id
        )))
    }
}

/// Connects one user and waits for its `session`; returns the socket and the latency from
/// the TCP connect to the `session` event.
pub async fn connect_user(
    http: SocketAddr,
    user: UserCred,
    observe_presence: bool,
) -> Result<(Connected, Duration), Error> {
    let device = device_id(&user);
    let started = Instant::now();
    let mut client = Client::connect(http, &user.token, &device, observe_presence).await?;
    let session = client.expect("session", EVENT_TIMEOUT).await?;
    check_session(&session, &user, &device)?;
    let latency = session.at.saturating_duration_since(started);
    Ok((
        Connected {
            user,
            device_id: device,
            client,
        },
        latency,
    ))
}

/// Connects `users` at `rate` connections per second, all in flight at once if they are
/// slow. Returns the sockets that made it (in the order of `users`), and the latencies.
pub async fn connect_all(
    http: SocketAddr,
    users: Vec<UserCred>,
    rate: f64,
    errors: &Arc<Errors>,
) -> (Vec<Connected>, Samples) {
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for (index, user) in users.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(index as f64 / rate.max(1.0));
        tasks.spawn(async move {
            tokio::time::sleep_until(due).await;
            let name = user.username.clone();
            (index, name, connect_user(http, user, false).await)
        });
    }
    let mut connected = Vec::new();
    let mut latencies = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, _, Ok((socket, latency)))) => {
                latencies.push(latency);
                connected.push((index, socket));
            }
            Ok((_, name, Err(e))) => errors.add(format!("connecting {name}: {e}")),
            Err(e) => errors.add(format!("connect task failed: {e}")),
        }
    }
    connected.sort_by_key(|(index, _)| *index);
    (connected.into_iter().map(|(_, c)| c).collect(), latencies)
}

/// Connects the first `count` users as presence observers, one by one, then waits longer than
/// the daemon's presence window (250 ms at most) so that they are registered before anyone
/// else connects: each of them must then see every later user come online.
async fn connect_observers(
    http: SocketAddr,
    users: &[UserCred],
    errors: &Arc<Errors>,
) -> Vec<Connected> {
    let mut observers = Vec::new();
    for user in users {
        match connect_user(http, user.clone(), true).await {
            Ok((socket, _)) => observers.push(socket),
            Err(e) => errors.add(format!("connecting observer {}: {e}", user.username)),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    observers
}

/// Waits until every observer has seen every one of `expected` online; reports the users an
/// observer never saw online as errors. Returns when it completed (or gave up).
async fn await_presence(
    observers: &[Connected],
    expected: &[i64],
    within: Duration,
    errors: &Errors,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let complete = observers
            .iter()
            .all(|o| o.client.presence.count("online") >= expected.len());
        if complete {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Instant::now();
    let mut all_seen = true;
    for observer in observers {
        let missing: Vec<i64> = expected
            .iter()
            .copied()
            .filter(|id| observer.client.presence.status_of(*id).as_deref() != Some("online"))
            .collect();
        if !missing.is_empty() {
            all_seen = false;
            errors.add(format!(
                "observer {} never saw {} user(s) online, e.g. {:?}",
                observer.user.username,
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    all_seen.then_some(done)
}

/// Anything still queued on an idle socket is an event nobody expected (or a disconnect).
fn check_quiet(sockets: &mut [Connected], errors: &Errors) {
    for socket in sockets {
        while let Some(event) = socket.client.try_next_event() {
            errors.add(format!(
                "{} got an unexpected {} {}",
                socket.user.username, event.name, event.data
            ));
        }
    }
}

fn total_presence_updates(sockets: &[Connected]) -> u64 {
    sockets
        .iter()
        .map(|s| s.client.presence.updates.load(Ordering::Relaxed))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// idle

#[derive(Debug, Clone)]
pub struct IdleOptions {
    pub connect_rate: f64,
    /// How long to hold the connections while measuring CPU (the Engine.IO heartbeat is 25 s).
    pub hold: Duration,
    /// Presence observers among the users (they keep every status they receive).
    pub observers: usize,
}

#[derive(Debug, Clone, Default)]
pub struct IdleReport {
    pub users: usize,
    pub connected: usize,
    pub connect_time: Duration,
    pub connect_latency: Summary,
    pub presence_complete_after: Option<Duration>,
    pub presence_updates: u64,
    pub rss_before_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub threads: Option<u64>,
    pub hold: Duration,
    pub idle_cpu_percent: Option<f64>,
    pub load_average: String,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl IdleReport {
    pub fn rss_per_connection_kib(&self) -> Option<f64> {
        match (self.rss_before_kib, self.rss_connected_kib) {
            (Some(before), Some(after)) if self.connected > 0 => {
                Some((after as f64 - before as f64) / self.connected as f64)
            }
            _ => None,
        }
    }
}

/// N users connected and authenticated, presence flowing; then hold still and measure.
pub async fn idle(target: &Target, users: Vec<UserCred>, options: &IdleOptions) -> IdleReport {
    let errors = Arc::new(Errors::default());
    let total = users.len();
    let before = target.reading();
    let observers_count = options.observers.min(total);
    let started = Instant::now();
    let mut observers = connect_observers(target.http, &users[..observers_count], &errors).await;
    let later: Vec<i64> = users[observers_count..].iter().map(|u| u.id).collect();
    let (mut sockets, latencies) = connect_all(
        target.http,
        users[observers_count..].to_vec(),
        options.connect_rate,
        &errors,
    )
    .await;
    let connect_time = started.elapsed();
    let presence_done = await_presence(&observers, &later, Duration::from_secs(60), &errors).await;
    // Let the last presence flush and any allocator churn settle before the idle window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hold_start = target.reading();
    tokio::time::sleep(options.hold).await;
    let hold_end = target.reading();
    check_quiet(&mut observers, &errors);
    check_quiet(&mut sockets, &errors);
    let presence_updates = total_presence_updates(&observers) + total_presence_updates(&sockets);
    IdleReport {
        users: total,
        connected: observers.len() + sockets.len(),
        connect_time,
        connect_latency: latencies.summary(),
        presence_complete_after: presence_done.map(|at| at.duration_since(started)),
        presence_updates,
        rss_before_kib: before.map(|r| r.rss_kib),
        rss_connected_kib: hold_end.map(|r| r.rss_kib),
        threads: hold_end.map(|r| r.threads),
        hold: options.hold,
        idle_cpu_percent: hold_start
            .zip(hold_end)
            .map(|(a, b)| procstat::cpu_percent(&a, &b)),
        load_average: procstat::load_average(),
        errors: errors.count(),
        error_samples: errors.samples(),
    }
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "-".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

fn error_lines(out: &mut String, count: u64, samples: &[String]) {
    let _ = writeln!(out, "  errors                          {count}");
    for sample in samples {
        let _ = writeln!(out, "    - {sample}");
    }
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "idle: {} users", self.users);
        let _ = writeln!(out, "  connected                       {}", self.connected);
        let _ = writeln!(
            out,
            "  connect time (all)              {:.2} s",
            self.connect_time.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  connect+session p50/p99/max     {} / {} / {} ms",
            ms(self.connect_latency.p50),
            ms(self.connect_latency.p99),
            ms(self.connect_latency.max)
        );
        let _ = writeln!(
            out,
            "  presence complete after         {}",
            self.presence_complete_after
                .map_or("NEVER".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
        let _ = writeln!(
            out,
            "  presence:update received        {}",
            self.presence_updates
        );
        let _ = writeln!(
            out,
            "  daemon RSS before               {}",
            mib(self.rss_before_kib)
        );
        let _ = writeln!(
            out,
            "  daemon RSS connected            {}",
            mib(self.rss_connected_kib)
        );
        let _ = writeln!(
            out,
            "  daemon RSS per connection       {}",
            self.rss_per_connection_kib()
                .map_or("-".to_owned(), |k| format!("{k:.1} KiB"))
        );
        let _ = writeln!(
            out,
            "  daemon threads                  {}",
            opt(self.threads)
        );
        let _ = writeln!(
            out,
            "  daemon CPU idle ({:.0} s)          {}",
            self.hold.as_secs_f64(),
            self.idle_cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.2} % of a core"))
        );
        let _ = writeln!(
            out,
            "  load average (1 min)            {}",
            self.load_average
        );
        error_lines(&mut out, self.errors, &self.error_samples);
        f.write_str(&out)
    }
}

// ---------------------------------------------------------------------------------------------
// burst

#[derive(Debug, Clone)]
pub struct BurstOptions {
    /// All users start connecting within this window.
    pub spread: Duration,
    pub observers: usize,
}

#[derive(Debug, Clone, Default)]
pub struct BurstReport {
    pub users: usize,
    pub connected: usize,
    pub spread: Duration,
    pub all_sessions_after: Duration,
    pub latency: Summary,
    pub presence_complete_after: Option<Duration>,
    pub presence_updates: u64,
    pub daemon_cpu_percent: Option<f64>,
    pub loadgen_cpu_percent: Option<f64>,
    pub rss_after_kib: Option<u64>,
    pub load_average: String,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

/// N users connect within a few seconds; connect+session latency, then presence must settle.
pub async fn burst(target: &Target, users: Vec<UserCred>, options: &BurstOptions) -> BurstReport {
    let errors = Arc::new(Errors::default());
    let total = users.len();
    let observers_count = options.observers.min(total);
    let mut observers = connect_observers(target.http, &users[..observers_count], &errors).await;
    let rest = users[observers_count..].to_vec();
    let later: Vec<i64> = rest.iter().map(|u| u.id).collect();
    let rate = rest.len() as f64 / options.spread.as_secs_f64().max(0.001);
    let before = target.reading();
    let own_before = procstat::read(std::process::id()).ok();
    let started = Instant::now();
    let (mut sockets, latencies) = connect_all(target.http, rest, rate, &errors).await;
    let all_sessions_after = started.elapsed();
    let presence_done = await_presence(&observers, &later, Duration::from_secs(60), &errors).await;
    let after = target.reading();
    let own_after = procstat::read(std::process::id()).ok();
    check_quiet(&mut observers, &errors);
    check_quiet(&mut sockets, &errors);
    BurstReport {
        users: later.len(),
        connected: sockets.len(),
        spread: options.spread,
        all_sessions_after,
        latency: latencies.summary(),
        presence_complete_after: presence_done.map(|at| at.duration_since(started)),
        presence_updates: total_presence_updates(&observers) + total_presence_updates(&sockets),
        daemon_cpu_percent: before
            .zip(after)
            .map(|(a, b)| procstat::cpu_percent(&a, &b)),
        loadgen_cpu_percent: own_before
            .zip(own_after)
            .map(|(a, b)| procstat::cpu_percent(&a, &b)),
        rss_after_kib: after.map(|r| r.rss_kib),
        load_average: procstat::load_average(),
        errors: errors.count(),
        error_samples: errors.samples(),
    }
}

impl std::fmt::Display for BurstReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "burst: {} users connecting within {:.1} s",
            self.users,
            self.spread.as_secs_f64()
        );
        let _ = writeln!(out, "  connected                       {}", self.connected);
        let _ = writeln!(
            out,
            "  all sessions after              {:.2} s",
            self.all_sessions_after.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  connect+session p50/p99/max     {} / {} / {} ms",
            ms(self.latency.p50),
            ms(self.latency.p99),
            ms(self.latency.max)
        );
        let _ = writeln!(
            out,
            "  presence complete after         {}",
            self.presence_complete_after
                .map_or("NEVER".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
        let _ = writeln!(
            out,
            "  presence:update received        {}",
            self.presence_updates
        );
        let _ = writeln!(
            out,
            "  daemon CPU during burst         {}",
            self.daemon_cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.0} % of a core"))
        );
        let _ = writeln!(
            out,
            "  loadgen CPU during burst        {}",
            self.loadgen_cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.0} % of a core"))
        );
        let _ = writeln!(
            out,
            "  daemon RSS after                {}",
            mib(self.rss_after_kib)
        );
        let _ = writeln!(
            out,
            "  load average (1 min)            {}",
            self.load_average
        );
        error_lines(&mut out, self.errors, &self.error_samples);
        f.write_str(&out)
    }
}

// ---------------------------------------------------------------------------------------------
// calls

#[derive(Debug, Clone)]
pub struct CallsOptions {
    /// Call setups started per second (open loop: the schedule does not wait for slow calls
    /// unless every pair is busy, which shows as dispatch lag).
    pub rate: f64,
    pub duration: Duration,
    /// ICE candidates each side sends.
    pub ice_per_side: usize,
}

/// The measured steps, in call order.
pub const STEPS: [&str; 12] = [
    "initiate -> incoming (callee)",
    "initiate -> ack",
    "accept -> accepted (caller)",
    "accept -> ack",
    "setup: initiate -> accepted",
    "offer -> offer",
    "answer -> answer",
    "ice -> ice",
    "media:state -> media:state",
    "end -> ended (other party)",
    "end -> ack",
    "whole call",
];

#[derive(Debug, Clone, Default)]
struct StepSamples {
    steps: [Samples; STEPS.len()],
    /// Candidates relayed in another order than they were sent.
    reordered: u64,
}

impl StepSamples {
    fn add(&mut self, step: usize, later: Instant, earlier: Instant) {
        self.steps[step].push(later.saturating_duration_since(earlier));
    }
}

#[derive(Debug, Clone, Default)]
pub struct CallsReport {
    pub pairs: usize,
    pub target_rate: f64,
    pub duration: Duration,
    pub attempted: u64,
    pub completed: u64,
    pub elapsed: Duration,
    pub max_dispatch_lag: Duration,
    /// ICE candidates the other side received in another order than they were sent.
    pub ice_reordered: u64,
    pub steps: Vec<(&'static str, Summary)>,
    pub daemon_cpu_percent: Option<f64>,
    /// The load generator's own CPU over the run: near 200 % it, not the daemon, is the limit.
    pub loadgen_cpu_percent: Option<f64>,
    pub rss_after_kib: Option<u64>,
    /// Rows in the call log in total, and rows matching a completed call with the right
    /// final state (`None`: the database was not given).
    pub log_rows: Option<u64>,
    pub log_rows_matching: Option<u64>,
    pub load_average: String,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl CallsReport {
    pub fn achieved_rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(0.001)
    }

    pub fn step(&self, name: &str) -> Option<Summary> {
        self.steps.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

/// A caller and a callee, used by one call at a time.
pub struct Pair {
    pub caller: Connected,
    pub callee: Connected,
}

fn field<'a>(event: &'a Incoming, path: &[&str]) -> &'a Value {
    path.iter().fold(&event.data, |value, key| &value[*key])
}

fn require(condition: bool, what: impl FnOnce() -> String) -> Result<(), Error> {
    if condition {
        Ok(())
    } else {
        Err(Error::Unexpected(what()))
    }
}

const SDP_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:loadgen\r\na=ice-pwd:loadgenloadgenloadgenload\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

/// The answer differs from the offer, so a reflected offer cannot pass for the answer.
const SDP_ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=setup:active\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

fn candidate(side: u8, index: usize) -> Value {
    json!({
        "candidate": format!(
            "candidate:{index} 1 udp 2122260223 10.0.{side}.{} {} typ host generation 0",
            index % 250 + 1,
            50000 + index
        ),
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    })
}

/// One whole call on `pair`, checking every event; returns the call id.
async fn one_call(
    pair: &mut Pair,
    ice_per_side: usize,
    samples: &mut StepSamples,
) -> Result<String, Error> {
    let (a, b) = (&mut pair.caller, &mut pair.callee);
    let (a_id, b_id) = (a.user.id, b.user.id);

    let (initiated, ack) = a
        .client
        .emit_with_ack("call:initiate", &json!({ "to": b_id, "media": "audio" }))?;
    let incoming = b.client.expect("call:incoming", EVENT_TIMEOUT).await?;
    let ack = ack_ok("call:initiate", ack, EVENT_TIMEOUT).await?;
    let call_id = ack.data["call"]["id"]
        .as_str()
        .ok_or_else(|| {
            Error::Unexpected(format!("call:initiate ack without call.id: {}", ack.data))
        })?
        .to_owned();
    require(
        field(&incoming, &["call", "id"]).as_str() == Some(&call_id)
            && field(&incoming, &["call", "caller", "id"]).as_i64() == Some(a_id)
            && field(&incoming, &["call", "state"]).as_str() == Some("ringing"),
        || format!("call:incoming for {call_id} was {}", incoming.data),
    )?;
    samples.add(0, incoming.at, initiated);
    samples.add(1, ack.at, initiated);

    let (accepting, ack) = b
        .client
        .emit_with_ack("call:accept", &json!({ "callId": call_id }))?;
    let accepted = a.client.expect("call:accepted", EVENT_TIMEOUT).await?;
    let ack = ack_ok("call:accept", ack, EVENT_TIMEOUT).await?;
    require(
        field(&accepted, &["call", "id"]).as_str() == Some(&call_id)
            && field(&accepted, &["call", "state"]).as_str() == Some("active"),
        || format!("call:accepted for {call_id} was {}", accepted.data),
    )?;
    samples.add(2, accepted.at, accepting);
    samples.add(3, ack.at, accepting);
    samples.add(4, accepted.at, initiated);

    for (step, from_caller, kind, sdp) in [
        (5, true, "offer", SDP_OFFER),
        (6, false, "answer", SDP_ANSWER),
    ] {
        let event = format!("signal:{kind}");
        let (sender, receiver, sender_id) = if from_caller {
            (&mut *a, &mut *b, a_id)
        } else {
            (&mut *b, &mut *a, b_id)
        };
        let (sent, ack) = sender
            .client
            .emit_with_ack(&event, &json!({ "callId": call_id, "sdp": sdp }))?;
        let relayed = receiver.client.expect(&event, EVENT_TIMEOUT).await?;
        ack_ok(&event, ack, EVENT_TIMEOUT).await?;
        require(
            relayed.data["callId"].as_str() == Some(&call_id)
                && relayed.data["sdp"].as_str() == Some(sdp)
                && relayed.data["from"].as_i64() == Some(sender_id),
            || format!("{event} for {call_id} arrived as {}", relayed.data),
        )?;
        samples.add(step, relayed.at, sent);
    }

    // Both sides trickle their candidates at once, as browsers do.
    let mut a_sent = Vec::with_capacity(ice_per_side);
    let mut b_sent = Vec::with_capacity(ice_per_side);
    let mut acks = Vec::with_capacity(ice_per_side * 2);
    for index in 0..ice_per_side {
        let (sent, ack) = a.client.emit_with_ack(
            "signal:ice",
            &json!({ "callId": call_id, "candidate": candidate(1, index) }),
        )?;
        a_sent.push(sent);
        acks.push(ack);
        let (sent, ack) = b.client.emit_with_ack(
            "signal:ice",
            &json!({ "callId": call_id, "candidate": candidate(2, index) }),
        )?;
        b_sent.push(sent);
        acks.push(ack);
    }
    // Every candidate must arrive exactly once. Order is not required by the protocol (ICE
    // candidates commute), but the daemon handles a socket's events concurrently, so it is
    // counted: a reordered offer and candidate would break a browser.
    for (receiver, sent, side, sender_id) in
        [(&mut *b, &a_sent, 1u8, a_id), (&mut *a, &b_sent, 2u8, b_id)]
    {
        let expected: Vec<Value> = (0..sent.len()).map(|i| candidate(side, i)).collect();
        let mut seen = vec![false; sent.len()];
        for position in 0..sent.len() {
            let relayed = receiver.client.expect("signal:ice", EVENT_TIMEOUT).await?;
            let index = expected
                .iter()
                .position(|c| relayed.data["candidate"] == *c);
            require(
                relayed.data["callId"].as_str() == Some(&call_id)
                    && relayed.data["from"].as_i64() == Some(sender_id)
                    && index.is_some_and(|i| !seen[i]),
                || {
                    format!(
                        "signal:ice for {call_id} arrived as {} (duplicate or foreign)",
                        relayed.data
                    )
                },
            )?;
            let index = index.expect("checked just above");
            seen[index] = true;
            if index != position {
                samples.reordered += 1;
            }
            samples.add(7, relayed.at, sent[index]);
        }
    }
    for ack in acks {
        ack_ok("signal:ice", ack, EVENT_TIMEOUT).await?;
    }

    for (from_caller, video) in [(true, false), (false, true)] {
        let (sender, receiver, sender_id) = if from_caller {
            (&mut *a, &mut *b, a_id)
        } else {
            (&mut *b, &mut *a, b_id)
        };
        let (sent, ack) = sender.client.emit_with_ack(
            "media:state",
            &json!({ "callId": call_id, "audio": true, "video": video }),
        )?;
        let relayed = receiver.client.expect("media:state", EVENT_TIMEOUT).await?;
        ack_ok("media:state", ack, EVENT_TIMEOUT).await?;
        require(
            relayed.data["callId"].as_str() == Some(&call_id)
                && relayed.data["from"].as_i64() == Some(sender_id)
                && relayed.data["audio"] == json!(true)
                && relayed.data["video"] == json!(video),
            || format!("media:state for {call_id} arrived as {}", relayed.data),
        )?;
        samples.add(8, relayed.at, sent);
    }

    let (ending, ack) = a
        .client
        .emit_with_ack("call:end", &json!({ "callId": call_id }))?;
    let mut last = ending;
    for (index, party) in [&mut *b, &mut *a].into_iter().enumerate() {
        let ended = party.client.expect("call:ended", EVENT_TIMEOUT).await?;
        require(
            ended.data["callId"].as_str() == Some(&call_id)
                && ended.data["status"].as_str() == Some("completed")
                && ended.data["reason"].as_str() == Some("hangup")
                && ended.data["endedBy"].as_i64() == Some(a_id),
            || format!("call:ended for {call_id} arrived as {}", ended.data),
        )?;
        if index == 0 {
            samples.add(9, ended.at, ending);
        }
        last = last.max(ended.at);
    }
    let ack = ack_ok("call:end", ack, EVENT_TIMEOUT).await?;
    require(ack.data["call"]["state"].as_str() == Some("ended"), || {
        format!("call:end ack for {call_id} was {}", ack.data)
    })?;
    samples.add(10, ack.at, ending);
    samples.add(11, last.max(ack.at), initiated);
    Ok(call_id)
}

/// Pairs of users run whole calls at `rate` setups per second for `duration`.
pub async fn calls(target: &Target, users: Vec<UserCred>, options: &CallsOptions) -> CallsReport {
    let errors = Arc::new(Errors::default());
    let (sockets, _) = connect_all(target.http, users, 1000.0, &errors).await;
    let mut sockets = sockets.into_iter();
    let mut pairs = Vec::new();
    while let (Some(caller), Some(callee)) = (sockets.next(), sockets.next()) {
        pairs.push(Pair { caller, callee });
    }
    let pair_count = pairs.len();
    // Let the connect presence flushes pass, so they are not billed to the first calls.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (free_tx, mut free_rx) = mpsc::unbounded_channel::<Pair>();
    for pair in pairs {
        let _ = free_tx.send(pair);
    }
    let shared: Arc<Mutex<(StepSamples, Vec<String>)>> = Arc::default();
    let before = target.reading();
    let own_before = procstat::read(std::process::id()).ok();
    let start = tokio::time::Instant::now();
    let end = start + options.duration;
    let mut attempted = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut tasks = JoinSet::new();
    let last_done = Arc::new(Mutex::new(start));
    loop {
        let due = start + Duration::from_secs_f64(attempted as f64 / options.rate.max(0.001));
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let pair = match free_rx.try_recv() {
            Ok(pair) => pair,
            Err(_) => match tokio::time::timeout(EVENT_TIMEOUT, free_rx.recv()).await {
                Ok(Some(pair)) => pair,
                _ => {
                    errors.add("every pair stayed busy or broken for 10 s; stopping the schedule");
                    break;
                }
            },
        };
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
        attempted += 1;
        let (free, shared, errors, last_done) = (
            free_tx.clone(),
            shared.clone(),
            errors.clone(),
            last_done.clone(),
        );
        let ice = options.ice_per_side;
        tasks.spawn(async move {
            let mut pair = pair;
            let mut samples = StepSamples::default();
            match one_call(&mut pair, ice, &mut samples).await {
                Ok(call_id) => {
                    {
                        let mut shared = shared.lock().expect("samples lock is never poisoned");
                        for (all, mine) in shared.0.steps.iter_mut().zip(samples.steps.iter()) {
                            all.extend(mine);
                        }
                        shared.0.reordered += samples.reordered;
                        shared.1.push(call_id);
                    }
                    *last_done.lock().expect("never poisoned") = tokio::time::Instant::now();
                    let _ = free.send(pair);
                }
                Err(e) => {
                    // The pair's state is unknown now (a call may still be live): retire it.
                    errors.add(format!(
                        "call {} -> {}: {e}",
                        pair.caller.user.username, pair.callee.user.username
                    ));
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let after = target.reading();
    let own_after = procstat::read(std::process::id()).ok();
    let elapsed = last_done
        .lock()
        .expect("never poisoned")
        .saturating_duration_since(start);
    drop(free_tx);
    let mut idle_pairs = Vec::new();
    while let Ok(pair) = free_rx.try_recv() {
        idle_pairs.push(pair);
    }
    for pair in &mut idle_pairs {
        for party in [&mut pair.caller, &mut pair.callee] {
            while let Some(event) = party.client.try_next_event() {
                errors.add(format!(
                    "{} got an unexpected {} {}",
                    party.user.username, event.name, event.data
                ));
            }
        }
    }

    let (samples, call_ids) =
        std::mem::take(&mut *shared.lock().expect("samples lock is never poisoned"));
    let (log_rows, log_rows_matching) = match &target.database {
        Some(path) => match check_call_log(path, &call_ids).await {
            Ok((rows, matching)) => {
                if matching != call_ids.len() as u64 {
                    errors.add(format!(
                        "the call log holds {matching} correct row(s) for {} completed call(s)",
                        call_ids.len()
                    ));
                }
                (Some(rows), Some(matching))
            }
            Err(e) => {
                errors.add(format!("reading the call log: {e}"));
                (None, None)
            }
        },
        None => (None, None),
    };
    CallsReport {
        pairs: pair_count,
        target_rate: options.rate,
        duration: options.duration,
        attempted,
        completed: call_ids.len() as u64,
        elapsed,
        max_dispatch_lag: max_lag,
        ice_reordered: samples.reordered,
        steps: STEPS
            .iter()
            .zip(samples.steps.iter())
            .map(|(name, s)| (*name, s.summary()))
            .collect(),
        daemon_cpu_percent: before
            .zip(after)
            .map(|(a, b)| procstat::cpu_percent(&a, &b)),
        loadgen_cpu_percent: own_before
            .zip(own_after)
            .map(|(a, b)| procstat::cpu_percent(&a, &b)),
        rss_after_kib: after.map(|r| r.rss_kib),
        log_rows,
        log_rows_matching,
        load_average: procstat::load_average(),
        errors: errors.count(),
        error_samples: errors.samples(),
    }
}

/// Reads the call log: every completed call must have its row, ended/completed/hangup.
async fn check_call_log(path: &std::path::Path, call_ids: &[String]) -> Result<(u64, u64), Error> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    let mut connection = sqlx::ConnectOptions::connect(&options).await?;
    let rows: Vec<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, state, status, reason FROM calls")
            .fetch_all(&mut connection)
            .await?;
    let by_id: HashMap<&str, (&str, Option<&str>, Option<&str>)> = rows
        .iter()
        .map(|(id, state, status, reason)| {
            (
                id.as_str(),
                (state.as_str(), status.as_deref(), reason.as_deref()),
            )
        })
        .collect();
    let matching = call_ids
        .iter()
        .filter(|id| by_id.get(id.as_str()) == Some(&("ended", Some("completed"), Some("hangup"))))
        .count();
    Ok((rows.len() as u64, matching as u64))
}

impl std::fmt::Display for CallsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "calls: {} pairs, target {:.0} setups/s for {:.0} s",
            self.pairs,
            self.target_rate,
            self.duration.as_secs_f64()
        );
        let _ = writeln!(out, "  calls started                   {}", self.attempted);
        let _ = writeln!(out, "  calls completed (all checked)   {}", self.completed);
        let _ = writeln!(
            out,
            "  setups per second achieved      {:.1}",
            self.achieved_rate()
        );
        let _ = writeln!(
            out,
            "  max dispatch lag                {} ms",
            ms(self.max_dispatch_lag)
        );
        let _ = writeln!(
            out,
            "  ICE candidates reordered        {} of {}",
            self.ice_reordered,
            self.step("ice -> ice").map_or(0, |s| s.count)
        );
        let _ = writeln!(
            out,
            "  daemon CPU during run           {}",
            self.daemon_cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.0} % of a core"))
        );
        let _ = writeln!(
            out,
            "  loadgen CPU during run          {}",
            self.loadgen_cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.0} % of a core"))
        );
        let _ = writeln!(
            out,
            "  daemon RSS after                {}",
            mib(self.rss_after_kib)
        );
        let _ = writeln!(
            out,
            "  call log rows (total/correct)   {} / {}",
            opt(self.log_rows),
            opt(self.log_rows_matching)
        );
        let _ = writeln!(
            out,
            "  load average (1 min)            {}",
            self.load_average
        );
        let _ = writeln!(
            out,
            "  {:<32} {:>8} {:>9} {:>9} {:>9}",
            "step (ms)", "count", "p50", "p99", "max"
        );
        for (name, summary) in &self.steps {
            let _ = writeln!(out, "  {name:<32} {summary}");
        }
        error_lines(&mut out, self.errors, &self.error_samples);
        f.write_str(&out)
    }
}
