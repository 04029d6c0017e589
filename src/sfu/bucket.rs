//! A token bucket in virtual time: what one participant may send per second (signalling
//! frames, data packets and bytes, chat messages). Sans-IO like the engine: the caller
//! passes `now`, so tests run it without a clock.

use std::time::{Duration, Instant};

/// Refills `rate` tokens per second up to `burst`; each use takes some.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate: rate_per_sec,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes `cost` tokens if there are enough; false (and nothing taken) otherwise.
    pub fn take(&mut self, now: Instant, cost: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = now.max(self.updated);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Takes `cost` tokens now or on credit, and says how long the caller must wait for
    /// them to be there: a queue paced at `rate` with `burst` free of waiting.
    pub fn reserve(&mut self, now: Instant, cost: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = now.max(self.updated);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst) - cost;
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// How long until `cost` tokens are there (zero when they are now).
    pub fn wait_for(&self, now: Instant, cost: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let have = (self.tokens + elapsed * self.rate).min(self.burst);
        if have >= cost || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((cost - have) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert_eq!((0..8).filter(|_| bucket.take(t0, 1.0)).count(), 5);
        // 100 ms later one token is back, not more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.take(t1, 1.0));
        assert!(!bucket.take(t1, 1.0));
        let wait = bucket.wait_for(t1, 1.0);
        assert!(
            wait.abs_diff(Duration::from_millis(100)) < Duration::from_micros(10),
            "{wait:?}"
        );
        // Never more than the burst, however long it rested.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..8).filter(|_| bucket.take(t2, 1.0)).count(), 5);
        // A cost larger than what is there takes nothing.
        let t3 = t2 + Duration::from_millis(300);
        assert!(!bucket.take(t3, 4.0));
        assert!(bucket.take(t3, 3.0));
    }

    #[test]
    fn reservations_queue_up_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3.0, t0);
        let waits: Vec<Duration> = (0..6).map(|_| bucket.reserve(t0, 1.0)).collect();
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        // Three free, then one every 500 ms (rounded down to whole ms).
        assert!(ms[..3].iter().all(|&m| m == 0), "{ms:?}");
        for (got, want) in ms[3..].iter().zip([500, 1000, 1500]) {
            assert!(got.abs_diff(want) <= 1, "{ms:?}");
        }
        // Once the debt is paid, the burst comes back.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(bucket.reserve(later, 1.0), Duration::ZERO);
    }
}
