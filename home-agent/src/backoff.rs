//! Reconnect delays: exponential, capped, with full jitter, so a VPS that
//! comes back is not hit by every client at the same instant and a dead one
//! is not hammered.

use std::time::Duration;

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start around `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in [ceiling/2, ceiling], where the
    /// ceiling doubles per attempt up to the cap. (Half the ceiling as floor
    /// keeps retries from bunching near zero.)
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let lo = ceiling / 2;
        let span = (ceiling - lo).as_millis() as u64;
        lo + Duration::from_millis(if span == 0 {
            0
        } else {
            rand::random_range(0..=span)
        })
    }

    /// The current ceiling.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Back to the first delay (after a session that held).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..40 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d <= ceiling && d >= ceiling / 2,
                "{d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            assert!(ceiling >= last_ceiling);
            last_ceiling = ceiling;
        }
        assert_eq!(last_ceiling, Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            b.next_delay();
            b.next_delay();
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "delays not spread: {seen:?}");
    }
}
