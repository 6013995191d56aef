//! The reconnect policy: capped exponential backoff with jitter, as a pure function.
//!
//! The delay before the `n`th consecutive failed attempt is drawn from
//! `[d/2, d)` where `d = min(cap, base * 2^(n-1))` ("equal jitter"): the lower half keeps a
//! relay that closes every connection at once from causing a tight loop, the random upper half
//! keeps many agents from redialling in lockstep.

use std::time::Duration;

/// First backoff step: 250 ms (so the first redial after a failure waits 125–250 ms).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Largest backoff step: 30 s.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How long the agent must go without a failure, with a connection parked, before the failure
/// count goes back to zero: 30 s.
pub const DEFAULT_HEALTHY_PERIOD: Duration = Duration::from_secs(30);

/// A backoff policy. Pure: the jitter is passed in, so tests can pin it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First step. Default: [`DEFAULT_BACKOFF_BASE`].
    pub base: Duration,
    /// Largest step. Default: [`DEFAULT_BACKOFF_CAP`].
    pub cap: Duration,
    /// Failure-free time after which the failure count resets. Default:
    /// [`DEFAULT_HEALTHY_PERIOD`].
    pub healthy_period: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
            healthy_period: DEFAULT_HEALTHY_PERIOD,
        }
    }
}

impl Backoff {
    /// The un-jittered step after `failures` consecutive failures (`0` means none: no wait).
    pub fn step(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay after `failures` consecutive failures, with `jitter` in `[0, 1)` choosing a
    /// point in `[step/2, step)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let step = self.step(failures);
        let half = step / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn delay_random(&self, failures: u32) -> Duration {
        self.delay(failures, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let b = Backoff::default();
        assert_eq!(b.base, Duration::from_millis(250));
        assert_eq!(b.cap, Duration::from_secs(30));
        assert_eq!(b.healthy_period, Duration::from_secs(30));
    }

    #[test]
    fn steps_double_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.step(0), Duration::ZERO);
        assert_eq!(b.step(1), Duration::from_millis(250));
        assert_eq!(b.step(2), Duration::from_millis(500));
        assert_eq!(b.step(3), Duration::from_secs(1));
        assert_eq!(b.step(8), Duration::from_secs(30));
        assert_eq!(b.step(1000), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::default();
        for failures in 1..40 {
            let step = b.step(failures);
            let lo = b.delay(failures, 0.0);
            let hi = b.delay(failures, 0.999_999);
            assert_eq!(lo, step / 2);
            assert!(hi < step + Duration::from_nanos(1));
            assert!(b.delay_random(failures) >= step / 2);
            assert!(b.delay_random(failures) <= b.cap);
        }
    }

    #[test]
    fn never_a_tight_loop() {
        // Even the first failure waits at least base/2.
        let b = Backoff::default();
        assert!(b.delay(1, 0.0) >= Duration::from_millis(125));
    }
}
