//! The fast data path: ChannelData over UDP relayed beside the `turn` server, not through it.
//!
//! Through `turn` 0.17 every ChannelData datagram is copied into two fresh `Vec`s, takes the
//! allocation manager's and the allocation's async mutexes, and the way back takes another
//! mutex, a linear search of the channels and two more `Vec`s; that was most of the relay's CPU
//! under a flood (docs/benchmarks.md, "Relay"). Here the listener's guard hands a client's
//! ChannelData straight to the allocation's relay socket, and the relay socket hands a bound
//! peer's datagram straight to the listener, with the ChannelData header written in front of
//! the payload in the receive buffer: no allocation and no await besides the socket's own.
//!
//! `turn` stays the only owner of allocations, permissions and channels. The fast path keeps
//! a *view* of them learnt from what the gate sees (requests, with the moment they arrived)
//! and what the server answers (success responses), and relays only what the server itself
//! would relay at that moment; anything else (no view yet, an unknown channel, a Send or Data
//! indication, TCP/TLS) falls through to the server as before. The view errs on the side of
//! falling through:
//! - an allocation or channel expires at the moment its request *arrived* plus the lifetime
//!   granted; the server's timers start later, so the view never outlives them;
//! - an allocation is dropped from the view as soon as a Refresh that deletes it passed the
//!   gate, and relaying stops the moment the server closes the relay socket (a flag the
//!   socket's `close` sets, checked on every datagram);
//! - the peer policy, the address family and the bandwidth cap are applied by the same
//!   functions on both paths (`relay_socket`), and the client-side cap by the guard before.
//!
//! [`AllocationView`] is the sans-IO part (time is an input); [`FastPath`] is the table the
//! shells share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::guard::lock;
use crate::quota::AllocationKey;
use crate::relay_socket::RelayLink;

/// The lifetime `turn` gives a channel binding (server.rs passes `channel_bind_timeout: 0`,
/// which `turn` replaces with this).
pub(crate) const CHANNEL_LIFETIME: std::time::Duration = turn::proto::lifetime::DEFAULT_LIFETIME;

/// Lowest and highest channel numbers `turn` accepts in ChannelData (RFC 8656: 0x4000-0x7FFF).
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// One ChannelData message's channel number and payload range, read as `turn` reads it: a
/// valid number and a length that fits (trailing bytes, such as padding, are ignored).
pub(crate) fn channel_data(datagram: &[u8]) -> Option<(u16, std::ops::Range<usize>)> {
    let [n0, n1, l0, l1] = *datagram.first_chunk::<4>()?;
    let number = u16::from_be_bytes([n0, n1]);
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    (CHANNELS.contains(&number) && length <= datagram.len() - 4).then_some((number, 4..4 + length))
}

/// Writes the ChannelData header for a `length`-byte payload that follows it in `frame`, pads
/// the payload with zeros to a multiple of 4 (as `turn` does) and returns the frame's length.
/// `frame` must hold the header, the payload and up to 3 bytes of padding.
pub(crate) fn write_channel_data(frame: &mut [u8], number: u16, length: usize) -> usize {
    frame[..2].copy_from_slice(&number.to_be_bytes());
    frame[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    let end = 4 + length;
    let padded = end.next_multiple_of(4);
    frame[end..padded].fill(0);
    padded
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// What the fast path knows of one allocation: until when it lives and its channel bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllocationView {
    expires: Instant,
    /// A handful per allocation (one per peer of a call): a vector beats a map.
    channels: Vec<Channel>,
}

impl AllocationView {
    pub fn new(expires: Instant) -> Self {
        AllocationView {
            expires,
            channels: Vec::new(),
        }
    }

    /// A Refresh succeeded: the allocation lives until `expires` (now or earlier: deleted).
    pub fn handle_refreshed(&mut self, expires: Instant) {
        self.expires = expires;
    }

    /// A ChannelBind succeeded: `number` is bound to `peer` until `expires`. The server
    /// refuses a number bound to another peer and a peer bound to another number while a
    /// binding lives, so a success replaces any expired binding of either.
    pub fn handle_channel_bound(&mut self, number: u16, peer: SocketAddr, expires: Instant) {
        self.channels
            .retain(|c| c.number != number && c.peer != peer);
        self.channels.push(Channel {
            number,
            peer,
            expires,
        });
    }

    /// The peer of channel `number` at `now`, if the allocation and the binding both live.
    pub fn peer_of(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.live_channels(now)
            .find(|c| c.number == number)
            .map(|c| c.peer)
    }

    /// The channel bound to `peer` at `now`, if the allocation and the binding both live.
    pub fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.live_channels(now)
            .find(|c| c.peer == peer)
            .map(|c| c.number)
    }

    /// The bindings alive at `now`: none once the allocation itself has expired.
    fn live_channels(&self, now: Instant) -> impl Iterator<Item = &Channel> {
        let alive = now < self.expires;
        self.channels
            .iter()
            .filter(move |c| alive && now < c.expires)
    }
}

/// Relay sockets not yet matched to an Allocate success are kept at most this many (sockets
/// `turn` made and dropped, e.g. odd ports while it looks for an even one, are pruned first).
const MAX_UNCLAIMED: usize = 4096;

/// The relay's table of fast routes, shared by the listeners' guards and the relay sockets.
#[derive(Default)]
pub(crate) struct FastPath {
    /// Relay sockets by the relayed address they advertise, until the server's Allocate
    /// success names that address to a client.
    unclaimed: Mutex<HashMap<SocketAddr, Weak<RelayLink>>>,
    /// UDP allocations by (client, listener).
    by_client: Mutex<HashMap<AllocationKey, Arc<RelayLink>>>,
}

impl FastPath {
    /// A relay socket was made for an allocation that advertises `relayed`.
    pub fn handle_relay_socket(&self, relayed: SocketAddr, link: &Arc<RelayLink>) {
        let mut unclaimed = lock(&self.unclaimed);
        if unclaimed.len() >= MAX_UNCLAIMED {
            unclaimed.retain(|_, link| link.strong_count() > 0);
            if unclaimed.len() >= MAX_UNCLAIMED {
                unclaimed.clear(); // those allocations only miss the fast path
            }
        }
        unclaimed.insert(relayed, Arc::downgrade(link));
    }

    /// The relay socket advertising `relayed` is closed or gone.
    pub fn handle_relay_socket_closed(&self, relayed: SocketAddr) {
        lock(&self.unclaimed).remove(&relayed);
    }

    /// The server created the allocation of `key` on `relayed`; returns its relay socket
    /// (now routed), if it is still there.
    pub fn claim(&self, key: AllocationKey, relayed: SocketAddr) -> Option<Arc<RelayLink>> {
        let link = lock(&self.unclaimed).remove(&relayed)?.upgrade()?;
        lock(&self.by_client).insert(key, Arc::clone(&link));
        Some(link)
    }

    /// The relay socket of the UDP allocation of `key`, if it has a route.
    pub fn route(&self, key: AllocationKey) -> Option<Arc<RelayLink>> {
        lock(&self.by_client).get(&key).cloned()
    }

    /// A Refresh deleting the allocation of `key` passed the gate: no more fast relaying for
    /// it, whatever the server does next.
    pub fn handle_deleting(&self, key: AllocationKey) {
        if let Some(link) = lock(&self.by_client).remove(&key) {
            link.detach();
        }
    }

    /// The server reported the allocation of `key` closed. A new allocation of the same
    /// client may already have its route: only a closed one is removed.
    pub fn handle_allocation_closed(&self, key: AllocationKey) {
        let mut by_client = lock(&self.by_client);
        if by_client.get(&key).is_some_and(|link| link.is_closed()) {
            by_client.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 7], port))
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_bound_channel_routes_both_ways_until_it_expires() {
        let start = Instant::now();
        let mut view = AllocationView::new(start + 10 * MINUTE);
        view.handle_channel_bound(0x4000, peer(1), start + CHANNEL_LIFETIME);
        assert_eq!(view.peer_of(0x4000, start), Some(peer(1)));
        assert_eq!(view.channel_of(peer(1), start), Some(0x4000));
        let expiry = start + CHANNEL_LIFETIME;
        assert_eq!(
            view.peer_of(0x4000, expiry - Duration::from_millis(1)),
            Some(peer(1))
        );
        assert_eq!(view.peer_of(0x4000, expiry), None);
        assert_eq!(view.channel_of(peer(1), expiry), None);
    }

    #[test]
    fn unknown_channels_and_peers_have_no_route() {
        let start = Instant::now();
        let mut view = AllocationView::new(start + MINUTE);
        view.handle_channel_bound(0x4000, peer(1), start + MINUTE);
        assert_eq!(view.peer_of(0x4001, start), None);
        assert_eq!(view.channel_of(peer(2), start), None);
        // Same IP, other port: another peer.
        assert_eq!(
            view.channel_of(SocketAddr::from(([203, 0, 113, 7], 9)), start),
            None
        );
    }

    #[test]
    fn an_expired_allocation_routes_nothing_even_with_live_channels() {
        let start = Instant::now();
        let mut view = AllocationView::new(start + MINUTE);
        view.handle_channel_bound(0x4000, peer(1), start + 10 * MINUTE);
        assert_eq!(view.peer_of(0x4000, start + MINUTE), None);
        assert_eq!(view.channel_of(peer(1), start + MINUTE), None);
    }

    #[test]
    fn a_refresh_moves_the_expiry_and_a_deleting_one_ends_it() {
        let start = Instant::now();
        let mut view = AllocationView::new(start + MINUTE);
        view.handle_channel_bound(0x4000, peer(1), start + 10 * MINUTE);
        view.handle_refreshed(start + 5 * MINUTE);
        assert_eq!(view.peer_of(0x4000, start + 2 * MINUTE), Some(peer(1)));
        view.handle_refreshed(start + 2 * MINUTE);
        assert_eq!(view.peer_of(0x4000, start + 2 * MINUTE), None);
    }

    #[test]
    fn rebinding_refreshes_and_replaces_expired_bindings() {
        let start = Instant::now();
        let mut view = AllocationView::new(start + 60 * MINUTE);
        view.handle_channel_bound(0x4000, peer(1), start + MINUTE);
        view.handle_channel_bound(0x4000, peer(1), start + 3 * MINUTE);
        assert_eq!(view.peer_of(0x4000, start + 2 * MINUTE), Some(peer(1)));
        // After expiry the server lets the number go to another peer, and the peer to
        // another number.
        view.handle_channel_bound(0x4000, peer(2), start + 10 * MINUTE);
        view.handle_channel_bound(0x4001, peer(1), start + 10 * MINUTE);
        assert_eq!(view.peer_of(0x4000, start + 4 * MINUTE), Some(peer(2)));
        assert_eq!(view.channel_of(peer(1), start + 4 * MINUTE), Some(0x4001));
        assert_eq!(view.channel_of(peer(2), start + 4 * MINUTE), Some(0x4000));
        assert_eq!(view.channels.len(), 2);
    }

    #[test]
    fn channel_data_is_read_as_the_server_reads_it() {
        assert_eq!(
            channel_data(&[0x40, 0x00, 0, 3, 1, 2, 3, 0]),
            Some((0x4000, 4..7))
        );
        assert_eq!(channel_data(&[0x7F, 0xFF, 0, 0]), Some((0x7FFF, 4..4)));
        // Length beyond the datagram, numbers outside the range, too short.
        assert_eq!(channel_data(&[0x40, 0x00, 0, 5, 1, 2, 3, 4]), None);
        assert_eq!(channel_data(&[0x80, 0x00, 0, 0]), None);
        assert_eq!(channel_data(&[0x3F, 0xFF, 0, 0]), None);
        assert_eq!(channel_data(&[0x40, 0x00, 0]), None);
    }

    #[test]
    fn channel_data_is_framed_and_padded_like_the_servers() {
        let mut frame = [0xAAu8; 16];
        frame[4..9].copy_from_slice(b"hello");
        let length = write_channel_data(&mut frame, 0x4001, 5);
        assert_eq!(length, 12);
        assert_eq!(&frame[..12], b"\x40\x01\x00\x05hello\0\0\0");
        let mut frame = [0u8; 8];
        assert_eq!(write_channel_data(&mut frame, 0x4001, 4), 8);
    }
}
