//! A mail domain with several VPSes as its public faces: each VPS has its own mail
//! host (its MX target, A/AAAA and PTR name) and MX priority, and every address
//! is in the one SPF record. One VPS is a fleet of one, and everything derived from
//! a fleet of one reads exactly as it did before there were fleets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::checklist::MX_PRIORITY;
use crate::identity::{IdentityError, MailIdentity};

/// Distance between the MX priorities CERES suggests for VPSes in join order
/// (10, 20, 30, …): room to put one in between later.
pub const PRIORITY_STEP: u16 = 10;

/// One VPS of a [`MailFleet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetMember {
    /// How the admin calls this VPS (`cerectl vps list`); `None` for the VPS of a
    /// fleet of one, whose output names no VPS.
    pub name: Option<String>,
    /// Its MX priority: lower is tried first.
    pub priority: u16,
    /// Its mail host and addresses (domain and DKIM selector are the fleet's).
    pub id: MailIdentity,
}

impl FleetMember {
    /// The name to show, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// The VPSes of one mail domain, in MX priority order (ties keep the given order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFleet {
    members: Vec<FleetMember>,
}

impl From<MailIdentity> for MailFleet {
    fn from(id: MailIdentity) -> Self {
        Self::single(id)
    }
}

impl MailFleet {
    /// One VPS, unnamed, at the priority CERES has always suggested.
    pub fn single(id: MailIdentity) -> Self {
        Self {
            members: vec![FleetMember {
                name: None,
                priority: MX_PRIORITY,
                id,
            }],
        }
    }

    /// Several named VPSes: `(name, MX priority, identity)`.
    ///
    /// They must agree on the domain (and DKIM selector), and must not share a
    /// name, a mail host or an address: a shared mail host would make one MX
    /// with both addresses, which senders try in random order, and priorities
    /// would mean nothing.
    pub fn new(members: Vec<(String, u16, MailIdentity)>) -> Result<Self, IdentityError> {
        let Some((first_name, _, first)) = members.first() else {
            return Err(IdentityError::NoAddresses);
        };
        let (first_name, first) = (first_name.clone(), first.clone());
        let mut out: Vec<FleetMember> = Vec::with_capacity(members.len());
        for (name, priority, id) in members {
            if id.domain() != first.domain() {
                return Err(IdentityError::DomainMismatch {
                    first: first_name,
                    first_domain: first.domain().to_owned(),
                    other: name,
                    other_domain: id.domain().to_owned(),
                });
            }
            if id.dkim_selector() != first.dkim_selector() {
                return Err(IdentityError::SelectorMismatch {
                    first: first_name,
                    other: name,
                });
            }
            for m in &out {
                let seen = m.name.clone().unwrap_or_default();
                if m.id.mail_host() == id.mail_host() {
                    return Err(IdentityError::SharedMailHost {
                        host: id.mail_host().to_owned(),
                        first: seen,
                        other: name,
                    });
                }
                if let Some(ip) = id
                    .addresses()
                    .into_iter()
                    .find(|ip| m.id.addresses().contains(ip))
                {
                    return Err(IdentityError::SharedAddress {
                        address: ip,
                        first: seen,
                        other: name,
                    });
                }
                if seen == name {
                    return Err(IdentityError::DuplicateVps(name));
                }
            }
            out.push(FleetMember {
                name: Some(name),
                priority,
                id,
            });
        }
        out.sort_by_key(|m| m.priority);
        Ok(Self { members: out })
    }

    /// The VPSes, lowest priority number (tried first) first.
    pub fn members(&self) -> &[FleetMember] {
        &self.members
    }

    /// The first VPS by priority: its identity carries the domain-wide facts.
    pub fn primary(&self) -> &MailIdentity {
        // `new` and `single` never build an empty fleet.
        &self.members[0].id
    }

    /// True when the output names VPSes (several, or one given a name).
    pub fn is_named(&self) -> bool {
        self.members.iter().any(|m| m.name.is_some())
    }

    /// The mail domain.
    pub fn domain(&self) -> &str {
        self.primary().domain()
    }

    /// Every VPS's IPv4 addresses, in priority order.
    pub fn ipv4(&self) -> Vec<Ipv4Addr> {
        self.members
            .iter()
            .flat_map(|m| m.id.ipv4().iter().copied())
            .collect()
    }

    /// Every VPS's IPv6 addresses, in priority order.
    pub fn ipv6(&self) -> Vec<Ipv6Addr> {
        self.members
            .iter()
            .flat_map(|m| m.id.ipv6().iter().copied())
            .collect()
    }

    /// Every VPS address, in priority order, each VPS's IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.members.iter().flat_map(|m| m.id.addresses()).collect()
    }

    /// `mail.example.com` for one VPS; `mx1.example.com for vps-a, mx2.example.com
    /// for vps-b` for several: the header of every rendering.
    pub fn describe_hosts(&self) -> String {
        if !self.is_named() {
            return format!("mail host {}", self.primary().mail_host());
        }
        let list: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{} for {}", m.id.mail_host(), m.name().unwrap_or("?")))
            .collect();
        format!("mail hosts {}", list.join(", "))
    }

    /// The per-VPS facts for JSON: empty for an unnamed fleet of one, so its
    /// documents stay as they were.
    pub fn summaries(&self) -> Vec<VpsSummary> {
        if !self.is_named() {
            return Vec::new();
        }
        self.members
            .iter()
            .map(|m| VpsSummary {
                name: m.name().unwrap_or_default().to_owned(),
                priority: m.priority,
                mail_host: m.id.mail_host().to_owned(),
                addresses: m.id.addresses(),
            })
            .collect()
    }
}

/// One VPS in the JSON of a checklist or report of several.
///
/// JSON (stable): `name`, `priority` (MX), `mail_host`, `addresses` (strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VpsSummary {
    /// Its name.
    pub name: String,
    /// Its MX priority.
    pub priority: u16,
    /// Its mail host.
    pub mail_host: String,
    /// Its public addresses.
    pub addresses: Vec<IpAddr>,
}

/// The mail host CERES suggests for the `index`-th (0-based) of several VPSes
/// when none is configured: `mx1.DOMAIN`, `mx2.DOMAIN`, …
pub fn numbered_mail_host(domain: &str, index: usize) -> String {
    format!("mx{}.{domain}", index + 1)
}

/// The MX priority CERES suggests for the `index`-th (0-based) VPS: 10, 20, …
pub fn suggested_priority(index: usize) -> u16 {
    u16::try_from(index)
        .ok()
        .and_then(|i| i.checked_add(1))
        .and_then(|n| n.checked_mul(PRIORITY_STEP))
        .unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(host: &str, ip: &str) -> MailIdentity {
        MailIdentity::builder("example.com")
            .mail_host(host)
            .address(ip.parse().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn members_are_ordered_by_priority_and_validated() {
        let f = MailFleet::new(vec![
            ("b".into(), 20, id("mx2.example.com", "203.0.113.20")),
            ("a".into(), 10, id("mx1.example.com", "203.0.113.10")),
        ])
        .unwrap();
        assert_eq!(f.members()[0].name(), Some("a"));
        assert_eq!(f.primary().mail_host(), "mx1.example.com");
        assert_eq!(
            f.addresses(),
            vec![
                "203.0.113.10".parse::<IpAddr>().unwrap(),
                "203.0.113.20".parse().unwrap()
            ]
        );
        assert_eq!(
            f.describe_hosts(),
            "mail hosts mx1.example.com for a, mx2.example.com for b"
        );

        let shared = MailFleet::new(vec![
            ("a".into(), 10, id("mail.example.com", "203.0.113.10")),
            ("b".into(), 20, id("mail.example.com", "203.0.113.20")),
        ]);
        assert!(
            matches!(&shared, Err(IdentityError::SharedMailHost { host, first, other })
                if host == "mail.example.com" && first == "a" && other == "b"),
            "{shared:?}"
        );
        assert!(shared.unwrap_err().to_string().contains("CERES_MAIL_HOST"));

        let same_ip = MailFleet::new(vec![
            ("a".into(), 10, id("mx1.example.com", "203.0.113.10")),
            ("b".into(), 20, id("mx2.example.com", "203.0.113.10")),
        ]);
        assert!(matches!(same_ip, Err(IdentityError::SharedAddress { .. })));

        let other_domain = MailIdentity::builder("example.org")
            .address("203.0.113.20".parse().unwrap())
            .build()
            .unwrap();
        let mismatch = MailFleet::new(vec![
            ("a".into(), 10, id("mx1.example.com", "203.0.113.10")),
            ("b".into(), 20, other_domain),
        ]);
        assert!(matches!(
            mismatch,
            Err(IdentityError::DomainMismatch { .. })
        ));

        let twice = MailFleet::new(vec![
            ("a".into(), 10, id("mx1.example.com", "203.0.113.10")),
            ("a".into(), 20, id("mx2.example.com", "203.0.113.20")),
        ]);
        assert_eq!(twice, Err(IdentityError::DuplicateVps("a".into())));
        assert_eq!(MailFleet::new(vec![]), Err(IdentityError::NoAddresses));
    }

    #[test]
    fn a_fleet_of_one_names_nothing() {
        let f = MailFleet::single(id("mail.example.com", "203.0.113.10"));
        assert!(!f.is_named());
        assert_eq!(f.members()[0].priority, MX_PRIORITY);
        assert_eq!(f.describe_hosts(), "mail host mail.example.com");
        assert!(f.summaries().is_empty());
    }

    #[test]
    fn suggestions() {
        assert_eq!(numbered_mail_host("example.com", 0), "mx1.example.com");
        assert_eq!(suggested_priority(0), 10);
        assert_eq!(suggested_priority(2), 30);
        assert_eq!(suggested_priority(100_000), u16::MAX);
    }
}
