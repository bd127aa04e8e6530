//! How checks ask DNS questions: a small async trait, a hickory-resolver
//! implementation and an in-memory fake, so all check logic is tested without a network.

mod fake;
mod hickory;

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

pub use fake::FakeLookup;
pub use hickory::{HickoryLookup, ResolverError};

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxRecord {
    /// Lower values are tried first.
    pub preference: u16,
    /// The exchange host, lower case, without trailing dot.
    pub exchange: String,
}

/// Why a DNS question got no records. The variants are deliberately distinct: a timeout
/// says nothing about whether a record exists, so checks must not call it "missing".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist at all (NXDOMAIN).
    #[error("{name} does not exist (NXDOMAIN)")]
    NxDomain {
        /// The queried name.
        name: String,
    },
    /// The name exists but has no record of this type (NOERROR, empty answer).
    #[error("{name} has no {rtype} record")]
    NoData {
        /// The queried name.
        name: String,
        /// The queried record type.
        rtype: &'static str,
    },
    /// No answer arrived in time; the record may well exist.
    #[error("DNS query for {rtype} {name} timed out (unknown whether the record exists)")]
    Timeout {
        /// The queried name.
        name: String,
        /// The queried record type.
        rtype: &'static str,
    },
    /// The server answered with an error code such as SERVFAIL or REFUSED.
    #[error(
        "DNS server answered {rcode} for {rtype} {name} (a server problem, not a missing record)"
    )]
    ServerFailure {
        /// The queried name.
        name: String,
        /// The queried record type.
        rtype: &'static str,
        /// The response code, e.g. `SERVFAIL`.
        rcode: String,
    },
    /// Anything else (network unreachable, malformed answer, invalid name).
    #[error("DNS query for {rtype} {name} failed: {reason}")]
    Other {
        /// The queried name.
        name: String,
        /// The queried record type.
        rtype: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl LookupError {
    /// True when DNS positively said "nothing here" (NXDOMAIN or no data), as opposed
    /// to the question not getting a usable answer.
    pub fn is_negative(&self) -> bool {
        matches!(self, Self::NxDomain { .. } | Self::NoData { .. })
    }
}

/// Asks DNS questions. Names are given without a trailing dot and are treated as
/// fully qualified (no search domains). Answers are only the records of the asked
/// type (CNAMEs followed); an empty answer is reported as [`LookupError::NoData`],
/// never as `Ok(vec![])`.
pub trait Lookup: Sync {
    /// IPv4 addresses of `name`.
    fn a(&self, name: &str) -> impl Future<Output = Result<Vec<Ipv4Addr>, LookupError>> + Send;
    /// IPv6 addresses of `name`.
    fn aaaa(&self, name: &str) -> impl Future<Output = Result<Vec<Ipv6Addr>, LookupError>> + Send;
    /// MX records of `name`.
    fn mx(&self, name: &str) -> impl Future<Output = Result<Vec<MxRecord>, LookupError>> + Send;
    /// TXT records of `name`, each one's character-strings concatenated without
    /// separator (as SPF, DKIM and DMARC require).
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, LookupError>> + Send;
    /// PTR names of `ip` (lower case, no trailing dot).
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Result<Vec<String>, LookupError>> + Send;
}

/// The reverse-zone name of an address, without trailing dot:
/// `10.113.0.203.in-addr.arpa` or the 32-nibble `ip6.arpa` name.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// Lower-cases and strips a trailing dot so names compare equal however they came.
pub(crate) fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("203.0.113.10".parse().unwrap()),
            "10.113.0.203.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::10".parse().unwrap()),
            "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }
}
