//! The relay's decisions in front of the `turn` server, without I/O: decode first, decide
//! second. [`decode`] turns one datagram or frame into a [`Packet`]; a malformed request
//! becomes a 400 (or 420) before any rule sees it. [`Gate::handle_request`] then takes the
//! decoded request and the time and returns a [`Verdict`]: forward it to the server or answer
//! it with an error (what is not worth an answer is [`Packet::Ignored`] and dropped). The socket shell (`guard`) encodes answers, reads clocks,
//! counts metrics and logs; nothing here does.
//!
//! Checks, in order: unknown comprehension-required attributes (420), malformed or
//! duplicated addresses (400), nonce (401 challenge, 438 stale), credentials (401), peer
//! policy for every XOR-PEER-ADDRESS (403), allocation quotas (486).
//!
//! `turn` 0.17 reads only the first XOR-PEER-ADDRESS of a message (with `get_from`, once per
//! attribute in CreatePermission) and zero-fills a short one; so every address is decoded
//! strictly here, and a message the server could read differently from us never reaches it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use stun::agent::TransactionId;
use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;

use crate::credentials::{Secrets, parse_username};
use crate::nonce::{NonceGate, NonceVerdict};
use crate::policy::PeerPolicy;
use crate::quota::{AllocationKey, QuotaVerdict, Quotas};

/// Verified credentials handed from the gate to the server's synchronous `AuthHandler`, and
/// credentials of Allocate requests in flight. Bounded: cleared if they ever get this large
/// (the server then falls back to the current secret).
const MAX_VERIFIED: usize = 4096;

/// Comprehension-required attributes (below 0x8000) this relay understands (RFC 8489,
/// RFC 8656); any other one in a request is answered with 420.
const UNDERSTOOD: &[AttrType] = &[
    ATTR_MAPPED_ADDRESS,
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_ERROR_CODE,
    ATTR_UNKNOWN_ATTRIBUTES,
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    ATTR_XOR_PEER_ADDRESS,
    ATTR_DATA,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_XOR_RELAYED_ADDRESS,
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    ATTR_DONT_FRAGMENT,
    ATTR_XORMAPPED_ADDRESS,
    ATTR_RESERVATION_TOKEN,
];

/// One decoded datagram or frame from a client.
#[derive(Debug)]
pub(crate) enum Packet {
    /// ChannelData: relayed on the hot path, only rate-limited.
    ChannelData,
    Request(Request),
    /// A Send indication with exactly one well-formed XOR-PEER-ADDRESS.
    Send {
        peer: SocketAddr,
    },
    /// A request that cannot be processed: answered with this error, unsigned.
    Refused(Answer),
    /// Nothing the server acts on: not TURN, a response, another indication, or a Send
    /// indication with a missing, duplicated or malformed address (indications are never
    /// answered).
    Ignored,
}

/// A request whose every XOR-PEER-ADDRESS decoded strictly.
#[derive(Debug)]
pub(crate) struct Request {
    pub message: Message,
    pub peers: Vec<SocketAddr>,
}

impl Request {
    pub fn method(&self) -> Method {
        self.message.typ.method
    }
}

/// Why the gate answered a request itself (for the shell's metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    Malformed(&'static str),
    UnknownAttributes,
    Challenge,
    StaleNonce,
    BadCredentials {
        username: String,
    },
    ForbiddenPeer(SocketAddr),
    Quota(QuotaVerdict),
    /// REQUESTED-ADDRESS-FAMILY names a family the relay has no relayed address in (RFC 6156).
    AddressFamily {
        ipv6: bool,
    },
}

/// An error response to send: everything the shell needs to encode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub method: Method,
    pub transaction_id: [u8; 12],
    pub code: u16,
    pub reason: &'static str,
    /// NONCE and REALM to include (401, 438).
    pub nonce: Option<String>,
    /// Sign with MESSAGE-INTEGRITY under this key (the client proved it holds it).
    pub integrity_key: Option<Vec<u8>>,
    /// For 420: the attributes not understood.
    pub unknown_attributes: Vec<u16>,
    pub why: Why,
}

impl Answer {
    fn new(message: &Message, code: u16, reason: &'static str, why: Why) -> Answer {
        Answer {
            method: message.typ.method,
            transaction_id: message.transaction_id.0,
            code,
            reason,
            nonce: None,
            integrity_key: None,
            unknown_attributes: Vec::new(),
            why,
        }
    }

    fn with_nonce(mut self, nonce: String) -> Answer {
        self.nonce = Some(nonce);
        self
    }

    fn signed(mut self, key: &[u8]) -> Answer {
        self.integrity_key = Some(key.to_vec());
        self
    }
}

/// What to do with one request. (Requests are never dropped silently: a client waits.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Forward,
    Answer(Answer),
    /// A retransmitted Allocate: the success response its allocation was created with, as sent.
    Resend(Vec<u8>),
}

/// Decodes one XOR-PEER-ADDRESS value strictly: a zero byte, family 1 with exactly 4 address
/// bytes or family 2 with exactly 16.
pub(crate) fn xor_peer_address(value: &[u8], transaction_id: &TransactionId) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let (&[zero, family, p0, p1], address) = value.split_first_chunk::<4>()?;
    if zero != 0 {
        return None;
    }
    let port = u16::from_be_bytes([p0, p1]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (family, address.len()) {
        (0x01, 4) => {
            let mut octets = [0u8; 4];
            for (i, octet) in octets.iter_mut().enumerate() {
                *octet = address[i] ^ cookie[i];
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        (0x02, 16) => {
            let mut octets = [0u8; 16];
            for (i, octet) in octets.iter_mut().enumerate() {
                let mask = if i < 4 {
                    cookie[i]
                } else {
                    transaction_id.0[i - 4]
                };
                *octet = address[i] ^ mask;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every XOR-PEER-ADDRESS of `message`, or `None` if any one is malformed.
fn peers_of(message: &Message) -> Option<Vec<SocketAddr>> {
    message
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|a| xor_peer_address(&a.value, &message.transaction_id))
        .collect()
}

fn count(message: &Message, typ: AttrType) -> usize {
    message.attributes.0.iter().filter(|a| a.typ == typ).count()
}

/// Decodes one datagram or frame received from a client.
pub(crate) fn decode(data: &[u8]) -> Packet {
    match data.first() {
        Some(byte) if byte >> 6 == 1 && data.len() >= 4 => return Packet::ChannelData,
        Some(byte) if byte >> 6 == 0 && data.len() >= 20 => {}
        _ => return Packet::Ignored,
    }
    let mut typ = MessageType::default();
    typ.read_value(u16::from_be_bytes([data[0], data[1]]));
    let mut message = Message {
        raw: data.to_vec(),
        ..Default::default()
    };
    if message.decode().is_err() {
        if typ.class != CLASS_REQUEST || data[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Packet::Ignored; // not answerable STUN
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&data[8..20]);
        return Packet::Refused(Answer {
            method: typ.method,
            transaction_id,
            code: 400,
            reason: "Bad Request",
            nonce: None,
            integrity_key: None,
            unknown_attributes: Vec::new(),
            why: Why::Malformed("the attributes do not add up to the message length"),
        });
    }
    let unknown: Vec<u16> = message
        .attributes
        .0
        .iter()
        .map(|a| a.typ)
        .filter(|typ| typ.required() && !UNDERSTOOD.contains(typ))
        .map(|typ| typ.value())
        .collect();
    let peers = peers_of(&message);

    if typ.class == CLASS_INDICATION {
        if typ.method != METHOD_SEND || !unknown.is_empty() {
            return Packet::Ignored;
        }
        return match peers.as_deref() {
            Some([peer]) if count(&message, ATTR_DATA) == 1 => Packet::Send { peer: *peer },
            _ => Packet::Ignored,
        };
    }
    if typ.class != CLASS_REQUEST {
        return Packet::Ignored;
    }
    if !unknown.is_empty() {
        let mut answer = Answer::new(&message, 420, "Unknown Attribute", Why::UnknownAttributes);
        answer.unknown_attributes = unknown;
        return Packet::Refused(answer);
    }
    let bad = |why: &'static str| {
        Packet::Refused(Answer::new(
            &message,
            400,
            "Bad Request",
            Why::Malformed(why),
        ))
    };
    let Some(peers) = peers else {
        return bad("malformed XOR-PEER-ADDRESS");
    };
    if typ.method == METHOD_CREATE_PERMISSION && peers.is_empty() {
        return bad("CreatePermission without XOR-PEER-ADDRESS");
    }
    if typ.method == METHOD_CHANNEL_BIND {
        if peers.len() != 1 {
            return bad("ChannelBind needs exactly one XOR-PEER-ADDRESS");
        }
        let channels: Vec<_> = message
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == ATTR_CHANNEL_NUMBER)
            .collect();
        if channels.len() != 1 || channels[0].value.len() != 4 {
            return bad("ChannelBind needs exactly one CHANNEL-NUMBER");
        }
    }
    Packet::Request(Request { message, peers })
}

/// The gate's state: what it knows of the server's nonces, allocations and verified
/// credentials. One per relay, shared by every listener behind a mutex in the shell.
pub(crate) struct Gate {
    secrets: Secrets,
    policy: PeerPolicy,
    pub quotas: Quotas,
    pub nonces: NonceGate,
    verified: HashMap<SocketAddr, (String, Vec<u8>)>,
    /// Username and key per allocation, to release TCP/TLS allocations when the stream ends.
    allocation_credentials: HashMap<AllocationKey, (String, Vec<u8>)>,
    pending_credentials: HashMap<[u8; 12], (String, Vec<u8>)>,
    /// Which relayed-address families the relay offers: (IPv4, IPv6).
    relay_families: (bool, bool),
    /// Allocate, Refresh and ChannelBind requests passed to the server, for the fast data
    /// path's view of allocations and channels (see `fastpath`): what each asked for and the
    /// moment it arrived, which is before the server starts the matching timer.
    pending_routes: HashMap<[u8; 12], PendingRoute>,
    /// The success response each allocation was created with, and its request's transaction
    /// id: a client whose success response was lost sends the same Allocate again, and
    /// Allocate is not idempotent, so it must get that response again (RFC 8489 6.3.1's
    /// cache of responses to non-idempotent requests over UDP). `turn` answers it 437
    /// (Allocation Mismatch): the client then allocates from another port, and the first
    /// allocation holds a relay port and a slot of the user's quota until it expires.
    allocate_answers: HashMap<AllocationKey, ([u8; 12], Vec<u8>)>,
}

#[derive(Debug, Clone, Copy)]
struct PendingRoute {
    key: AllocationKey,
    asked: Asked,
    received: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Asked {
    /// Allocate or Refresh: a lifetime for the allocation.
    Lifetime,
    ChannelBind {
        number: u16,
        peer: SocketAddr,
    },
}

/// What a success response tells the fast data path about the allocation of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteUpdate {
    /// An Allocate succeeded: the allocation relays from `relayed` until `expires`.
    Allocated {
        relayed: SocketAddr,
        expires: Instant,
    },
    /// A Refresh succeeded: the allocation lives until `expires` (for a deletion, the moment
    /// the request arrived).
    Refreshed { expires: Instant },
    /// A ChannelBind succeeded: `number` is bound to `peer` until `expires`.
    ChannelBound {
        number: u16,
        peer: SocketAddr,
        expires: Instant,
    },
}

/// Whether `request` deletes its allocation (a Refresh with LIFETIME 0, as `turn` reads it).
pub(crate) fn deletes_allocation(request: &Request) -> bool {
    request.method() == METHOD_REFRESH
        && request
            .message
            .get(ATTR_LIFETIME)
            .is_ok_and(|value| value.as_slice() == [0, 0, 0, 0])
}

impl Gate {
    pub fn new(secrets: Secrets, policy: PeerPolicy, quotas: Quotas) -> Gate {
        Gate {
            secrets,
            policy,
            quotas,
            nonces: NonceGate::default(),
            verified: HashMap::new(),
            allocation_credentials: HashMap::new(),
            pending_credentials: HashMap::new(),
            relay_families: (true, true),
            pending_routes: HashMap::new(),
            allocate_answers: HashMap::new(),
        }
    }

    /// Which relayed-address families the relay can allocate in. `turn` 0.17 answers a
    /// REQUESTED-ADDRESS-FAMILY it cannot serve with 508 (Insufficient Capacity); RFC 6156
    /// says 440 (Address Family not Supported), so the gate answers that first.
    pub fn set_relay_families(&mut self, ipv4: bool, ipv6: bool) {
        self.relay_families = (ipv4, ipv6);
    }

    /// Decides on one decoded request from `source`, received on `local`.
    pub fn handle_request(
        &mut self,
        request: &Request,
        source: SocketAddr,
        local: SocketAddr,
        now: Instant,
        unix_now: u64,
    ) -> Verdict {
        let method = request.method();
        let msg = &request.message;
        if method != METHOD_ALLOCATE
            && method != METHOD_REFRESH
            && method != METHOD_CREATE_PERMISSION
            && method != METHOD_CHANNEL_BIND
        {
            return Verdict::Forward; // Binding: no credentials, nothing to guard
        }

        if !msg.contains(ATTR_MESSAGE_INTEGRITY) {
            return match self.nonces.handle_unauthenticated(now) {
                NonceVerdict::Challenge(nonce) => Verdict::Answer(
                    Answer::new(msg, 401, "Unauthorized", Why::Challenge).with_nonce(nonce),
                ),
                // The server mints the first nonce (and we learn it from its answer).
                _ => Verdict::Forward,
            };
        }

        let (Ok(nonce), Ok(username)) = (
            TextAttribute::get_from_as(msg, ATTR_NONCE),
            TextAttribute::get_from_as(msg, ATTR_USERNAME),
        ) else {
            return Verdict::Answer(Answer::new(
                msg,
                400,
                "Bad Request",
                Why::Malformed("MESSAGE-INTEGRITY without USERNAME and NONCE"),
            ));
        };
        let client_realm = TextAttribute::get_from_as(msg, ATTR_REALM)
            .map(|r| r.text)
            .unwrap_or_default();
        if let NonceVerdict::Stale(fresh) = self.nonces.handle_authenticated(&nonce.text, now) {
            return Verdict::Answer(
                Answer::new(msg, 438, "Stale Nonce", Why::StaleNonce).with_nonce(fresh),
            );
        }

        let matched_key = self
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
            let fresh = match self.nonces.handle_unauthenticated(now) {
                NonceVerdict::Challenge(fresh) => fresh,
                _ => nonce.text.clone(),
            };
            return Verdict::Answer(
                Answer::new(
                    msg,
                    401,
                    "Unauthorized",
                    Why::BadCredentials {
                        username: username.text,
                    },
                )
                .with_nonce(fresh),
            );
        };

        if let Some(peer) = request
            .peers
            .iter()
            .find(|peer| !self.policy.allows(peer.ip()))
        {
            return Verdict::Answer(
                Answer::new(msg, 403, "Forbidden IP", Why::ForbiddenPeer(*peer)).signed(&key),
            );
        }

        if method == METHOD_ALLOCATE
            && let Some((transaction_id, answer)) = self.allocate_answers.get(&(source, local))
            && *transaction_id == msg.transaction_id.0
        {
            return Verdict::Resend(answer.clone());
        }

        if method == METHOD_ALLOCATE {
            // 0x01 IPv4, 0x02 IPv6 (RFC 6156 4.1.1); other values `turn` answers with 440 itself.
            let requested_ipv6 = match msg.get(ATTR_REQUESTED_ADDRESS_FAMILY).as_deref() {
                Ok([0x01, ..]) => Some(false),
                Ok([0x02, ..]) => Some(true),
                _ => None,
            };
            if let Some(ipv6) = requested_ipv6
                && !(if ipv6 {
                    self.relay_families.1
                } else {
                    self.relay_families.0
                })
            {
                return Verdict::Answer(
                    Answer::new(
                        msg,
                        440,
                        "Address Family not Supported",
                        Why::AddressFamily { ipv6 },
                    )
                    .signed(&key),
                );
            }
            let user = parse_username(&username.text, unix_now)
                .map(|u| u.user.to_owned())
                .unwrap_or_default();
            let verdict = self.quotas.handle_allocate_request(
                msg.transaction_id.0,
                (source, local),
                &user,
                now,
            );
            if matches!(
                verdict,
                QuotaVerdict::UserQuotaReached | QuotaVerdict::TotalQuotaReached
            ) {
                return Verdict::Answer(
                    Answer::new(msg, 486, "Allocation Quota Reached", Why::Quota(verdict))
                        .signed(&key),
                );
            }
            if self.pending_credentials.len() >= MAX_VERIFIED {
                self.pending_credentials.clear();
            }
            self.pending_credentials
                .insert(msg.transaction_id.0, (username.text.clone(), key.clone()));
        }
        let asked = match method {
            METHOD_ALLOCATE | METHOD_REFRESH => Some(Asked::Lifetime),
            METHOD_CHANNEL_BIND => {
                match (msg.get(ATTR_CHANNEL_NUMBER).as_deref(), &request.peers[..]) {
                    (Ok([n0, n1, _, _]), [peer]) => Some(Asked::ChannelBind {
                        number: u16::from_be_bytes([*n0, *n1]),
                        peer: *peer,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(asked) = asked {
            if self.pending_routes.len() >= MAX_VERIFIED {
                self.pending_routes.clear(); // those requests only miss the fast path
            }
            self.pending_routes.insert(
                msg.transaction_id.0,
                PendingRoute {
                    key: (source, local),
                    asked,
                    received: now,
                },
            );
        }
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(source, (username.text, key));
        Verdict::Forward
    }

    /// The server answered a request the gate passed: what its success means for the fast
    /// data path, for the allocation of `key` (the response's target and listener).
    pub fn handle_route_response(
        &mut self,
        response: &Message,
        key: AllocationKey,
    ) -> Option<RouteUpdate> {
        let pending = self.pending_routes.remove(&response.transaction_id.0)?;
        if pending.key != key || response.typ.class != CLASS_SUCCESS_RESPONSE {
            return None;
        }
        let lifetime = || {
            let mut lifetime = turn::proto::lifetime::Lifetime::default();
            lifetime.get_from(response).ok().map(|()| lifetime.0)
        };
        match (response.typ.method, pending.asked) {
            (METHOD_ALLOCATE, Asked::Lifetime) => {
                let value = response.get(ATTR_XOR_RELAYED_ADDRESS).ok()?;
                let relayed = xor_peer_address(&value, &response.transaction_id)?;
                Some(RouteUpdate::Allocated {
                    relayed,
                    expires: pending.received + lifetime()?,
                })
            }
            (METHOD_REFRESH, Asked::Lifetime) => Some(RouteUpdate::Refreshed {
                // No LIFETIME in a success is not something `turn` sends: end the view.
                expires: pending.received + lifetime().unwrap_or_default(),
            }),
            (METHOD_CHANNEL_BIND, Asked::ChannelBind { number, peer }) => {
                Some(RouteUpdate::ChannelBound {
                    number,
                    peer,
                    expires: pending.received + crate::fastpath::CHANNEL_LIFETIME,
                })
            }
            _ => None,
        }
    }

    /// The server sent `response` to `target` on `local`: learn issued nonces and Allocate
    /// outcomes. Returns whether an allocation was created.
    pub fn handle_response(
        &mut self,
        response: &Message,
        target: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> bool {
        let class = response.typ.class;
        if class == CLASS_ERROR_RESPONSE
            && let Ok(nonce) = TextAttribute::get_from_as(response, ATTR_NONCE)
        {
            self.nonces.handle_issued(&nonce.text, now);
        }
        if response.typ.method != METHOD_ALLOCATE {
            return false;
        }
        let success = class == CLASS_SUCCESS_RESPONSE;
        let tid = response.transaction_id.0;
        self.quotas.handle_allocate_response(tid, success);
        let credentials = self.pending_credentials.remove(&tid);
        if success {
            self.allocate_answers
                .insert((target, local), (tid, response.raw.clone()));
        }
        if success && let Some(credentials) = credentials {
            self.allocation_credentials
                .insert((target, local), credentials);
        }
        success
    }

    /// The server's auth handler asks for the key of a request the gate just verified.
    pub fn take_verified_key(&mut self, username: &str, source: SocketAddr) -> Option<Vec<u8>> {
        match self.verified.remove(&source) {
            Some((verified_user, key)) if verified_user == username => Some(key),
            _ => None,
        }
    }

    /// The allocation ended: free its quota slot and its credentials.
    pub fn handle_allocation_closed(&mut self, key: AllocationKey) {
        self.quotas.handle_allocation_closed(key);
        self.allocation_credentials.remove(&key);
        self.allocate_answers.remove(&key);
    }

    /// Username, key and a current nonce for deleting the allocation of `key` on its
    /// client's behalf.
    pub fn release_credentials(
        &self,
        key: AllocationKey,
        now: Instant,
    ) -> Option<(String, Vec<u8>, String)> {
        let (username, auth_key) = self.allocation_credentials.get(&key)?.clone();
        match self.nonces.handle_authenticated("", now) {
            NonceVerdict::Stale(nonce) => Some((username, auth_key, nonce)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stun::error_code::ErrorCodeAttribute;

    use super::*;
    use crate::credentials::{long_term_key, mint};

    const SECRET: &str = "gate-secret";
    const REALM: &str = "parley";
    const UNIX_NOW: u64 = 1_800_000_000;
    const NONCE: &str = "server-nonce";

    fn client() -> SocketAddr {
        "203.0.113.5:40000".parse().unwrap()
    }

    fn listener() -> SocketAddr {
        "198.51.100.1:3478".parse().unwrap()
    }

    struct Credentials {
        username: String,
        key: Vec<u8>,
    }

    fn credentials(user: i64) -> Credentials {
        let (username, password) = mint(SECRET, user, 3600, UNIX_NOW);
        let key = long_term_key(&username, REALM, &password);
        Credentials { username, key }
    }

    fn gate(now: Instant) -> Gate {
        let mut gate = Gate::new(
            Secrets::new(SECRET.into(), Vec::new()),
            PeerPolicy::default(),
            Quotas::new(10, 1),
        );
        gate.nonces.handle_issued(NONCE, now);
        gate
    }

    /// The XOR-PEER-ADDRESS value of `peer` in a message with `request`'s transaction id.
    fn xor_peer(peer: SocketAddr) -> Vec<u8> {
        let mut message = Message::new();
        message.transaction_id = TransactionId([7; 12]);
        turn::proto::peeraddr::PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        }
        .add_to(&mut message)
        .unwrap();
        message.attributes.0[0].value.clone()
    }

    /// A request with raw attributes, signed with `signer` if given.
    fn request(
        method: Method,
        attributes: &[(AttrType, Vec<u8>)],
        signer: Option<&Credentials>,
    ) -> Vec<u8> {
        request_with_id([7; 12], method, attributes, signer)
    }

    fn request_with_id(
        transaction_id: [u8; 12],
        method: Method,
        attributes: &[(AttrType, Vec<u8>)],
        signer: Option<&Credentials>,
    ) -> Vec<u8> {
        let mut message = Message::new();
        message.set_type(MessageType::new(method, CLASS_REQUEST));
        message.transaction_id = TransactionId(transaction_id);
        message.write_header();
        for (typ, value) in attributes {
            message.add(*typ, value);
        }
        if let Some(signer) = signer {
            message.add(ATTR_USERNAME, signer.username.as_bytes());
            message.add(ATTR_REALM, REALM.as_bytes());
            message.add(ATTR_NONCE, NONCE.as_bytes());
            MessageIntegrity(signer.key.clone())
                .add_to(&mut message)
                .unwrap();
        }
        message.raw
    }

    fn refused(packet: Packet) -> Answer {
        match packet {
            Packet::Refused(answer) => answer,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn decoded(data: &[u8]) -> Request {
        match decode(data) {
            Packet::Request(request) => request,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn verdict_of(gate: &mut Gate, data: &[u8], now: Instant) -> Verdict {
        gate.handle_request(&decoded(data), client(), listener(), now, UNIX_NOW)
    }

    fn answer_code(verdict: &Verdict) -> Option<u16> {
        match verdict {
            Verdict::Answer(answer) => Some(answer.code),
            _ => None,
        }
    }

    const PUBLIC: &str = "8.8.8.8:3478";
    const LOOPBACK: &str = "127.0.0.1:1234";

    // ---- decoding: malformed input is refused before any rule (issue 10) ----

    #[test]
    fn a_truncated_second_peer_address_is_a_bad_request() {
        let data = request(
            METHOD_CREATE_PERMISSION,
            &[
                (ATTR_XOR_PEER_ADDRESS, xor_peer(LOOPBACK.parse().unwrap())),
                (
                    ATTR_XOR_PEER_ADDRESS,
                    vec![0x00, 0x01, 0x04, 0xd2, 0x01, 0x02],
                ),
            ],
            Some(&credentials(1)),
        );
        let answer = refused(decode(&data));
        assert_eq!(
            (answer.code, answer.method),
            (400, METHOD_CREATE_PERMISSION)
        );
        assert_eq!(answer.transaction_id, [7; 12]);
        assert_eq!(answer.integrity_key, None);
    }

    #[test]
    fn short_and_long_addresses_are_bad_requests() {
        let full = xor_peer(LOOPBACK.parse().unwrap());
        for length in [0, 1, 2, 3, 4, 5, 6, 7, 9, 12] {
            let mut value = full.clone();
            value.resize(length, 0);
            for method in [METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND] {
                let mut attributes = vec![(ATTR_XOR_PEER_ADDRESS, value.clone())];
                if method == METHOD_CHANNEL_BIND {
                    attributes.push((ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0]));
                }
                let data = request(method, &attributes, Some(&credentials(1)));
                assert_eq!(refused(decode(&data)).code, 400, "{length} bytes");
            }
        }
        let v6 = xor_peer("[2001:db8::1]:9".parse().unwrap());
        assert_eq!(v6.len(), 20);
        for length in [8, 19, 21] {
            let mut value = v6.clone();
            value.resize(length, 0);
            let data = request(
                METHOD_CREATE_PERMISSION,
                &[(ATTR_XOR_PEER_ADDRESS, value)],
                None,
            );
            assert_eq!(refused(decode(&data)).code, 400, "IPv6 with {length} bytes");
        }
    }

    #[test]
    fn a_nonzero_first_byte_or_unknown_family_is_a_bad_request() {
        let mut value = xor_peer(PUBLIC.parse().unwrap());
        value[0] = 1;
        let data = request(
            METHOD_CREATE_PERMISSION,
            &[(ATTR_XOR_PEER_ADDRESS, value.clone())],
            None,
        );
        assert_eq!(refused(decode(&data)).code, 400);
        value[0] = 0;
        value[1] = 3;
        let data = request(
            METHOD_CREATE_PERMISSION,
            &[(ATTR_XOR_PEER_ADDRESS, value)],
            None,
        );
        assert_eq!(refused(decode(&data)).code, 400);
    }

    #[test]
    fn channel_bind_needs_exactly_one_address_and_channel() {
        let public = xor_peer(PUBLIC.parse().unwrap());
        let channel = (ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0]);
        let two = request(
            METHOD_CHANNEL_BIND,
            &[
                channel.clone(),
                (ATTR_XOR_PEER_ADDRESS, public.clone()),
                (ATTR_XOR_PEER_ADDRESS, public.clone()),
            ],
            None,
        );
        assert_eq!(refused(decode(&two)).code, 400);
        let none = request(METHOD_CHANNEL_BIND, std::slice::from_ref(&channel), None);
        assert_eq!(refused(decode(&none)).code, 400);
        let no_channel = request(
            METHOD_CHANNEL_BIND,
            &[(ATTR_XOR_PEER_ADDRESS, public.clone())],
            None,
        );
        assert_eq!(refused(decode(&no_channel)).code, 400);
        let one = request(
            METHOD_CHANNEL_BIND,
            &[channel, (ATTR_XOR_PEER_ADDRESS, public)],
            None,
        );
        assert_eq!(
            decoded(&one).peers,
            vec![PUBLIC.parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn create_permission_without_address_is_a_bad_request() {
        let data = request(METHOD_CREATE_PERMISSION, &[], None);
        assert_eq!(refused(decode(&data)).code, 400);
    }

    #[test]
    fn every_address_is_decoded() {
        let peers: Vec<SocketAddr> = [
            PUBLIC,
            LOOPBACK,
            "[::ffff:127.0.0.1]:5000",
            "[2001:db8::1]:7",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let attributes: Vec<_> = peers
            .iter()
            .map(|p| (ATTR_XOR_PEER_ADDRESS, xor_peer(*p)))
            .collect();
        let data = request(METHOD_CREATE_PERMISSION, &attributes, None);
        assert_eq!(decoded(&data).peers, peers);
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420_listing_them() {
        let data = request(
            METHOD_BINDING,
            &[
                (AttrType(0x7777), vec![1]),
                (AttrType(0x8777), vec![2]),
                (AttrType(0x001C), vec![0; 32]),
            ],
            None,
        );
        let answer = refused(decode(&data));
        assert_eq!(answer.code, 420);
        assert_eq!(answer.unknown_attributes, vec![0x7777, 0x001C]);
        let optional_only = request(METHOD_BINDING, &[(AttrType(0x8777), vec![2])], None);
        assert!(matches!(decode(&optional_only), Packet::Request(_)));
    }

    #[test]
    fn a_request_whose_attributes_overrun_it_is_a_bad_request() {
        let mut data = request(METHOD_BINDING, &[(ATTR_SOFTWARE, vec![1, 2, 3, 4])], None);
        data[23] = 40; // attribute length past the end
        assert_eq!(refused(decode(&data)).code, 400);
    }

    #[test]
    fn send_indications_need_one_good_address_and_data() {
        let indication = |attributes: &[(AttrType, Vec<u8>)]| {
            let mut message = Message::new();
            message.set_type(MessageType::new(METHOD_SEND, CLASS_INDICATION));
            message.transaction_id = TransactionId([1; 12]);
            message.write_header();
            for (typ, value) in attributes {
                message.add(*typ, value);
            }
            message.raw
        };
        let public = xor_peer(PUBLIC.parse().unwrap());
        let data = (ATTR_DATA, vec![1, 2, 3]);
        assert!(matches!(
            decode(&indication(&[(ATTR_XOR_PEER_ADDRESS, public.clone()), data.clone()])),
            Packet::Send { peer } if peer == PUBLIC.parse().unwrap()
        ));
        for attributes in [
            vec![
                (ATTR_XOR_PEER_ADDRESS, public.clone()),
                (ATTR_XOR_PEER_ADDRESS, public.clone()),
                data.clone(),
            ],
            vec![(ATTR_XOR_PEER_ADDRESS, public[..6].to_vec()), data.clone()],
            vec![data.clone()],
            vec![(ATTR_XOR_PEER_ADDRESS, public.clone())],
            vec![
                (ATTR_XOR_PEER_ADDRESS, public.clone()),
                data.clone(),
                (AttrType(0x7777), vec![]),
            ],
        ] {
            assert!(
                matches!(decode(&indication(&attributes)), Packet::Ignored),
                "{attributes:?}"
            );
        }
    }

    #[test]
    fn non_turn_bytes_and_responses_are_ignored() {
        assert!(matches!(decode(&[]), Packet::Ignored));
        assert!(matches!(decode(&[0x80; 24]), Packet::Ignored));
        assert!(matches!(decode(&[0x00, 0x01]), Packet::Ignored));
        assert!(matches!(
            decode(&[0x40, 0x00, 0x00, 0x00]),
            Packet::ChannelData
        ));
        let mut response = Message::new();
        response
            .build(&[Box::new(TransactionId::new()), Box::new(BINDING_SUCCESS)])
            .unwrap();
        assert!(matches!(decode(&response.raw), Packet::Ignored));
    }

    // ---- the gate, request by request ----

    #[test]
    fn binding_is_forwarded_without_credentials() {
        let now = Instant::now();
        let data = request(METHOD_BINDING, &[], None);
        assert_eq!(verdict_of(&mut gate(now), &data, now), Verdict::Forward);
    }

    #[test]
    fn unauthenticated_allocate_is_challenged_with_the_current_nonce() {
        let now = Instant::now();
        let data = request(METHOD_ALLOCATE, &[], None);
        let Verdict::Answer(answer) = verdict_of(&mut gate(now), &data, now) else {
            panic!("expected a challenge")
        };
        assert_eq!((answer.code, answer.nonce.as_deref()), (401, Some(NONCE)));
        // With no nonce known yet, the server mints the first one.
        let mut fresh = Gate::new(
            Secrets::new(SECRET.into(), vec![]),
            PeerPolicy::default(),
            Quotas::new(1, 1),
        );
        assert_eq!(verdict_of(&mut fresh, &data, now), Verdict::Forward);
    }

    #[test]
    fn forged_credentials_get_401() {
        let now = Instant::now();
        let mut forged = credentials(1);
        forged.key[0] ^= 1;
        let data = request(METHOD_ALLOCATE, &[], Some(&forged));
        let verdict = verdict_of(&mut gate(now), &data, now);
        assert_eq!(answer_code(&verdict), Some(401));
        let Verdict::Answer(answer) = verdict else {
            unreachable!()
        };
        assert!(matches!(answer.why, Why::BadCredentials { .. }));
        assert_eq!(answer.integrity_key, None);
    }

    #[test]
    fn an_old_nonce_gets_438_with_the_current_one() {
        let start = Instant::now();
        let mut gate = gate(start);
        let later = start + Duration::from_secs(3100);
        gate.nonces.handle_issued("newer", later);
        let data = request(METHOD_ALLOCATE, &[], Some(&credentials(1)));
        let Verdict::Answer(answer) = verdict_of(&mut gate, &data, later) else {
            panic!("expected 438")
        };
        assert_eq!((answer.code, answer.nonce.as_deref()), (438, Some("newer")));
    }

    #[test]
    fn valid_allocate_is_forwarded_and_its_key_handed_to_the_server() {
        let now = Instant::now();
        let mut gate = gate(now);
        let creds = credentials(1);
        let data = request(METHOD_ALLOCATE, &[], Some(&creds));
        assert_eq!(verdict_of(&mut gate, &data, now), Verdict::Forward);
        assert_eq!(
            gate.take_verified_key(&creds.username, client()),
            Some(creds.key.clone())
        );
        assert_eq!(
            gate.take_verified_key(&creds.username, client()),
            None,
            "taken once"
        );
    }

    #[test]
    fn a_requested_address_family_the_relay_lacks_gets_440() {
        let now = Instant::now();
        let creds = credentials(1);
        let ask = |family: u8| {
            request(
                METHOD_ALLOCATE,
                &[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![family, 0, 0, 0])],
                Some(&creds),
            )
        };
        // An IPv4-only relay: IPv6 refused with 440, IPv4 and no attribute forwarded.
        let mut gate = gate(now);
        gate.set_relay_families(true, false);
        let Verdict::Answer(answer) = verdict_of(&mut gate, &ask(0x02), now) else {
            panic!("expected 440")
        };
        assert_eq!(
            (answer.code, answer.why),
            (440, Why::AddressFamily { ipv6: true })
        );
        assert_eq!(answer.integrity_key, Some(creds.key.clone()), "signed");
        assert_eq!(verdict_of(&mut gate, &ask(0x01), now), Verdict::Forward);
        let mut gate = self::gate(now);
        gate.set_relay_families(true, false);
        let plain = request(METHOD_ALLOCATE, &[], Some(&creds));
        assert_eq!(verdict_of(&mut gate, &plain, now), Verdict::Forward);
        // An IPv6-only relay: an explicit IPv4 request is refused.
        let mut gate = self::gate(now);
        gate.set_relay_families(false, true);
        assert_eq!(
            answer_code(&verdict_of(&mut gate, &ask(0x01), now)),
            Some(440)
        );
        // Both: both forwarded.
        for family in [0x01, 0x02] {
            let mut gate = self::gate(now);
            assert_eq!(verdict_of(&mut gate, &ask(family), now), Verdict::Forward);
        }
    }

    #[test]
    fn every_peer_goes_through_the_policy() {
        let now = Instant::now();
        let creds = credentials(1);
        let public = xor_peer(PUBLIC.parse().unwrap());
        for denied in [
            LOOPBACK,
            "169.254.169.254:80",
            "10.0.1.0:53",
            "[::ffff:127.0.0.1]:22",
            "[::1]:22",
        ] {
            let data = request(
                METHOD_CREATE_PERMISSION,
                &[
                    (ATTR_XOR_PEER_ADDRESS, public.clone()),
                    (ATTR_XOR_PEER_ADDRESS, xor_peer(denied.parse().unwrap())),
                ],
                Some(&creds),
            );
            let Verdict::Answer(answer) = verdict_of(&mut gate(now), &data, now) else {
                panic!("{denied} was let through")
            };
            assert_eq!(answer.code, 403, "{denied}");
            assert_eq!(answer.why, Why::ForbiddenPeer(denied.parse().unwrap()));
            assert_eq!(
                answer.integrity_key,
                Some(creds.key.clone()),
                "403 is signed"
            );

            let bind = request(
                METHOD_CHANNEL_BIND,
                &[
                    (ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0]),
                    (ATTR_XOR_PEER_ADDRESS, xor_peer(denied.parse().unwrap())),
                ],
                Some(&creds),
            );
            assert_eq!(
                answer_code(&verdict_of(&mut gate(now), &bind, now)),
                Some(403),
                "{denied}"
            );
        }
        let data = request(
            METHOD_CREATE_PERMISSION,
            &[(ATTR_XOR_PEER_ADDRESS, public)],
            Some(&creds),
        );
        assert_eq!(verdict_of(&mut gate(now), &data, now), Verdict::Forward);
    }

    #[test]
    fn allowed_ranges_open_the_policy() {
        let now = Instant::now();
        let mut gate = Gate::new(
            Secrets::new(SECRET.into(), vec![]),
            PeerPolicy::from_ranges(&["127.0.0.0/8"]).unwrap(),
            Quotas::new(10, 10),
        );
        gate.nonces.handle_issued(NONCE, now);
        let data = request(
            METHOD_CREATE_PERMISSION,
            &[(ATTR_XOR_PEER_ADDRESS, xor_peer(LOOPBACK.parse().unwrap()))],
            Some(&credentials(1)),
        );
        assert_eq!(verdict_of(&mut gate, &data, now), Verdict::Forward);
    }

    #[test]
    fn allocations_beyond_the_user_quota_get_486() {
        let now = Instant::now();
        let mut gate = gate(now);
        let creds = credentials(1);
        let first = request(METHOD_ALLOCATE, &[], Some(&creds));
        assert_eq!(verdict_of(&mut gate, &first, now), Verdict::Forward);
        let mut success = Message::new();
        success
            .build(&[
                Box::new(TransactionId([7; 12])),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE)),
            ])
            .unwrap();
        assert!(gate.handle_response(&success, client(), listener(), now));
        let second = gate.handle_request(
            &decoded(&request(METHOD_ALLOCATE, &[], Some(&creds))),
            "203.0.113.5:40001".parse().unwrap(),
            listener(),
            now,
            UNIX_NOW,
        );
        assert_eq!(answer_code(&second), Some(486));
        // The first allocation's credentials are kept for releasing it.
        assert!(
            gate.release_credentials((client(), listener()), now)
                .is_some()
        );
        gate.handle_allocation_closed((client(), listener()));
        assert!(
            gate.release_credentials((client(), listener()), now)
                .is_none()
        );
    }

    #[test]
    fn a_retransmitted_allocate_gets_the_success_its_allocation_was_created_with() {
        let now = Instant::now();
        let mut gate = gate(now);
        let creds = credentials(1);
        let allocate = request(METHOD_ALLOCATE, &[], Some(&creds));
        assert_eq!(verdict_of(&mut gate, &allocate, now), Verdict::Forward);
        let relayed: SocketAddr = "198.51.100.1:50000".parse().unwrap();
        let response = allocate_success(relayed, 600);
        assert!(gate.handle_response(&response, client(), listener(), now));

        // The response was lost: the client sends the same request again.
        let again = verdict_of(&mut gate, &allocate, now + Duration::from_millis(500));
        assert_eq!(again, Verdict::Resend(response.raw.clone()));
        // Not from another client address, nor to another listener.
        let elsewhere = "203.0.113.5:40001".parse().unwrap();
        let from_elsewhere =
            gate.handle_request(&decoded(&allocate), elsewhere, listener(), now, UNIX_NOW);
        assert!(
            !matches!(from_elsewhere, Verdict::Resend(_)),
            "{from_elsewhere:?}"
        );
        let other_listener = "198.51.100.1:443".parse().unwrap();
        let to_elsewhere =
            gate.handle_request(&decoded(&allocate), client(), other_listener, now, UNIX_NOW);
        assert!(
            !matches!(to_elsewhere, Verdict::Resend(_)),
            "{to_elsewhere:?}"
        );

        // A new Allocate on the same 5-tuple is the server's to refuse (437).
        let new_request = request_with_id([8; 12], METHOD_ALLOCATE, &[], Some(&creds));
        let new_verdict = verdict_of(&mut gate, &new_request, now);
        assert!(
            !matches!(new_verdict, Verdict::Resend(_)),
            "{new_verdict:?}"
        );

        // An unsigned copy is challenged, not answered with the allocation's response.
        let unsigned = request(METHOD_ALLOCATE, &[], None);
        assert!(!matches!(
            verdict_of(&mut gate, &unsigned, now),
            Verdict::Resend(_)
        ));

        // Once the allocation is gone, its response is too.
        gate.handle_allocation_closed((client(), listener()));
        assert!(!matches!(
            verdict_of(&mut gate, &allocate, now),
            Verdict::Resend(_)
        ));
    }

    /// A success response to the request with transaction id [7; 12].
    fn success(method: Method, attributes: Vec<Box<dyn Setter>>) -> Message {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId([7; 12])),
            Box::new(MessageType::new(method, CLASS_SUCCESS_RESPONSE)),
        ];
        setters.extend(attributes);
        let mut message = Message::new();
        message.build(&setters).unwrap();
        message
    }

    /// The server's success for the Allocate with transaction id [7; 12].
    fn allocate_success(relayed: SocketAddr, lifetime_secs: u64) -> Message {
        success(
            METHOD_ALLOCATE,
            vec![
                Box::new(turn::proto::relayaddr::RelayedAddress {
                    ip: relayed.ip(),
                    port: relayed.port(),
                }),
                lifetime(lifetime_secs),
            ],
        )
    }

    fn lifetime(seconds: u64) -> Box<dyn Setter> {
        Box::new(turn::proto::lifetime::Lifetime(Duration::from_secs(
            seconds,
        )))
    }

    fn route_of(gate: &mut Gate, response: &Message) -> Option<RouteUpdate> {
        gate.handle_route_response(response, (client(), listener()))
    }

    #[test]
    fn an_allocate_success_routes_its_relayed_address_from_the_moment_the_request_came() {
        let asked = Instant::now();
        let mut gate = gate(asked);
        let data = request(METHOD_ALLOCATE, &[], Some(&credentials(1)));
        assert_eq!(verdict_of(&mut gate, &data, asked), Verdict::Forward);
        let relayed: SocketAddr = "198.51.100.1:50000".parse().unwrap();
        let response = allocate_success(relayed, 600);
        assert_eq!(
            route_of(&mut gate, &response),
            Some(RouteUpdate::Allocated {
                relayed,
                expires: asked + Duration::from_secs(600)
            })
        );
        // Each request is learnt from once.
        assert_eq!(route_of(&mut gate, &response), None);
    }

    #[test]
    fn a_channel_bind_success_routes_the_channel_for_the_servers_channel_lifetime() {
        let asked = Instant::now();
        let mut gate = gate(asked);
        let data = request(
            METHOD_CHANNEL_BIND,
            &[
                (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]),
                (ATTR_XOR_PEER_ADDRESS, xor_peer(PUBLIC.parse().unwrap())),
            ],
            Some(&credentials(1)),
        );
        assert_eq!(verdict_of(&mut gate, &data, asked), Verdict::Forward);
        assert_eq!(
            route_of(&mut gate, &success(METHOD_CHANNEL_BIND, vec![])),
            Some(RouteUpdate::ChannelBound {
                number: 0x4001,
                peer: PUBLIC.parse().unwrap(),
                expires: asked + crate::fastpath::CHANNEL_LIFETIME,
            })
        );
    }

    #[test]
    fn a_refused_channel_bind_routes_nothing() {
        let now = Instant::now();
        let mut gate = gate(now);
        let data = request(
            METHOD_CHANNEL_BIND,
            &[
                (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]),
                (ATTR_XOR_PEER_ADDRESS, xor_peer(PUBLIC.parse().unwrap())),
            ],
            Some(&credentials(1)),
        );
        assert_eq!(verdict_of(&mut gate, &data, now), Verdict::Forward);
        let mut error = Message::new();
        error
            .build(&[
                Box::new(TransactionId([7; 12])),
                Box::new(MessageType::new(METHOD_CHANNEL_BIND, CLASS_ERROR_RESPONSE)),
            ])
            .unwrap();
        assert_eq!(route_of(&mut gate, &error), None);
        // The pending request is gone: a later success with that id teaches nothing.
        assert_eq!(
            route_of(&mut gate, &success(METHOD_CHANNEL_BIND, vec![])),
            None
        );
    }

    #[test]
    fn a_response_for_another_client_or_an_unchecked_request_routes_nothing() {
        let now = Instant::now();
        let mut gate = gate(now);
        let data = request(METHOD_REFRESH, &[], Some(&credentials(1)));
        assert_eq!(verdict_of(&mut gate, &data, now), Verdict::Forward);
        let response = success(METHOD_REFRESH, vec![lifetime(600)]);
        let other = "203.0.113.99:1".parse().unwrap();
        assert_eq!(
            gate.handle_route_response(&response, (other, listener())),
            None
        );
        // A request the gate never passed (no MESSAGE-INTEGRITY: challenged).
        let mut gate = self::gate(now);
        let unsigned = request(METHOD_REFRESH, &[], None);
        assert_ne!(verdict_of(&mut gate, &unsigned, now), Verdict::Forward);
        assert_eq!(route_of(&mut gate, &response), None);
    }

    #[test]
    fn a_refresh_success_moves_the_expiry_and_a_deletion_ends_it_when_it_was_asked() {
        let asked = Instant::now();
        let mut gate = gate(asked);
        let keep = request(METHOD_REFRESH, &[], Some(&credentials(1)));
        assert_eq!(verdict_of(&mut gate, &keep, asked), Verdict::Forward);
        assert_eq!(
            route_of(&mut gate, &success(METHOD_REFRESH, vec![lifetime(300)])),
            Some(RouteUpdate::Refreshed {
                expires: asked + Duration::from_secs(300)
            })
        );
        let delete = request(
            METHOD_REFRESH,
            &[(ATTR_LIFETIME, vec![0, 0, 0, 0])],
            Some(&credentials(1)),
        );
        assert!(deletes_allocation(&decoded(&delete)));
        assert!(!deletes_allocation(&decoded(&keep)));
        assert_eq!(verdict_of(&mut gate, &delete, asked), Verdict::Forward);
        assert_eq!(
            route_of(&mut gate, &success(METHOD_REFRESH, vec![lifetime(0)])),
            Some(RouteUpdate::Refreshed { expires: asked })
        );
    }

    #[test]
    fn issued_nonces_are_learnt_from_error_responses() {
        let now = Instant::now();
        let mut gate = Gate::new(
            Secrets::new(SECRET.into(), vec![]),
            PeerPolicy::default(),
            Quotas::new(1, 1),
        );
        let mut challenge = Message::new();
        challenge
            .build(&[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)),
                Box::new(ErrorCodeAttribute {
                    code: stun::error_code::CODE_UNAUTHORIZED,
                    reason: vec![],
                }),
                Box::new(TextAttribute::new(ATTR_NONCE, "minted".into())),
            ])
            .unwrap();
        assert!(!gate.handle_response(&challenge, client(), listener(), now));
        assert_eq!(gate.nonces.len(), 1);
    }

    #[test]
    fn integrity_without_username_is_a_bad_request() {
        let now = Instant::now();
        let mut message = Message::new();
        message.set_type(MessageType::new(METHOD_REFRESH, CLASS_REQUEST));
        message.transaction_id = TransactionId([2; 12]);
        message.write_header();
        MessageIntegrity(vec![0; 16]).add_to(&mut message).unwrap();
        assert_eq!(
            answer_code(&verdict_of(&mut gate(now), &message.raw, now)),
            Some(400)
        );
    }
}
