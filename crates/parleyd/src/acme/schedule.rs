//! When to ask the ACME server for a certificate: a pure function of what is held and `now`.
//!
//! The shell (`acme/mod.rs`) reads the clock and the stored certificate, asks
//! [`Schedule::decide`] what to do, and reports back with [`Schedule::failed`] or
//! [`Schedule::issued`]. Tests drive it on a virtual clock.

use std::time::{Duration, SystemTime};

/// Renew this long before expiry at the latest (Let's Encrypt's 90-day certificates: at 60 days).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The first retry after a failure; each further failure doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(60);
/// Retries never wait longer than this, so a fixed DNS record or firewall is noticed the same day.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// What the daemon holds: the facts of its stored ACME certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names of the subjectAltName extension, lower case.
    pub names: Vec<String>,
}

impl Held {
    /// When renewal starts: 30 days before expiry, or at two thirds of the lifetime for a
    /// certificate shorter than 90 days (six-day certificates exist; renewing those 30 days
    /// early would mean renewing forever).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - RENEW_BEFORE.min(lifetime / 3)
    }

    pub fn covers(&self, name: &str) -> bool {
        self.names
            .iter()
            .any(|held| held.eq_ignore_ascii_case(name))
    }
}

/// Why a certificate is requested, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing stored yet (or the stored files are unreadable).
    NoCertificate,
    /// The stored certificate is for other names (`http.public_url` changed).
    OtherName,
    /// The renewal window has opened.
    Renewal,
    /// The stored certificate has expired.
    Expired,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no certificate issued yet",
            Reason::OtherName => "the stored certificate is for another name",
            Reason::Renewal => "the stored certificate is due for renewal",
            Reason::Expired => "the stored certificate has expired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Ask the ACME server now.
    Request(Reason),
    /// Nothing to do before this time (a renewal window or a retry after a failure).
    WaitUntil(SystemTime),
}

#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Failures since the last issuance.
    failures: u32,
    retry_at: Option<SystemTime>,
}

impl Schedule {
    pub fn new() -> Schedule {
        Schedule::default()
    }

    pub fn decide(&self, now: SystemTime, name: &str, held: Option<&Held>) -> Decision {
        if let Some(retry_at) = self.retry_at
            && now < retry_at
        {
            return Decision::WaitUntil(retry_at);
        }
        let Some(held) = held else {
            return Decision::Request(Reason::NoCertificate);
        };
        if !held.covers(name) {
            return Decision::Request(Reason::OtherName);
        }
        if now >= held.not_after {
            return Decision::Request(Reason::Expired);
        }
        let renew_at = held.renew_at();
        if now >= renew_at {
            Decision::Request(Reason::Renewal)
        } else {
            Decision::WaitUntil(renew_at)
        }
    }

    /// Records a failed attempt; returns how long until the next one (1 min, 2, 4, … 6 h).
    pub fn failed(&mut self, now: SystemTime) -> Duration {
        let doublings = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let wait = BACKOFF_FIRST
            .saturating_mul(1u32 << doublings)
            .min(BACKOFF_MAX);
        self.retry_at = Some(now + wait);
        wait
    }

    /// Records an issuance: the backoff starts again from one minute.
    pub fn issued(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const NAME: &str = "call.example.org";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn held(from: SystemTime, lifetime: Duration) -> Held {
        Held {
            not_before: from,
            not_after: from + lifetime,
            names: vec![NAME.to_owned()],
        }
    }

    #[test]
    fn with_no_certificate_it_requests_one_at_once() {
        assert_eq!(
            Schedule::new().decide(at(0), NAME, None),
            Decision::Request(Reason::NoCertificate)
        );
    }

    #[test]
    fn a_stored_valid_certificate_is_reused_until_30_days_before_expiry() {
        let cert = held(at(0), 90 * DAY);
        let schedule = Schedule::new();
        let renew_at = at(0) + 60 * DAY;
        assert_eq!(
            schedule.decide(at(0), NAME, Some(&cert)),
            Decision::WaitUntil(renew_at)
        );
        assert_eq!(
            schedule.decide(renew_at - Duration::from_secs(1), NAME, Some(&cert)),
            Decision::WaitUntil(renew_at)
        );
        assert_eq!(
            schedule.decide(renew_at, NAME, Some(&cert)),
            Decision::Request(Reason::Renewal)
        );
        assert_eq!(
            schedule.decide(at(0) + 90 * DAY, NAME, Some(&cert)),
            Decision::Request(Reason::Expired)
        );
    }

    #[test]
    fn a_long_certificate_still_renews_30_days_before_expiry() {
        let cert = held(at(0), 365 * DAY);
        assert_eq!(
            Schedule::new().decide(at(0), NAME, Some(&cert)),
            Decision::WaitUntil(at(0) + 335 * DAY)
        );
    }

    #[test]
    fn a_short_lived_certificate_renews_at_two_thirds_of_its_life() {
        let six_days = held(at(0), 6 * DAY);
        assert_eq!(six_days.renew_at(), at(0) + 4 * DAY);
        let two_minutes = held(at(0), Duration::from_secs(120));
        assert_eq!(
            Schedule::new().decide(at(79), NAME, Some(&two_minutes)),
            Decision::WaitUntil(at(80))
        );
        assert_eq!(
            Schedule::new().decide(at(80), NAME, Some(&two_minutes)),
            Decision::Request(Reason::Renewal)
        );
    }

    #[test]
    fn a_certificate_for_another_name_is_replaced() {
        let cert = Held {
            names: vec!["old.example.org".into()],
            ..held(at(0), 90 * DAY)
        };
        assert_eq!(
            Schedule::new().decide(at(0), NAME, Some(&cert)),
            Decision::Request(Reason::OtherName)
        );
        let upper = Held {
            names: vec!["CALL.example.org".into()],
            ..cert
        };
        assert!(upper.covers(NAME), "DNS names compare case-insensitively");
    }

    #[test]
    fn failures_back_off_from_one_minute_doubling_up_to_six_hours() {
        let mut schedule = Schedule::new();
        let mut now = at(0);
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert_eq!(
                schedule.decide(now, NAME, None),
                Decision::Request(Reason::NoCertificate)
            );
            let wait = schedule.failed(now);
            assert_eq!(
                schedule.decide(now + wait - Duration::from_secs(1), NAME, None),
                Decision::WaitUntil(now + wait),
                "no request before the backoff ends"
            );
            waits.push(wait.as_secs() / 60);
            now += wait;
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360, 360],
            "minutes"
        );
        assert_eq!(schedule.failures(), 12);
    }

    #[test]
    fn an_issuance_resets_the_backoff() {
        let mut schedule = Schedule::new();
        for _ in 0..5 {
            schedule.failed(at(0));
        }
        schedule.issued();
        assert_eq!(schedule.failed(at(0)), BACKOFF_FIRST);
    }

    #[test]
    fn a_failed_renewal_keeps_the_old_certificate_and_retries_later() {
        let cert = held(at(0), 90 * DAY);
        let mut schedule = Schedule::new();
        let renew_at = at(0) + 60 * DAY;
        let wait = schedule.failed(renew_at);
        assert_eq!(
            schedule.decide(renew_at, NAME, Some(&cert)),
            Decision::WaitUntil(renew_at + wait)
        );
        assert_eq!(
            schedule.decide(renew_at + wait, NAME, Some(&cert)),
            Decision::Request(Reason::Renewal)
        );
    }
}
