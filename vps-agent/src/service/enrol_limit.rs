//! The enrolment limiter: an address that keeps failing to enrol (a token
//! guesser) is turned away for a while, and logged once, not per attempt.

use ceres_sync::Unpoison;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed enrolments allowed per address per window: tokens are 256-bit
/// random, so guessing is hopeless anyway; the limit keeps a guesser from
/// burning CPU on CSR checks and flooding the log.
const ENROLL_FAILURES: u32 = 5;
/// The window of [`ENROLL_FAILURES`].
const ENROLL_WINDOW: Duration = Duration::from_secs(600);

/// Failed enrolments of one client address in the current window.
#[derive(Debug)]
struct Failures {
    count: u32,
    since: Instant,
    /// The block was logged; later refusals in the window are not, so a
    /// guessing flood cannot fill the journal.
    logged: bool,
}

/// Counts failed enrolments per client address.
#[derive(Debug, Default)]
pub(super) struct FailureLimit {
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
}

/// An address over the limit: how long until it may try again, and whether
/// this is the first refusal of the window (the one to log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Blocked {
    pub(super) wait: Duration,
    pub(super) first: bool,
}

impl FailureLimit {
    /// `Err` while `ip` is over the limit.
    pub(super) fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let mut map = self.by_ip.locked();
        match map.get_mut(&ip) {
            Some(f) if f.count >= ENROLL_FAILURES && f.since.elapsed() < ENROLL_WINDOW => {
                let first = !f.logged;
                f.logged = true;
                Err(Blocked {
                    wait: ENROLL_WINDOW - f.since.elapsed(),
                    first,
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed enrolment from `ip`.
    pub(super) fn failed(&self, ip: IpAddr) {
        let mut map = self.by_ip.locked();
        // Old entries go, so the map cannot grow without bound.
        map.retain(|_, f| f.since.elapsed() < ENROLL_WINDOW);
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            since: Instant::now(),
            logged: false,
        });
        f.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_and_logged_once() {
        let limit = FailureLimit::default();
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..ENROLL_FAILURES {
            assert_eq!(limit.check(guesser), Ok(()));
            limit.failed(guesser);
        }
        let first = limit.check(guesser).unwrap_err();
        assert!(first.first, "the first refusal is the one logged");
        assert!(first.wait > Duration::ZERO && first.wait <= ENROLL_WINDOW);
        let again = limit.check(guesser).unwrap_err();
        assert!(!again.first, "later refusals in the window are not logged");
        // Another address is not held to the guesser's failures.
        assert_eq!(limit.check(other), Ok(()));
    }
}
