//! Fewer, larger system calls on the fast data path: `recvmmsg` and UDP GSO.
//!
//! Under a flood 86–90 % of the relay's CPU was in the kernel, one `recvfrom` and one `sendto`
//! per datagram each way (docs/benchmarks.md, "Relay"). Here a socket is read with one
//! `recvmmsg` of up to [`BATCH`] datagrams, and the datagrams of a batch that go to the same
//! destination from the same socket (all of them, for one allocation's peer → client traffic;
//! per peer for client → peer) leave in one `sendmsg` with a `UDP_SEGMENT` control message
//! (UDP generic segmentation offload, Linux 4.18): the kernel routes, filters and queues the
//! batch once and cuts it into datagrams at the end.
//!
//! [`gso_run`] is the sans-IO part (which datagrams may share one send); the rest is the thin
//! `unsafe` wrapper around `recvmmsg` that nix 0.31 has no safe form of (its `MultiHeaders`
//! cannot be reused: it never resets the address and control lengths the kernel shrinks),
//! and the GSO send through nix's `sendmsg`.
//!
//! GSO needs the kernel's support (probed per socket with `getsockopt(UDP_SEGMENT)`) and a
//! device that checksums (`EIO` otherwise: GSO is then switched off for that socket); a
//! segment too large for the route's MTU gives `EINVAL`, and that batch goes one datagram at a
//! time. Either way nothing is lost and nothing is merged.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, MsgFlags, SockaddrLike, SockaddrStorage, getsockopt, sendmsg, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::pktinfo::{LocalDestination, ReplyControl};

/// Datagrams read by one `recvmmsg`. 32 covers a flood's backlog between two wake-ups on
/// this machine; more only makes the stack frame bigger.
pub(crate) const BATCH: usize = 32;
/// Segments in one GSO send: Linux's `UDP_MAX_SEGMENTS` before 6.9 (128 since).
const MAX_SEGMENTS: usize = 64;
/// Bytes in one GSO send: under the 65 507-byte UDP payload of IPv4.
const MAX_GSO_BYTES: usize = 65_000;

/// How many of the datagrams to one destination, given by their lengths in order, go in the
/// next send: a run of equal lengths (GSO cuts the payload into segments of the first one's
/// size), which may end with one shorter datagram, bounded by [`MAX_SEGMENTS`] and
/// [`MAX_GSO_BYTES`]. 1 means a plain send; 0 only for no datagrams.
pub(crate) fn gso_run(mut lengths: impl Iterator<Item = usize>) -> usize {
    let Some(segment) = lengths.next() else {
        return 0;
    };
    if segment == 0 {
        return 1; // an empty datagram cannot be a segment size
    }
    let (mut count, mut total) = (1, segment);
    for length in lengths {
        if count == MAX_SEGMENTS || total + length > MAX_GSO_BYTES {
            break;
        }
        if length == segment {
            count += 1;
            total += length;
        } else {
            if length != 0 && length < segment {
                count += 1; // a shorter last segment ends the run
            }
            break;
        }
    }
    count
}

/// Whether GSO may be used on one socket.
#[derive(Debug)]
pub(crate) struct Gso(AtomicBool);

impl Gso {
    /// Asks the kernel whether it knows `UDP_SEGMENT` on this socket.
    pub fn probe(socket: &impl AsFd) -> Gso {
        Gso(AtomicBool::new(
            getsockopt(socket, sockopt::UdpGsoSegment).is_ok(),
        ))
    }

    #[cfg(test)]
    pub fn off() -> Gso {
        Gso(AtomicBool::new(false))
    }

    fn usable(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A GSO send failed with `error`: whether the batch should go one datagram at a time
    /// (`false`: a real error of the destination, reported as a single send would be).
    fn handle_error(&self, error: &io::Error) -> bool {
        match error.raw_os_error() {
            // The device cannot checksum (or the kernel refuses GSO on this path): for good.
            Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP) => {
                self.0.store(false, Ordering::Relaxed);
                true
            }
            // A segment too big for the route's MTU, or a source address gone: this batch.
            Some(libc::EINVAL | libc::EMSGSIZE | libc::EADDRNOTAVAIL) => true,
            _ => false,
        }
    }
}

/// One datagram `recv_batch` read: its length in the slot, its source and, when asked for,
/// the local address it was sent to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Received {
    pub len: usize,
    pub from: Option<SocketAddr>,
    pub local: Option<LocalDestination>,
}

/// The datagrams of a socket's last [`recv_batch`], datagram `i` at `start(i)` in `slots`
/// (one slot of `slot_len` bytes each, the datagram `offset` bytes into it), and which of them
/// still wait for the `turn` server, which reads them one at a time in arrival order after
/// the fast path took its share. A UDP listener's batch and a relay socket's are this one
/// type with their own slot shape.
pub(crate) struct Batch {
    pub slots: Vec<u8>,
    pub received: [Received; BATCH],
    pub for_server: [bool; BATCH],
    slot_len: usize,
    offset: usize,
    count: usize,
    next: usize,
}

impl Batch {
    /// A batch with room for `slots` datagrams at first (a caller may grow `slots`).
    pub fn new(slot_len: usize, offset: usize, slots: usize) -> Self {
        Batch {
            slots: vec![0; slots * slot_len],
            received: [Received::default(); BATCH],
            for_server: [false; BATCH],
            slot_len,
            offset,
            count: 0,
            next: 0,
        }
    }

    /// `count` datagrams were just read into the slots; none is marked for the server yet.
    pub fn read(&mut self, count: usize) {
        self.count = count;
        self.next = 0;
        self.for_server[..count].fill(false);
    }

    /// Where datagram `i` starts in `slots`.
    pub fn start(&self, i: usize) -> usize {
        i * self.slot_len + self.offset
    }

    /// Slots `slots` has room for.
    pub fn capacity(&self) -> usize {
        self.slots.len() / self.slot_len
    }

    /// The next datagram of the batch that goes to the server, copied into `buf` (truncated
    /// to it, as a single `recv_from` truncates), with its source.
    pub fn next_for_server(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        while self.next < self.count {
            let i = self.next;
            self.next += 1;
            if let (true, Some(from)) = (self.for_server[i], self.received[i].from) {
                let n = self.received[i].len.min(buf.len());
                let start = self.start(i);
                buf[..n].copy_from_slice(&self.slots[start..start + n]);
                return Some((n, from));
            }
        }
        None
    }
}

/// Room for one `in6_pktinfo` (or `in_pktinfo`) control message per datagram.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ControlSlot([u8; 64]);

/// Reads up to [`BATCH`] datagrams without blocking: datagram `i` into
/// `slots[i * slot_len + within.start .. i * slot_len + within.end]` (longer ones are
/// truncated, as `recv_from` truncates), its metadata into `out[i]`. `pktinfo` asks for each
/// datagram's destination (the socket must have `IP_PKTINFO`/`IPV6_RECVPKTINFO` on).
/// Returns how many were read; `WouldBlock` when none was waiting.
pub(crate) fn recv_batch(
    fd: RawFd,
    slots: &mut [u8],
    slot_len: usize,
    within: std::ops::Range<usize>,
    out: &mut [Received],
    pktinfo: bool,
) -> io::Result<usize> {
    assert!(
        within.end <= slot_len,
        "the datagram's room lies inside its slot"
    );
    let count = (slots.len() / slot_len).min(out.len()).min(BATCH);
    // SAFETY (all of the `zeroed` below): plain C structs for which all-zero is valid.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls = [ControlSlot([0; 64]); BATCH];
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, slot) in slots.chunks_exact_mut(slot_len).take(count).enumerate() {
        let room = &mut slot[within.clone()];
        iovecs[i] = libc::iovec {
            iov_base: room.as_mut_ptr().cast(),
            iov_len: room.len(),
        };
        let header = &mut headers[i].msg_hdr;
        header.msg_name = (&raw mut names[i]).cast();
        header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        header.msg_iov = &raw mut iovecs[i];
        header.msg_iovlen = 1;
        if pktinfo {
            header.msg_control = (&raw mut controls[i]).cast();
            header.msg_controllen = std::mem::size_of::<ControlSlot>() as _;
        }
    }
    // SAFETY: every header points at an iovec, a name and a control buffer that live on this
    // frame until the call returns, with their true lengths; `count` headers are set.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    for i in 0..received {
        let header = &headers[i].msg_hdr;
        // SAFETY: the kernel wrote `msg_namelen` bytes of a socket address into `names[i]`.
        let from = unsafe {
            SockaddrStorage::from_raw((&raw const names[i]).cast(), Some(header.msg_namelen))
        }
        .and_then(|storage| socket_addr(&storage));
        let local = if pktinfo {
            // SAFETY: the header's control buffer and length are as the kernel left them.
            unsafe { destination(header) }
        } else {
            None
        };
        out[i] = Received {
            len: headers[i].msg_len as usize,
            from,
            local,
        };
    }
    Ok(received)
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    storage.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// The `IP_PKTINFO` / `IPV6_PKTINFO` destination among a received header's control messages.
///
/// # Safety
/// `header` is a `msghdr` filled by `recvmsg`/`recvmmsg`, its control buffer still alive.
unsafe fn destination(header: &libc::msghdr) -> Option<LocalDestination> {
    let mut local = None;
    // SAFETY: the CMSG_* macros walk the control buffer within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    local = Some(LocalDestination {
                        ip: IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))),
                        ifindex: info.ipi_ifindex as u32,
                    });
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    local = Some(LocalDestination {
                        ip: IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                        ifindex: info.ipi6_ifindex,
                    });
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    local
}

/// One `sendmsg` of `datagrams` (in order, concatenated) to `target`: cut into datagrams of
/// `segment` bytes by the kernel when `segment` is set, from the source `control` names.
fn send_message(
    fd: RawFd,
    datagrams: &[IoSlice<'_>],
    segment: Option<u16>,
    target: &SockaddrStorage,
    control: Option<ReplyControl>,
) -> io::Result<usize> {
    let v4_info;
    let v6_info;
    let mut controls: [Option<ControlMessage<'_>>; 2] = [None, None];
    match control {
        Some(ReplyControl::V4 { source }) => {
            v4_info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            controls[0] = Some(ControlMessage::Ipv4PacketInfo(&v4_info));
        }
        Some(ReplyControl::V6 { source, ifindex }) => {
            v6_info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: source.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            controls[0] = Some(ControlMessage::Ipv6PacketInfo(&v6_info));
        }
        None => {}
    }
    let segment_size;
    if let Some(size) = segment {
        segment_size = size;
        controls[1] = Some(ControlMessage::UdpGsoSegments(&segment_size));
    }
    let send = |controls: &[ControlMessage<'_>]| {
        sendmsg(fd, datagrams, controls, MsgFlags::empty(), Some(target)).map_err(io::Error::from)
    };
    match controls {
        [Some(source), Some(gso)] => send(&[source, gso]),
        [Some(only), None] | [None, Some(only)] => send(&[only]),
        [None, None] => send(&[]),
    }
}

/// What [`send_datagrams`] did.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub datagrams: usize,
    pub bytes: usize,
    /// The last error, if a datagram was refused.
    pub error: Option<io::Error>,
}

/// Sends `datagrams` to `target` on `socket` (from the source `control` names, if any), in as
/// few system calls as GSO allows; datagram by datagram where it does not. A datagram the
/// kernel refuses is dropped, as a congested link drops it, and the others still go.
pub(crate) async fn send_datagrams(
    socket: &UdpSocket,
    gso: &Gso,
    datagrams: &[IoSlice<'_>],
    target: SocketAddr,
    control: Option<ReplyControl>,
) -> Sent {
    let fd = socket.as_raw_fd();
    let address = SockaddrStorage::from(target);
    let mut sent = Sent::default();
    let mut rest = datagrams;
    while !rest.is_empty() {
        let run = if gso.usable() {
            gso_run(rest.iter().map(|d| d.len()))
        } else {
            1
        };
        let (now, later) = rest.split_at(run);
        rest = later;
        if run > 1 {
            let segment = now[0].len() as u16; // at most MAX_GSO_BYTES
            let result = socket
                .async_io(Interest::WRITABLE, || {
                    send_message(fd, now, Some(segment), &address, control)
                })
                .await;
            match result {
                Ok(bytes) => {
                    sent.datagrams += run;
                    sent.bytes += bytes;
                    continue;
                }
                Err(error) if gso.handle_error(&error) => {}
                Err(error) => {
                    sent.error = Some(error);
                    continue;
                }
            }
        }
        for datagram in now {
            match send_one(socket, fd, datagram, target, &address, control).await {
                Ok(bytes) => {
                    sent.datagrams += 1;
                    sent.bytes += bytes;
                }
                Err(error) => sent.error = Some(error),
            }
        }
    }
    sent
}

/// One datagram, from `control`'s source when the address is still there (the kernel's
/// choice otherwise: EADDRNOTAVAIL, EINVAL once the client's address went away).
async fn send_one(
    socket: &UdpSocket,
    fd: RawFd,
    datagram: &[u8],
    target: SocketAddr,
    address: &SockaddrStorage,
    control: Option<ReplyControl>,
) -> io::Result<usize> {
    if control.is_some() {
        let iov = [IoSlice::new(datagram)];
        match socket
            .async_io(Interest::WRITABLE, || {
                send_message(fd, &iov, None, address, control)
            })
            .await
        {
            Ok(n) => return Ok(n),
            Err(err) if crate::pktinfo::source_went_away(&err) => {}
            Err(err) => return Err(err),
        }
    }
    socket.send_to(datagram, target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of three datagrams "a", "bb", "ccc" from three sources, in slots of 8 bytes
    /// with each datagram 2 bytes in.
    fn three_read() -> Batch {
        let mut batch = Batch::new(8, 2, 4);
        for (i, datagram) in [&b"a"[..], b"bb", b"ccc"].into_iter().enumerate() {
            let start = batch.start(i);
            batch.slots[start..start + datagram.len()].copy_from_slice(datagram);
            batch.received[i] = Received {
                len: datagram.len(),
                from: Some(SocketAddr::from(([192, 0, 2, 1], 5000 + i as u16))),
                local: None,
            };
        }
        batch.for_server = [true; BATCH]; // left over from an earlier batch
        batch.read(3);
        batch
    }

    #[test]
    fn the_server_reads_only_what_the_fast_path_left_in_arrival_order() {
        let mut batch = three_read();
        assert_eq!(
            batch.next_for_server(&mut [0; 16]),
            None,
            "a new batch starts unmarked"
        );
        let mut batch = three_read();
        batch.for_server[0] = true;
        batch.for_server[2] = true;
        let mut buf = [0; 16];
        assert_eq!(
            batch.next_for_server(&mut buf),
            Some((1, SocketAddr::from(([192, 0, 2, 1], 5000))))
        );
        assert_eq!(&buf[..1], b"a");
        assert_eq!(
            batch.next_for_server(&mut buf),
            Some((3, SocketAddr::from(([192, 0, 2, 1], 5002))))
        );
        assert_eq!(&buf[..3], b"ccc");
        assert_eq!(batch.next_for_server(&mut buf), None);
    }

    #[test]
    fn a_datagram_longer_than_the_servers_buffer_is_truncated_as_recv_from_would() {
        let mut batch = three_read();
        batch.for_server[2] = true;
        let mut buf = [0; 2];
        assert_eq!(batch.next_for_server(&mut buf).map(|(n, _)| n), Some(2));
        assert_eq!(&buf, b"cc");
    }

    #[test]
    fn a_datagram_without_a_source_never_reaches_the_server() {
        let mut batch = three_read();
        batch.received[1].from = None;
        batch.for_server[1] = true;
        assert_eq!(batch.next_for_server(&mut [0; 16]), None);
    }

    fn run(lengths: &[usize]) -> usize {
        gso_run(lengths.iter().copied())
    }

    #[test]
    fn equal_datagrams_share_one_send() {
        assert_eq!(run(&[124; 10]), 10);
    }

    #[test]
    fn a_shorter_datagram_ends_the_run_and_is_its_last_segment() {
        assert_eq!(run(&[124, 124, 100, 124]), 3);
    }

    #[test]
    fn a_longer_datagram_starts_the_next_run() {
        assert_eq!(run(&[124, 124, 200, 200]), 2);
        assert_eq!(run(&[200, 200]), 2);
    }

    #[test]
    fn a_lone_datagram_or_nothing_is_a_plain_send() {
        assert_eq!(run(&[124]), 1);
        assert_eq!(run(&[124, 300]), 1);
        assert_eq!(run(&[]), 0);
    }

    #[test]
    fn empty_datagrams_are_never_segments() {
        assert_eq!(run(&[0, 0, 0]), 1);
        assert_eq!(run(&[124, 0, 124]), 1);
    }

    #[test]
    fn a_run_stops_at_the_kernels_segment_and_size_limits() {
        assert_eq!(run(&[100; 200]), MAX_SEGMENTS);
        // 43 × 1 504 = 64 672 bytes fit; a 44th would pass 65 000.
        assert_eq!(run(&[1504; 60]), 43);
    }

    /// A socket pair on loopback: `(sender, receiver, receiver's address)`.
    async fn pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = receiver.local_addr().unwrap();
        (sender, receiver, address)
    }

    /// What `receiver` got within a short wait, each datagram whole.
    async fn drain(receiver: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(Ok(n)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            receiver.recv(&mut buf),
        )
        .await
        {
            got.push(buf[..n].to_vec());
        }
        got
    }

    fn numbered(count: usize, length: usize) -> Vec<Vec<u8>> {
        (0..count).map(|i| vec![i as u8; length]).collect()
    }

    async fn send_and_collect(gso: &Gso, datagrams: &[Vec<u8>]) -> (usize, Vec<Vec<u8>>) {
        let (sender, receiver, address) = pair().await;
        let slices: Vec<IoSlice<'_>> = datagrams.iter().map(|d| IoSlice::new(d)).collect();
        let sent = send_datagrams(&sender, gso, &slices, address, None).await;
        assert!(sent.error.is_none(), "{:?}", sent.error);
        let total: usize = datagrams.iter().map(Vec::len).sum();
        assert_eq!(sent.bytes, total);
        (sent.datagrams, drain(&receiver).await)
    }

    #[tokio::test]
    async fn a_gso_batch_arrives_as_the_same_datagrams_in_order() {
        let mut datagrams = numbered(40, 124);
        datagrams.push(vec![99; 60]); // a shorter last one
        datagrams.extend(numbered(3, 300)); // then a longer run
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let gso = Gso::probe(&socket);
        let (sent, got) = send_and_collect(&gso, &datagrams).await;
        assert_eq!(sent, datagrams.len());
        assert_eq!(got, datagrams);
    }

    #[tokio::test]
    async fn without_gso_the_same_datagrams_arrive_one_by_one() {
        let datagrams = numbered(10, 124);
        let (sent, got) = send_and_collect(&Gso::off(), &datagrams).await;
        assert_eq!(sent, 10);
        assert_eq!(got, datagrams);
    }

    #[test]
    fn the_kernel_here_has_gso() {
        // The relay's batching is measured on Linux ≥ 4.18; if this fails, the benchmark
        // figures in docs/benchmarks.md do not apply to this machine.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(Gso::probe(&socket).usable());
    }

    #[tokio::test]
    async fn recv_batch_reads_what_is_waiting_with_sources_in_order() {
        let (sender, receiver, address) = pair().await;
        for datagram in numbered(5, 50) {
            sender.send_to(&datagram, address).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        const SLOT: usize = 64;
        let mut slots = vec![0u8; SLOT * BATCH];
        let mut out = [Received::default(); BATCH];
        let n = recv_batch(
            receiver.as_raw_fd(),
            &mut slots,
            SLOT,
            4..SLOT - 4,
            &mut out,
            false,
        )
        .unwrap();
        assert_eq!(n, 5);
        for (i, received) in out[..n].iter().enumerate() {
            assert_eq!(received.len, 50);
            assert_eq!(received.from, Some(sender.local_addr().unwrap()));
            assert_eq!(slots[i * SLOT + 4], i as u8, "datagram {i} in slot {i}");
        }
        let again = recv_batch(
            receiver.as_raw_fd(),
            &mut slots,
            SLOT,
            4..SLOT - 4,
            &mut out,
            false,
        );
        assert_eq!(
            again.unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing left"
        );
    }

    #[tokio::test]
    async fn recv_batch_reports_each_datagrams_destination() {
        let receiver = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        crate::pktinfo::enable_pktinfo(&receiver, false).unwrap();
        let port = receiver.local_addr().unwrap().port();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"one", ("127.0.0.1", port)).unwrap();
        sender.send_to(b"two", ("127.0.0.1", port)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut slots = vec![0u8; 16 * BATCH];
        let mut out = [Received::default(); BATCH];
        let n = recv_batch(receiver.as_raw_fd(), &mut slots, 16, 0..16, &mut out, true).unwrap();
        assert_eq!(n, 2);
        for received in &out[..2] {
            assert_eq!(
                received.local.map(|l| l.ip),
                Some(IpAddr::from([127, 0, 0, 1]))
            );
        }
    }
}
