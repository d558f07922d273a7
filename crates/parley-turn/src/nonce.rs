//! Bounds the `turn` server's nonce table.
//!
//! `turn` 0.17 inserts a fresh nonce into a shared map for every request without
//! MESSAGE-INTEGRITY and for every unknown or stale nonce, and only removes an entry when a
//! client presents it again after its one-hour lifetime. A flood of unauthenticated requests
//! therefore grows the map without limit. The guard in front of the server keeps the map small:
//! it answers such requests itself with the newest nonce the server issued, lets a request
//! reach the server only when that nonce is missing or due for rotation, and purges retired
//! nonces by presenting them to the server once they are past the server's lifetime (the
//! server then deletes them, issuing one replacement). The table therefore holds at most
//! `NONCE_LIFETIME / ROTATE_AFTER + 2` entries. Pure: the clock is a parameter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The `turn` crate's fixed nonce lifetime (`server::request::NONCE_LIFETIME`).
pub const SERVER_NONCE_LIFETIME: Duration = Duration::from_secs(3600);
/// A new nonce is requested from the server once the current one is this old.
pub const ROTATE_AFTER: Duration = Duration::from_secs(600);
/// Clients presenting a nonce older than this get a fresh one from us (438), so that the
/// server never sees a nonce near its own expiry and never deletes one behind our back.
pub const ACCEPT_FOR: Duration = Duration::from_secs(3000);
/// Purge a retired nonce this long after the server's lifetime, well clear of clock skew
/// between our observation and the server's insertion.
const PURGE_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceVerdict {
    /// Let the server handle the request.
    Forward,
    /// Answer 401 ourselves with this nonce.
    Challenge(String),
    /// Answer 438 Stale Nonce ourselves with this nonce.
    Stale(String),
}

/// The nonces the server holds, as observed in its responses; newest last.
#[derive(Debug, Default)]
pub struct NonceGate {
    issued: VecDeque<(String, Instant)>,
}

impl NonceGate {
    /// The newest nonce, if it is fresh enough to hand out.
    fn current(&self, now: Instant) -> Option<&str> {
        let (nonce, since) = self.issued.back()?;
        (now.saturating_duration_since(*since) < ROTATE_AFTER).then_some(nonce.as_str())
    }

    /// A request without MESSAGE-INTEGRITY.
    pub fn handle_unauthenticated(&self, now: Instant) -> NonceVerdict {
        match self.current(now) {
            Some(nonce) => NonceVerdict::Challenge(nonce.to_owned()),
            None => NonceVerdict::Forward,
        }
    }

    /// A request with MESSAGE-INTEGRITY carrying `nonce`.
    pub fn handle_authenticated(&self, nonce: &str, now: Instant) -> NonceVerdict {
        let known = self.issued.iter().find(|(n, _)| n == nonce);
        if let Some((_, since)) = known
            && now.saturating_duration_since(*since) < ACCEPT_FOR
        {
            return NonceVerdict::Forward;
        }
        match self.current(now) {
            Some(current) => NonceVerdict::Stale(current.to_owned()),
            // Only when we have nothing fresh does the server mint one (then it is recorded).
            None => NonceVerdict::Forward,
        }
    }

    /// The server sent a response carrying `nonce`.
    pub fn handle_issued(&mut self, nonce: &str, now: Instant) {
        if self.issued.iter().any(|(n, _)| n == nonce) {
            return;
        }
        self.issued.push_back((nonce.to_owned(), now));
    }

    /// The oldest nonce that the server would now delete when presented; the caller presents
    /// it (and the server's replacement arrives through `handle_issued`).
    pub fn poll_purge(&mut self, now: Instant) -> Option<String> {
        let (_, since) = self.issued.front()?;
        if now.saturating_duration_since(*since) >= SERVER_NONCE_LIFETIME + PURGE_MARGIN {
            return self.issued.pop_front().map(|(nonce, _)| nonce);
        }
        None
    }

    /// How many nonces the server holds, as far as we know.
    pub fn len(&self) -> usize {
        self.issued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_unauthenticated_request_goes_to_the_server() {
        let gate = NonceGate::default();
        assert_eq!(
            gate.handle_unauthenticated(Instant::now()),
            NonceVerdict::Forward
        );
    }

    #[test]
    fn later_unauthenticated_requests_reuse_the_issued_nonce() {
        let now = Instant::now();
        let mut gate = NonceGate::default();
        gate.handle_issued("n1", now);
        for i in 0..10_000u64 {
            let t = now + Duration::from_millis(i);
            assert_eq!(
                gate.handle_unauthenticated(t),
                NonceVerdict::Challenge("n1".into())
            );
        }
        assert_eq!(gate.len(), 1);
    }

    #[test]
    fn nonce_rotates_after_its_turn() {
        let now = Instant::now();
        let mut gate = NonceGate::default();
        gate.handle_issued("n1", now);
        assert_eq!(
            gate.handle_unauthenticated(now + ROTATE_AFTER),
            NonceVerdict::Forward
        );
    }

    #[test]
    fn unknown_nonce_gets_stale_with_current() {
        let now = Instant::now();
        let mut gate = NonceGate::default();
        gate.handle_issued("n1", now);
        assert_eq!(
            gate.handle_authenticated("forged", now),
            NonceVerdict::Stale("n1".into())
        );
        assert_eq!(gate.handle_authenticated("n1", now), NonceVerdict::Forward);
    }

    #[test]
    fn old_nonce_is_refreshed_by_us_not_the_server() {
        let now = Instant::now();
        let mut gate = NonceGate::default();
        gate.handle_issued("n1", now);
        gate.handle_issued("n2", now + ACCEPT_FOR - Duration::from_secs(1));
        assert_eq!(
            gate.handle_authenticated("n1", now + ACCEPT_FOR),
            NonceVerdict::Stale("n2".into())
        );
    }

    #[test]
    fn purge_presents_nonces_past_the_server_lifetime() {
        let now = Instant::now();
        let mut gate = NonceGate::default();
        gate.handle_issued("n1", now);
        gate.handle_issued("n2", now + Duration::from_secs(700));
        assert_eq!(gate.poll_purge(now + SERVER_NONCE_LIFETIME), None);
        let due = now + SERVER_NONCE_LIFETIME + PURGE_MARGIN;
        assert_eq!(gate.poll_purge(due), Some("n1".into()));
        assert_eq!(gate.poll_purge(due), None);
        assert_eq!(gate.len(), 1);
    }

    #[test]
    fn table_stays_bounded_over_a_day_of_flooding() {
        // One unauthenticated request every 100 ms for 24 h, forwarding only when told to,
        // and the server answering every forwarded request with a fresh nonce.
        let start = Instant::now();
        let mut gate = NonceGate::default();
        let mut server_table = 0usize;
        let mut serial = 0u64;
        for tick in 0..(24 * 3600 * 10u64) {
            let now = start + Duration::from_millis(tick * 100);
            while gate.poll_purge(now).is_some() {
                server_table -= 1; // the server deletes the presented nonce...
                serial += 1; // ...and issues a replacement
                server_table += 1;
                gate.handle_issued(&format!("n{serial}"), now);
            }
            if gate.handle_unauthenticated(now) == NonceVerdict::Forward {
                serial += 1;
                server_table += 1;
                gate.handle_issued(&format!("n{serial}"), now);
            }
            assert!(
                server_table <= 9,
                "table grew to {server_table} at tick {tick}"
            );
        }
        assert_eq!(server_table, gate.len());
    }
}
