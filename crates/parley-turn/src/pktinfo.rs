//! UDP listeners answer from the address the client sent to.
//!
//! A listener bound to a wildcard (`0.0.0.0:3478`, `[::]:3478`) on a host with several
//! addresses receives on all of them, but `sendto` lets the kernel pick the source address of
//! the route back. A client that reached the server at any other address gets its answers
//! from an address it never talked to, and its socket (connected, or behind a NAT or firewall
//! that tracks the flow) drops them: no UDP relay candidate, so a UDP-only network cannot call.
//!
//! The fix here is `IP_PKTINFO` / `IPV6_RECVPKTINFO`: `recvmsg` reports each datagram's
//! destination address, a small table remembers it per client, and `sendmsg` names it as the
//! source of everything sent to that client. The other way, one socket per local address
//! (what coturn does), was rejected: addresses come and go (DHCP, IPv6 temporary and SLAAC
//! addresses, a VPN coming up), so it needs a netlink watcher that binds and unbinds sockets
//! and loses a client's flow when its address is rebound, while one wildcard socket with
//! `IP_PKTINFO` serves every address the moment the kernel has it, at the cost of one
//! `recvmsg`/`sendmsg` instead of `recvfrom`/`sendto` and a table lookup per datagram.
//!
//! The decisions ([`ReplySources`], [`reply_control`], the address normalisation) are pure
//! and tested below; [`PktinfoConn`] only carries them out on a tokio socket. A listener bound
//! to one address needs none of this and uses plain `recv_from`/`send_to`.
//!
//! A dual-stack listener (`[::]:3478` with `IPV6_V6ONLY` off) sees IPv4 clients as IPv4-mapped
//! IPv6 addresses (`::ffff:a.b.c.d`); the conn hands them to the server as plain IPv4 (so
//! XOR-MAPPED-ADDRESS and allocations are IPv4, as for a `0.0.0.0` listener) and maps them
//! back when sending.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use crate::udp_batch::{self, Gso, Received};

/// Where a datagram arrived: the destination address the client used, and the interface
/// (needed only to send from an IPv6 link-local address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalDestination {
    pub ip: IpAddr,
    pub ifindex: u32,
}

impl LocalDestination {
    /// Whether replies can be sent from this address: a datagram sent to a broadcast or
    /// multicast address (or one the kernel did not name) says nothing about the source to use.
    fn usable_as_source(&self) -> bool {
        match self.ip {
            IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
                None => !(v6.is_unspecified() || v6.is_multicast()),
            },
        }
    }
}

/// How long a client's destination address is remembered after its last datagram. A client
/// with an allocation sends at least every 5 minutes (permission refreshes, RFC 8656 9.2),
/// and every few milliseconds in a call.
pub(crate) const REPLY_SOURCE_TTL: Duration = Duration::from_secs(600);
/// Clients remembered per listener socket (about 100 bytes each). A flood of spoofed
/// sources fills the table without evicting clients already in it: new clients are then
/// answered from the kernel's choice (as without this table) until entries expire.
pub(crate) const REPLY_SOURCE_CAPACITY: usize = 32_768;

/// Per client address, the local address its last datagram was sent to. Sans-IO: the time is
/// an input.
#[derive(Debug)]
pub(crate) struct ReplySources {
    entries: HashMap<SocketAddr, (LocalDestination, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl ReplySources {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ReplySources {
            entries: HashMap::new(),
            capacity,
            ttl,
        }
    }

    /// Records that `client` sent a datagram to `local` at `now`.
    pub fn handle_received(&mut self, client: SocketAddr, local: LocalDestination, now: Instant) {
        if !local.usable_as_source() {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&client) {
            *entry = (local, now);
            return;
        }
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ttl);
            if self.entries.len() >= self.capacity {
                return;
            }
        }
        self.entries.insert(client, (local, now));
    }

    /// The address to answer `client` from; `None` leaves the choice to the kernel.
    pub fn source_for(&self, client: SocketAddr, now: Instant) -> Option<LocalDestination> {
        let (local, seen) = self.entries.get(&client)?;
        (now.saturating_duration_since(*seen) < self.ttl).then_some(*local)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The control message that makes a datagram to a client leave from `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyControl {
    /// `IP_PKTINFO` with `ipi_spec_dst` (an IPv4 socket).
    V4 { source: Ipv4Addr },
    /// `IPV6_PKTINFO` (an IPv6 socket; an IPv4 client's source is IPv4-mapped, which Linux
    /// accepts on a dual-stack socket). The interface is named only for a link-local source,
    /// whose scope it is; otherwise routing chooses it.
    V6 { source: Ipv6Addr, ifindex: u32 },
}

/// What to attach when sending from `local` on an IPv4 (`socket_is_v6 == false`) or IPv6
/// socket; `None` when the address cannot be expressed on that socket.
pub(crate) fn reply_control(local: LocalDestination, socket_is_v6: bool) -> Option<ReplyControl> {
    match (local.ip, socket_is_v6) {
        (IpAddr::V4(v4), false) => Some(ReplyControl::V4 { source: v4 }),
        (IpAddr::V6(v6), false) => v6
            .to_ipv4_mapped()
            .map(|source| ReplyControl::V4 { source }),
        (IpAddr::V4(v4), true) => Some(ReplyControl::V6 {
            source: v4.to_ipv6_mapped(),
            ifindex: 0,
        }),
        (IpAddr::V6(v6), true) => Some(ReplyControl::V6 {
            source: v6,
            ifindex: if v6.is_unicast_link_local() {
                local.ifindex
            } else {
                0
            },
        }),
    }
}

/// A reply sent from the address a client used failed because that address went away since
/// (EADDRNOTAVAIL, EINVAL): the kernel's choice of source is the best left.
pub(crate) fn source_went_away(err: &std::io::Error) -> bool {
    err.raw_os_error()
        .is_some_and(|e| e == libc::EADDRNOTAVAIL || e == libc::EINVAL)
}

/// An address as the server should see it: IPv4-mapped IPv6 becomes IPv4.
pub(crate) fn normalise(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}

/// An address as a socket of the given family can send to: IPv4 becomes IPv4-mapped on an
/// IPv6 socket.
pub(crate) fn socket_target(address: SocketAddr, socket_is_v6: bool) -> SocketAddr {
    match (address, socket_is_v6) {
        (SocketAddr::V4(v4), true) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => address,
    }
}

/// Asks the kernel for each datagram's destination address on `socket`.
pub(crate) fn enable_pktinfo(socket: &std::net::UdpSocket, v6: bool) -> std::io::Result<()> {
    if v6 {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

/// Room for one `in6_pktinfo` or `in_pktinfo` control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; 128]);

/// A UDP listener socket as the `turn` server's `Conn`, replying from each client's
/// destination address when the socket is bound to a wildcard.
pub(crate) struct PktinfoConn {
    socket: UdpSocket,
    local: SocketAddr,
    is_v6: bool,
    /// `None` for a socket bound to one address: the kernel's choice is then always right.
    sources: Option<Mutex<ReplySources>>,
    /// Whether the fast path's batches to a client may leave in one GSO send.
    gso: Gso,
}

impl PktinfoConn {
    /// Wraps a bound, non-blocking listener socket.
    pub fn new(socket: std::net::UdpSocket) -> std::io::Result<Self> {
        let local = socket.local_addr()?;
        let is_v6 = local.is_ipv6();
        let sources = if local.ip().is_unspecified() {
            enable_pktinfo(&socket, is_v6)?;
            Some(Mutex::new(ReplySources::new(
                REPLY_SOURCE_CAPACITY,
                REPLY_SOURCE_TTL,
            )))
        } else {
            None
        };
        let gso = Gso::probe(&socket);
        Ok(PktinfoConn {
            gso,
            socket: UdpSocket::from_std(socket)?,
            local,
            is_v6,
            sources,
        })
    }

    fn lock_sources(&self) -> Option<std::sync::MutexGuard<'_, ReplySources>> {
        self.sources
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn recv_with_destination(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Option<SocketAddr>, Option<LocalDestination>)> {
        let fd = self.socket.as_raw_fd();
        self.socket
            .async_io(Interest::READABLE, || {
                let mut control = ControlBuffer([0; 128]);
                let mut iov = [IoSliceMut::new(&mut *buf)];
                let message = recvmsg::<SockaddrStorage>(
                    fd,
                    &mut iov,
                    Some(&mut control.0[..]),
                    MsgFlags::empty(),
                )?;
                let from = message.address.as_ref().and_then(storage_to_socket_addr);
                let mut local = None;
                // A truncated control buffer (it has room for the one message asked for) only
                // costs this datagram its reply address, never the listener.
                for control in message.cmsgs().into_iter().flatten() {
                    match control {
                        ControlMessageOwned::Ipv4PacketInfo(info) => {
                            local = Some(LocalDestination {
                                ip: IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))),
                                ifindex: info.ipi_ifindex as u32,
                            });
                        }
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            local = Some(LocalDestination {
                                ip: IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                                ifindex: info.ipi6_ifindex,
                            });
                        }
                        _ => {}
                    }
                }
                Ok((message.bytes, from, local))
            })
            .await
    }

    async fn send_from(
        &self,
        buf: &[u8],
        target: SocketAddr,
        control: ReplyControl,
    ) -> std::io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let address = SockaddrStorage::from(target);
        self.socket
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(buf)];
                let result = match control {
                    ReplyControl::V4 { source } => {
                        let info = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(source).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        sendmsg(
                            fd,
                            &iov,
                            &[ControlMessage::Ipv4PacketInfo(&info)],
                            MsgFlags::empty(),
                            Some(&address),
                        )
                    }
                    ReplyControl::V6 { source, ifindex } => {
                        let info = libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: source.octets(),
                            },
                            ipi6_ifindex: ifindex,
                        };
                        sendmsg(
                            fd,
                            &iov,
                            &[ControlMessage::Ipv6PacketInfo(&info)],
                            MsgFlags::empty(),
                            Some(&address),
                        )
                    }
                };
                result.map_err(std::io::Error::from)
            })
            .await
    }
}

fn storage_to_socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    storage.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

#[async_trait]
impl Conn for PktinfoConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        if self.sources.is_none() {
            let (n, from) = self.socket.recv_from(buf).await?;
            return Ok((n, normalise(from)));
        }
        let (n, from, local) = loop {
            match self.recv_with_destination(buf).await? {
                (n, Some(from), local) => break (n, from, local),
                // A datagram without a source address cannot be answered: skip it.
                (_, None, _) => continue,
            }
        };
        let from = normalise(from);
        if let (Some(local), Some(mut sources)) = (local, self.lock_sources()) {
            sources.handle_received(from, local, Instant::now());
        }
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.send_datagram(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

impl PktinfoConn {
    /// Reads the datagrams waiting (at least one), as [`udp_batch::recv_batch`] lays them out
    /// in `slots`, with their sources as the server sees them (IPv4-mapped made IPv4; `None`:
    /// skip it) and each client's destination remembered for the replies.
    pub(crate) async fn recv_batch(
        &self,
        slots: &mut [u8],
        slot_len: usize,
        out: &mut [Received],
    ) -> std::io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let pktinfo = self.sources.is_some();
        let count = self
            .socket
            .async_io(Interest::READABLE, || {
                udp_batch::recv_batch(fd, slots, slot_len, 0..slot_len, out, pktinfo)
            })
            .await?;
        let now = Instant::now();
        let mut sources = self.lock_sources();
        for received in &mut out[..count] {
            received.from = received.from.map(normalise);
            if let (Some(from), Some(local), Some(sources)) =
                (received.from, received.local, sources.as_mut())
            {
                sources.handle_received(from, local, now);
            }
        }
        Ok(count)
    }

    /// Sends datagrams to one client, in order, from the address the client last sent to,
    /// in as few system calls as the kernel allows (the fast path's way back to clients).
    pub(crate) async fn send_datagrams(
        &self,
        datagrams: &[IoSlice<'_>],
        target: SocketAddr,
    ) -> udp_batch::Sent {
        let control = self
            .lock_sources()
            .and_then(|sources| sources.source_for(target, Instant::now()))
            .and_then(|local| reply_control(local, self.is_v6));
        let socket_target = socket_target(target, self.is_v6);
        udp_batch::send_datagrams(&self.socket, &self.gso, datagrams, socket_target, control).await
    }

    /// Sends one datagram to a client from the address the client last sent to. Also the
    /// fast data path's way to clients (a plain method: no boxed future per datagram).
    pub(crate) async fn send_datagram(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> std::io::Result<usize> {
        let control = self
            .lock_sources()
            .and_then(|sources| sources.source_for(target, Instant::now()))
            .and_then(|local| reply_control(local, self.is_v6));
        let socket_target = socket_target(target, self.is_v6);
        if let Some(control) = control {
            match self.send_from(buf, socket_target, control).await {
                Ok(n) => return Ok(n),
                // The address went away since the client used it (EADDRNOTAVAIL, EINVAL):
                // the kernel's choice is the best left.
                Err(err) if source_went_away(&err) => {}
                Err(err) => return Err(err),
            }
        }
        self.socket.send_to(buf, socket_target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(ip: &str) -> LocalDestination {
        LocalDestination {
            ip: ip.parse().unwrap(),
            ifindex: 7,
        }
    }

    fn client(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_is_answered_from_the_address_it_sent_to() {
        let now = Instant::now();
        let mut sources = ReplySources::new(10, REPLY_SOURCE_TTL);
        sources.handle_received(client("198.51.100.7:5000"), local("203.0.113.2"), now);
        sources.handle_received(client("198.51.100.8:5000"), local("203.0.113.1"), now);
        assert_eq!(
            sources.source_for(client("198.51.100.7:5000"), now),
            Some(local("203.0.113.2"))
        );
        assert_eq!(
            sources.source_for(client("198.51.100.8:5000"), now),
            Some(local("203.0.113.1"))
        );
    }

    #[test]
    fn an_unknown_client_is_left_to_the_kernel() {
        let sources = ReplySources::new(10, REPLY_SOURCE_TTL);
        assert_eq!(
            sources.source_for(client("198.51.100.7:5000"), Instant::now()),
            None
        );
    }

    #[test]
    fn the_latest_destination_wins() {
        let now = Instant::now();
        let mut sources = ReplySources::new(10, REPLY_SOURCE_TTL);
        let c = client("198.51.100.7:5000");
        sources.handle_received(c, local("203.0.113.1"), now);
        sources.handle_received(c, local("203.0.113.2"), now + Duration::from_secs(1));
        assert_eq!(
            sources.source_for(c, now + Duration::from_secs(1)),
            Some(local("203.0.113.2"))
        );
        assert_eq!(sources.len(), 1);
    }

    #[test]
    fn an_entry_expires_after_the_ttl() {
        let now = Instant::now();
        let mut sources = ReplySources::new(10, Duration::from_secs(600));
        let c = client("198.51.100.7:5000");
        sources.handle_received(c, local("203.0.113.2"), now);
        assert!(
            sources
                .source_for(c, now + Duration::from_secs(599))
                .is_some()
        );
        assert_eq!(sources.source_for(c, now + Duration::from_secs(600)), None);
    }

    #[test]
    fn a_full_table_keeps_its_clients_and_makes_room_only_from_expired_ones() {
        let now = Instant::now();
        let mut sources = ReplySources::new(2, Duration::from_secs(600));
        sources.handle_received(client("198.51.100.1:1"), local("203.0.113.1"), now);
        sources.handle_received(client("198.51.100.2:1"), local("203.0.113.1"), now);
        // Full: a newcomer is not remembered, the known clients stay.
        sources.handle_received(client("198.51.100.3:1"), local("203.0.113.2"), now);
        assert_eq!(sources.source_for(client("198.51.100.3:1"), now), None);
        assert!(sources.source_for(client("198.51.100.1:1"), now).is_some());
        // A known client still updates in place while full.
        sources.handle_received(
            client("198.51.100.1:1"),
            local("203.0.113.2"),
            now + Duration::from_secs(300),
        );
        // Once the other entry expired, its place goes to the next newcomer.
        let later = now + Duration::from_secs(601);
        sources.handle_received(client("198.51.100.3:1"), local("203.0.113.2"), later);
        assert_eq!(
            sources.source_for(client("198.51.100.3:1"), later),
            Some(local("203.0.113.2"))
        );
        assert_eq!(
            sources.source_for(client("198.51.100.1:1"), later),
            Some(local("203.0.113.2"))
        );
        assert_eq!(sources.len(), 2);
    }

    #[test]
    fn broadcast_and_multicast_destinations_are_not_used_as_sources() {
        let now = Instant::now();
        let mut sources = ReplySources::new(10, REPLY_SOURCE_TTL);
        for ip in ["255.255.255.255", "224.0.0.1", "0.0.0.0", "ff02::1", "::"] {
            let c = client("198.51.100.7:5000");
            sources.handle_received(c, local(ip), now);
            assert_eq!(sources.source_for(c, now), None, "{ip}");
        }
    }

    #[test]
    fn the_control_message_matches_the_socket_family() {
        assert_eq!(
            reply_control(local("203.0.113.2"), false),
            Some(ReplyControl::V4 {
                source: "203.0.113.2".parse().unwrap()
            })
        );
        // An IPv4 client on a dual-stack socket: IPV6_PKTINFO with the mapped address.
        assert_eq!(
            reply_control(local("203.0.113.2"), true),
            Some(ReplyControl::V6 {
                source: "::ffff:203.0.113.2".parse().unwrap(),
                ifindex: 0
            })
        );
        assert_eq!(
            reply_control(local("2001:db8::2"), true),
            Some(ReplyControl::V6 {
                source: "2001:db8::2".parse().unwrap(),
                ifindex: 0
            })
        );
        // A link-local source is only meaningful with its interface.
        assert_eq!(
            reply_control(local("fe80::2"), true),
            Some(ReplyControl::V6 {
                source: "fe80::2".parse().unwrap(),
                ifindex: 7
            })
        );
        assert_eq!(reply_control(local("2001:db8::2"), false), None);
    }

    #[test]
    fn mapped_addresses_are_ipv4_to_the_server_and_mapped_on_the_socket() {
        assert_eq!(
            normalise(client("[::ffff:198.51.100.7]:5000")),
            client("198.51.100.7:5000")
        );
        assert_eq!(
            normalise(client("[2001:db8::7]:5000")),
            client("[2001:db8::7]:5000")
        );
        assert_eq!(
            socket_target(client("198.51.100.7:5000"), true),
            client("[::ffff:198.51.100.7]:5000")
        );
        assert_eq!(
            socket_target(client("198.51.100.7:5000"), false),
            client("198.51.100.7:5000")
        );
    }

    /// Binds a wildcard listener and sends to it at `to` from a socket connected there (as
    /// uclient's is); returns the source of the answer or `None` if the connected socket
    /// never saw one.
    async fn echo_through(listen: &str, to: &str) -> Option<SocketAddr> {
        let socket = std::net::UdpSocket::bind(listen).unwrap();
        socket.set_nonblocking(true).unwrap();
        let port = socket.local_addr().unwrap().port();
        let conn = PktinfoConn::new(socket).unwrap();
        let to: SocketAddr = format!("{to}:{port}").parse().unwrap();
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let client = UdpSocket::bind(bind).await.unwrap();
        client.connect(to).await.unwrap();
        client.send(b"ping").await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        conn.send_to(b"pong", from).await.unwrap();
        let mut reply = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(500), client.recv(&mut reply)).await {
            Ok(Ok(4)) => Some(to),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_wildcard_listener_answers_from_a_secondary_loopback_address() {
        // 127.0.0.2 is local on Linux (127.0.0.0/8 on lo), but the route back to 127.0.0.1
        // has source 127.0.0.1: without IP_PKTINFO the connected client drops the answer.
        assert!(echo_through("0.0.0.0:0", "127.0.0.2").await.is_some());
    }

    #[tokio::test]
    async fn a_dual_stack_listener_answers_ipv4_clients_as_ipv4() {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        socket.set_only_v6(false).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
            .bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let socket: std::net::UdpSocket = socket.into();
        let port = socket.local_addr().unwrap().port();
        let conn = PktinfoConn::new(socket).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        client.connect(to).await.unwrap();
        client.send(b"ping").await.unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, client.local_addr().unwrap(), "IPv4 to the server");
        conn.send_to(b"pong", from).await.unwrap();
        let mut reply = [0u8; 16];
        let answered =
            tokio::time::timeout(Duration::from_millis(500), client.recv(&mut reply)).await;
        assert!(matches!(answered, Ok(Ok(4))), "{answered:?}");
    }
}
