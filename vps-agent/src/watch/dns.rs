//! The DNS checks: the ones `cerectl dns --check` and `cerectl doctor` run
//! (crate `ceres-dnscheck`), each on the watchdog's schedule, read as
//! findings. Nothing here judges a record itself.

use std::net::{IpAddr, SocketAddr};

use ceres_dnscheck::{
    Check, DnsblStatus, HickoryLookup, Lookup, MailIdentity, ResolverError, Status, dnsbl_check,
};

use super::check::{Finding, Level, Observation};

/// Which resolver the DNS checks and the alert mail's MX look-ups ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// The system's (/etc/resolv.conf).
    System,
    /// One server.
    Server(SocketAddr),
}

impl Resolver {
    /// A fresh resolver: hickory caches for its own lifetime, and each run
    /// must see DNS as it is now (a record changed a minute ago included).
    pub fn lookup(self) -> Result<HickoryLookup, ResolverError> {
        match self {
            Resolver::System => HickoryLookup::from_system(),
            Resolver::Server(addr) => HickoryLookup::with_server_addr(addr),
        }
    }
}

impl std::fmt::Display for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolver::System => f.write_str("the system resolver"),
            Resolver::Server(a) => write!(f, "the resolver {a}"),
        }
    }
}

/// A check that could not even start: no resolver. A warning (unknown),
/// like every DNS question that got no usable answer.
pub fn no_resolver(resolver: Resolver, e: &ResolverError) -> Observation {
    Observation::unknown(format!(
        "not checked: {resolver} cannot be used: {e} (CERES_WATCH_RESOLVER)"
    ))
}

/// Whether blocklists can say anything about `ip`: they list addresses that
/// send on the internet, not loopback, private, link-local or ULA ones (a
/// VPS whose CERES_PUBLIC_IP is not public is not theirs to judge, and a
/// query would only leak the address).
fn listable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80)
        }
    }
}

/// The VPS addresses on the blocklists `zones`. Listed is failing and names
/// the list and its return code; a refusal (127.255.255.x) is a warning that
/// says "query refused by the list", never a listing; an unanswered question
/// is a warning too.
pub async fn dnsbl<L: Lookup>(id: &MailIdentity, zones: &[String], lookup: &L) -> Observation {
    let ips: Vec<IpAddr> = id
        .addresses()
        .into_iter()
        .filter(|ip| listable(*ip))
        .collect();
    if ips.is_empty() || zones.is_empty() {
        return Observation::ok("nothing to look up (no public address or no zones)");
    }
    let results =
        futures::future::join_all(ips.iter().map(|ip| dnsbl_check(*ip, zones, lookup))).await;
    let mut findings = Vec::new();
    for r in results.iter().flatten() {
        let subject = format!("{} on {}", r.ip, r.zone);
        let text = r.status.describe(&r.zone);
        findings.push(match &r.status {
            DnsblStatus::NotListed => continue,
            DnsblStatus::Listed { .. } => Finding::new(subject, Level::Failing, text),
            // Neither says anything about a listing.
            DnsblStatus::Refused { .. } | DnsblStatus::Error { .. } => {
                Finding::unknown(subject, text)
            }
        });
    }
    if findings.iter().any(|f| f.level == Level::Failing) {
        findings.push(Finding::new(
            "",
            Level::Failing,
            "find the cause (open relay, compromised account, the address's previous user), \
             fix it, then ask each list for delisting",
        ));
    }
    Observation::from_findings(
        format!(
            "{} not listed on {}",
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            zones.join(", ")
        ),
        findings,
    )
}

/// Findings of `cerectl dns --check` checks: fail is failing; warn, and a
/// question without a usable answer ("error": says nothing about the
/// record), are warnings.
pub fn from_checks(ok_detail: impl Into<String>, checks: &[Check]) -> Observation {
    let findings = checks
        .iter()
        .map(|c| {
            let level = match c.status {
                Status::Pass => Level::Ok,
                Status::Warn | Status::Error => Level::Warning,
                Status::Fail => Level::Failing,
            };
            let inconclusive = c.status == Status::Error;
            let subject = match c.address {
                Some(ip) => format!("{} {ip}", c.kind.label()),
                None => format!("{} {}", c.kind.label(), c.name),
            };
            let mut text = if c.status == Status::Error {
                format!("not checked: {}", c.found)
            } else {
                c.found.clone()
            };
            if let Some(fix) = &c.fix {
                text.push_str(&format!(" — {fix}"));
            }
            Finding {
                inconclusive,
                ..Finding::new(subject, level, text)
            }
        })
        .collect();
    Observation::from_findings(ok_detail, findings)
}

/// PTR of each VPS address naming the mail host, which resolves back.
pub async fn ptr<L: Lookup>(id: &MailIdentity, lookup: &L) -> Observation {
    let checks = ceres_dnscheck::verify_ptr(id, lookup).await;
    from_checks(
        format!(
            "every VPS address has the reverse name {}, forward-confirmed",
            id.mail_host()
        ),
        &checks,
    )
}

/// The SPF record of the domain authorises every VPS address.
pub async fn spf<L: Lookup>(id: &MailIdentity, lookup: &L) -> Observation {
    let checks = ceres_dnscheck::verify_spf(id, lookup).await;
    from_checks(
        format!(
            "the SPF record of {} authorises every VPS address",
            id.domain()
        ),
        &checks,
    )
}

/// MX of the domain names the mail host, whose A/AAAA are the VPS's.
pub async fn mx<L: Lookup>(id: &MailIdentity, lookup: &L) -> Observation {
    let checks = ceres_dnscheck::verify_routing(id, lookup).await;
    from_checks(
        format!(
            "MX {} -> {}, which points at the VPS",
            id.domain(),
            id.mail_host()
        ),
        &checks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_dnscheck::FakeLookup;

    fn id() -> MailIdentity {
        MailIdentity::builder("example.com")
            .address("203.0.113.10".parse().unwrap())
            .address("10.0.0.5".parse().unwrap())
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_listing_names_the_list_and_the_code_and_a_refusal_is_not_a_listing() {
        let dns = FakeLookup::new()
            .with_a("10.113.0.203.bl.example", "127.0.0.2".parse().unwrap())
            .with_a(
                "10.113.0.203.refuse.example",
                "127.255.255.254".parse().unwrap(),
            );
        let zones = ["bl.example", "refuse.example", "clean.example"].map(String::from);
        let o = dnsbl(&id(), &zones, &dns).await;
        assert_eq!(o.level, Level::Failing);
        let listed = &o.findings[0];
        assert_eq!(listed.subject, "203.0.113.10 on bl.example");
        assert_eq!(listed.text, "listed (127.0.0.2)");
        let refused = o
            .findings
            .iter()
            .find(|f| f.subject.ends_with("refuse.example"))
            .unwrap();
        assert_eq!(refused.level, Level::Warning);
        assert!(
            refused
                .text
                .starts_with("query refused by the list (127.255.255.254"),
            "{refused:?}"
        );
        // The private address was never asked about.
        assert!(!o.detail.contains("10.0.0.5"), "{o:?}");

        let only_refused = ["refuse.example".to_owned()];
        let o = dnsbl(&id(), &only_refused, &dns).await;
        assert_eq!(o.level, Level::Warning, "{o:?}");
    }

    #[tokio::test]
    async fn spf_without_the_vps_address_is_failing_and_a_timeout_only_a_warning() {
        let id = MailIdentity::builder("example.com")
            .address("203.0.113.10".parse().unwrap())
            .build()
            .unwrap();
        let dns = FakeLookup::new().with_txt("example.com", "v=spf1 ip4:192.0.2.1 -all");
        let o = spf(&id, &dns).await;
        assert_eq!(o.level, Level::Failing, "{o:?}");
        assert!(o.detail.contains("SPF 203.0.113.10"), "{o:?}");
        let good = FakeLookup::new().with_txt("example.com", "v=spf1 ip4:203.0.113.10 -all");
        assert_eq!(spf(&id, &good).await.level, Level::Ok);
        let slow = FakeLookup::new().with_timeout("example.com", "TXT");
        assert_eq!(spf(&id, &slow).await.level, Level::Warning);
    }
}
