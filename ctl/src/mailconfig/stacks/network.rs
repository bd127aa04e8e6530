//! A stack's Docker network as the user's installation has it: the subnets
//! its containers send from (home's `CERES_EGRESS_FROM`) and the gateway
//! Docker's port publishing connects from (the one address a stack may take
//! PROXY headers from). The recipes default to each stack's own network;
//! `--docker-subnet4` / `--docker-subnet6` replace it, validated here.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ceres_relay::stack::MailStack;

/// Why a `--docker-subnet4` / `--docker-subnet6` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// No `/PREFIX`.
    #[error("{0}: give the network with its prefix, like {1}")]
    NoPrefix(String, &'static str),
    /// The address part is not an address of the family.
    #[error("{0}: not an {1} network address (like {2})")]
    BadAddress(String, &'static str, &'static str),
    /// The prefix is not a number in range.
    #[error("{0}: the prefix must be a number from {1} to {2}")]
    BadPrefix(String, u8, u8),
    /// Bits below the prefix are set.
    #[error("{0} has host bits set: the network is {1}")]
    HostBits(String, String),
    /// Loopback, multicast, link-local or unspecified: no Docker network.
    #[error("{0} is a {1} range, not one a Docker network can use")]
    Reserved(String, &'static str),
}

/// An IPv4 network as Docker's IPAM takes it (`subnet:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet4 {
    net: Ipv4Addr,
    prefix: u8,
}

impl Subnet4 {
    /// A network known to be valid (the stacks' defaults).
    pub const fn new_unchecked(net: Ipv4Addr, prefix: u8) -> Self {
        Self { net, prefix }
    }

    /// The gateway Docker gives a bridge network without an explicit
    /// `gateway`: the subnet's first address.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Subnet4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn split<'a>(s: &'a str, example: &'static str) -> Result<(&'a str, &'a str), SubnetError> {
    s.trim()
        .split_once('/')
        .ok_or_else(|| SubnetError::NoPrefix(s.to_owned(), example))
}

impl FromStr for Subnet4 {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXAMPLE: &str = "172.22.1.0/24";
        // A gateway and at least one container: /30 at most.
        const MIN: u8 = 8;
        const MAX: u8 = 30;
        let (a, p) = split(s, EXAMPLE)?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| SubnetError::BadAddress(s.to_owned(), "IPv4", EXAMPLE))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (MIN..=MAX).contains(p))
            .ok_or_else(|| SubnetError::BadPrefix(s.to_owned(), MIN, MAX))?;
        let mask = u32::MAX << (32 - prefix);
        let net = Ipv4Addr::from(u32::from(addr) & mask);
        if net != addr {
            return Err(SubnetError::HostBits(
                s.to_owned(),
                format!("{net}/{prefix}"),
            ));
        }
        let reserved = if net.is_loopback() {
            Some("loopback")
        } else if net.is_multicast() || u32::from(net) >= 0xf000_0000 {
            Some("multicast or reserved")
        } else if net.is_link_local() {
            Some("link-local")
        } else if u32::from(net) >> 24 == 0 {
            Some("\"this network\" (0.0.0.0/8)")
        } else {
            None
        };
        if let Some(kind) = reserved {
            return Err(SubnetError::Reserved(s.to_owned(), kind));
        }
        Ok(Self { net, prefix })
    }
}

/// An IPv6 network as Docker's IPAM takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet6 {
    net: Ipv6Addr,
    prefix: u8,
}

impl Subnet6 {
    /// A network known to be valid (the stacks' defaults).
    pub const fn new_unchecked(net: Ipv6Addr, prefix: u8) -> Self {
        Self { net, prefix }
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl FromStr for Subnet6 {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXAMPLE: &str = "fd4d:6169:6c63:6f77::/64";
        const MIN: u8 = 8;
        const MAX: u8 = 126;
        let (a, p) = split(s, EXAMPLE)?;
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| SubnetError::BadAddress(s.to_owned(), "IPv6", EXAMPLE))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (MIN..=MAX).contains(p))
            .ok_or_else(|| SubnetError::BadPrefix(s.to_owned(), MIN, MAX))?;
        let mask = u128::MAX << (128 - prefix);
        let net = Ipv6Addr::from(u128::from(addr) & mask);
        if net != addr {
            return Err(SubnetError::HostBits(
                s.to_owned(),
                format!("{net}/{prefix}"),
            ));
        }
        let first = net.segments()[0];
        let reserved = if net.is_loopback() || net.is_unspecified() {
            Some("loopback or unspecified")
        } else if first & 0xff00 == 0xff00 {
            Some("multicast")
        } else if first & 0xffc0 == 0xfe80 {
            Some("link-local")
        } else if net.to_ipv4_mapped().is_some() {
            Some("IPv4-mapped")
        } else {
            None
        };
        if let Some(kind) = reserved {
            return Err(SubnetError::Reserved(s.to_owned(), kind));
        }
        Ok(Self { net, prefix })
    }
}

/// `--docker-subnet6`: a network, or `off` for a stack network without IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subnet6Arg {
    /// The network has this IPv6 subnet.
    On(Subnet6),
    /// The network has no IPv6.
    Off,
}

impl FromStr for Subnet6Arg {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("off") {
            Ok(Self::Off)
        } else {
            s.parse().map(Self::On)
        }
    }
}

/// A stack's Docker network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DockerNet {
    /// The IPv4 subnet.
    pub subnet4: Subnet4,
    /// The IPv6 subnet, if the network has IPv6.
    pub subnet6: Option<Subnet6>,
}

impl DockerNet {
    /// `stack`'s default network, from the port table the home agent's
    /// stack probe reads too (`ceres_relay::stack`). For `const` items only:
    /// a stack without a Docker network is then a compile error.
    pub const fn default_of(stack: MailStack) -> Self {
        let Some(net) = stack.network() else {
            panic!("the stack runs on the host: it has no Docker network");
        };
        Self {
            subnet4: Subnet4::new_unchecked(net.subnet4.0, net.subnet4.1),
            subnet6: match net.subnet6 {
                Some((a, p)) => Some(Subnet6::new_unchecked(a, p)),
                None => None,
            },
        }
    }

    /// The network's gateway: where published ports connect from.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet4.gateway()
    }

    /// Home's `CERES_EGRESS_FROM` sources: both families when there are both.
    pub fn egress_from(&self) -> Vec<String> {
        std::iter::once(self.subnet4.to_string())
            .chain(self.subnet6.map(|s| s.to_string()))
            .collect()
    }

    /// This network with the user's overrides applied.
    pub fn with(self, subnet4: Option<Subnet4>, subnet6: Option<Subnet6Arg>) -> Self {
        Self {
            subnet4: subnet4.unwrap_or(self.subnet4),
            subnet6: match subnet6 {
                None => self.subnet6,
                Some(Subnet6Arg::On(s)) => Some(s),
                Some(Subnet6Arg::Off) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subnets_parse_and_name_their_problem() {
        let s: Subnet4 = "172.22.1.0/24".parse().unwrap();
        assert_eq!(s.to_string(), "172.22.1.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 22, 1, 1));
        assert_eq!(
            "172.22.1.5/24".parse::<Subnet4>().unwrap_err().to_string(),
            "172.22.1.5/24 has host bits set: the network is 172.22.1.0/24"
        );
        assert!(matches!(
            "172.22.1.0".parse::<Subnet4>(),
            Err(SubnetError::NoPrefix(..))
        ));
        assert!(matches!(
            "172.22.1.0/31".parse::<Subnet4>(),
            Err(SubnetError::BadPrefix(..))
        ));
        assert!(matches!(
            "172.22.1.0/x".parse::<Subnet4>(),
            Err(SubnetError::BadPrefix(..))
        ));
        assert!(matches!(
            "fd00::/64".parse::<Subnet4>(),
            Err(SubnetError::BadAddress(..))
        ));
        for reserved in ["127.0.0.0/8", "224.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8"] {
            assert!(
                matches!(reserved.parse::<Subnet4>(), Err(SubnetError::Reserved(..))),
                "{reserved}"
            );
        }
        let s: Subnet6 = "fd4d:6169:6c63:6f77::/64".parse().unwrap();
        assert_eq!(s.to_string(), "fd4d:6169:6c63:6f77::/64");
        assert_eq!(
            "fd00::1/64".parse::<Subnet6>().unwrap_err().to_string(),
            "fd00::1/64 has host bits set: the network is fd00::/64"
        );
        for reserved in ["::/8", "ff00::/8", "fe80::/64", "::ffff:0.0.0.0/96"] {
            assert!(
                matches!(reserved.parse::<Subnet6>(), Err(SubnetError::Reserved(..))),
                "{reserved}"
            );
        }
        assert_eq!("off".parse::<Subnet6Arg>().unwrap(), Subnet6Arg::Off);
        assert!(matches!(
            "fd00::/64".parse::<Subnet6Arg>().unwrap(),
            Subnet6Arg::On(_)
        ));
    }

    #[test]
    fn overrides_replace_the_defaults() {
        let d = DockerNet {
            subnet4: "172.22.1.0/24".parse().unwrap(),
            subnet6: Some("fd4d:6169:6c63:6f77::/64".parse().unwrap()),
        };
        assert_eq!(
            d.egress_from(),
            ["172.22.1.0/24", "fd4d:6169:6c63:6f77::/64"]
        );
        let n = d.with(Some("10.9.0.0/16".parse().unwrap()), Some(Subnet6Arg::Off));
        assert_eq!(n.egress_from(), ["10.9.0.0/16"]);
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(d.with(None, None), d);
    }
}
