//! Rate limiting: a token bucket refilled from the time passed in (it never reads a clock).
//!
//! The swarm holds one bucket for its uploads (taken per block) and one for its downloads
//! (taken per chunk requested). `ready_at` lets the caller sleep exactly until the next take
//! can succeed, so a rate-limited agent neither spins nor oversleeps.

use crate::core::wire::BLOCK_SIZE;
use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, holding at most `burst`.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket allowing `rate` bytes per second (0: unlimited), bursting one block or 50 ms.
    pub fn new(rate: u64) -> Self {
        Self::with_burst(rate, (rate / 20).max(BLOCK_SIZE as u64))
    }

    /// A bucket allowing `rate` bytes per second that holds at most `burst` (at least one take).
    pub fn with_burst(rate: u64, burst: u64) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: None }
    }

    /// True if `n` tokens were not there at the last refill: whoever waits for them needs a timer.
    pub fn is_short(&self, n: u64) -> bool {
        self.rate > 0 && self.tokens < n
    }

    /// Gives back tokens taken for something that did not happen.
    pub fn refund(&mut self, n: u64) {
        self.tokens = (self.tokens + n).min(self.burst);
    }

    /// Adds the tokens earned since the last refill.
    pub fn refill(&mut self, now: Instant) {
        if self.rate == 0 {
            return;
        }
        let last = *self.last.get_or_insert(now);
        let dt = now.saturating_duration_since(last);
        let add = (self.rate as u128 * dt.as_nanos() / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            // Advance only by the time the added tokens account for, so rounding never leaks.
            let used = Duration::from_nanos((add as u128 * 1_000_000_000 / self.rate as u128) as u64);
            self.last = Some(if self.tokens == self.burst { now } else { last + used });
        }
    }

    /// Takes `n` tokens if available.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// When `n` tokens will be available (now if unlimited).
    pub fn ready_at(&self, n: u64, now: Instant) -> Instant {
        if self.rate == 0 || self.tokens >= n {
            return now;
        }
        let need = (n - self.tokens) as u128;
        let last = self.last.unwrap_or(now);
        last + Duration::from_nanos((need * 1_000_000_000).div_ceil(self.rate as u128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_takes_and_never_needs_a_timer() {
        let mut b = TokenBucket::new(0);
        let now = Instant::now();
        assert!(b.take(u64::MAX / 2, now));
        assert!(!b.is_short(u64::MAX));
        assert_eq!(b.ready_at(1 << 40, now), now);
    }

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(1000, 500);
        assert!(b.take(500, t0), "a new bucket holds its burst");
        assert!(!b.take(1, t0), "and then nothing more");
        assert!(b.is_short(1));
        assert!(!b.take(200, t0 + Duration::from_millis(100)), "100 ms earns 100 tokens, not 200");
        assert!(b.take(200, t0 + Duration::from_millis(200)), "200 ms earns 200 tokens");
    }

    #[test]
    fn never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(1000, 300);
        assert!(b.take(300, t0));
        // A long pause earns at most the burst.
        assert!(b.take(300, t0 + Duration::from_secs(60)));
        assert!(!b.take(1, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn ready_at_is_exactly_when_a_take_succeeds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(1000, 100);
        assert!(b.take(100, t0));
        let at = b.ready_at(50, t0);
        assert_eq!(at, t0 + Duration::from_millis(50));
        assert!(!b.take(50, at - Duration::from_millis(1)));
        assert!(b.take(50, at));
    }

    #[test]
    fn refund_gives_back_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(1000, 100);
        assert!(b.take(100, t0));
        b.refund(60);
        assert!(b.take(60, t0));
        b.refund(1000);
        assert!(b.take(100, t0) && !b.take(1, t0), "a refund never overfills");
    }

    #[test]
    fn the_rate_holds_over_many_small_takes_without_rounding_leaks() {
        // 16 KiB blocks at 1 MB/s for 10 simulated seconds: within one block of the ideal.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000);
        let (mut sent, mut now) = (0u64, t0);
        while now < t0 + Duration::from_secs(10) {
            if b.take(BLOCK_SIZE as u64, now) {
                sent += BLOCK_SIZE as u64;
            } else {
                now = b.ready_at(BLOCK_SIZE as u64, now).max(now + Duration::from_micros(1));
            }
        }
        let ideal = 10_000_000 + b.burst;
        assert!(sent.abs_diff(ideal) <= BLOCK_SIZE as u64, "sent {sent}, ideal {ideal}");
    }
}
