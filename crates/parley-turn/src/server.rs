//! Starting and stopping the relay: already-bound sockets in, a running `turn` server with
//! its guards, stream listeners and bookkeeping tasks out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc_util::Conn;

use crate::RelayError;
use crate::credentials::Secrets;
use crate::guard::{GuardAuth, GuardConn, Shared};
use crate::metrics::Metrics;
use crate::pktinfo::PktinfoConn;
use crate::policy::PeerPolicy;
use crate::quota::Quotas;
use crate::relay_socket::{PortRangeGenerator, RelayFamilies, is_local_address};
use crate::stream::{FrontDoor, StreamLimits, StreamMux, StreamTimeouts, accept_loop};

/// Everything the relay needs to know, as plain data (the daemon maps its config to this).
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The long-term-credential realm.
    pub realm: String,
    /// Signs and verifies credentials; previous secrets are still accepted.
    pub secrets: Secrets,
    pub peer_policy: PeerPolicy,
    /// Address relay sockets bind to.
    pub relay_bind: IpAddr,
    /// Address written into relayed candidates (differs from `relay_bind` behind 1:1 NAT).
    pub relay_address: IpAddr,
    /// IPv6 address written into IPv6 relayed candidates when `relay_address` is IPv4 (RFC 6156:
    /// clients that ask for an IPv6 relayed address with REQUESTED-ADDRESS-FAMILY get one);
    /// `None`: relayed addresses only in `relay_address`'s family. Its sockets bind to it when
    /// it is local, else to `[::]`.
    pub relay_address_v6: Option<IpAddr>,
    /// Inclusive relay port range.
    pub relay_ports: (u16, u16),
    /// 0 = unlimited.
    pub max_allocations: usize,
    /// 0 = unlimited.
    pub max_allocations_per_user: usize,
    /// Per allocation and direction; 0 = unlimited.
    pub bandwidth_limit_kbps: u64,
    /// Open TCP plus TLS connections per stream listener.
    pub max_stream_connections: usize,
    /// Handshake, unfinished-frame and idle timeouts of TCP/TLS connections.
    pub stream_timeouts: StreamTimeouts,
}

impl RelayOptions {
    /// Options with the documented defaults around the given secret and relay address.
    pub fn new(secret: String, relay_address: IpAddr) -> Self {
        RelayOptions {
            realm: "parley".to_owned(),
            secrets: Secrets::new(secret, Vec::new()),
            peer_policy: PeerPolicy::default(),
            relay_bind: relay_address,
            relay_address,
            relay_address_v6: None,
            relay_ports: (49152, 65535),
            max_allocations: 1000,
            max_allocations_per_user: 10,
            bandwidth_limit_kbps: 0,
            max_stream_connections: 2000,
            stream_timeouts: StreamTimeouts::default(),
        }
    }
}

/// Parses `turn.relay_ports` ("LOW-HIGH").
pub fn parse_port_range(text: &str) -> Result<(u16, u16), RelayError> {
    let error = || RelayError::PortRange(text.to_owned());
    let (low, high) = text.trim().split_once('-').ok_or_else(error)?;
    let low: u16 = low.trim().parse().map_err(|_| error())?;
    let high: u16 = high.trim().parse().map_err(|_| error())?;
    if low == 0 || high < low {
        return Err(error());
    }
    Ok((low, high))
}

/// The relay's listening sockets, bound before the daemon reports readiness.
#[derive(Debug, Default)]
pub struct RelaySockets {
    udp: Vec<std::net::UdpSocket>,
    /// More UDP listeners (`turn.udp_listen_extra`, e.g. UDP 443), each on its own address.
    udp_extra: Vec<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    tls: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
    /// TURN over TCP/TLS on the daemon's HTTPS port, accepted there (see `FrontDoor`).
    front_door: Option<SocketAddr>,
}

/// Listener receive buffer: absorbs bursts while the server task is scheduled away; the
/// kernel caps it at net.core.rmem_max (see docs/relay.md).
const LISTENER_BUFFER: usize = 4 << 20;

fn udp_socket(address: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    dual_stack(&socket, address)?;
    let _ = socket.set_recv_buffer_size(LISTENER_BUFFER);
    let _ = socket.set_send_buffer_size(LISTENER_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A listener on the IPv6 wildcard (`[::]:3478`) also serves IPv4 (as `::ffff:a.b.c.d`),
/// whatever `net.ipv6.bindv6only` says: one setting then covers both families.
fn dual_stack(socket: &socket2::Socket, address: SocketAddr) -> std::io::Result<()> {
    if address.is_ipv6() && address.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    Ok(())
}

fn tcp_listener(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    dual_stack(&socket, address)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl RelaySockets {
    /// Binds UDP (`udp_sockets` sockets sharing the port with SO_REUSEPORT, so the kernel
    /// spreads clients over several server tasks) and TCP on `listen`. With port 0 both get
    /// the same free port.
    pub fn bind(
        listen: SocketAddr,
        udp: bool,
        udp_sockets: usize,
        tcp: bool,
    ) -> Result<Self, RelayError> {
        let attempts = if listen.port() == 0 { 20 } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            match Self::try_bind(listen, udp, udp_sockets.max(1), tcp) {
                Ok(sockets) => return Ok(sockets),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one attempt was made"))
    }

    fn try_bind(
        listen: SocketAddr,
        udp: bool,
        udp_sockets: usize,
        tcp: bool,
    ) -> Result<Self, RelayError> {
        let mut sockets = RelaySockets::default();
        let mut address = listen;
        if udp {
            let first = udp_socket(address, udp_sockets > 1)
                .map_err(|e| RelayError::Bind("UDP", address, e))?;
            address = first
                .local_addr()
                .map_err(|e| RelayError::Bind("UDP", address, e))?;
            sockets.udp.push(first);
            for _ in 1..udp_sockets {
                sockets.udp.push(
                    udp_socket(address, true).map_err(|e| RelayError::Bind("UDP", address, e))?,
                );
            }
        }
        if tcp {
            let listener =
                tcp_listener(address).map_err(|e| RelayError::Bind("TCP", address, e))?;
            sockets.tcp = Some(listener);
        }
        Ok(sockets)
    }

    /// Binds the TURN-over-TLS listener.
    pub fn bind_tls(
        &mut self,
        listen: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<(), RelayError> {
        let listener = tcp_listener(listen).map_err(|e| RelayError::Bind("TLS", listen, e))?;
        self.tls = Some((listener, config));
        Ok(())
    }

    /// Also serves TURN connections that the daemon's HTTPS listener on `local` hands over
    /// ([`Relay::front_door`]).
    pub fn add_front_door(&mut self, local: SocketAddr) {
        self.front_door = Some(local);
    }

    /// Binds one more UDP STUN/TURN listener (`turn.udp_listen_extra`), such as UDP 443
    /// for networks that let QUIC out but not UDP 3478.
    pub fn bind_udp_extra(&mut self, listen: SocketAddr) -> Result<(), RelayError> {
        let socket = udp_socket(listen, false).map_err(|e| RelayError::Bind("UDP", listen, e))?;
        self.udp_extra.push(socket);
        Ok(())
    }

    /// The addresses of the extra UDP listeners, in configuration order.
    pub fn udp_extra_addrs(&self) -> Vec<SocketAddr> {
        self.udp_extra
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.first().and_then(|s| s.local_addr().ok())
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }
}

/// Which transport a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One listener as reported by `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub transport: Transport,
    pub address: SocketAddr,
    pub up: bool,
}

struct Listener {
    transport: Transport,
    address: SocketAddr,
    up: Arc<AtomicBool>,
}

/// The relay's tasks, living on the relay thread's runtime.
struct RelayCore {
    server: turn::server::Server,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    shutdown_tx: watch::Sender<bool>,
    stream_tasks: Vec<JoinHandle<()>>,
    close_drain: JoinHandle<()>,
    front_door: Option<FrontDoor>,
}

impl RelayCore {
    async fn start(options: RelayOptions, sockets: RelaySockets) -> Result<RelayCore, RelayError> {
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared::new(
            options.realm.clone(),
            options.secrets.clone(),
            options.peer_policy.clone(),
            Quotas::new(options.max_allocations, options.max_allocations_per_user),
            options.bandwidth_limit_kbps * 1000 / 8,
            metrics,
        ));
        let cursor = Arc::new(AtomicU32::new(rand_seed()));
        let odd_streak = Arc::new(AtomicU32::new(0));
        let families = RelayFamilies::new(
            options.relay_bind,
            options.relay_address,
            options.relay_address_v6,
            is_local_address,
        );
        shared
            .lock()
            .set_relay_families(families.v4.is_some(), families.v6.is_some());
        for family in [families.v4, families.v6].into_iter().flatten() {
            log::info!(
                "turn: relayed addresses {} (relay sockets on {})",
                family.advertised,
                family.bind
            );
        }
        let generator = || -> Box<dyn turn::relay::RelayAddressGenerator + Send + Sync> {
            Box::new(PortRangeGenerator {
                families,
                low: options.relay_ports.0,
                high: options.relay_ports.1,
                shared: Arc::clone(&shared),
                cursor: Arc::clone(&cursor),
                odd_streak: Arc::clone(&odd_streak),
            })
        };

        let mut listeners = Vec::new();
        let mut conn_configs = Vec::new();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut stream_tasks = Vec::new();

        // A UDP socket as the turn server sees it: answers leave from the address each client
        // sent to (see `pktinfo`), and every request passes the gate first (`guard`).
        let guarded_udp = |socket, address: SocketAddr, up: &Arc<AtomicBool>| {
            let socket =
                PktinfoConn::new(socket).map_err(|e| RelayError::Bind("UDP", address, e))?;
            let guard = GuardConn::udp(Arc::new(socket), Arc::clone(&shared), Arc::clone(up))
                .map_err(|e| RelayError::Bind("UDP", address, e))?;
            Ok::<_, RelayError>(turn::server::config::ConnConfig {
                conn: Arc::new(guard) as Arc<dyn Conn + Send + Sync>,
                relay_addr_generator: generator(),
            })
        };
        if let Some(first) = sockets.udp.first() {
            let address = first
                .local_addr()
                .map_err(|e| RelayError::Bind("UDP", SocketAddr::from(([0, 0, 0, 0], 0)), e))?;
            let up = Arc::new(AtomicBool::new(true));
            for socket in sockets.udp {
                conn_configs.push(guarded_udp(socket, address, &up)?);
            }
            listeners.push(Listener {
                transport: Transport::Udp,
                address,
                up,
            });
        }
        // Extra UDP listeners (UDP 443): each one a listener of its own, after the main one.
        for socket in sockets.udp_extra {
            let fallback = SocketAddr::from(([0, 0, 0, 0], 0));
            let address = socket
                .local_addr()
                .map_err(|e| RelayError::Bind("UDP", fallback, e))?;
            let up = Arc::new(AtomicBool::new(true));
            conn_configs.push(guarded_udp(socket, address, &up)?);
            listeners.push(Listener {
                transport: Transport::Udp,
                address,
                up,
            });
        }

        let stream_listeners = [
            sockets.tcp.map(|l| (Transport::Tcp, l, None)),
            sockets.tls.map(|(l, config)| {
                (
                    Transport::Tls,
                    l,
                    Some(tokio_rustls::TlsAcceptor::from(config)),
                )
            }),
        ];
        for (transport, listener, tls) in stream_listeners.into_iter().flatten() {
            let name = transport.as_str();
            let fallback = SocketAddr::from(([0, 0, 0, 0], 0));
            let address = listener
                .local_addr()
                .map_err(|e| RelayError::Bind(name, fallback, e))?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| RelayError::Bind(name, address, e))?;
            let up = Arc::new(AtomicBool::new(true));
            let mux = StreamMux::new(address);
            let guard = GuardConn::new(mux.clone(), Arc::clone(&shared), Arc::clone(&up))
                .map_err(|e| RelayError::Bind(name, address, e))?;
            conn_configs.push(turn::server::config::ConnConfig {
                conn: Arc::new(guard) as Arc<dyn Conn + Send + Sync>,
                relay_addr_generator: generator(),
            });
            stream_tasks.push(tokio::spawn(accept_loop(
                listener,
                tls,
                mux,
                Arc::clone(&shared),
                StreamLimits {
                    max_connections: options.max_stream_connections.max(1),
                    timeouts: options.stream_timeouts,
                },
                Arc::clone(&up),
                shutdown_rx.clone(),
            )));
            listeners.push(Listener {
                transport,
                address,
                up,
            });
        }

        let mut front_door = None;
        if let Some(local) = sockets.front_door {
            let limits = StreamLimits {
                max_connections: options.max_stream_connections.max(1),
                timeouts: options.stream_timeouts,
            };
            let (door, mux) =
                FrontDoor::new(local, Arc::clone(&shared), limits, shutdown_rx.clone());
            let up = Arc::new(AtomicBool::new(true));
            let guard = GuardConn::new(mux, Arc::clone(&shared), up)
                .map_err(|e| RelayError::Bind("TCP", local, e))?;
            conn_configs.push(turn::server::config::ConnConfig {
                conn: Arc::new(guard) as Arc<dyn Conn + Send + Sync>,
                relay_addr_generator: generator(),
            });
            front_door = Some(door);
        }

        if conn_configs.is_empty() {
            return Err(RelayError::NoListeners);
        }

        // `turn` sends on this channel whenever an allocation closes, and `Server::close()`
        // waits on those sends while holding a lock: the channel must always be drained.
        let (close_tx, mut close_rx) = mpsc::channel::<turn::allocation::AllocationInfo>(1024);
        let close_drain = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Some(info) = close_rx.recv().await {
                    shared.handle_allocation_closed((
                        info.five_tuple.src_addr,
                        info.five_tuple.dst_addr,
                    ));
                }
            }
        });

        let server = turn::server::Server::new(turn::server::config::ServerConfig {
            conn_configs,
            realm: options.realm.clone(),
            auth_handler: Arc::new(GuardAuth(Arc::clone(&shared))),
            channel_bind_timeout: std::time::Duration::ZERO,
            alloc_close_notify: Some(close_tx),
        })
        .await
        .map_err(RelayError::Server)?;

        Ok(RelayCore {
            server,
            shared,
            listeners,
            shutdown_tx,
            stream_tasks,
            close_drain,
            front_door,
        })
    }

    async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        if let Err(err) = self.server.close().await {
            log::warn!("turn: closing the relay: {err}");
        }
        for task in self.stream_tasks {
            let _ = task.await;
        }
        drop(self.server);
        // The drain task ends once every allocation manager (holding a sender) is gone.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.close_drain).await;
    }
}

/// A running relay.
///
/// The relay runs on its own thread with a single-threaded tokio runtime. On the daemon's
/// multi-threaded runtime every relayed datagram woke a second worker thread (the I/O driver
/// on one, the task on another): about 40 us of CPU per packet at call-like rates, against
/// 28 us for coturn. On one thread a packet costs a readiness event, a read and a write.
/// One core of relaying carries about 150 000 packets/s here, far above a small
/// organisation's calls; the daemon's other work stays on its own runtime.
pub struct Relay {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    done_rx: tokio::sync::oneshot::Receiver<()>,
    front_door: Option<FrontDoor>,
}

impl Relay {
    /// Starts serving on `sockets` on a new relay thread.
    pub async fn start(options: RelayOptions, sockets: RelaySockets) -> Result<Relay, RelayError> {
        type Ready = Result<(Arc<Shared>, Vec<Listener>, Option<FrontDoor>), RelayError>;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Ready>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("parley-relay".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(RelayError::Runtime(err)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match RelayCore::start(options, sockets).await {
                        Ok(core) => {
                            let listeners = core
                                .listeners
                                .iter()
                                .map(|l| Listener {
                                    transport: l.transport,
                                    address: l.address,
                                    up: Arc::clone(&l.up),
                                })
                                .collect();
                            let ready =
                                (Arc::clone(&core.shared), listeners, core.front_door.clone());
                            let _ = ready_tx.send(Ok(ready));
                            // Also returns when the `Relay` is dropped without `shutdown`.
                            let _ = stop_rx.await;
                            core.shutdown().await;
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(RelayError::Runtime)?;
        let (shared, listeners, front_door) =
            ready_rx.await.map_err(|_| RelayError::ThreadDied)??;
        Ok(Relay {
            shared,
            listeners,
            stop_tx: Some(stop_tx),
            done_rx,
            front_door,
        })
    }

    /// Each listener and whether it is still serving.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        self.listeners
            .iter()
            .map(|l| ListenerStatus {
                transport: l.transport,
                address: l.address,
                up: l.up.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The entry for TURN connections accepted by the HTTPS listener, if
    /// [`RelaySockets::add_front_door`] asked for one.
    pub fn front_door(&self) -> Option<FrontDoor> {
        self.front_door.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Appends the relay's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.shared.metrics.render(out);
    }

    /// How many nonces the server's table holds (bounded, see `nonce`).
    pub fn nonce_table_len(&self) -> usize {
        self.shared.lock().nonces.len()
    }

    /// Stops every listener, closes every allocation, and ends the relay thread.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.done_rx).await;
    }
}

fn rand_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("49152-65535").unwrap(), (49152, 65535));
        assert_eq!(parse_port_range(" 50000 - 50000 ").unwrap(), (50000, 50000));
        for bad in ["", "1", "0-10", "10-5", "a-b", "1-70000"] {
            let error = parse_port_range(bad).unwrap_err();
            assert!(error.to_string().contains("turn.relay_ports"), "{error}");
        }
    }

    #[tokio::test]
    async fn extra_udp_listeners_are_listed_after_the_main_one() {
        let mut sockets =
            RelaySockets::bind("127.0.0.1:0".parse().unwrap(), true, 1, true).unwrap();
        sockets
            .bind_udp_extra("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let main = sockets.udp_addr().unwrap();
        let extra = sockets.udp_extra_addrs();
        assert_eq!(extra.len(), 1);
        assert_ne!(extra[0], main);
        let relay = Relay::start(
            RelayOptions::new("s".into(), IpAddr::from([127, 0, 0, 1])),
            sockets,
        )
        .await
        .unwrap();
        let listed: Vec<(Transport, SocketAddr)> = relay
            .listeners()
            .iter()
            .map(|l| (l.transport, l.address))
            .collect();
        assert_eq!(
            listed,
            [
                (Transport::Udp, main),
                (Transport::Udp, extra[0]),
                (Transport::Tcp, main)
            ]
        );
        relay.shutdown().await;
    }

    #[test]
    fn a_wildcard_ipv6_listener_is_dual_stack() {
        let socket = udp_socket("[::]:0".parse().unwrap(), false).unwrap();
        let port = socket.local_addr().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"v4", ("127.0.0.1", port)).unwrap();
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"v4");
        assert_eq!(from.ip().to_string(), "::ffff:127.0.0.1");
    }

    #[tokio::test]
    async fn udp_and_tcp_share_a_free_port() {
        let sockets = RelaySockets::bind("127.0.0.1:0".parse().unwrap(), true, 2, true).unwrap();
        let udp = sockets.udp_addr().unwrap();
        assert_ne!(udp.port(), 0);
        assert_eq!(sockets.tcp_addr().unwrap(), udp);
        assert_eq!(sockets.udp.len(), 2);
    }
}
