//! The reconnect policy: capped exponential backoff with jitter, as pure functions.
//!
//! The delay before the `n`th consecutive failed attempt is drawn from
//! `[d/2, d)` where `d = min(cap, base * 2^(n-1))` ("equal jitter"): the lower half keeps a
//! relay that closes every connection at once from causing a tight loop, the random upper half
//! keeps many agents from redialling in lockstep.
//!
//! An *outage* (failures that begin while the agent was healthy: connected, and no failure for
//! `healthy_period`) is probed faster: for `outage_window` from its first failure the count
//! stops growing at the step closest to `outage_probe` (1 s), so an agent is back within about
//! a second of its relay, for outages up to a minute. Past the window the count grows again from
//! there, doubling to the cap ([`Backoff::next_failures`]).

use std::time::Duration;

/// First backoff step: 250 ms (so the first redial after a failure waits 125–250 ms).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Largest backoff step: 30 s.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How long the agent must go without a failure, with a connection parked, before the failure
/// count goes back to zero: 30 s.
pub const DEFAULT_HEALTHY_PERIOD: Duration = Duration::from_secs(30);

/// Longest step while an outage that followed a healthy period is probed: 1 s (so probes come
/// every 0.5–1 s with the jitter).
///
/// The whole point of probing faster is the first second after the relay is back; a relay that
/// is down answers a probe with a refused TCP connect, which costs it nothing. A relay that is
/// up but overloaded should answer `429`/`503` with `Retry-After`, which the agent honours over
/// any step.
pub const DEFAULT_OUTAGE_PROBE: Duration = Duration::from_secs(1);

/// How long from its first failure an outage is probed at [`DEFAULT_OUTAGE_PROBE`]: 60 s. Past
/// it the backoff grows again (2 s, 4 s, ... up to the cap): a relay that stays away that long
/// is likely being replaced or moved, not restarted.
pub const DEFAULT_OUTAGE_WINDOW: Duration = Duration::from_secs(60);

/// A backoff policy. Pure: the jitter and the clock are passed in, so tests can pin them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First step. Default: [`DEFAULT_BACKOFF_BASE`].
    pub base: Duration,
    /// Largest step. Default: [`DEFAULT_BACKOFF_CAP`].
    pub cap: Duration,
    /// Failure-free time after which the failure count resets. Default:
    /// [`DEFAULT_HEALTHY_PERIOD`].
    pub healthy_period: Duration,
    /// Longest step while an outage is probed. Default: [`DEFAULT_OUTAGE_PROBE`].
    pub outage_probe: Duration,
    /// How long an outage is probed at `outage_probe`. Default: [`DEFAULT_OUTAGE_WINDOW`].
    pub outage_window: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
            healthy_period: DEFAULT_HEALTHY_PERIOD,
            outage_probe: DEFAULT_OUTAGE_PROBE,
            outage_window: DEFAULT_OUTAGE_WINDOW,
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

    /// The failure count after one more failure. `outage` is how long ago the outage began, if
    /// these failures began while the agent was healthy (`None` otherwise: the agent never
    /// connected, or it was failing already). Within `outage_window` the count stops at
    /// [`Backoff::probe_failures`]; otherwise it grows by one.
    pub fn next_failures(&self, failures: u32, outage: Option<Duration>) -> u32 {
        let next = failures.saturating_add(1);
        match outage {
            Some(since) if since < self.outage_window => next.min(self.probe_failures()),
            _ => next,
        }
    }

    /// The failure count whose step is the one used to probe an outage: the largest step not
    /// above `outage_probe` (3, a 1 s step, with the defaults), or the first step if even that
    /// is larger.
    pub fn probe_failures(&self) -> u32 {
        let mut n = 1;
        // Bounded: the step stops growing at the cap, and the count at 64.
        while n < 64 && self.step(n + 1) <= self.outage_probe && self.step(n + 1) > self.step(n) {
            n += 1;
        }
        n
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
        assert_eq!(b.outage_probe, Duration::from_secs(1));
        assert_eq!(b.outage_window, Duration::from_secs(60));
        assert_eq!(b.probe_failures(), 3);
        assert_eq!(b.step(b.probe_failures()), Duration::from_secs(1));
    }

    /// The probe times of an outage that began at 0, with the longest delays the jitter allows,
    /// until `until`.
    fn probes(b: &Backoff, outage: bool, until: Duration) -> Vec<Duration> {
        let (mut t, mut failures, mut times) = (Duration::ZERO, 0, Vec::new());
        while t < until {
            // Each probe fails (the relay is still away): one more failure, then its delay.
            failures = b.next_failures(failures, outage.then_some(t));
            t += b.delay(failures, 0.999_999);
            times.push(t);
        }
        times
    }

    #[test]
    fn an_outage_after_health_is_probed_every_second_for_a_minute() {
        let b = Backoff::default();
        let times = probes(&b, true, Duration::from_secs(120));
        // Whenever the relay comes back within the first minute, the next probe is at most
        // one probe step later.
        for back_ms in (0..=60_000).step_by(10) {
            let back = Duration::from_millis(back_ms);
            let next = times.iter().find(|&&t| t >= back).unwrap();
            assert!(
                *next - back <= b.outage_probe,
                "relay back at {back:?}: next probe at {next:?}"
            );
        }
        // Then the backoff grows again, doubling from the probe step to the cap, not jumping.
        let late: Vec<_> = times
            .windows(2)
            .filter(|w| w[0] >= b.outage_window)
            .collect();
        let gaps: Vec<_> = late.iter().map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] < Duration::from_secs(2), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= b.cap), "{gaps:?}");
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps.last().unwrap() > &(b.cap / 2), "{gaps:?}");
    }

    #[test]
    fn failures_outside_an_outage_grow_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.next_failures(0, None), 1);
        assert_eq!(b.next_failures(7, None), 8);
        assert_eq!(b.next_failures(7, Some(Duration::from_secs(59))), 3);
        assert_eq!(b.next_failures(3, Some(Duration::from_secs(60))), 4);
        assert_eq!(b.next_failures(u32::MAX, None), u32::MAX);
        // Never healthy (an agent started while its relay is down): the old schedule, up to the
        // cap within a minute.
        let times = probes(&b, false, Duration::from_secs(120));
        let gap = times[times.len() - 1] - times[times.len() - 2];
        assert!(gap > b.cap / 2, "{gap:?}");
    }

    #[test]
    fn the_probe_step_fits_any_policy() {
        let fast = Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            ..Backoff::default()
        };
        // The cap is below the probe step: probing at the cap.
        assert_eq!(fast.step(fast.probe_failures()), fast.cap);
        let slow = Backoff {
            base: Duration::from_secs(2),
            ..Backoff::default()
        };
        // Even the first step is above the probe step: probing at the first step.
        assert_eq!(slow.probe_failures(), 1);
        let odd = Backoff {
            outage_probe: Duration::from_millis(1500),
            ..Backoff::default()
        };
        assert_eq!(odd.step(odd.probe_failures()), Duration::from_secs(1));
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
