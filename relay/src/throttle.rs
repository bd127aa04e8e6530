//! Log throttling: at most one line per window, the next line saying how many
//! were held back. A flood against a limit (or of failed handshakes) would
//! otherwise write a line per connection; counters keep the exact numbers.
//!
//! Used per port and kind by the relays, and per source address by the VPS's
//! control plane (see [`KeyedThrottle`]).

use ceres_sync::Unpoison;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One throttled kind of log line.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Milliseconds (on [`clock_ms`]) of the last line logged; 0: never.
    last_ms: AtomicU64,
    /// Lines held back since the last one logged.
    held: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when a line may be logged now (`n` lines were held back since
    /// the last one), `None` when it is held back. At most one `Some` per
    /// `every_ms`, also under concurrent calls.
    pub fn admit(&self, now_ms: u64, every_ms: u64) -> Option<u64> {
        let prev = self.last_ms.load(Ordering::Relaxed);
        let now = now_ms.max(1);
        if (prev != 0 && now.saturating_sub(prev) < every_ms)
            || self
                .last_ms
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }

    /// The window passed since the last line: a new call would log, and this
    /// entry can be forgotten once nothing is held back.
    fn expired(&self, now_ms: u64, every_ms: u64) -> bool {
        let prev = self.last_ms.load(Ordering::Relaxed);
        prev == 0 || now_ms.max(1).saturating_sub(prev) >= every_ms
    }
}

/// A [`Throttle`] per key (e.g. per source network), in bounded memory: at
/// most `max_keys` are tracked; when full, expired ones are forgotten, and if
/// none is, the key shares one overflow throttle with every other untracked
/// key (a flood from very many addresses then logs one line per window).
#[derive(Debug)]
pub struct KeyedThrottle<K> {
    every_ms: u64,
    max_keys: usize,
    keys: Mutex<HashMap<K, Throttle>>,
    overflow: Throttle,
}

impl<K: Hash + Eq + Clone> KeyedThrottle<K> {
    /// One line per key and `every_ms`, tracking at most `max_keys` keys.
    pub fn new(every_ms: u64, max_keys: usize) -> Self {
        Self {
            every_ms,
            max_keys: max_keys.max(1),
            keys: Mutex::new(HashMap::new()),
            overflow: Throttle::default(),
        }
    }

    /// Like [`Throttle::admit`], for `key`.
    pub fn admit(&self, key: &K, now_ms: u64) -> Option<u64> {
        let mut keys = self.keys.locked();
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            let every = self.every_ms;
            keys.retain(|_, t| !t.expired(now_ms, every));
            if keys.len() >= self.max_keys {
                return self.overflow.admit(now_ms, self.every_ms);
            }
        }
        keys.entry(key.clone())
            .or_default()
            .admit(now_ms, self.every_ms)
    }

    /// Keys tracked now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }
}

/// Milliseconds since the first call: a monotonic clock for the throttles.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_held_back_count() {
        let t = Throttle::default();
        assert_eq!(t.admit(5, 100), Some(0));
        assert_eq!(t.admit(6, 100), None);
        assert_eq!(t.admit(104, 100), None);
        assert_eq!(t.admit(105, 100), Some(2));
        // At time 0 (the clock's first millisecond) it still logs once.
        let t = Throttle::default();
        assert_eq!(t.admit(0, 100), Some(0));
        assert_eq!(t.admit(0, 100), None);
    }

    #[test]
    fn keyed_throttle_is_per_key_and_bounded() {
        let t = KeyedThrottle::new(100, 2);
        assert_eq!(t.admit(&1, 5), Some(0));
        assert_eq!(t.admit(&1, 6), None);
        assert_eq!(t.admit(&2, 6), Some(0));
        // Full: a third key shares the overflow throttle.
        assert_eq!(t.admit(&3, 7), Some(0));
        assert_eq!(t.admit(&4, 7), None);
        assert_eq!(t.tracked(), 2);
        // After the window the old keys are forgotten and new ones tracked.
        assert_eq!(t.admit(&5, 200), Some(0));
        assert!(t.tracked() <= 2);
    }
}
