//! The socket shell around the [`gate`](crate::gate): a `Conn` wrapper in front of every
//! listener that sees each datagram or frame a listener receives and each response the
//! server sends. It decodes, asks the gate, and acts: forwards to the `turn` server, answers
//! with the gate's error (encoded here), or drops. It also reads the clocks, applies the
//! client-side bandwidth cap, counts metrics and logs (rate-limited).
//!
//! The hot path (ChannelData) costs a couple of byte comparisons and the bandwidth check;
//! STUN messages are decoded here, which the server does again anyway. On a UDP listener a
//! client's ChannelData on a channel the fast path knows goes from here straight to the
//! relay socket (`fastpath`); the success responses the server sends teach it the routes.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use webrtc_util::Conn;

use crate::bandwidth::TokenBucket;
use crate::credentials::Secrets;
use crate::fastpath::{AllocationView, FastPath, channel_data};
use crate::gate::{Answer, Gate, Packet, RouteUpdate, Verdict, Why, decode, deletes_allocation};
use crate::metrics::Metrics;
use crate::pktinfo::PktinfoConn;
use crate::policy::PeerPolicy;
use crate::quota::{AllocationKey, Quotas};
use crate::relay_socket::RelayLink;
use crate::udp_batch::{BATCH, Batch};

/// Source address of the requests the guard injects to purge the server's old nonces; the
/// server's answers to it are swallowed. TEST-NET-1, never a real client.
pub(crate) const PURGE_SOURCE: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)), 9);

/// Our own per-packet log lines: at most this many per minute.
const LOG_LINES_PER_MINUTE: u64 = 10;

/// Client-side bandwidth buckets kept before the table is reset (a spoofing flood).
const MAX_CLIENT_BUCKETS: usize = 65536;

/// State shared by every listener's guard, the auth handler and the relay sockets.
pub(crate) struct Shared {
    pub realm: String,
    secrets: Secrets,
    pub policy: PeerPolicy,
    pub metrics: Arc<Metrics>,
    /// Bytes per second per allocation and direction; 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    gate: Mutex<Gate>,
    client_buckets: Mutex<HashMap<SocketAddr, TokenBucket>>,
    log_window: AtomicU64,
    log_count: AtomicU64,
    next_purge_check: Mutex<Instant>,
    /// Routes of the fast data path (ChannelData over UDP beside the server).
    pub fast: FastPath,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Locks a mutex whose data stays consistent even if a holder panicked (a bug, logged by
/// the panic itself).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the guard does with one received packet.
pub(crate) enum Decision {
    Forward,
    Answer(Vec<u8>),
    Drop,
}

impl Shared {
    pub fn new(
        realm: String,
        secrets: Secrets,
        policy: PeerPolicy,
        quotas: Quotas,
        bandwidth_bytes_per_sec: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Shared {
            gate: Mutex::new(Gate::new(secrets.clone(), policy.clone(), quotas)),
            realm,
            secrets,
            policy,
            metrics,
            bandwidth_bytes_per_sec,
            client_buckets: Mutex::new(HashMap::new()),
            log_window: AtomicU64::new(0),
            log_count: AtomicU64::new(0),
            next_purge_check: Mutex::new(Instant::now()),
            fast: FastPath::default(),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        lock(&self.gate)
    }

    /// Rate-limits our own per-packet log lines so that a flood cannot flood the journal.
    pub fn may_log(&self) -> bool {
        let minute = now_unix() / 60;
        if self.log_window.swap(minute, Ordering::Relaxed) != minute {
            self.log_count.store(0, Ordering::Relaxed);
        }
        self.log_count.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_MINUTE
    }

    /// Called by the server's auth handler for a request the gate has just verified.
    pub fn take_verified_key(
        &self,
        username: &str,
        realm: &str,
        source: SocketAddr,
    ) -> Option<Vec<u8>> {
        if let Some(key) = self.lock().take_verified_key(username, source) {
            return Some(key);
        }
        // Not verified by the gate (cannot happen for requests that passed it): fall back to
        // the current secret, refusing expired and malformed usernames.
        self.secrets
            .candidate_keys(username, realm, now_unix())
            .ok()
            .and_then(|keys| keys.into_iter().next())
    }

    /// The allocation ended: free its quota slot and per-allocation state.
    pub fn handle_allocation_closed(&self, key: AllocationKey) {
        let mut gate = self.lock();
        gate.handle_allocation_closed(key);
        let active = gate.quotas.active() as u64;
        drop(gate);
        self.fast.handle_allocation_closed(key);
        lock(&self.client_buckets).remove(&key.0);
        self.metrics
            .allocations_active
            .store(active, Ordering::Relaxed);
    }

    /// A Refresh with LIFETIME 0 that deletes the allocation of `key`, built with the
    /// credentials it was created with: injected when a TCP/TLS client disconnects, because
    /// RFC 6062's rule (the allocation ends with its connection) has no hook in `turn`.
    pub fn release_request(&self, key: AllocationKey) -> Option<Vec<u8>> {
        let (username, auth_key, nonce) = self.lock().release_credentials(key, Instant::now())?;
        let mut msg = Message::new();
        let built = msg.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_REFRESH, CLASS_REQUEST)),
            Box::new(turn::proto::lifetime::Lifetime(std::time::Duration::ZERO)),
            Box::new(TextAttribute::new(ATTR_USERNAME, username)),
            Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())),
            Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
            Box::new(MessageIntegrity(auth_key)),
        ]);
        built.ok().map(|_| msg.raw)
    }

    /// A nonce due for purging, wrapped in a request the server will answer with 438 and
    /// thereby delete it. Checked at most once a second.
    fn poll_purge(&self) -> Option<Vec<u8>> {
        let now = Instant::now();
        {
            let mut next = lock(&self.next_purge_check);
            if now < *next {
                return None;
            }
            *next = now + std::time::Duration::from_secs(1);
        }
        let nonce = self.lock().nonces.poll_purge(now)?;
        let mut msg = Message::new();
        msg.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_REFRESH, CLASS_REQUEST)),
            Box::new(TextAttribute::new(
                ATTR_USERNAME,
                "0:nonce-purge".to_owned(),
            )),
            Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())),
            Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
            Box::new(MessageIntegrity(vec![0; 16])),
        ])
        .ok()?;
        Some(msg.raw)
    }

    /// Bandwidth cap for client-to-peer traffic, per allocation (= per client address here).
    fn within_bandwidth(&self, source: SocketAddr, bytes: usize, now: Instant) -> bool {
        let rate = self.bandwidth_bytes_per_sec;
        if rate == 0 {
            return true;
        }
        let mut buckets = lock(&self.client_buckets);
        let ok = buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::new(rate, now))
            .take(bytes, now);
        if buckets.len() > MAX_CLIENT_BUCKETS {
            buckets.clear(); // buckets refill anyway
        }
        drop(buckets);
        if !ok {
            Metrics::add(&self.metrics.bandwidth_drops, 1);
        }
        ok
    }

    /// Counts and logs what the gate refused.
    fn account(&self, why: &Why, source: SocketAddr) {
        let metrics = &self.metrics;
        match why {
            Why::Challenge => Metrics::add(&metrics.challenges_answered, 1),
            Why::StaleNonce => {}
            Why::Malformed(what) => {
                Metrics::add(&metrics.malformed_requests, 1);
                if self.may_log() {
                    log::info!("turn: refused a malformed request from {source}: {what}");
                }
            }
            Why::UnknownAttributes => Metrics::add(&metrics.malformed_requests, 1),
            Why::BadCredentials { username } => {
                Metrics::add(&metrics.auth_failures, 1);
                if self.may_log() {
                    log::info!(
                        "turn: refused credentials from {source} (expired, forged or malformed username {username:?})"
                    );
                }
            }
            Why::ForbiddenPeer(peer) => {
                Metrics::add(&metrics.refused_peers, 1);
                if self.may_log() {
                    log::info!(
                        "turn: refused peer {peer} for {source}; allow its range with turn.allowed_peer_ranges if this is intended"
                    );
                }
            }
            Why::AddressFamily { ipv6 } => {
                if self.may_log() {
                    let family = if *ipv6 { "IPv6" } else { "IPv4" };
                    log::info!(
                        "turn: {source} asked for an {family} relayed address, which this relay has none of (turn.relay_address, turn.relay_address_v6)"
                    );
                }
            }
            Why::Quota(verdict) => {
                Metrics::add(&metrics.quota_refusals, 1);
                if self.may_log() {
                    log::warn!(
                        "turn: allocation quota reached ({verdict:?}) for {source}; see turn.max_allocations and turn.max_allocations_per_user"
                    );
                }
            }
        }
    }
}

/// Answers the server's `AuthHandler` calls from what the gate verified.
pub(crate) struct GuardAuth(pub Arc<Shared>);

impl turn::auth::AuthHandler for GuardAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.0
            .take_verified_key(username, realm, src_addr)
            .ok_or_else(|| turn::Error::Other("credentials refused".into()))
    }
}

/// The error response for `answer`.
pub(crate) fn encode(answer: &Answer, realm: &str) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId(answer.transaction_id)),
        Box::new(MessageType::new(answer.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: ErrorCode(answer.code),
            reason: answer.reason.as_bytes().to_vec(),
        }),
    ];
    if !answer.unknown_attributes.is_empty() {
        setters.push(Box::new(UnknownAttributes(
            answer
                .unknown_attributes
                .iter()
                .map(|t| AttrType(*t))
                .collect(),
        )));
    }
    if let Some(nonce) = &answer.nonce {
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.to_owned())));
    }
    if let Some(key) = &answer.integrity_key {
        setters.push(Box::new(MessageIntegrity(key.clone())));
    }
    let mut msg = Message::new();
    msg.build(&setters).ok()?;
    Some(msg.raw)
}

/// Decides what to do with one datagram or frame received from `source` on `local`.
pub(crate) fn decide(
    shared: &Shared,
    local: SocketAddr,
    data: &[u8],
    source: SocketAddr,
) -> Decision {
    let now = Instant::now();
    let verdict = match decode(data) {
        Packet::ChannelData => {
            return if shared.within_bandwidth(source, data.len(), now) {
                Decision::Forward
            } else {
                Decision::Drop
            };
        }
        Packet::Send { peer } => {
            // The server checks the permission; refusing a denied peer here as well keeps
            // the policy in front of the server whatever permissions it holds.
            if !shared.policy.allows(peer.ip()) {
                Metrics::add(&shared.metrics.refused_peers, 1);
                return Decision::Drop;
            }
            return if shared.within_bandwidth(source, data.len(), now) {
                Decision::Forward
            } else {
                Decision::Drop
            };
        }
        Packet::Ignored => return Decision::Drop, // the server would only log an error
        Packet::Refused(answer) => Verdict::Answer(answer),
        Packet::Request(request) => {
            let verdict = shared
                .lock()
                .handle_request(&request, source, local, now, now_unix());
            if verdict == Verdict::Forward && deletes_allocation(&request) {
                shared.fast.handle_deleting((source, local));
            }
            verdict
        }
    };
    match verdict {
        Verdict::Forward => Decision::Forward,
        Verdict::Answer(answer) => {
            shared.account(&answer.why, source);
            encode(&answer, &shared.realm).map_or(Decision::Drop, Decision::Answer)
        }
        Verdict::Resend(response) => Decision::Answer(response),
    }
}

/// Wraps one listener's `Conn` (a UDP socket or a TCP/TLS stream multiplexer).
pub(crate) struct GuardConn {
    inner: Arc<dyn Conn + Send + Sync>,
    shared: Arc<Shared>,
    local: SocketAddr,
    up: Arc<AtomicBool>,
    /// A UDP listener's socket and its batch, for the fast data path (none on TCP/TLS).
    udp: Option<(Arc<PktinfoConn>, tokio::sync::Mutex<ListenerBatch>)>,
}

/// A UDP listener's slot for one datagram: `turn` reads at most this much (its
/// `INBOUND_MTU`); longer datagrams are truncated, as the server's own read truncates them.
const LISTENER_SLOT: usize = 1500;

/// A UDP listener's last `recvmmsg` and the fast path's sends being gathered.
struct ListenerBatch {
    datagrams: Batch,
    /// ChannelData for peers: the relay socket, the peer, the payload's range in the slots.
    /// Kept between batches for its capacity.
    to_peers: Vec<(Arc<RelayLink>, SocketAddr, std::ops::Range<usize>)>,
}

impl ListenerBatch {
    fn new() -> Self {
        ListenerBatch {
            datagrams: Batch::new(LISTENER_SLOT, 0, BATCH),
            to_peers: Vec::with_capacity(BATCH),
        }
    }
}

impl GuardConn {
    pub fn new(
        inner: Arc<dyn Conn + Send + Sync>,
        shared: Arc<Shared>,
        up: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let local = inner.local_addr().map_err(std::io::Error::other)?;
        Ok(GuardConn {
            inner,
            shared,
            local,
            up,
            udp: None,
        })
    }

    /// Wraps a UDP listener, with the fast data path for its clients' ChannelData.
    pub fn udp(
        socket: Arc<PktinfoConn>,
        shared: Arc<Shared>,
        up: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let mut guard = GuardConn::new(Arc::clone(&socket) as _, shared, up)?;
        guard.udp = Some((socket, tokio::sync::Mutex::new(ListenerBatch::new())));
        Ok(guard)
    }

    /// Where a client's ChannelData goes on the fast path: the relay socket, the peer and the
    /// payload's range in `datagram`; `None` if it has no fast route (the server then
    /// handles it).
    fn fast_route(
        &self,
        datagram: &[u8],
        source: SocketAddr,
        now: Instant,
    ) -> Option<(Arc<RelayLink>, SocketAddr, std::ops::Range<usize>)> {
        let (number, payload) = channel_data(datagram)?;
        let link = self.shared.fast.route((source, self.local))?;
        let peer = link.peer_of(number, now)?;
        Some((link, peer, payload))
    }

    /// Reads a batch on a UDP listener: decides each datagram in order (as one at a time
    /// would), answers or drops what the gate says, gathers the fast path's ChannelData per
    /// relay socket and peer and sends each group at once, and marks the rest for the server.
    async fn handle_batch(
        &self,
        socket: &PktinfoConn,
        batch: &mut ListenerBatch,
    ) -> std::io::Result<()> {
        let datagrams = &mut batch.datagrams;
        let count = socket
            .recv_batch(&mut datagrams.slots, LISTENER_SLOT, &mut datagrams.received)
            .await?;
        datagrams.read(count);
        let now = Instant::now();
        for i in 0..count {
            let Some(source) = datagrams.received[i].from else {
                continue; // no source address: it cannot be answered
            };
            let start = datagrams.start(i);
            let datagram = &datagrams.slots[start..start + datagrams.received[i].len];
            match decide(&self.shared, self.local, datagram, source) {
                Decision::Forward => match self.fast_route(datagram, source, now) {
                    Some((link, peer, payload)) => batch.to_peers.push((
                        link,
                        peer,
                        start + payload.start..start + payload.end,
                    )),
                    None => datagrams.for_server[i] = true,
                },
                Decision::Drop => {}
                Decision::Answer(response) => {
                    if let Err(err) = socket.send_datagram(&response, source).await
                        && self.shared.may_log()
                    {
                        log::debug!("turn: cannot answer {source}: {err}");
                    }
                }
            }
        }
        // Per relay socket and peer, in arrival order: one flow's datagrams stay in order.
        let to_peers = std::mem::take(&mut batch.to_peers);
        let mut sent = [false; BATCH];
        for first in 0..to_peers.len() {
            if sent[first] {
                continue;
            }
            let (link, peer, _) = &to_peers[first];
            let mut payloads = [IoSlice::new(&[]); BATCH];
            let mut gathered = 0;
            for (other, (other_link, other_peer, range)) in to_peers.iter().enumerate().skip(first)
            {
                if !sent[other] && Arc::ptr_eq(other_link, link) && other_peer == peer {
                    payloads[gathered] = IoSlice::new(&batch.datagrams.slots[range.clone()]);
                    gathered += 1;
                    sent[other] = true;
                }
            }
            if let Some(err) = link.send_batch_to_peer(&payloads[..gathered], *peer).await
                && self.shared.may_log()
            {
                log::debug!("turn: cannot relay to {peer}: {err}");
            }
        }
        batch.to_peers = to_peers;
        batch.to_peers.clear();
        Ok(())
    }

    /// Applies what a success response said to the fast data path's routes.
    fn update_route(&self, update: RouteUpdate, key: AllocationKey) {
        let fast = &self.shared.fast;
        match update {
            RouteUpdate::Allocated { relayed, expires } => match &self.udp {
                Some((listener, _)) => {
                    if let Some(link) = fast.claim(key, relayed) {
                        link.attach(key.0, Arc::clone(listener), AllocationView::new(expires));
                    }
                }
                // TCP/TLS allocations stay on the server's path.
                None => fast.handle_relay_socket_closed(relayed),
            },
            RouteUpdate::Refreshed { expires } => {
                if let Some(link) = fast.route(key) {
                    link.update(|view| view.handle_refreshed(expires));
                }
            }
            RouteUpdate::ChannelBound {
                number,
                peer,
                expires,
            } => {
                if let Some(link) = fast.route(key) {
                    link.update(|view| view.handle_channel_bound(number, peer, expires));
                }
            }
        }
    }

    /// Watches the server's responses for issued nonces, Allocate outcomes and routes.
    fn observe_response(&self, data: &[u8], target: SocketAddr) {
        let mut msg = Message {
            raw: data.to_vec(),
            ..Default::default()
        };
        if msg.decode().is_err() {
            return;
        }
        let mut gate = self.shared.lock();
        let allocated = gate.handle_response(&msg, target, self.local, Instant::now());
        let route = gate.handle_route_response(&msg, (target, self.local));
        let active = gate.quotas.active() as u64;
        drop(gate);
        if let Some(update) = route {
            self.update_route(update, (target, self.local));
        }
        if allocated {
            self.shared
                .metrics
                .allocations_active
                .store(active, Ordering::Relaxed);
            Metrics::add(&self.shared.metrics.allocations_total, 1);
        }
    }
}

/// Whether the server's message is one the gate learns from: an error response (nonces), an
/// Allocate success (quotas, routes), a Refresh or ChannelBind success (routes).
fn is_observed_response(data: &[u8]) -> bool {
    if data.len() < 20 || data[0] & 0xC0 != 0 {
        return false;
    }
    let mut typ = MessageType::default();
    typ.read_value(u16::from_be_bytes([data[0], data[1]]));
    typ.class == CLASS_ERROR_RESPONSE
        || (typ.class == CLASS_SUCCESS_RESPONSE
            && [METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CHANNEL_BIND].contains(&typ.method))
}

#[async_trait]
impl Conn for GuardConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        if let Some((socket, batch)) = &self.udp {
            let mut batch = batch.lock().await;
            loop {
                if let Some(purge) = self.shared.poll_purge()
                    && purge.len() <= buf.len()
                {
                    buf[..purge.len()].copy_from_slice(&purge);
                    return Ok((purge.len(), PURGE_SOURCE));
                }
                if let Some(next) = batch.datagrams.next_for_server(buf) {
                    return Ok(next);
                }
                if let Err(err) = self.handle_batch(socket, &mut batch).await {
                    self.up.store(false, Ordering::Relaxed);
                    return Err(err.into());
                }
            }
        }
        // TCP/TLS: one frame at a time from the stream multiplexer.
        loop {
            if let Some(purge) = self.shared.poll_purge()
                && purge.len() <= buf.len()
            {
                buf[..purge.len()].copy_from_slice(&purge);
                return Ok((purge.len(), PURGE_SOURCE));
            }
            let (n, source) = match self.inner.recv_from(buf).await {
                Ok(v) => v,
                Err(err) => {
                    self.up.store(false, Ordering::Relaxed);
                    return Err(err);
                }
            };
            match decide(&self.shared, self.local, &buf[..n], source) {
                Decision::Forward => return Ok((n, source)),
                Decision::Drop => continue,
                Decision::Answer(response) => {
                    if let Err(err) = self.inner.send_to(&response, source).await
                        && self.shared.may_log()
                    {
                        log::debug!("turn: cannot answer {source}: {err}");
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if is_observed_response(buf) {
            self.observe_response(buf, target);
        }
        if target == PURGE_SOURCE {
            return Ok(buf.len());
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        // `turn` closes the listener's conn whenever one allocation on it closes: never pass
        // that on; the relay shuts listeners down itself.
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Why;

    #[test]
    fn answers_are_encoded_with_what_the_gate_asked_for() {
        let answer = Answer {
            method: METHOD_BINDING,
            transaction_id: [3; 12],
            code: 420,
            reason: "Unknown Attribute",
            nonce: Some("n".into()),
            integrity_key: Some(vec![1; 16]),
            unknown_attributes: vec![0x7777],
            why: Why::UnknownAttributes,
        };
        let raw = encode(&answer, "parley").unwrap();
        let mut msg = Message {
            raw,
            ..Default::default()
        };
        msg.decode().unwrap();
        assert_eq!(
            msg.typ,
            MessageType::new(METHOD_BINDING, CLASS_ERROR_RESPONSE)
        );
        assert_eq!(msg.transaction_id.0, [3; 12]);
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&msg).unwrap();
        assert_eq!(code.code.0, 420);
        assert_eq!(msg.get(ATTR_UNKNOWN_ATTRIBUTES).unwrap(), vec![0x77, 0x77]);
        assert_eq!(
            TextAttribute::get_from_as(&msg, ATTR_REALM).unwrap().text,
            "parley"
        );
        MessageIntegrity(vec![1; 16]).check(&mut msg).unwrap();
    }

    #[test]
    fn only_error_and_route_responses_are_observed() {
        let build = |typ: MessageType| {
            let mut msg = Message::new();
            msg.build(&[Box::new(TransactionId::new()), Box::new(typ)])
                .unwrap();
            msg.raw
        };
        assert!(is_observed_response(&build(MessageType::new(
            METHOD_REFRESH,
            CLASS_ERROR_RESPONSE
        ))));
        assert!(is_observed_response(&build(MessageType::new(
            METHOD_ALLOCATE,
            CLASS_SUCCESS_RESPONSE
        ))));
        assert!(is_observed_response(&build(MessageType::new(
            METHOD_CHANNEL_BIND,
            CLASS_SUCCESS_RESPONSE
        ))));
        assert!(!is_observed_response(&build(MessageType::new(
            METHOD_CREATE_PERMISSION,
            CLASS_SUCCESS_RESPONSE
        ))));
        assert!(!is_observed_response(&[0x40, 0, 0, 4, 1, 2, 3, 4]));
    }
}
