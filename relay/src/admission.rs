//! Who may open a relayed connection: concurrent caps per port, per source
//! and per source network, a rate limit on new connections per source, and
//! slots kept for sources already seen delivering.
//!
//! A *source* is one IPv4 address or one IPv6 /64 (one host usually owns a
//! whole /64). Sources are grouped further into IPv4 /24s and IPv6 /56s and
//! /48s (what one customer of a provider typically gets), each with its own
//! cap, so one network cannot fill a port from many addresses. Every map here
//! is bounded: a flood from many addresses cannot grow memory without limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Bytes a connection must carry *each way* for its source to count as
/// delivering: a complete SMTP transaction (banner, EHLO and its answer,
/// MAIL, RCPT, DATA, the message, QUIT) is well above it, while a connection
/// that is opened and held, or only reads the banner, stays below.
pub const DELIVERING_MIN_BYTES: u64 = 256;
/// Sources remembered as delivering, per port; the least recently seen go first.
pub const MAX_KNOWN_SOURCES: usize = 4096;
/// A delivering source is forgotten after this long without another delivery.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Sources with a rate-limit bucket, per port. Buckets that have refilled are
/// the same as no bucket and are dropped first; beyond that the oldest goes.
pub const MAX_RATE_BUCKETS: usize = 4096;

/// Default cap on concurrent connections per port, far above what a personal mail
/// server sees, low enough that a flood cannot take all of the agent's fds
/// (20,000 per process, two per connection, over ten ports).
pub const DEFAULT_MAX_PER_PORT: u32 = 1000;
/// Default cap on concurrent connections per source address (IPv6: per /64) and port.
/// Postfix's own `smtpd_client_connection_count_limit` is 50; mail clients behind
/// one NAT with several devices stay well below this.
pub const DEFAULT_MAX_PER_SOURCE: u32 = 50;
/// Default new connections per source and port per minute (sustained).
pub const DEFAULT_RATE_PER_MINUTE: u32 = 60;
/// Default burst of new connections per source and port: a phone and a laptop
/// opening their IMAP connections at once, or a sender's parallel deliveries.
pub const DEFAULT_BURST: u32 = 30;

/// The connection limits of one relayed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections on the port.
    pub per_port: u32,
    /// Concurrent connections per source (IPv4 address, IPv6 /64).
    pub per_source: u32,
    /// Concurrent connections per IPv4 /24.
    pub per_v4_24: u32,
    /// Concurrent connections per IPv6 /56.
    pub per_v6_56: u32,
    /// Concurrent connections per IPv6 /48.
    pub per_v6_48: u32,
    /// New connections per source per minute; 0: no rate limit.
    pub rate_per_minute: u32,
    /// New connections a source may open at once before the rate applies.
    pub burst: u32,
    /// The last this many slots of the port only go to sources seen delivering.
    pub reserved_for_known: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self::scaled(DEFAULT_MAX_PER_PORT, DEFAULT_MAX_PER_SOURCE)
    }
}

impl Limits {
    /// The default limits for a port cap and a source cap: the network caps
    /// and the reserve are proportionate to the port cap (an IPv4 /24 or an
    /// IPv6 /56 a tenth of the port, a /48 a fifth, a tenth kept for known
    /// senders), never below the source cap; the default rate limit.
    pub fn scaled(per_port: u32, per_source: u32) -> Self {
        let share = |div: u32| (per_port / div).max(per_source).min(per_port);
        Self {
            per_port,
            per_source,
            per_v4_24: share(10),
            per_v6_56: share(10),
            per_v6_48: share(5),
            rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            burst: DEFAULT_BURST,
            reserved_for_known: per_port / 10,
        }
    }

    /// Only a port cap: no per-source, per-network or rate limits, no reserve.
    /// For home's forwarders, whose one trusted source is the VPS.
    pub fn port_only(per_port: u32) -> Self {
        Self {
            per_port,
            per_source: u32::MAX,
            per_v4_24: u32::MAX,
            per_v6_56: u32::MAX,
            per_v6_48: u32::MAX,
            rate_per_minute: 0,
            burst: 0,
            reserved_for_known: 0,
        }
    }
}

/// Why a connection was refused before being relayed: counted per reason in
/// the port's counters, status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The port holds its maximum of connections.
    PortFull,
    /// The port's last slots are kept for sources seen delivering, and this
    /// one has not been.
    ReservedForKnown,
    /// The source (IPv4 address, IPv6 /64) holds its maximum.
    Source,
    /// The source's IPv4 /24 holds its maximum.
    V4Net24,
    /// The source's IPv6 /56 holds its maximum.
    V6Net56,
    /// The source's IPv6 /48 holds its maximum.
    V6Net48,
    /// The source opened new connections faster than its rate limit.
    Rate,
    /// Home side: not from the VPS tunnel address.
    Untrusted,
}

impl Refusal {
    /// Every reason, in the order status lists them.
    pub const ALL: [Refusal; 8] = [
        Refusal::PortFull,
        Refusal::ReservedForKnown,
        Refusal::Source,
        Refusal::V4Net24,
        Refusal::V6Net56,
        Refusal::V6Net48,
        Refusal::Rate,
        Refusal::Untrusted,
    ];

    /// A stable name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PortFull => "port_full",
            Refusal::ReservedForKnown => "reserved_for_known",
            Refusal::Source => "source",
            Refusal::V4Net24 => "v4_net24",
            Refusal::V6Net56 => "v6_net56",
            Refusal::V6Net48 => "v6_net48",
            Refusal::Rate => "rate",
            Refusal::Untrusted => "untrusted",
        }
    }

    /// The text of the `421 4.7.0 <host> ..., try again later` reply on SMTP ports.
    pub(crate) fn smtp_text(self) -> &'static str {
        match self {
            Refusal::PortFull | Refusal::ReservedForKnown | Refusal::Untrusted => {
                "too many connections"
            }
            Refusal::Source => "too many connections from your address",
            Refusal::V4Net24 | Refusal::V6Net56 | Refusal::V6Net48 => {
                "too many connections from your network"
            }
            Refusal::Rate => "too many new connections from your address",
        }
    }
}

/// What a count is kept per: a source or one of its networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Source,
    V4Net24,
    V6Net56,
    V6Net48,
}

impl Scope {
    fn refusal(self) -> Refusal {
        match self {
            Scope::Source => Refusal::Source,
            Scope::V4Net24 => Refusal::V4Net24,
            Scope::V6Net56 => Refusal::V6Net56,
            Scope::V6Net48 => Refusal::V6Net48,
        }
    }
}

/// Groups IPv6 clients by /64: one host usually owns a whole /64, so per-address
/// limits would be trivial to dodge. IPv4-mapped addresses count as IPv4.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(mask_v6(v6, 64)),
        },
    }
}

fn mask_v6(ip: Ipv6Addr, bits: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(ip) & (u128::MAX << (128 - bits)))
}

/// The counted keys of a source: itself, then its networks.
fn keys_of(source: IpAddr) -> Vec<(Scope, IpAddr)> {
    match source {
        IpAddr::V4(v4) => vec![
            (Scope::Source, source),
            (
                Scope::V4Net24,
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
            ),
        ],
        IpAddr::V6(v6) => vec![
            (Scope::Source, source),
            (Scope::V6Net56, IpAddr::V6(mask_v6(v6, 56))),
            (Scope::V6Net48, IpAddr::V6(mask_v6(v6, 48))),
        ],
    }
}

/// A token bucket of one source.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The admission state of one port; the caller holds it under a lock.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    active: u32,
    counts: HashMap<(Scope, IpAddr), u32>,
    buckets: HashMap<IpAddr, Bucket>,
    known: HashMap<IpAddr, Instant>,
}

/// The keys an admitted connection counts against; given back on release.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) source: IpAddr,
    keys: Vec<(Scope, IpAddr)>,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            active: 0,
            counts: HashMap::new(),
            buckets: HashMap::new(),
            known: HashMap::new(),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits a connection from `ip` at `now` or says why not.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Held, Refusal> {
        let source = source_key(ip);
        // Every attempt takes a token, refused or not: a flood empties its own
        // bucket whatever else refuses it.
        self.take_token(source, now)?;
        let l = self.limits;
        if self.active >= l.per_port {
            return Err(Refusal::PortFull);
        }
        if self.active >= l.per_port.saturating_sub(l.reserved_for_known)
            && !self.is_known(source, now)
        {
            return Err(Refusal::ReservedForKnown);
        }
        let keys = keys_of(source);
        for key in &keys {
            let cap = match key.0 {
                Scope::Source => l.per_source,
                Scope::V4Net24 => l.per_v4_24,
                Scope::V6Net56 => l.per_v6_56,
                Scope::V6Net48 => l.per_v6_48,
            };
            if self.counts.get(key).copied().unwrap_or(0) >= cap {
                return Err(key.0.refusal());
            }
        }
        for key in &keys {
            *self.counts.entry(*key).or_insert(0) += 1;
        }
        self.active += 1;
        Ok(Held { source, keys })
    }

    /// Gives back what `held` took.
    pub(crate) fn release(&mut self, held: &Held) {
        for key in &held.keys {
            if let Some(n) = self.counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(key);
                }
            }
        }
        self.active = self.active.saturating_sub(1);
    }

    /// Remembers `source` as delivering (see [`DELIVERING_MIN_BYTES`]).
    pub(crate) fn delivered(&mut self, source: IpAddr, now: Instant) {
        if !self.known.contains_key(&source) && self.known.len() >= MAX_KNOWN_SOURCES {
            self.known
                .retain(|_, seen| now.saturating_duration_since(*seen) < KNOWN_FOR);
            if self.known.len() >= MAX_KNOWN_SOURCES {
                if let Some(oldest) = self.known.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    self.known.remove(&oldest);
                }
            }
        }
        self.known.insert(source, now);
    }

    fn is_known(&self, source: IpAddr, now: Instant) -> bool {
        self.known
            .get(&source)
            .is_some_and(|seen| now.saturating_duration_since(*seen) < KNOWN_FOR)
    }

    fn take_token(&mut self, source: IpAddr, now: Instant) -> Result<(), Refusal> {
        let l = self.limits;
        if l.rate_per_minute == 0 {
            return Ok(());
        }
        let per_sec = f64::from(l.rate_per_minute) / 60.0;
        let burst = f64::from(l.burst.max(1));
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(burst)
        };
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_RATE_BUCKETS {
            // A refilled bucket is the same as none.
            self.buckets.retain(|_, b| refill(b) < burst);
            if self.buckets.len() >= MAX_RATE_BUCKETS {
                if let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, b)| b.at)
                    .map(|(k, _)| *k)
                {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Entries held in the bounded maps: (rate buckets, known sources).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.buckets.len(), self.known.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn no_rate(mut l: Limits) -> Limits {
        l.rate_per_minute = 0;
        l
    }

    #[test]
    fn one_v6_56_cannot_fill_the_port_from_many_64s() {
        let mut a = Admission::new(no_rate(Limits::scaled(100, 5)));
        let now = Instant::now();
        let mut held = Vec::new();
        for i in 0..=255u32 {
            match a.admit(ip(&format!("2001:db8:aa00:{i:x}::1")), now) {
                Ok(h) => held.push(h),
                Err(r) => assert_eq!(r, Refusal::V6Net56),
            }
        }
        assert_eq!(held.len(), 10, "a /56 gets a tenth of the port");
        // Other /56s of the same /48 add up to the /48's fifth.
        for i in 0..=255u32 {
            if let Ok(h) = a.admit(ip(&format!("2001:db8:aa00:{:x}::1", 0x100 | i)), now) {
                held.push(h);
            }
        }
        for i in 0..=255u32 {
            match a.admit(ip(&format!("2001:db8:aa00:{:x}::1", 0x200 | i)), now) {
                Ok(h) => held.push(h),
                Err(r) => assert_eq!(r, Refusal::V6Net48),
            }
        }
        assert_eq!(held.len(), 20);
        // A fresh /48 still gets in.
        assert!(a.admit(ip("2001:db8:bb00::1"), now).is_ok());
        for h in &held {
            a.release(h);
        }
        assert_eq!(a.counts.len(), 3, "only the fresh source's keys are left");
    }

    #[test]
    fn one_v4_24_is_capped() {
        let mut a = Admission::new(no_rate(Limits::scaled(50, 2)));
        let now = Instant::now();
        let admitted = (1..=20)
            .filter(|i| a.admit(ip(&format!("198.51.100.{i}")), now).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(
            a.admit(ip("198.51.100.77"), now).unwrap_err(),
            Refusal::V4Net24
        );
        assert!(a.admit(ip("198.51.101.1"), now).is_ok());
    }

    #[test]
    fn rate_limit_refuses_beyond_the_burst_then_refills() {
        let mut l = Limits::port_only(100);
        l.rate_per_minute = 60;
        l.burst = 3;
        let mut a = Admission::new(l);
        let t0 = Instant::now();
        let src = ip("2001:db8::1");
        for _ in 0..3 {
            let h = a.admit(src, t0).unwrap();
            a.release(&h);
        }
        assert_eq!(a.admit(src, t0).unwrap_err(), Refusal::Rate);
        // Same /64, other address: same bucket.
        assert_eq!(a.admit(ip("2001:db8::2"), t0).unwrap_err(), Refusal::Rate);
        assert!(a.admit(ip("2001:db8:0:1::1"), t0).is_ok());
        // One per second comes back.
        assert!(a.admit(src, t0 + Duration::from_millis(1100)).is_ok());
        assert_eq!(
            a.admit(src, t0 + Duration::from_millis(1100)).unwrap_err(),
            Refusal::Rate
        );
    }

    #[test]
    fn rate_buckets_stay_bounded_under_a_flood_from_many_sources() {
        let mut l = Limits::port_only(u32::MAX);
        l.rate_per_minute = 1;
        l.burst = 1;
        let mut a = Admission::new(l);
        let now = Instant::now();
        for i in 0..(MAX_RATE_BUCKETS as u128 * 3) {
            let src = IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 64)));
            let _ = a.admit(src, now);
        }
        assert!(a.tracked().0 <= MAX_RATE_BUCKETS);
    }

    #[test]
    fn known_sources_keep_the_reserved_slots() {
        let mut a = Admission::new(no_rate(Limits::scaled(10, 10)));
        let now = Instant::now();
        let good = ip("192.0.2.1");
        let h = a.admit(good, now).unwrap();
        a.release(&h);
        a.delivered(good, now);
        let flood: Vec<_> = (0..20)
            .filter_map(|i| a.admit(ip(&format!("203.0.{i}.1")), now).ok())
            .collect();
        assert_eq!(flood.len(), 9, "one slot kept for known senders");
        assert_eq!(
            a.admit(ip("203.0.99.1"), now).unwrap_err(),
            Refusal::ReservedForKnown
        );
        assert!(a.admit(good, now).is_ok());
        assert_eq!(a.admit(good, now).unwrap_err(), Refusal::PortFull);
        // Forgotten after KNOWN_FOR.
        assert!(!a.is_known(good, now + KNOWN_FOR));
    }

    #[test]
    fn known_sources_stay_bounded() {
        let mut a = Admission::new(Limits::default());
        let now = Instant::now();
        for i in 0..(MAX_KNOWN_SOURCES as u32 + 100) {
            a.delivered(IpAddr::V4(Ipv4Addr::from(i)), now);
        }
        assert_eq!(a.tracked().1, MAX_KNOWN_SOURCES);
    }

    #[test]
    fn mapped_v4_counts_as_v4() {
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
    }
}
