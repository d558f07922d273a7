//! Relay counters, rendered in the Prometheus text format by the daemon's `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters are monotonic except `allocations_active`, a gauge.
#[derive(Debug, Default)]
pub struct Metrics {
    pub allocations_active: AtomicU64,
    pub allocations_total: AtomicU64,
    pub bytes_to_peers: AtomicU64,
    pub packets_to_peers: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    pub packets_from_peers: AtomicU64,
    pub auth_failures: AtomicU64,
    pub refused_peers: AtomicU64,
    pub quota_refusals: AtomicU64,
    pub bandwidth_drops: AtomicU64,
    pub challenges_answered: AtomicU64,
    pub stream_connections: AtomicU64,
    /// Requests refused before any rule: malformed (400) or with unknown attributes (420).
    pub malformed_requests: AtomicU64,
    /// TCP/TLS connections closed for a slow handshake, a half-sent frame or idleness.
    pub stream_timeouts: AtomicU64,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Relaxed);
    }

    /// Appends the relay's metrics to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 14] = [
            (
                "parley_turn_allocations",
                "gauge",
                "TURN allocations currently active",
                &self.allocations_active,
            ),
            (
                "parley_turn_allocations_total",
                "counter",
                "TURN allocations created",
                &self.allocations_total,
            ),
            (
                "parley_turn_relayed_bytes_to_peers_total",
                "counter",
                "payload bytes relayed from clients to peers",
                &self.bytes_to_peers,
            ),
            (
                "parley_turn_relayed_packets_to_peers_total",
                "counter",
                "datagrams relayed from clients to peers",
                &self.packets_to_peers,
            ),
            (
                "parley_turn_relayed_bytes_from_peers_total",
                "counter",
                "payload bytes received from peers on relay sockets",
                &self.bytes_from_peers,
            ),
            (
                "parley_turn_relayed_packets_from_peers_total",
                "counter",
                "datagrams received from peers on relay sockets",
                &self.packets_from_peers,
            ),
            (
                "parley_turn_auth_failures_total",
                "counter",
                "requests refused for expired, forged or malformed credentials",
                &self.auth_failures,
            ),
            (
                "parley_turn_refused_peers_total",
                "counter",
                "CreatePermission/ChannelBind requests and Send indications refused by the peer-address policy, and datagrams to denied peers dropped at the relay socket",
                &self.refused_peers,
            ),
            (
                "parley_turn_quota_refusals_total",
                "counter",
                "Allocate requests refused with 486 (allocation quota reached)",
                &self.quota_refusals,
            ),
            (
                "parley_turn_bandwidth_drops_total",
                "counter",
                "datagrams dropped by the per-allocation bandwidth limit",
                &self.bandwidth_drops,
            ),
            (
                "parley_turn_challenges_answered_total",
                "counter",
                "unauthenticated requests answered without reaching the TURN server",
                &self.challenges_answered,
            ),
            (
                "parley_turn_stream_connections",
                "gauge",
                "open TURN-over-TCP/TLS connections",
                &self.stream_connections,
            ),
            (
                "parley_turn_malformed_requests_total",
                "counter",
                "requests answered 400 or 420 before any rule (malformed, duplicated or unknown attributes)",
                &self.malformed_requests,
            ),
            (
                "parley_turn_stream_timeouts_total",
                "counter",
                "TURN-over-TCP/TLS connections closed for a slow handshake, a half-sent frame or idleness",
                &self.stream_timeouts,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.refused_peers, 3);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains(
            "# TYPE parley_turn_refused_peers_total counter\nparley_turn_refused_peers_total 3\n"
        ));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(name.starts_with("parley_turn_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}
