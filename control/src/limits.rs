//! Bounds on what unauthenticated peers can hold on the control port: a
//! connection slot for each connection's whole life (global cap), a cap per
//! source (IPv4 address, IPv6 /64), HTTP/2 limits, and a maximum age for
//! connections without a client certificate (they can only enrol: one short RPC).

use ceres_sync::Unpoison;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default cap on control connections, handshaking or established: one home
/// session and a few `cerectl` calls need a handful; this is far above that
/// and far below the agent's file limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default cap on control connections per source (IPv4 address, IPv6 /64):
/// home's session plus an admin behind the same NAT.
pub const DEFAULT_MAX_PER_SOURCE: u32 = 16;
/// Default HTTP/2 streams one connection may have open at once (home's
/// session is one; renewals and status calls are short).
pub const DEFAULT_MAX_STREAMS: u32 = 32;
/// Default HTTP/2 keepalive: a PING after this long without frames.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time to wait for the PING's answer before closing.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default lifetime of a connection without a client certificate: enrolment
/// is one RPC that takes milliseconds.
pub const DEFAULT_NO_CERT_MAX_AGE: Duration = Duration::from_secs(60);

/// The control plane's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections at once, from the accept to the close.
    pub max_connections: usize,
    /// Connections at once per source (IPv4 address, IPv6 /64).
    pub max_per_source: u32,
    /// HTTP/2 streams at once per connection.
    pub max_streams: u32,
    /// HTTP/2 keepalive PING interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive PING timeout.
    pub keepalive_timeout: Duration,
    /// A connection without a client certificate is closed after this long.
    pub no_cert_max_age: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            max_streams: DEFAULT_MAX_STREAMS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            no_cert_max_age: DEFAULT_NO_CERT_MAX_AGE,
        }
    }
}

/// Open connections per source; entries go at zero, so the map holds only
/// current peers (at most the global cap of them).
#[derive(Debug, Clone)]
pub(crate) struct PerSource {
    max: u32,
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerSource {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for `source` (already a source key), or `None` at the cap.
    pub(crate) fn take(&self, source: IpAddr) -> Option<SourceSlot> {
        let mut counts = self.counts.locked();
        let n = counts.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            owner: self.clone(),
            source,
        })
    }
}

/// One connection's per-source slot; given back on drop.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    owner: PerSource,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.locked();
        if let Some(n) = counts.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_slots_are_capped_and_given_back() {
        let p = PerSource::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = p.take(a).unwrap();
        let _s2 = p.take(a).unwrap();
        assert!(p.take(a).is_none());
        assert!(p.take("192.0.2.2".parse().unwrap()).is_some());
        drop(s1);
        assert!(p.take(a).is_some());
        assert_eq!(p.counts.lock().unwrap().len(), 1);
    }
}
