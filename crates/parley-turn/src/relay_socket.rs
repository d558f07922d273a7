//! Relay sockets: a `RelayAddressGenerator` that binds inside `turn.relay_ports` and
//! advertises `turn.relay_address` (for 1:1 NAT), and a `Conn` wrapper on each relay socket
//! that counts traffic and applies the per-allocation bandwidth cap.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use crate::bandwidth::TokenBucket;
use crate::guard::Shared;
use crate::metrics::Metrics;

/// How many ports of the range one allocation tries before giving up (508 to the client).
const MAX_PORT_ATTEMPTS: u32 = 64;
/// Relay socket buffers: a video keyframe burst must fit while the task is scheduled away.
const RELAY_SOCKET_BUFFER: usize = 1 << 20;

pub(crate) struct PortRangeGenerator {
    pub bind_ip: IpAddr,
    pub advertised_ip: IpAddr,
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
        if use_ipv4 != self.bind_ip.is_ipv4() {
            return Err(turn::Error::ErrInvalidRequestedFamilyValue);
        }
        let ports: Vec<u16> = if requested_port != 0 {
            if !(self.low..=self.high).contains(&requested_port) {
                return Err(turn::Error::ErrMaxRetriesExceeded);
            }
            vec![requested_port]
        } else {
            self.candidate_ports()
        };
        for port in ports {
            let Ok(socket) = bind_relay_socket(SocketAddr::new(self.bind_ip, port)) else {
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
            let conn = RelayConn {
                socket,
                metrics: Arc::clone(&self.shared.metrics),
                buckets: bucket,
            };
            return Ok((Arc::new(conn), SocketAddr::new(self.advertised_ip, port)));
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

/// One allocation's relay socket.
struct RelayConn {
    socket: UdpSocket,
    metrics: Arc<Metrics>,
    /// (to peers, from peers) when a bandwidth limit is set.
    buckets: Option<Mutex<(TokenBucket, TokenBucket)>>,
}

impl RelayConn {
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
            Metrics::add(&self.metrics.bandwidth_drops, 1);
        }
        ok
    }
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if !self.allowed(n, false) {
                continue;
            }
            Metrics::add(&self.metrics.packets_from_peers, 1);
            Metrics::add(&self.metrics.bytes_from_peers, n as u64);
            return Ok((n, from));
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.allowed(buf.len(), true) {
            return Ok(buf.len()); // dropped like a congested link drops; not an error to log
        }
        let n = self.socket.send_to(buf, target).await?;
        Metrics::add(&self.metrics.packets_to_peers, 1);
        Metrics::add(&self.metrics.bytes_to_peers, n as u64);
        Ok(n)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
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
