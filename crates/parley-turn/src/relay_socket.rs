//! Relay sockets: a `RelayAddressGenerator` that binds inside `turn.relay_ports` and
//! advertises `turn.relay_address` (for 1:1 NAT), and around each relay socket a
//! [`RelayLink`] that counts traffic, applies the per-allocation bandwidth cap, and enforces
//! the peer policy once more: every allocation's traffic to and from peers goes through it,
//! on the server's path ([`RelayConn`], its `Conn`) and on the fast path (`fastpath`) alike,
//! so no permission the server might hold (however it was made) reaches a denied address.

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use crate::bandwidth::TokenBucket;
use crate::fastpath::{AllocationView, write_channel_data};
use crate::guard::Shared;
use crate::metrics::Metrics;
use crate::pktinfo::PktinfoConn;
#[cfg(test)]
use crate::policy::PeerPolicy;
use crate::udp_batch::{self, BATCH, Batch, Gso};

/// How many ports of the range one allocation tries before giving up (508 to the client).
const MAX_PORT_ATTEMPTS: u32 = 64;
/// Relay socket buffers: a video keyframe burst must fit while the task is scheduled away.
const RELAY_SOCKET_BUFFER: usize = 1 << 20;

/// Where one address family's relay sockets bind, and the address their candidates carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayFamily {
    pub bind: IpAddr,
    pub advertised: IpAddr,
}

/// The relayed-address families this server offers (RFC 6156).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RelayFamilies {
    pub v4: Option<RelayFamily>,
    pub v6: Option<RelayFamily>,
}

impl RelayFamilies {
    /// From `relay_bind`/`relay_address` (either family) and an optional IPv6 relay address.
    /// `is_local` says whether an address is one of this host's.
    ///
    /// A wildcard bind is narrowed to the advertised address when that is local: a relay
    /// socket on `0.0.0.0` sends to peers from the kernel's choice of source, and on a host
    /// with several addresses a peer that sent its ICE checks to the relayed address would get
    /// the answers from another one and drop them (ICE needs symmetric addresses).
    pub fn new(
        bind: IpAddr,
        advertised: IpAddr,
        advertised_v6: Option<IpAddr>,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> RelayFamilies {
        let narrow = |bind: IpAddr, advertised: IpAddr| {
            if bind.is_unspecified()
                && bind.is_ipv4() == advertised.is_ipv4()
                && !advertised.is_unspecified()
                && is_local(advertised)
            {
                advertised
            } else {
                bind
            }
        };
        let primary = RelayFamily {
            bind: narrow(bind, advertised),
            advertised,
        };
        let mut families = RelayFamilies::default();
        if advertised.is_ipv4() {
            families.v4 = Some(primary);
        } else {
            families.v6 = Some(primary);
        }
        if let Some(v6) = advertised_v6.filter(|a| a.is_ipv6())
            && families.v6.is_none()
        {
            families.v6 = Some(RelayFamily {
                bind: narrow(IpAddr::from([0u16; 8]), v6),
                advertised: v6,
            });
        }
        families
    }

    /// The family of a new allocation. `turn` passes `use_ipv4 = false` only for
    /// REQUESTED-ADDRESS-FAMILY IPv6, and `true` both for an explicit IPv4 request and for
    /// none (RFC 6156: no attribute means IPv4, which also bridges an IPv6 client to IPv4
    /// peers); a server with IPv6 relays only serves the latter from IPv6 rather than fail.
    pub fn for_allocation(&self, use_ipv4: bool) -> Option<RelayFamily> {
        if use_ipv4 {
            self.v4.or(self.v6)
        } else {
            self.v6
        }
    }
}

/// Whether `ip` is an address of this host (it can be bound).
pub(crate) fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

pub(crate) struct PortRangeGenerator {
    pub families: RelayFamilies,
    pub low: u16,
    pub high: u16,
    pub shared: Arc<Shared>,
    pub cursor: Arc<AtomicU32>,
    pub odd_streak: Arc<AtomicU32>,
}

/// Consecutive odd ports handed out while no even one was free before one allocation fails.
const MAX_ODD_STREAK: u32 = 16;

impl PortRangeGenerator {
    /// Ports to try for an allocation: even ones first (RTP convention, and what EVEN-PORT
    /// needs), from a moving pseudo-random start so that consecutive allocations spread over
    /// the range and a busy stretch is skipped quickly; then odd ones.
    fn candidate_ports(&self) -> Vec<u16> {
        let span = u32::from(self.high - self.low) + 1;
        let start = self
            .cursor
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(2654435761)
            % span;
        let mut even = Vec::new();
        let mut odd = Vec::new();
        for i in 0..span {
            let port = self.low + ((start + i) % span) as u16;
            let list = if port.is_multiple_of(2) {
                &mut even
            } else {
                &mut odd
            };
            if list.len() < MAX_PORT_ATTEMPTS as usize {
                list.push(port);
            }
            if even.len() + odd.len() >= 2 * MAX_PORT_ATTEMPTS as usize {
                break;
            }
        }
        even.extend(odd);
        even
    }
}

fn bind_relay_socket(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if address.is_ipv6() {
        // An IPv6 relay carries IPv6 peers only; IPv4 peers have their own family's relay.
        socket.set_only_v6(true)?;
    }
    // Larger buffers are a best effort: the kernel caps them at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(RELAY_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(RELAY_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

#[async_trait]
impl turn::relay::RelayAddressGenerator for PortRangeGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        if self.low == 0 || self.high < self.low {
            return Err(turn::Error::ErrMaxPortLessThanMinPort);
        }
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let Some(family) = self.families.for_allocation(use_ipv4) else {
            // `turn` answers 508; RFC 6156 would say 440 (see docs/relay.md).
            return Err(turn::Error::ErrInvalidRequestedFamilyValue);
        };
        let ports: Vec<u16> = if requested_port != 0 {
            if !(self.low..=self.high).contains(&requested_port) {
                return Err(turn::Error::ErrMaxRetriesExceeded);
            }
            vec![requested_port]
        } else {
            self.candidate_ports()
        };
        for port in ports {
            let Ok(socket) = bind_relay_socket(SocketAddr::new(family.bind, port)) else {
                continue;
            };
            if requested_port == 0 {
                // `turn` looks for an EVEN-PORT by calling us until the port is even, with no
                // bound: while no even port is free, fail now and then so it gives up (508).
                if port % 2 == 0 {
                    self.odd_streak.store(0, Ordering::Relaxed);
                } else if self.odd_streak.fetch_add(1, Ordering::Relaxed) >= MAX_ODD_STREAK {
                    self.odd_streak.store(0, Ordering::Relaxed);
                    return Err(turn::Error::ErrMaxRetriesExceeded);
                }
            }
            let bucket = (self.shared.bandwidth_bytes_per_sec > 0).then(|| {
                let rate = self.shared.bandwidth_bytes_per_sec;
                Mutex::new((
                    TokenBucket::new(rate, Instant::now()),
                    TokenBucket::new(rate, Instant::now()),
                ))
            });
            let relayed = SocketAddr::new(family.advertised, port);
            let link = Arc::new(RelayLink {
                gso: Gso::probe(&socket),
                is_v4: family.bind.is_ipv4(),
                socket,
                relayed,
                shared: Arc::clone(&self.shared),
                buckets: bucket,
                closed: AtomicBool::new(false),
                route: Mutex::new(None),
            });
            self.shared.fast.handle_relay_socket(relayed, &link);
            return Ok((Arc::new(RelayConn::new(link)), relayed));
        }
        if self.shared.may_log() {
            log::warn!(
                "turn: no free relay port in {}-{}; widen turn.relay_ports",
                self.low,
                self.high
            );
        }
        Err(turn::Error::ErrMaxRetriesExceeded)
    }
}

/// One allocation's relay socket, shared by the server's `Conn` ([`RelayConn`]) and the fast
/// data path (see `fastpath`). Every datagram to or from a peer, on either path, passes the
/// same checks here.
pub(crate) struct RelayLink {
    socket: UdpSocket,
    /// Whether a batch to one peer may leave in one GSO send.
    gso: Gso,
    /// The socket's family: a peer of the other family cannot be reached from it.
    is_v4: bool,
    /// The relayed address this socket advertises.
    relayed: SocketAddr,
    shared: Arc<Shared>,
    /// (to peers, from peers) when a bandwidth limit is set.
    buckets: Option<Mutex<(TokenBucket, TokenBucket)>>,
    /// The server closed the allocation: nothing more is relayed on the fast path.
    closed: AtomicBool,
    /// The allocation's client and what the fast path knows of it, once the server's
    /// Allocate success on a UDP listener named them.
    route: Mutex<Option<Route>>,
}

struct Route {
    client: SocketAddr,
    listener: Arc<PktinfoConn>,
    view: AllocationView,
}

impl RelayLink {
    fn allowed(&self, bytes: usize, to_peer: bool) -> bool {
        let Some(buckets) = &self.buckets else {
            return true;
        };
        let mut buckets = buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = if to_peer {
            &mut buckets.0
        } else {
            &mut buckets.1
        };
        let ok = bucket.take(bytes, Instant::now());
        if !ok {
            Metrics::add(&self.shared.metrics.bandwidth_drops, 1);
        }
        ok
    }

    /// The peer policy at the socket (defence in depth behind the gate), for `datagrams`
    /// datagrams to or from `peer`.
    fn peer_allowed(&self, peer: SocketAddr, datagrams: usize) -> bool {
        let allowed = self.shared.policy.allows(peer.ip());
        if !allowed {
            Metrics::add(&self.shared.metrics.refused_peers, datagrams as u64);
            if self.shared.may_log() {
                log::warn!(
                    "turn: dropped a datagram to or from denied peer {peer} at the relay socket"
                );
            }
        }
        allowed
    }

    fn lock_route(&self) -> std::sync::MutexGuard<'_, Option<Route>> {
        self.route.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one datagram to `target`, or drops it as a congested link drops (not an error
    /// for `turn` to log): a peer the policy refuses, a peer of the other family (a
    /// permission `turn` accepted without checking RFC 6156's family match), or over the
    /// bandwidth cap.
    pub async fn send_to_peer(&self, buf: &[u8], target: SocketAddr) -> std::io::Result<usize> {
        if target.is_ipv4() != self.is_v4
            || !self.peer_allowed(target, 1)
            || !self.allowed(buf.len(), true)
        {
            return Ok(buf.len());
        }
        let n = self.socket.send_to(buf, target).await?;
        Metrics::add(&self.shared.metrics.packets_to_peers, 1);
        Metrics::add(&self.shared.metrics.bytes_to_peers, n as u64);
        Ok(n)
    }

    /// Sends a batch of datagrams (at most [`BATCH`]) to one peer, in order, under the same
    /// rules as [`send_to_peer`](Self::send_to_peer) (each datagram against the bandwidth
    /// cap), in as few system calls as the kernel allows. Returns the last send error.
    pub async fn send_batch_to_peer(
        &self,
        datagrams: &[IoSlice<'_>],
        target: SocketAddr,
    ) -> Option<std::io::Error> {
        if target.is_ipv4() != self.is_v4 || !self.peer_allowed(target, datagrams.len()) {
            return None;
        }
        let mut within_cap = [IoSlice::new(&[]); BATCH];
        let datagrams = if self.buckets.is_some() {
            let mut kept = 0;
            for datagram in datagrams.iter().take(BATCH) {
                if self.allowed(datagram.len(), true) {
                    within_cap[kept] = *datagram;
                    kept += 1;
                }
            }
            &within_cap[..kept]
        } else {
            datagrams
        };
        let sent =
            udp_batch::send_datagrams(&self.socket, &self.gso, datagrams, target, None).await;
        Metrics::add(&self.shared.metrics.packets_to_peers, sent.datagrams as u64);
        Metrics::add(&self.shared.metrics.bytes_to_peers, sent.bytes as u64);
        sent.error
    }

    /// Whether a datagram of `bytes` received from `from` may go on to the client.
    fn accept_from_peer(&self, bytes: usize, from: SocketAddr) -> bool {
        if !self.peer_allowed(from, 1) || !self.allowed(bytes, false) {
            return false;
        }
        Metrics::add(&self.shared.metrics.packets_from_peers, 1);
        Metrics::add(&self.shared.metrics.bytes_from_peers, bytes as u64);
        true
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The server's Allocate success named `client` on `listener`: relay on the fast path.
    pub fn attach(&self, client: SocketAddr, listener: Arc<PktinfoConn>, view: AllocationView) {
        *self.lock_route() = Some(Route {
            client,
            listener,
            view,
        });
    }

    /// No more fast relaying for this allocation (it is being deleted).
    pub fn detach(&self) {
        *self.lock_route() = None;
    }

    /// Applies what a success response said about the allocation.
    pub fn update(&self, change: impl FnOnce(&mut AllocationView)) {
        if let Some(route) = self.lock_route().as_mut() {
            change(&mut route.view);
        }
    }

    /// The peer of a client's channel `number` at `now`, when the fast path may relay it.
    pub fn peer_of(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        if self.is_closed() {
            return None;
        }
        self.lock_route().as_ref()?.view.peer_of(number, now)
    }

    /// Where datagrams from peers go on the fast path at `now`: the client and its listener,
    /// and in `channels` the channel number of each of `peers` (`None`: not on the fast path).
    fn channels_of(
        &self,
        peers: impl Iterator<Item = Option<SocketAddr>>,
        now: Instant,
        channels: &mut [Option<u16>],
    ) -> Option<(SocketAddr, Arc<PktinfoConn>)> {
        channels.fill(None);
        if self.is_closed() {
            return None;
        }
        let route = self.lock_route();
        let route = route.as_ref()?;
        for (peer, channel) in peers.zip(channels.iter_mut()) {
            *channel = peer.and_then(|peer| route.view.channel_of(peer, now));
        }
        Some((route.client, Arc::clone(&route.listener)))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.detach();
        self.shared.fast.handle_relay_socket_closed(self.relayed);
    }
}

/// The largest datagram `turn` reads from a relay socket (its `RTP_MTU`): longer ones are
/// truncated on both paths alike.
const PEER_DATAGRAM_MAX: usize = 1500;

/// A relay socket's slot for one datagram: the ChannelData header, the datagram, padding.
const PEER_SLOT: usize = 4 + PEER_DATAGRAM_MAX + 4;

/// Slots a relay socket's batch starts with. A full batch doubles them, up to [`BATCH`]: an
/// allocation carrying a call (tens of packets per second) keeps 6 KiB, not 48.
const PEER_SLOTS_AT_FIRST: usize = 4;

/// One allocation's relay socket as the server's `Conn`.
struct RelayConn {
    link: Arc<RelayLink>,
    /// Only `turn`'s one reader task of this socket takes it, so it never waits.
    batch: tokio::sync::Mutex<Batch>,
}

impl RelayConn {
    fn new(link: Arc<RelayLink>) -> Self {
        RelayConn {
            link,
            batch: tokio::sync::Mutex::new(Batch::new(PEER_SLOT, 4, PEER_SLOTS_AT_FIRST)),
        }
    }

    /// Reads a batch from peers, relays what has a channel straight to the client (one
    /// send for the batch where GSO allows), and marks the rest for the server.
    async fn relay_batch(&self, batch: &mut Batch) -> std::io::Result<()> {
        let fd = self.link.socket.as_raw_fd();
        let count = self
            .link
            .socket
            .async_io(Interest::READABLE, || {
                udp_batch::recv_batch(
                    fd,
                    &mut batch.slots,
                    PEER_SLOT,
                    4..4 + PEER_DATAGRAM_MAX,
                    &mut batch.received,
                    false,
                )
            })
            .await?;
        batch.read(count);
        if count == batch.capacity() && count < BATCH {
            // Full: more may be waiting next time. New slots are only written after this batch.
            batch.slots.resize((count * 2).min(BATCH) * PEER_SLOT, 0);
        }
        let mut accepted = [false; BATCH];
        for (i, received) in batch.received[..count].iter().enumerate() {
            accepted[i] = received
                .from
                .is_some_and(|from| self.link.accept_from_peer(received.len, from));
        }
        let mut channels = [None; BATCH];
        let route = self.link.channels_of(
            batch.received[..count]
                .iter()
                .zip(accepted)
                .map(|(received, accepted)| received.from.filter(|_| accepted)),
            Instant::now(),
            &mut channels[..count],
        );
        let mut frame_lengths = [0usize; BATCH];
        for i in 0..count {
            batch.for_server[i] = accepted[i] && channels[i].is_none();
            if let Some(number) = channels[i] {
                let slot = &mut batch.slots[i * PEER_SLOT..(i + 1) * PEER_SLOT];
                frame_lengths[i] = write_channel_data(slot, number, batch.received[i].len);
            }
        }
        let Some((client, listener)) = route else {
            return Ok(());
        };
        let mut frames = [IoSlice::new(&[]); BATCH];
        let mut framed = 0;
        for (i, length) in frame_lengths[..count].iter().enumerate() {
            if channels[i].is_some() {
                frames[framed] = IoSlice::new(&batch.slots[i * PEER_SLOT..i * PEER_SLOT + length]);
                framed += 1;
            }
        }
        if framed > 0
            && let Some(err) = listener
                .send_datagrams(&frames[..framed], client)
                .await
                .error
            && self.link.shared.may_log()
        {
            log::debug!("turn: cannot relay to {client}: {err}");
        }
        Ok(())
    }
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        self.link.close();
    }
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        // `turn` never connects relay sockets; if it ever does, only to allowed peers (and
        // `send` then goes where the policy allowed).
        if !self.link.peer_allowed(addr, 1) {
            return Err(webrtc_util::Error::Other(format!(
                "peer {addr} is not allowed"
            )));
        }
        Ok(self.link.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        // Each datagram is received behind room for the ChannelData header, so that the fast
        // path sends the frame without copying; padding after it.
        let mut batch = self.batch.lock().await;
        loop {
            if let Some(next) = batch.next_for_server(buf) {
                return Ok(next);
            }
            self.relay_batch(&mut batch).await?;
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.link.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.link.send_to_peer(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.link.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        // `turn` calls this when the allocation closes (deleted or expired): the fast path
        // stops here, before the server's close notification arrives.
        self.link.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use turn::relay::RelayAddressGenerator;

    use super::*;
    use crate::credentials::Secrets;
    use crate::quota::Quotas;

    fn generator(policy: PeerPolicy) -> PortRangeGenerator {
        let shared = Shared::new(
            "parley".into(),
            Secrets::new("s".into(), Vec::new()),
            policy,
            Quotas::new(1, 1),
            0,
            Arc::new(Metrics::default()),
        );
        PortRangeGenerator {
            families: RelayFamilies::new(
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 1]),
                Some("::1".parse().unwrap()),
                is_local_address,
            ),
            low: 1024,
            high: 65535,
            shared: Arc::new(shared),
            cursor: Arc::new(AtomicU32::new(std::process::id())),
            odd_streak: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Sends through a relay socket made under `policy` to a loopback peer; returns what
    /// the peer received and the refused-peer count.
    async fn send_to_loopback(policy: PeerPolicy) -> (Option<Vec<u8>>, u64) {
        let generator = generator(policy);
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (conn, _) = generator.allocate_conn(true, 0).await.unwrap();
        conn.send_to(b"relayed", peer.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let received = tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf))
            .await
            .ok()
            .map(|r| buf[..r.unwrap().0].to_vec());
        let refused = generator
            .shared
            .metrics
            .refused_peers
            .load(Ordering::Relaxed);
        (received, refused)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_wildcard_relay_binds_to_the_relay_address_when_it_is_local() {
        let local = |a: IpAddr| a == ip("203.0.113.9") || a == ip("2001:db8::9");
        let families = RelayFamilies::new(
            ip("0.0.0.0"),
            ip("203.0.113.9"),
            Some(ip("2001:db8::9")),
            local,
        );
        assert_eq!(
            families.v4,
            Some(RelayFamily {
                bind: ip("203.0.113.9"),
                advertised: ip("203.0.113.9")
            })
        );
        assert_eq!(
            families.v6,
            Some(RelayFamily {
                bind: ip("2001:db8::9"),
                advertised: ip("2001:db8::9")
            })
        );
    }

    #[test]
    fn behind_1_to_1_nat_the_relay_stays_on_the_wildcard() {
        let families = RelayFamilies::new(ip("0.0.0.0"), ip("198.51.100.1"), None, |_| false);
        assert_eq!(
            families.v4,
            Some(RelayFamily {
                bind: ip("0.0.0.0"),
                advertised: ip("198.51.100.1")
            })
        );
        assert_eq!(families.v6, None);
    }

    #[test]
    fn a_configured_bind_address_is_kept() {
        let families = RelayFamilies::new(ip("10.0.0.5"), ip("198.51.100.1"), None, |_| true);
        assert_eq!(families.v4.unwrap().bind, ip("10.0.0.5"));
    }

    #[test]
    fn the_allocation_family_follows_rfc_6156() {
        let both = RelayFamilies::new(
            ip("0.0.0.0"),
            ip("198.51.100.1"),
            Some(ip("2001:db8::1")),
            |_| false,
        );
        // No attribute or IPv4 requested: IPv4 (bridging an IPv6 client to IPv4 peers).
        assert_eq!(
            both.for_allocation(true).unwrap().advertised,
            ip("198.51.100.1")
        );
        assert_eq!(
            both.for_allocation(false).unwrap().advertised,
            ip("2001:db8::1")
        );
        let v4_only = RelayFamilies::new(ip("0.0.0.0"), ip("198.51.100.1"), None, |_| false);
        assert_eq!(
            v4_only.for_allocation(false),
            None,
            "no IPv6 relay: refused"
        );
        let v6_only = RelayFamilies::new(ip("::"), ip("2001:db8::1"), None, |_| false);
        assert_eq!(
            v6_only.for_allocation(true).unwrap().advertised,
            ip("2001:db8::1")
        );
        assert_eq!(
            v6_only.for_allocation(false).unwrap().advertised,
            ip("2001:db8::1")
        );
    }

    #[test]
    fn relay_address_v6_is_ignored_when_the_relay_address_is_already_ipv6() {
        let families =
            RelayFamilies::new(ip("::"), ip("2001:db8::1"), Some(ip("2001:db8::2")), |_| {
                false
            });
        assert_eq!(families.v6.unwrap().advertised, ip("2001:db8::1"));
        assert_eq!(families.v4, None);
    }

    #[tokio::test]
    async fn an_ipv6_allocation_relays_to_an_ipv6_peer_and_never_to_an_ipv4_one() {
        let generator = generator(PeerPolicy::from_ranges(&["127.0.0.0/8", "::1"]).unwrap());
        let (conn, relayed) = generator.allocate_conn(false, 0).await.unwrap();
        assert_eq!(relayed.ip(), ip("::1"));
        let peer6 = UdpSocket::bind("[::1]:0").await.unwrap();
        let peer4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        conn.send_to(b"six", peer6.local_addr().unwrap())
            .await
            .unwrap();
        conn.send_to(b"four", peer4.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let got6 =
            tokio::time::timeout(Duration::from_millis(300), peer6.recv_from(&mut buf)).await;
        assert!(matches!(got6, Ok(Ok((3, _)))), "{got6:?}");
        let got4 =
            tokio::time::timeout(Duration::from_millis(300), peer4.recv_from(&mut buf)).await;
        assert!(
            got4.is_err(),
            "an IPv4 peer got a datagram from an IPv6 relay"
        );
    }

    /// The link inside a relay socket the generator made.
    fn link_of(conn: &Arc<dyn Conn + Send + Sync>) -> Arc<RelayLink> {
        let conn = conn
            .as_any()
            .downcast_ref::<RelayConn>()
            .expect("a RelayConn");
        Arc::clone(&conn.link)
    }

    #[tokio::test]
    async fn a_batch_to_a_denied_peer_sends_nothing() {
        let generator = generator(PeerPolicy::default());
        let (peer, peer_address) = {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let address = socket.local_addr().unwrap();
            (socket, address)
        };
        let (conn, _) = generator.allocate_conn(true, 0).await.unwrap();
        let payloads = vec![[7u8; 100]; 10];
        let slices: Vec<IoSlice<'_>> = payloads.iter().map(|p| IoSlice::new(p)).collect();
        let error = link_of(&conn)
            .send_batch_to_peer(&slices, peer_address)
            .await;
        assert!(error.is_none());
        let mut buf = [0u8; 256];
        let got = tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a denied peer received {got:?}");
        let metrics = &generator.shared.metrics;
        assert_eq!(metrics.refused_peers.load(Ordering::Relaxed), 10);
        assert_eq!(metrics.packets_to_peers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_burst_from_a_bound_peer_reaches_the_client_framed_and_in_order() {
        const BURST: usize = 70; // more than two batches
        let generator = generator(PeerPolicy::from_ranges(&["127.0.0.0/8"]).unwrap());
        let (conn, relayed) = generator.allocate_conn(true, 0).await.unwrap();
        let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = Arc::new(PktinfoConn::new(listener).unwrap());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let now = Instant::now();
        let mut view = AllocationView::new(now + Duration::from_secs(600));
        view.handle_channel_bound(
            0x4001,
            peer.local_addr().unwrap(),
            now + Duration::from_secs(600),
        );
        link_of(&conn).attach(client.local_addr().unwrap(), listener, view);

        let payload = |i: usize| vec![i as u8; if i % 9 == 8 { 33 } else { 120 }];
        for i in 0..BURST {
            peer.send_to(&payload(i), relayed).await.unwrap();
            if i == 40 {
                stranger.send_to(b"no channel", relayed).await.unwrap();
            }
        }
        // The server's reader (it keeps reading, which drives the fast path): what the fast
        // path does not relay comes out here.
        let (for_server, mut server_got) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = conn.recv_from(&mut buf).await {
                    let _ = for_server.send((buf[..n].to_vec(), from));
                }
            }
        });
        for i in 0..BURST {
            let mut frame = [0u8; 1600];
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut frame))
                .await
                .unwrap_or_else(|_| panic!("frame {i} of {BURST} did not reach the client"))
                .unwrap();
            let data = payload(i);
            let mut expected = vec![0x40, 0x01, 0, data.len() as u8];
            expected.extend_from_slice(&data);
            expected.resize(expected.len().next_multiple_of(4), 0);
            assert_eq!(&frame[..n], expected.as_slice(), "frame {i}");
        }
        let (data, from) = server_got.try_recv().expect("the stranger's datagram");
        assert_eq!(
            (data.as_slice(), from),
            (b"no channel".as_slice(), stranger.local_addr().unwrap())
        );
        assert!(server_got.try_recv().is_err(), "only the stranger's");
        reader.abort();
        let metrics = &generator.shared.metrics;
        assert_eq!(
            metrics.packets_from_peers.load(Ordering::Relaxed),
            BURST as u64 + 1
        );
    }

    #[tokio::test]
    async fn the_relay_socket_never_sends_to_a_denied_peer() {
        assert_eq!(send_to_loopback(PeerPolicy::default()).await, (None, 1));
    }

    #[tokio::test]
    async fn the_relay_socket_sends_to_an_allowed_peer() {
        let allowed = PeerPolicy::from_ranges(&["127.0.0.0/8"]).unwrap();
        assert_eq!(
            send_to_loopback(allowed).await,
            (Some(b"relayed".to_vec()), 0)
        );
    }
}
