//! A token bucket for the optional per-allocation bandwidth cap (`turn.bandwidth_limit_kbps`).

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// One second's worth of traffic may burst, but never less than 64 KiB, so that a video
    /// keyframe's packet train is not cut at low limits.
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let burst = (bytes_per_sec as f64).max(65536.0);
        TokenBucket {
            bytes_per_sec: bytes_per_sec as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `bytes` if available.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.burst);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_limits_sustained_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100_000, start);
        let mut passed = 0usize;
        // 10 s of offered load at 10x the limit, 1000-byte packets every 1 ms.
        for ms in 0..10_000u64 {
            if bucket.take(1000, start + Duration::from_millis(ms)) {
                passed += 1000;
            }
        }
        // 100 kB/s for 10 s plus the initial burst.
        assert!((1_000_000..=1_100_000 + 1000).contains(&passed), "{passed}");
    }

    #[test]
    fn bucket_allows_a_burst() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(1000, now);
        assert!(bucket.take(60_000, now));
        assert!(!bucket.take(10_000, now));
    }
}
