//! Parley's embedded TURN/STUN relay, built on the webrtc-rs `turn` crate.
//!
//! `turn` 0.17 provides the protocol engine: allocations, permissions, channels, relaying,
//! on any datagram `Conn`. Around it this crate adds, as small layers:
//! - [`credentials`]: coturn-compatible time-limited shared-secret credentials;
//! - [`policy`]: which peer addresses may be relayed to (no loopback, LAN, metadata service);
//! - `gate`: the sans-IO decisions in front of the server: strict decoding (400, 420), the
//!   nonce table's bound, credentials (401), the peer policy (403), quotas (486);
//! - `guard`: the thin socket shell around the gate, a `Conn` wrapper in front of every
//!   listener; it also applies the bandwidth cap, counts metrics and logs;
//! - `stream`: TURN over TCP and TLS, multiplexed into one `Conn` per listener;
//! - `relay_socket`: relay sockets in the configured port range, advertised at the
//!   configured relay address;
//! - `fastpath`: ChannelData over UDP relayed beside the server, from a view of its
//!   allocations and channels that never outlives them;
//! - `udp_batch`: the fast path's system calls in batches (`recvmmsg`, UDP GSO);
//! - [`probe`]: a small TURN client for `parley doctor` and the tests;
//! - [`fuzzing`]: entry points for the fuzz targets in `fuzz/`.
//!
//! Architecture invariant: no configuration parsing and no HTTP here; the daemon maps its
//! config to [`RelayOptions`] and binds [`RelaySockets`] before it reports readiness.

pub mod bandwidth;
pub mod credentials;
mod fastpath;
pub mod fuzzing;
mod gate;
mod guard;
pub mod metrics;
pub mod nonce;
mod pktinfo;
pub mod policy;
pub mod probe;
pub mod quota;
mod relay_socket;
mod server;
mod stream;
mod udp_batch;

use std::net::SocketAddr;

pub use credentials::{Secrets, mint};
pub use metrics::Metrics;
pub use policy::{Cidr, CidrError, PeerPolicy};
pub use server::{ListenerStatus, Relay, RelayOptions, RelaySockets, Transport, parse_port_range};
pub use stream::{FrontDoor, StreamTimeouts};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error(
        "cannot bind the TURN {0} listener on {1}: {2}; check turn.listen / turn.tls_listen and that no other TURN server (coturn?) uses the port"
    )]
    Bind(&'static str, SocketAddr, #[source] std::io::Error),
    #[error("invalid turn.relay_ports {0:?}: write \"LOW-HIGH\" with 1 <= LOW <= HIGH <= 65535")]
    PortRange(String),
    #[error("invalid turn.allowed_peer_ranges: {0}")]
    PeerRange(#[from] CidrError),
    #[error("the TURN relay has no listener: enable turn.udp or turn.tcp, or disable turn")]
    NoListeners,
    #[error("the TURN server refused its configuration: {0}")]
    Server(#[source] turn::Error),
    #[error("cannot start the relay thread: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the relay thread ended while starting; see the log")]
    ThreadDied,
}
