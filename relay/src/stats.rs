//! Per-port counters and connection limits, shared by [`crate::Listener`] and
//! [`crate::Forwarder`]; snapshots feed `cerectl status`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The most recent failure on a port (connect to home failed, accept failed, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// Human-readable description; never contains secrets (addresses and errno only).
    pub message: String,
    /// When it happened, seconds since the Unix epoch.
    pub at_unix_secs: u64,
}

/// A point-in-time copy of one port's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSnapshot {
    /// The port this relay listens on (public port on the VPS, tunnel port at home).
    pub port: u16,
    /// The port connections are forwarded to.
    pub target_port: u16,
    /// Connections being relayed right now.
    pub active: u64,
    /// Connections accepted and relayed since start.
    pub total: u64,
    /// Bytes from clients towards the server (excluding PROXY headers we add).
    pub bytes_in: u64,
    /// Bytes from the server back to clients.
    pub bytes_out: u64,
    /// Connections refused by a limit or because the source was not trusted.
    pub refused: u64,
    /// Connections closed (or answered `421`) because the target was unreachable.
    pub unavailable: u64,
    /// The most recent error, if any.
    pub last_error: Option<LastError>,
}

/// Why a connection was refused before being relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    PortLimit(u32),
    SourceLimit(u32),
}

/// How often one port logs the same kind of trouble. A flood against a limit
/// (or a dead home under steady traffic) would otherwise write a line per
/// connection; the counters keep the exact numbers either way.
pub(crate) const LOG_EVERY_MS: u64 = 10_000;

/// Kinds of per-connection warnings, each throttled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Warning {
    /// A connection limit was hit.
    Limit = 0,
    /// A connection not from the VPS tunnel address (home side).
    Untrusted = 1,
    /// The target could not be reached, or home has no forwarder for the port.
    Unreachable = 2,
}

/// At most one warning of a kind per [`LOG_EVERY_MS`], counting the ones held
/// back so the next line can say how many there were.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    /// Milliseconds (on [`clock_ms`]) of the last line logged, per kind; 0: never.
    last_ms: [AtomicU64; 3],
    held: [AtomicU64; 3],
}

impl LogThrottle {
    /// `Some(n)` when a line may be logged now (`n` lines of this kind were held
    /// back since the last one), `None` when it is held back.
    pub(crate) fn admit(&self, kind: Warning, now_ms: u64) -> Option<u64> {
        let (last, held) = (&self.last_ms[kind as usize], &self.held[kind as usize]);
        let prev = last.load(Ordering::Relaxed);
        let now = now_ms.max(1);
        if (prev != 0 && now.saturating_sub(prev) < LOG_EVERY_MS)
            || last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(held.swap(0, Ordering::Relaxed))
    }
}

/// Milliseconds since the first call: a monotonic clock for [`LogThrottle`].
pub(crate) fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Live counters of one port. Cheap to update from many connection tasks.
#[derive(Debug)]
pub(crate) struct PortCounters {
    pub(crate) port: u16,
    pub(crate) target_port: u16,
    max_per_port: u32,
    max_per_source: u32,
    active: AtomicU64,
    total: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    /// Keeps per-connection warnings of this port to one line per kind and interval.
    pub(crate) log: LogThrottle,
    /// Open connections per source key; entries are removed at zero so the map only
    /// holds current clients.
    sources: Mutex<HashMap<IpAddr, u32>>,
}

/// Groups IPv6 clients by /64: one host usually owns a whole /64, so per-address
/// limits would be trivial to dodge. IPv4-mapped addresses count as IPv4.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl PortCounters {
    pub(crate) fn new(port: u16, target_port: u16, max_per_port: u32, max_per_source: u32) -> Self {
        Self {
            port,
            target_port,
            max_per_port,
            max_per_source,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            last_error: Mutex::new(None),
            log: LogThrottle::default(),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a connection from `source` if both limits allow it. The returned guard
    /// releases the slot when dropped.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        let key = source_key(source);
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the sources lock so concurrent accepts cannot both take the
        // last slot.
        if self.active.load(Ordering::Relaxed) >= u64::from(self.max_per_port) {
            drop(sources);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PortLimit(self.max_per_port));
        }
        let count = sources.entry(key).or_insert(0);
        if *count >= self.max_per_source {
            drop(sources);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SourceLimit(self.max_per_source));
        }
        *count += 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            counters: Arc::clone(self),
            key,
        })
    }

    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_unavailable(&self) {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, message: String) {
        let at_unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut slot = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(LastError {
            message,
            at_unix_secs,
        });
    }

    pub(crate) fn snapshot(&self) -> PortSnapshot {
        PortSnapshot {
            port: self.port,
            target_port: self.target_port,
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// One admitted connection; frees its per-port and per-source slot on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    counters: Arc<PortCounters>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut sources = self
            .counters
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = sources.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.key);
            }
        }
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cloneable handle for reading a relay's counters while it runs.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    pub(crate) ports: Arc<Vec<Arc<PortCounters>>>,
}

impl StatsHandle {
    /// Current counters of every port, in configuration order.
    pub fn snapshot(&self) -> Vec<PortSnapshot> {
        self.ports.iter().map(|p| p.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_one_line_per_kind_and_interval_with_the_held_back_count() {
        let t = LogThrottle::default();
        assert_eq!(t.admit(Warning::Limit, 5), Some(0));
        assert_eq!(t.admit(Warning::Limit, 6), None);
        assert_eq!(t.admit(Warning::Limit, 5 + LOG_EVERY_MS - 1), None);
        // Another kind has its own budget.
        assert_eq!(t.admit(Warning::Unreachable, 7), Some(0));
        // After the interval: logged, saying two were held back.
        assert_eq!(t.admit(Warning::Limit, 5 + LOG_EVERY_MS), Some(2));
        assert_eq!(t.admit(Warning::Limit, 6 + LOG_EVERY_MS), None);
        // At time 0 (the clock's first millisecond) it still logs once.
        let t = LogThrottle::default();
        assert_eq!(t.admit(Warning::Untrusted, 0), Some(0));
        assert_eq!(t.admit(Warning::Untrusted, 0), None);
    }

    #[test]
    fn limits_and_release() {
        let c = Arc::new(PortCounters::new(25, 25, 3, 2));
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let s1 = c.admit(a).unwrap();
        let _s2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).unwrap_err(), Refusal::SourceLimit(2));
        let _s3 = c.admit(b).unwrap();
        assert_eq!(c.admit(b_same_64).unwrap_err(), Refusal::PortLimit(3));
        drop(s1);
        let _s4 = c.admit(b_same_64).unwrap();
        assert_eq!(c.admit(b).unwrap_err(), Refusal::PortLimit(3));
        let snap = c.snapshot();
        assert_eq!((snap.active, snap.total, snap.refused), (3, 4, 3));
    }

    #[test]
    fn mapped_v4_counts_as_v4() {
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
    }
}
