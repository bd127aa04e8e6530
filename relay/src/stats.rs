//! Per-port counters and connection limits, shared by [`crate::Listener`] and
//! [`crate::Forwarder`]; snapshots feed `cerectl status`.

use ceres_sync::Unpoison;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::admission::{Admission, DELIVERING_MIN_BYTES, Held, Limits, Refusal};
use crate::throttle::Throttle;

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
    /// The same refusals by reason (reasons with none left out).
    pub refused_by: BTreeMap<Refusal, u64>,
    /// Connections closed (or answered `421`) because the target was unreachable.
    pub unavailable: u64,
    /// The most recent error, if any.
    pub last_error: Option<LastError>,
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
    kinds: [Throttle; 3],
}

impl LogThrottle {
    /// `Some(n)` when a line may be logged now (`n` lines of this kind were held
    /// back since the last one), `None` when it is held back.
    pub(crate) fn admit(&self, kind: Warning, now_ms: u64) -> Option<u64> {
        self.kinds[kind as usize].admit(now_ms, LOG_EVERY_MS)
    }
}

/// Live counters of one port. Cheap to update from many connection tasks.
#[derive(Debug)]
pub(crate) struct PortCounters {
    pub(crate) port: u16,
    pub(crate) target_port: u16,
    active: AtomicU64,
    total: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Refused connections, indexed like [`Refusal::ALL`].
    refused: [AtomicU64; Refusal::ALL.len()],
    unavailable: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    /// Keeps per-connection warnings of this port to one line per kind and interval.
    pub(crate) log: LogThrottle,
    /// Who holds slots, rate buckets and known senders; one short lock per
    /// accept and per close, never held across an await.
    admission: Mutex<Admission>,
}

impl PortCounters {
    pub(crate) fn new(port: u16, target_port: u16, limits: Limits) -> Self {
        Self {
            port,
            target_port,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            refused: Default::default(),
            unavailable: AtomicU64::new(0),
            last_error: Mutex::new(None),
            log: LogThrottle::default(),
            admission: Mutex::new(Admission::new(limits)),
        }
    }

    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.locked()
    }

    /// The limits of this port.
    pub(crate) fn limits(&self) -> Limits {
        *self.admission().limits()
    }

    /// Admits a connection from `source` if the limits allow it (and counts the
    /// refusal if not). The returned guard releases the slot when dropped.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        let held = self.admission().admit(source, Instant::now());
        match held {
            Ok(held) => {
                self.active.fetch_add(1, Ordering::Relaxed);
                self.total.fetch_add(1, Ordering::Relaxed);
                Ok(Slot {
                    counters: Arc::clone(self),
                    held,
                })
            }
            Err(refusal) => {
                self.count_refused(refusal);
                Err(refusal)
            }
        }
    }

    pub(crate) fn count_refused(&self, why: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == why) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_unavailable(&self) {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, message: String) {
        let at_unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut slot = self.last_error.locked();
        *slot = Some(LastError {
            message,
            at_unix_secs,
        });
    }

    pub(crate) fn snapshot(&self) -> PortSnapshot {
        let refused_by: BTreeMap<Refusal, u64> = Refusal::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        PortSnapshot {
            port: self.port,
            target_port: self.target_port,
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            refused: refused_by.values().sum(),
            refused_by,
            unavailable: self.unavailable.load(Ordering::Relaxed),
            last_error: self.last_error.locked().clone(),
        }
    }
}

/// One admitted connection; frees its slots on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    counters: Arc<PortCounters>,
    held: Held,
}

impl Slot {
    /// The connection carried `client_bytes` and `server_bytes`: if both reach
    /// [`DELIVERING_MIN_BYTES`], its source is remembered as delivering and
    /// keeps access to the port's reserved slots.
    pub(crate) fn finished(&self, client_bytes: u64, server_bytes: u64) {
        if client_bytes >= DELIVERING_MIN_BYTES && server_bytes >= DELIVERING_MIN_BYTES {
            self.counters
                .admission()
                .delivered(self.held.source, Instant::now());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.admission().release(&self.held);
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
    }

    #[test]
    fn limits_and_release_with_refusals_by_reason() {
        let mut limits = Limits::port_only(3);
        limits.per_source = 2;
        let c = Arc::new(PortCounters::new(25, 25, limits));
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let s1 = c.admit(a).unwrap();
        let _s2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).unwrap_err(), Refusal::Source);
        let _s3 = c.admit(b).unwrap();
        assert_eq!(c.admit(b_same_64).unwrap_err(), Refusal::PortFull);
        drop(s1);
        let _s4 = c.admit(b_same_64).unwrap();
        assert_eq!(c.admit(b).unwrap_err(), Refusal::PortFull);
        let snap = c.snapshot();
        assert_eq!((snap.active, snap.total, snap.refused), (3, 4, 3));
        assert_eq!(
            snap.refused_by,
            BTreeMap::from([(Refusal::PortFull, 2), (Refusal::Source, 1)])
        );
    }
}
