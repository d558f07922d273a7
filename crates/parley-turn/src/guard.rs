//! The layer in front of the `turn` server: a `Conn` wrapper that sees every datagram or
//! frame a listener receives and every response the server sends, and supplies what `turn`
//! 0.17 lacks: a peer-address policy (403), credential checks that answer 401 (the server
//! says 400), allocation quotas (486), a bounded nonce table, a bandwidth cap, and counters.
//!
//! The hot path (ChannelData, Send/Data indications) costs a couple of byte comparisons;
//! only control requests are decoded here, which the server decodes again anyway.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
use webrtc_util::Conn;

use crate::bandwidth::TokenBucket;
use crate::credentials::{Secrets, parse_username};
use crate::metrics::Metrics;
use crate::nonce::{NonceGate, NonceVerdict};
use crate::policy::PeerPolicy;
use crate::quota::{AllocationKey, QuotaVerdict, Quotas};

/// Source address of the requests the guard injects to purge the server's old nonces; the
/// server's answers to it are swallowed. TEST-NET-1, never a real client.
pub(crate) const PURGE_SOURCE: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)), 9);

/// Verified credentials handed from the guard to the server's synchronous `AuthHandler`.
/// Bounded: entries are taken by the handler, and the map is cleared if it ever gets large
/// (the server then falls back to the current secret).
const MAX_VERIFIED: usize = 4096;

/// Our own per-packet log lines: at most this many per minute.
const LOG_LINES_PER_MINUTE: u64 = 10;

pub(crate) struct GuardState {
    pub quotas: Quotas,
    pub nonces: NonceGate,
    verified: HashMap<SocketAddr, (String, Vec<u8>)>,
    /// Username and key per allocation, to release TCP/TLS allocations when the stream ends.
    allocation_credentials: HashMap<AllocationKey, (String, Vec<u8>)>,
    pending_credentials: HashMap<[u8; 12], (String, Vec<u8>)>,
    client_buckets: HashMap<SocketAddr, TokenBucket>,
}

/// State shared by every listener's guard, the auth handler and the relay sockets.
pub(crate) struct Shared {
    pub realm: String,
    pub secrets: Secrets,
    pub policy: PeerPolicy,
    pub metrics: Arc<Metrics>,
    /// Bytes per second per allocation and direction; 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    pub state: Mutex<GuardState>,
    log_window: AtomicU64,
    log_count: AtomicU64,
    next_purge_check: Mutex<Instant>,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            realm,
            secrets,
            policy,
            metrics,
            bandwidth_bytes_per_sec,
            state: Mutex::new(GuardState {
                quotas,
                nonces: NonceGate::default(),
                verified: HashMap::new(),
                allocation_credentials: HashMap::new(),
                pending_credentials: HashMap::new(),
                client_buckets: HashMap::new(),
            }),
            log_window: AtomicU64::new(0),
            log_count: AtomicU64::new(0),
            next_purge_check: Mutex::new(Instant::now()),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // A panic while holding the lock is a bug; the state itself stays usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rate-limits our own per-packet log lines so that a flood cannot flood the journal.
    pub fn may_log(&self) -> bool {
        let minute = now_unix() / 60;
        if self.log_window.swap(minute, Ordering::Relaxed) != minute {
            self.log_count.store(0, Ordering::Relaxed);
        }
        self.log_count.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_MINUTE
    }

    /// Called by the server's auth handler for a request the guard has just verified.
    pub fn take_verified_key(
        &self,
        username: &str,
        realm: &str,
        source: SocketAddr,
    ) -> Option<Vec<u8>> {
        let mut state = self.lock();
        if let Some((verified_user, key)) = state.verified.remove(&source)
            && verified_user == username
        {
            return Some(key);
        }
        drop(state);
        // Not verified by a guard (cannot happen for requests that passed one): fall back to
        // the current secret, refusing expired and malformed usernames.
        self.secrets
            .candidate_keys(username, realm, now_unix())
            .ok()
            .and_then(|keys| keys.into_iter().next())
    }

    /// The allocation ended: free its quota slot and per-allocation state.
    pub fn handle_allocation_closed(&self, key: AllocationKey) {
        let mut state = self.lock();
        state.quotas.handle_allocation_closed(key);
        state.allocation_credentials.remove(&key);
        state.client_buckets.remove(&key.0);
        self.metrics
            .allocations_active
            .store(state.quotas.active() as u64, Ordering::Relaxed);
    }

    /// A Refresh with LIFETIME 0 that deletes the allocation of `key`, built with the
    /// credentials it was created with: injected when a TCP/TLS client disconnects, because
    /// RFC 6062's rule (the allocation ends with its connection) has no hook in `turn`.
    pub fn release_request(&self, key: AllocationKey) -> Option<Vec<u8>> {
        let now = Instant::now();
        let state = self.lock();
        let (username, auth_key) = state.allocation_credentials.get(&key)?.clone();
        let nonce = match state.nonces.handle_authenticated("", now) {
            NonceVerdict::Stale(nonce) => nonce,
            _ => return None,
        };
        drop(state);
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
            let mut next = self
                .next_purge_check
                .lock()
                .unwrap_or_else(|p| p.into_inner());
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
}

/// Answers the server's `AuthHandler` calls from what the guard verified.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ChannelData,
    Stun { method: Method, class: MessageClass },
    Other,
}

fn classify(data: &[u8]) -> Kind {
    if data.len() >= 4 && data[0] & 0xC0 == 0x40 {
        return Kind::ChannelData;
    }
    if data.len() >= 20 && data[0] & 0xC0 == 0 {
        let mut typ = MessageType::default();
        typ.read_value(u16::from_be_bytes([data[0], data[1]]));
        return Kind::Stun {
            method: typ.method,
            class: typ.class,
        };
    }
    Kind::Other
}

/// XOR-PEER-ADDRESS values of a message, every one of them (the server only reads the first).
pub(crate) fn xor_peer_addresses(msg: &Message) -> Result<Vec<SocketAddr>, ()> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut peers = Vec::new();
    for attr in msg
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
    {
        let value = &attr.value;
        if value.len() < 4 {
            return Err(());
        }
        let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
        let ip = match (value[1], value.len()) {
            (0x01, 8) => {
                let mut octets = [0u8; 4];
                for i in 0..4 {
                    octets[i] = value[4 + i] ^ cookie[i];
                }
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            (0x02, 20) => {
                let mut octets = [0u8; 16];
                for i in 0..16 {
                    let mask = if i < 4 {
                        cookie[i]
                    } else {
                        msg.transaction_id.0[i - 4]
                    };
                    octets[i] = value[4 + i] ^ mask;
                }
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return Err(()),
        };
        peers.push(SocketAddr::new(ip, port));
    }
    Ok(peers)
}

/// What the guard does with one received request.
pub(crate) enum Decision {
    Forward,
    Answer(Vec<u8>),
    Drop,
}

fn error_response(
    request: &Message,
    code: ErrorCode,
    reason: &str,
    nonce: Option<&str>,
    realm: &str,
    integrity_key: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(request.transaction_id),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    if let Some(nonce) = nonce {
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_owned())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.to_owned())));
    }
    if let Some(key) = integrity_key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    let mut msg = Message::new();
    msg.build(&setters).ok()?;
    Some(msg.raw)
}

/// Wraps one listener's `Conn` (a UDP socket or a TCP/TLS stream multiplexer).
pub(crate) struct GuardConn {
    inner: Arc<dyn Conn + Send + Sync>,
    shared: Arc<Shared>,
    local: SocketAddr,
    up: Arc<AtomicBool>,
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
        })
    }
}

/// Decides what to do with one datagram or frame received from `source` on `local`.
pub(crate) fn decide(
    shared: &Shared,
    local: SocketAddr,
    data: &[u8],
    source: SocketAddr,
) -> Decision {
    match classify(data) {
        Kind::ChannelData => {
            if within_bandwidth(shared, source, data.len()) {
                Decision::Forward
            } else {
                Decision::Drop
            }
        }
        Kind::Stun { method, class } if class == CLASS_REQUEST => {
            if method == METHOD_ALLOCATE
                || method == METHOD_REFRESH
                || method == METHOD_CREATE_PERMISSION
                || method == METHOD_CHANNEL_BIND
            {
                inspect_request(shared, local, data, source, method)
            } else {
                Decision::Forward
            }
        }
        Kind::Stun { method, class } if class == CLASS_INDICATION && method == METHOD_SEND => {
            if within_bandwidth(shared, source, data.len()) {
                Decision::Forward
            } else {
                Decision::Drop
            }
        }
        Kind::Stun { .. } => Decision::Forward,
        Kind::Other => Decision::Drop, // not TURN: the server would only log an error
    }
}

fn inspect_request(
    shared: &Shared,
    local: SocketAddr,
    data: &[u8],
    source: SocketAddr,
    method: Method,
) -> Decision {
    {
        let mut msg = Message {
            raw: data.to_vec(),
            ..Default::default()
        };
        if msg.decode().is_err() {
            return Decision::Forward; // the server rejects it the usual way
        }
        let now = Instant::now();
        let realm = shared.realm.as_str();

        if !msg.contains(ATTR_MESSAGE_INTEGRITY) {
            let verdict = shared.lock().nonces.handle_unauthenticated(now);
            return match verdict {
                NonceVerdict::Challenge(nonce) => {
                    Metrics::add(&shared.metrics.challenges_answered, 1);
                    error_response(
                        &msg,
                        CODE_UNAUTHORIZED,
                        "Unauthorized",
                        Some(&nonce),
                        realm,
                        None,
                    )
                    .map_or(Decision::Drop, Decision::Answer)
                }
                _ => Decision::Forward,
            };
        }

        let (Ok(nonce), Ok(username)) = (
            TextAttribute::get_from_as(&msg, ATTR_NONCE),
            TextAttribute::get_from_as(&msg, ATTR_USERNAME),
        ) else {
            return Decision::Forward; // the server answers 400 without touching its nonce table
        };
        let client_realm = TextAttribute::get_from_as(&msg, ATTR_REALM)
            .map(|r| r.text)
            .unwrap_or_default();
        match shared.lock().nonces.handle_authenticated(&nonce.text, now) {
            NonceVerdict::Stale(fresh) => {
                return error_response(
                    &msg,
                    CODE_STALE_NONCE,
                    "Stale Nonce",
                    Some(&fresh),
                    realm,
                    None,
                )
                .map_or(Decision::Drop, Decision::Answer);
            }
            NonceVerdict::Challenge(_) | NonceVerdict::Forward => {}
        }

        let unix_now = now_unix();
        let matched_key = shared
            .secrets
            .candidate_keys(&username.text, &client_realm, unix_now)
            .ok()
            .and_then(|keys| {
                keys.into_iter().find(|key| {
                    MessageIntegrity(key.clone())
                        .check(&mut msg.clone())
                        .is_ok()
                })
            });
        let Some(key) = matched_key else {
            Metrics::add(&shared.metrics.auth_failures, 1);
            if shared.may_log() {
                log::info!(
                    "turn: refused credentials from {source} (expired, forged or malformed username {:?})",
                    username.text
                );
            }
            let fresh = match shared.lock().nonces.handle_unauthenticated(now) {
                NonceVerdict::Challenge(fresh) => fresh,
                _ => nonce.text.clone(),
            };
            return error_response(
                &msg,
                CODE_UNAUTHORIZED,
                "Unauthorized",
                Some(&fresh),
                realm,
                None,
            )
            .map_or(Decision::Drop, Decision::Answer);
        };

        if method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND {
            let refused = match xor_peer_addresses(&msg) {
                Ok(peers) => peers
                    .into_iter()
                    .find(|peer| !shared.policy.allows(peer.ip())),
                Err(()) => return Decision::Forward, // malformed: the server answers 400
            };
            if let Some(peer) = refused {
                Metrics::add(&shared.metrics.refused_peers, 1);
                if shared.may_log() {
                    log::info!(
                        "turn: refused peer {peer} for {source}; allow its range with turn.allowed_peer_ranges if this is intended"
                    );
                }
                return error_response(
                    &msg,
                    CODE_FORBIDDEN,
                    "Forbidden IP",
                    None,
                    realm,
                    Some(&key),
                )
                .map_or(Decision::Drop, Decision::Answer);
            }
        }

        let mut state = shared.lock();
        if method == METHOD_ALLOCATE {
            let user = parse_username(&username.text, unix_now)
                .map(|u| u.user.to_owned())
                .unwrap_or_default();
            let verdict = state.quotas.handle_allocate_request(
                msg.transaction_id.0,
                (source, local),
                &user,
                now,
            );
            if matches!(
                verdict,
                QuotaVerdict::UserQuotaReached | QuotaVerdict::TotalQuotaReached
            ) {
                drop(state);
                Metrics::add(&shared.metrics.quota_refusals, 1);
                if shared.may_log() {
                    log::warn!(
                        "turn: allocation quota reached ({verdict:?}) for {source}; see turn.max_allocations and turn.max_allocations_per_user"
                    );
                }
                return error_response(
                    &msg,
                    CODE_ALLOC_QUOTA_REACHED,
                    "Allocation Quota Reached",
                    None,
                    realm,
                    Some(&key),
                )
                .map_or(Decision::Drop, Decision::Answer);
            }
            state
                .pending_credentials
                .insert(msg.transaction_id.0, (username.text.clone(), key.clone()));
            if state.pending_credentials.len() > MAX_VERIFIED {
                state.pending_credentials.clear();
            }
        }
        if state.verified.len() >= MAX_VERIFIED {
            state.verified.clear();
        }
        state.verified.insert(source, (username.text, key));
        Decision::Forward
    }
}

/// Bandwidth cap for client-to-peer traffic, per allocation (= per client address here).
fn within_bandwidth(shared: &Shared, source: SocketAddr, bytes: usize) -> bool {
    {
        let rate = shared.bandwidth_bytes_per_sec;
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let mut state = shared.lock();
        let bucket = state
            .client_buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::new(rate, now));
        let ok = bucket.take(bytes, now);
        if state.client_buckets.len() > 65536 {
            state.client_buckets.clear(); // a spoofing flood; buckets refill anyway
        }
        drop(state);
        if !ok {
            Metrics::add(&shared.metrics.bandwidth_drops, 1);
        }
        ok
    }
}

impl GuardConn {
    /// Watches the server's responses for issued nonces and Allocate outcomes.
    fn observe_response(
        &self,
        data: &[u8],
        target: SocketAddr,
        method: Method,
        class: MessageClass,
    ) {
        let mut msg = Message {
            raw: data.to_vec(),
            ..Default::default()
        };
        if msg.decode().is_err() {
            return;
        }
        let now = Instant::now();
        let mut state = self.shared.lock();
        if class == CLASS_ERROR_RESPONSE
            && let Ok(nonce) = TextAttribute::get_from_as(&msg, ATTR_NONCE)
        {
            state.nonces.handle_issued(&nonce.text, now);
        }
        if method == METHOD_ALLOCATE {
            let success = class == CLASS_SUCCESS_RESPONSE;
            let tid = msg.transaction_id.0;
            state.quotas.handle_allocate_response(tid, success);
            let credentials = state.pending_credentials.remove(&tid);
            if success {
                if let Some(credentials) = credentials {
                    state
                        .allocation_credentials
                        .insert((target, self.local), credentials);
                }
                let active = state.quotas.active() as u64;
                drop(state);
                self.shared
                    .metrics
                    .allocations_active
                    .store(active, Ordering::Relaxed);
                Metrics::add(&self.shared.metrics.allocations_total, 1);
            }
        }
    }
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
            let decision = decide(&self.shared, self.local, &buf[..n], source);
            match decision {
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
        if let Kind::Stun { method, class } = classify(buf)
            && (class == CLASS_ERROR_RESPONSE
                || (class == CLASS_SUCCESS_RESPONSE && method == METHOD_ALLOCATE))
        {
            self.observe_response(buf, target, method, class);
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

    #[test]
    fn classify_tells_channel_data_from_stun() {
        assert_eq!(classify(&[0x40, 0x00, 0x00, 0x00]), Kind::ChannelData);
        let mut msg = Message::new();
        msg.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ])
        .unwrap();
        assert_eq!(
            classify(&msg.raw),
            Kind::Stun {
                method: METHOD_ALLOCATE,
                class: CLASS_REQUEST
            }
        );
        assert_eq!(
            classify(&[0x80; 24]),
            Kind::Other,
            "0b10 and 0b11 lead no TURN packet"
        );
        assert_eq!(classify(&[0xC0; 24]), Kind::Other);
        assert_eq!(classify(&[0x00, 0x01]), Kind::Other);
    }

    #[test]
    fn every_xor_peer_address_is_decoded() {
        let peers = [
            SocketAddr::from(([8, 8, 8, 8], 3478)),
            SocketAddr::from(([127, 0, 0, 1], 9)),
            "[::ffff:127.0.0.1]:5000".parse().unwrap(),
            "[2001:db8::1]:7".parse().unwrap(),
        ];
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
        ];
        for peer in peers {
            setters.push(Box::new(turn::proto::peeraddr::PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }));
        }
        let mut msg = Message::new();
        msg.build(&setters).unwrap();
        let mut decoded = Message {
            raw: msg.raw.clone(),
            ..Default::default()
        };
        decoded.decode().unwrap();
        assert_eq!(xor_peer_addresses(&decoded).unwrap(), peers);
    }
}
