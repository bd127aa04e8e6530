//! Who the mail domain is: the one input every checklist and check is derived from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// Why a [`MailIdentity`] could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// A host or domain name is not a valid DNS name.
    #[error("{what} {name:?} is not a valid DNS name: {reason}")]
    InvalidName {
        /// Which input was wrong ("domain", "mail host").
        what: &'static str,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A DKIM selector must be a single DNS label or a dotted sequence of labels.
    #[error("DKIM selector {0:?} is not a valid DNS label sequence")]
    InvalidSelector(String),
    /// Without a VPS address there is nothing to point A/SPF/PTR at.
    #[error("no VPS address given: at least one IPv4 or IPv6 address is needed")]
    NoAddresses,
    /// Two VPSes of one fleet serve different mail domains.
    #[error(
        "VPS {first} serves {first_domain} but VPS {other} serves {other_domain}: \
         the VPSes of one mail domain must agree (CERES_DOMAIN on each)"
    )]
    DomainMismatch {
        /// The first VPS.
        first: String,
        /// Its domain.
        first_domain: String,
        /// The VPS that disagrees.
        other: String,
        /// Its domain.
        other_domain: String,
    },
    /// Two VPSes of one fleet were given different DKIM selectors.
    #[error("VPS {first} and VPS {other} have different DKIM selectors: the domain has one")]
    SelectorMismatch {
        /// The first VPS.
        first: String,
        /// The VPS that disagrees.
        other: String,
    },
    /// The same VPS name twice.
    #[error("VPS name {0:?} appears twice")]
    DuplicateVps(String),
    /// Two VPSes with one mail host: one MX with both addresses, no priorities.
    #[error(
        "VPS {first} and VPS {other} both use the mail host {host}: each VPS needs its own, \
         or its MX priority means nothing (set CERES_MAIL_HOST=mx2.DOMAIN, mx3.DOMAIN, ... \
         in /etc/ceres/ceres.env on the others and restart them; offline: one --mail-host per --public-ip)"
    )]
    SharedMailHost {
        /// The mail host both use.
        host: String,
        /// One VPS.
        first: String,
        /// The other.
        other: String,
    },
    /// Two VPSes with one address.
    #[error(
        "VPS {first} and VPS {other} both have the address {address}: each VPS is its own host"
    )]
    SharedAddress {
        /// The address.
        address: IpAddr,
        /// One VPS.
        first: String,
        /// The other.
        other: String,
    },
}

/// The mail domain, its mail host and the VPS's public addresses; validated once by
/// [`MailIdentityBuilder::build`] so every consumer can rely on normalised names
/// (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailIdentity {
    domain: String,
    mail_host: String,
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
    dkim_selector: Option<String>,
}

impl MailIdentity {
    /// Starts a builder for `domain` (e.g. `example.com`); the mail host defaults to
    /// `mail.<domain>`.
    pub fn builder(domain: &str) -> MailIdentityBuilder {
        MailIdentityBuilder {
            domain: domain.to_owned(),
            mail_host: None,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            dkim_selector: None,
        }
    }

    /// The mail domain (right of the `@`), normalised.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The host name MX points at and PTR must name, normalised.
    pub fn mail_host(&self) -> &str {
        &self.mail_host
    }

    /// The VPS's public IPv4 addresses.
    pub fn ipv4(&self) -> &[Ipv4Addr] {
        &self.ipv4
    }

    /// The VPS's public IPv6 addresses.
    pub fn ipv6(&self) -> &[Ipv6Addr] {
        &self.ipv6
    }

    /// All VPS addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ipv4
            .iter()
            .copied()
            .map(IpAddr::V4)
            .chain(self.ipv6.iter().copied().map(IpAddr::V6))
            .collect()
    }

    /// The DKIM selector, when the mail software's one is known.
    pub fn dkim_selector(&self) -> Option<&str> {
        self.dkim_selector.as_deref()
    }

    /// `<selector>._domainkey.<domain>` when a selector is configured.
    pub fn dkim_name(&self) -> Option<String> {
        self.dkim_selector
            .as_ref()
            .map(|s| format!("{s}._domainkey.{}", self.domain))
    }

    /// `_dmarc.<domain>`.
    pub fn dmarc_name(&self) -> String {
        format!("_dmarc.{}", self.domain)
    }
}

/// Builder for [`MailIdentity`]; [`build`](Self::build) validates everything at once.
#[derive(Debug, Clone)]
pub struct MailIdentityBuilder {
    domain: String,
    mail_host: Option<String>,
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
    dkim_selector: Option<String>,
}

impl MailIdentityBuilder {
    /// Overrides the default `mail.<domain>`.
    pub fn mail_host(mut self, host: &str) -> Self {
        self.mail_host = Some(host.to_owned());
        self
    }

    /// Adds one VPS address (duplicates are ignored).
    pub fn address(mut self, ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) if !self.ipv4.contains(&v4) => self.ipv4.push(v4),
            IpAddr::V6(v6) if !self.ipv6.contains(&v6) => self.ipv6.push(v6),
            _ => {}
        }
        self
    }

    /// Adds several VPS addresses.
    pub fn addresses(self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        ips.into_iter().fold(self, Self::address)
    }

    /// Sets the DKIM selector the mail software signs with.
    pub fn dkim_selector(mut self, selector: &str) -> Self {
        self.dkim_selector = Some(selector.to_owned());
        self
    }

    /// Validates and normalises the names; needs at least one address.
    pub fn build(self) -> Result<MailIdentity, IdentityError> {
        let domain = normalise_name("domain", &self.domain)?;
        let mail_host = match self.mail_host {
            Some(h) => normalise_name("mail host", &h)?,
            None => format!("mail.{domain}"),
        };
        if self.ipv4.is_empty() && self.ipv6.is_empty() {
            return Err(IdentityError::NoAddresses);
        }
        let dkim_selector = match self.dkim_selector {
            Some(s) => {
                let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
                let ok = !s.is_empty()
                    && s.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                if !ok {
                    return Err(IdentityError::InvalidSelector(s));
                }
                Some(s)
            }
            None => None,
        };
        Ok(MailIdentity {
            domain,
            mail_host,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            dkim_selector,
        })
    }
}

/// Lower-cases, strips one trailing dot and checks RFC 1035 length limits and a
/// host-name character set (letters, digits, hyphen; underscore tolerated).
fn normalise_name(what: &'static str, name: &str) -> Result<String, IdentityError> {
    let err = |reason| IdentityError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    };
    let n = name.trim();
    let n = n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase();
    if n.is_empty() {
        return Err(err("empty"));
    }
    if n.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    if !n.contains('.') {
        return Err(err("needs at least two labels (like example.com)"));
    }
    for label in n.split('.') {
        if label.is_empty() {
            return Err(err("empty label (two dots in a row)"));
        }
        if label.len() > 63 {
            return Err(err("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err("only letters, digits and '-' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label starts or ends with '-'"));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_normalisation() {
        let id = MailIdentity::builder("Example.COM.")
            .address("203.0.113.10".parse().unwrap())
            .address("2001:db8::10".parse().unwrap())
            .address("203.0.113.10".parse().unwrap())
            .build()
            .unwrap();
        assert_eq!(id.domain(), "example.com");
        assert_eq!(id.mail_host(), "mail.example.com");
        assert_eq!(id.ipv4().len(), 1);
        assert_eq!(id.ipv6().len(), 1);
        assert_eq!(id.dmarc_name(), "_dmarc.example.com");
        assert_eq!(id.dkim_name(), None);
    }

    #[test]
    fn rejects_bad_input() {
        let ip = "203.0.113.10".parse().unwrap();
        assert!(matches!(
            MailIdentity::builder("localhost").address(ip).build(),
            Err(IdentityError::InvalidName { .. })
        ));
        assert!(matches!(
            MailIdentity::builder("a..b").address(ip).build(),
            Err(IdentityError::InvalidName { .. })
        ));
        assert_eq!(
            MailIdentity::builder("example.com").build(),
            Err(IdentityError::NoAddresses)
        );
        assert!(matches!(
            MailIdentity::builder("example.com")
                .address(ip)
                .dkim_selector("bad selector")
                .build(),
            Err(IdentityError::InvalidSelector(_))
        ));
    }
}
