//! Allocation quotas: per user and in total (RFC 8656 7.2 step 7, 486 Allocation Quota Reached).
//!
//! `turn` has no quota hook, so the guard in front of it counts: an authenticated Allocate
//! reserves a slot under its transaction id, the success response commits it, an error
//! response releases it, and `alloc_close_notify` frees it. Reservations matter because
//! several listeners feed one server concurrently. Pure: the clock is a parameter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An allocation is identified by the client's address and the listener's address.
pub type AllocationKey = (SocketAddr, SocketAddr);

/// A reservation whose response never came (the server dropped the request) is forgotten
/// after this long, so a lost packet cannot leak a slot.
pub const RESERVATION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaVerdict {
    /// Slot reserved: forward the request.
    Reserved,
    /// The 5-tuple already has an allocation: forward, the server answers 437 itself.
    Existing,
    UserQuotaReached,
    TotalQuotaReached,
}

#[derive(Debug)]
struct Pending {
    key: AllocationKey,
    user: String,
    since: Instant,
}

#[derive(Debug)]
pub struct Quotas {
    max_total: usize,
    max_per_user: usize,
    active: HashMap<AllocationKey, String>,
    per_user: HashMap<String, usize>,
    pending: HashMap<[u8; 12], Pending>,
}

impl Quotas {
    /// A limit of 0 means unlimited.
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Quotas {
            max_total: if max_total == 0 {
                usize::MAX
            } else {
                max_total
            },
            max_per_user: if max_per_user == 0 {
                usize::MAX
            } else {
                max_per_user
            },
            active: HashMap::new(),
            per_user: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }

    fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.since) < RESERVATION_TIMEOUT);
    }

    fn used_by(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
            + self.pending.values().filter(|p| p.user == user).count()
    }

    /// An authenticated Allocate request arrived.
    pub fn handle_allocate_request(
        &mut self,
        transaction_id: [u8; 12],
        key: AllocationKey,
        user: &str,
        now: Instant,
    ) -> QuotaVerdict {
        self.expire(now);
        if self.active.contains_key(&key) {
            return QuotaVerdict::Existing;
        }
        if self.pending.contains_key(&transaction_id) {
            return QuotaVerdict::Reserved; // a retransmission: the slot is already held
        }
        if self.active.len() + self.pending.len() >= self.max_total {
            return QuotaVerdict::TotalQuotaReached;
        }
        if self.used_by(user) >= self.max_per_user {
            return QuotaVerdict::UserQuotaReached;
        }
        self.pending.insert(
            transaction_id,
            Pending {
                key,
                user: user.to_owned(),
                since: now,
            },
        );
        QuotaVerdict::Reserved
    }

    /// The server answered an Allocate request: success commits the reservation.
    pub fn handle_allocate_response(&mut self, transaction_id: [u8; 12], success: bool) {
        let Some(pending) = self.pending.remove(&transaction_id) else {
            return;
        };
        if success && !self.active.contains_key(&pending.key) {
            *self.per_user.entry(pending.user.clone()).or_default() += 1;
            self.active.insert(pending.key, pending.user);
        }
    }

    /// The allocation ended (expired, refreshed to 0, or the server closed).
    pub fn handle_allocation_closed(&mut self, key: AllocationKey) {
        if let Some(user) = self.active.remove(&key)
            && let Some(count) = self.per_user.get_mut(&user)
        {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&user);
            }
        }
    }

    /// The user behind an active allocation.
    pub fn user_of(&self, key: &AllocationKey) -> Option<&str> {
        self.active.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> AllocationKey {
        (
            SocketAddr::from(([192, 0, 2, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], 3478)),
        )
    }

    fn tid(n: u8) -> [u8; 12] {
        [n; 12]
    }

    #[test]
    fn per_user_quota_counts_committed_and_pending() {
        let now = Instant::now();
        let mut quotas = Quotas::new(100, 2);
        assert_eq!(
            quotas.handle_allocate_request(tid(1), key(1), "7", now),
            QuotaVerdict::Reserved
        );
        quotas.handle_allocate_response(tid(1), true);
        assert_eq!(
            quotas.handle_allocate_request(tid(2), key(2), "7", now),
            QuotaVerdict::Reserved
        );
        assert_eq!(
            quotas.handle_allocate_request(tid(3), key(3), "7", now),
            QuotaVerdict::UserQuotaReached
        );
        assert_eq!(
            quotas.handle_allocate_request(tid(4), key(4), "8", now),
            QuotaVerdict::Reserved,
            "other users unaffected"
        );
    }

    #[test]
    fn total_quota_applies_across_users() {
        let now = Instant::now();
        let mut quotas = Quotas::new(2, 10);
        for (n, user) in [(1, "a"), (2, "b")] {
            assert_eq!(
                quotas.handle_allocate_request(tid(n), key(n.into()), user, now),
                QuotaVerdict::Reserved
            );
            quotas.handle_allocate_response(tid(n), true);
        }
        assert_eq!(
            quotas.handle_allocate_request(tid(3), key(3), "c", now),
            QuotaVerdict::TotalQuotaReached
        );
        assert_eq!(quotas.active(), 2);
    }

    #[test]
    fn error_response_releases_the_reservation() {
        let now = Instant::now();
        let mut quotas = Quotas::new(1, 1);
        quotas.handle_allocate_request(tid(1), key(1), "a", now);
        quotas.handle_allocate_response(tid(1), false);
        assert_eq!(
            quotas.handle_allocate_request(tid(2), key(2), "a", now),
            QuotaVerdict::Reserved
        );
    }

    #[test]
    fn closing_an_allocation_frees_its_slot() {
        let now = Instant::now();
        let mut quotas = Quotas::new(1, 1);
        quotas.handle_allocate_request(tid(1), key(1), "a", now);
        quotas.handle_allocate_response(tid(1), true);
        assert_eq!(quotas.user_of(&key(1)), Some("a"));
        quotas.handle_allocation_closed(key(1));
        assert_eq!(quotas.active(), 0);
        assert_eq!(
            quotas.handle_allocate_request(tid(2), key(2), "a", now),
            QuotaVerdict::Reserved
        );
    }

    #[test]
    fn lost_response_frees_the_reservation_after_timeout() {
        let now = Instant::now();
        let mut quotas = Quotas::new(1, 1);
        quotas.handle_allocate_request(tid(1), key(1), "a", now);
        assert_eq!(
            quotas.handle_allocate_request(tid(2), key(2), "a", now),
            QuotaVerdict::TotalQuotaReached
        );
        let later = now + RESERVATION_TIMEOUT;
        assert_eq!(
            quotas.handle_allocate_request(tid(2), key(2), "a", later),
            QuotaVerdict::Reserved
        );
    }

    #[test]
    fn retransmission_and_existing_allocation_do_not_count_twice() {
        let now = Instant::now();
        let mut quotas = Quotas::new(1, 1);
        assert_eq!(
            quotas.handle_allocate_request(tid(1), key(1), "a", now),
            QuotaVerdict::Reserved
        );
        assert_eq!(
            quotas.handle_allocate_request(tid(1), key(1), "a", now),
            QuotaVerdict::Reserved
        );
        quotas.handle_allocate_response(tid(1), true);
        assert_eq!(
            quotas.handle_allocate_request(tid(1), key(1), "a", now),
            QuotaVerdict::Existing
        );
        quotas.handle_allocate_response(tid(1), false); // the server's 437 for the retransmission
        assert_eq!(
            quotas.active(),
            1,
            "a late error for a committed transaction changes nothing"
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let now = Instant::now();
        let mut quotas = Quotas::new(0, 0);
        for n in 0..50u8 {
            assert_eq!(
                quotas.handle_allocate_request(tid(n), key(n.into()), "a", now),
                QuotaVerdict::Reserved
            );
            quotas.handle_allocate_response(tid(n), true);
        }
    }
}
