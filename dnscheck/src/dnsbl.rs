//! DNS blocklist look-ups (RFC 5782): is the VPS address listed, and why?

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use crate::lookup::{Lookup, LookupError};
use crate::verify::{Check, CheckKind, Status};

/// Public blocklists that matter for a small mail server's deliverability.
/// Note: several refuse queries from large public resolvers (answering 127.255.255.x),
/// so `cerectl doctor` is best run against a local recursive resolver.
pub const DEFAULT_DNSBL_ZONES: &[&str] = &[
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "b.barracudacentral.org",
    "psbl.surriel.com",
    "bl.mailspike.net",
];

/// The verdict of one blocklist.
///
/// JSON (stable): `{"state": "not_listed"}`, `{"state": "listed", "codes": [...],
/// "reason": "..." | null}`, `{"state": "refused", "code": "127.255.255.254"}`,
/// `{"state": "error", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DnsblStatus {
    /// The address is not on this list.
    NotListed,
    /// The address is listed.
    Listed {
        /// The 127.0.0.x return codes (their meaning is list-specific).
        codes: Vec<Ipv4Addr>,
        /// The list's TXT explanation, when it gives one.
        reason: Option<String>,
    },
    /// The list refused the query: it answered 127.255.255.x (Spamhaus and others:
    /// typo in the zone name, public or open resolver, too many queries) or
    /// 127.0.0.1, which RFC 5782 section 5 forbids as a listing and lists use to
    /// say "blocked". Says nothing about a listing: see [`refusal_meaning`].
    Refused {
        /// The refusal code.
        code: Ipv4Addr,
    },
    /// The question could not be answered (timeout, SERVFAIL, odd answer).
    Error {
        /// What went wrong.
        message: String,
    },
}

/// The result for one blocklist zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsblResult {
    /// The blocklist zone, e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// The address checked.
    pub ip: IpAddr,
    /// The name queried (reversed address under the zone).
    pub query: String,
    /// The verdict.
    pub status: DnsblStatus,
}

/// The query name for `ip` under `zone`: reversed octets for IPv4, reversed nibbles
/// for IPv6 (RFC 5782 2.1, 2.4).
pub fn dnsbl_query_name(ip: IpAddr, zone: &str) -> String {
    let rev = crate::lookup::reverse_name(ip);
    let prefix = rev
        .strip_suffix(".in-addr.arpa")
        .or_else(|| rev.strip_suffix(".ip6.arpa"))
        .unwrap_or(&rev);
    format!(
        "{prefix}.{}",
        zone.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// Looks `ip` up in every zone (concurrently, in this task).
pub async fn dnsbl_check<L: Lookup, Z: AsRef<str>>(
    ip: IpAddr,
    zones: &[Z],
    lookup: &L,
) -> Vec<DnsblResult> {
    futures::future::join_all(zones.iter().map(|z| one(ip, z.as_ref(), lookup))).await
}

async fn one<L: Lookup>(ip: IpAddr, zone: &str, lookup: &L) -> DnsblResult {
    let query = dnsbl_query_name(ip, zone);
    let status = match lookup.a(&query).await {
        Err(e) if e.is_negative() => DnsblStatus::NotListed,
        Err(e) => DnsblStatus::Error {
            message: e.to_string(),
        },
        Ok(codes) => classify(codes, &query, lookup).await,
    };
    tracing::debug!(%ip, zone, ?status, "dnsbl lookup");
    DnsblResult {
        zone: zone.trim_end_matches('.').to_ascii_lowercase(),
        ip,
        query,
        status,
    }
}

async fn classify<L: Lookup>(codes: Vec<Ipv4Addr>, query: &str, lookup: &L) -> DnsblStatus {
    if let Some(code) = codes.iter().find(|c| is_refusal(**c)) {
        return DnsblStatus::Refused { code: *code };
    }
    if let Some(odd) = codes.iter().find(|c| c.octets()[0] != 127) {
        return DnsblStatus::Error {
            message: format!(
                "unexpected answer {odd} (not in 127.0.0.0/8): the list may be defunct or wildcarding"
            ),
        };
    }
    let reason = match lookup.txt(query).await {
        Ok(txts) if !txts.is_empty() => Some(txts.join(" / ")),
        Ok(_) => None,
        Err(LookupError::NxDomain { .. } | LookupError::NoData { .. }) => None,
        Err(e) => Some(format!("(reason not available: {e})")),
    };
    DnsblStatus::Listed { codes, reason }
}

/// 127.255.255.0/24 is how Spamhaus and others say "not answering you";
/// 127.0.0.1 is never a listing (RFC 5782 section 5 forbids the entry), and
/// lists such as URIBL answer it to block a querier.
fn is_refusal(code: Ipv4Addr) -> bool {
    let o = code.octets();
    (o[0] == 127 && o[1] == 255 && o[2] == 255) || code == Ipv4Addr::new(127, 0, 0, 1)
}

/// What a refusal code says, in words: the codes Spamhaus documents for its
/// zones (other lists that use 127.255.255.x follow them), and 127.0.0.1.
pub fn refusal_meaning(code: Ipv4Addr) -> &'static str {
    match code.octets() {
        [127, 255, 255, 252] => "the zone name is mistyped or not a query zone of this list",
        [127, 255, 255, 254] => {
            "the list does not answer queries from public or open resolvers (or unattributable reverse DNS)"
        }
        [127, 255, 255, 255] => "too many queries from this resolver",
        [127, 0, 0, 1] => "127.0.0.1 is never a listing (RFC 5782): the list blocks this resolver",
        _ => "the list refused to answer this resolver",
    }
}

/// What a listing code means, for the lists whose codes are documented and
/// stable (Spamhaus's); `None` elsewhere (codes are list-specific).
pub fn listing_meaning(zone: &str, code: Ipv4Addr) -> Option<&'static str> {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    if !zone.ends_with("spamhaus.org") {
        return None;
    }
    Some(match code.octets() {
        [127, 0, 0, 2] => "SBL: a known spam source or spam operation",
        [127, 0, 0, 3] => "SBL CSS: snowshoe spam or a hijacked address",
        [127, 0, 0, 4..=7] => "XBL: a compromised host (malware, open proxy)",
        [127, 0, 0, 9] => "SBL DROP: a hijacked or criminal network",
        [127, 0, 0, 10] => {
            "PBL (ISP-maintained): the provider says this range should not send mail directly"
        }
        [127, 0, 0, 11] => "PBL: an end-user range that should not send mail directly",
        _ => return None,
    })
}

impl DnsblStatus {
    /// One line for a person (status, notifications): "not listed",
    /// "listed (127.0.0.2: ...)", "query refused by the list (...)", or the
    /// error; `zone` gives the codes their list-specific meaning.
    pub fn describe(&self, zone: &str) -> String {
        match self {
            DnsblStatus::NotListed => "not listed".into(),
            DnsblStatus::Listed { codes, reason } => format!(
                "listed ({}){}",
                codes
                    .iter()
                    .map(|c| match listing_meaning(zone, *c) {
                        Some(m) => format!("{c}: {m}"),
                        None => c.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            DnsblStatus::Refused { code } => format!(
                "query refused by the list ({code}: {}); the listing is unknown",
                refusal_meaning(*code)
            ),
            DnsblStatus::Error { message } => {
                format!("could not be checked: {message}")
            }
        }
    }
}

impl DnsblResult {
    /// As a report line for `cerectl doctor`.
    pub fn to_check(&self) -> Check {
        let (status, found, fix) = match &self.status {
            DnsblStatus::NotListed => (Status::Pass, "not listed".to_owned(), None),
            DnsblStatus::Listed { codes, reason } => (
                Status::Fail,
                format!(
                    "LISTED ({}){}",
                    codes
                        .iter()
                        .map(|c| match listing_meaning(&self.zone, *c) {
                            Some(m) => format!("{c} {m}"),
                            None => c.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                Some(format!(
                    "find the cause (open relay, compromised account, previous owner of {}), fix it, then request delisting at {}",
                    self.ip, self.zone
                )),
            ),
            // A warning, not an error: refusals are routine through public resolvers and
            // should not turn a monitoring check red on their own.
            DnsblStatus::Refused { code } => (
                Status::Warn,
                format!(
                    "query refused by the list ({code}: {}): not a listing",
                    refusal_meaning(*code)
                ),
                Some(
                    "run the check through a recursive resolver of your own (--resolver), not a public one"
                        .to_owned(),
                ),
            ),
            DnsblStatus::Error { message } => (
                Status::Error,
                message.clone(),
                Some("retry later; the listing is unknown".to_owned()),
            ),
        };
        Check {
            kind: CheckKind::Dnsbl,
            name: self.zone.clone(),
            address: Some(self.ip),
            status,
            found,
            expected: "not listed".into(),
            fix,
            vps: None,
        }
    }
}

/// One line per blocklist, for `cerectl doctor` output.
pub fn render_dnsbl_text(results: &[DnsblResult]) -> String {
    let w = results.iter().map(|r| r.zone.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in results {
        let c = r.to_check();
        let _ = writeln!(
            out,
            "{:<5}  {:<w$}  {}  {}",
            c.status.label(),
            r.zone,
            r.ip,
            c.found
        );
        if let Some(fix) = c.fix {
            let _ = writeln!(out, "{:w$}         fix: {fix}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::FakeLookup;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn query_names() {
        assert_eq!(
            dnsbl_query_name(ip("203.0.113.10"), "bl.example"),
            "10.113.0.203.bl.example"
        );
        assert!(
            dnsbl_query_name(ip("2001:db8::10"), "bl.example.")
                .ends_with(".8.b.d.0.1.0.0.2.bl.example")
        );
    }

    #[tokio::test]
    async fn listed_clean_refused_and_broken() {
        let vps = ip("203.0.113.10");
        let dns = FakeLookup::new()
            .with_a("10.113.0.203.bl.example", "127.0.0.2".parse().unwrap())
            .with_txt("10.113.0.203.bl.example", "listed: spam trap hit")
            .with_a("2.0.0.127.clean.example", "127.0.0.2".parse().unwrap())
            .with_a(
                "10.113.0.203.refuse.example",
                "127.255.255.254".parse().unwrap(),
            )
            .with_a("10.113.0.203.wild.example", "192.0.2.1".parse().unwrap())
            .with_timeout("10.113.0.203.slow.example", "A");
        let zones = [
            "bl.example",
            "clean.example",
            "refuse.example",
            "wild.example",
            "slow.example",
        ];
        let r = dnsbl_check(vps, &zones, &dns).await;
        assert_eq!(
            r[0].status,
            DnsblStatus::Listed {
                codes: vec!["127.0.0.2".parse().unwrap()],
                reason: Some("listed: spam trap hit".into())
            }
        );
        assert_eq!(r[1].status, DnsblStatus::NotListed);
        assert!(matches!(r[2].status, DnsblStatus::Refused { .. }));
        assert!(
            matches!(&r[3].status, DnsblStatus::Error { message } if message.contains("unexpected answer"))
        );
        assert!(
            matches!(&r[4].status, DnsblStatus::Error { message } if message.contains("timed out"))
        );

        assert_eq!(r[0].to_check().status, Status::Fail);
        assert_eq!(r[1].to_check().status, Status::Pass);
        assert_eq!(r[2].to_check().status, Status::Warn);
        let text = render_dnsbl_text(&r);
        assert!(
            text.contains(
                "FAIL   bl.example      203.0.113.10  LISTED (127.0.0.2): listed: spam trap hit"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&r[0]).unwrap();
        assert_eq!(json["status"]["state"], "listed");
        assert_eq!(json["zone"], "bl.example");
    }

    #[tokio::test]
    async fn refusal_codes_are_never_listings_and_say_why() {
        let vps = ip("203.0.113.10");
        let mut dns = FakeLookup::new();
        let zones = [
            "typo.example",
            "public.example",
            "flood.example",
            "blocked.example",
        ];
        for (zone, code) in zones.iter().zip([
            "127.255.255.252",
            "127.255.255.254",
            "127.255.255.255",
            "127.0.0.1",
        ]) {
            dns = dns.with_a(&format!("10.113.0.203.{zone}"), code.parse().unwrap());
        }
        let r = dnsbl_check(vps, &zones, &dns).await;
        for (res, code) in r.iter().zip([
            "127.255.255.252",
            "127.255.255.254",
            "127.255.255.255",
            "127.0.0.1",
        ]) {
            assert_eq!(
                res.status,
                DnsblStatus::Refused {
                    code: code.parse().unwrap()
                },
                "{res:?}"
            );
            let text = res.status.describe(&res.zone);
            assert!(text.starts_with("query refused by the list ("), "{text}");
            assert!(!text.contains("listed ("), "{text}");
            assert_eq!(res.to_check().status, Status::Warn);
        }
        assert!(r[0].status.describe("x").contains("mistyped"));
        assert!(
            r[1].status
                .describe("x")
                .contains("public or open resolvers")
        );
        assert!(r[2].status.describe("x").contains("too many queries"));
        assert!(r[3].status.describe("x").contains("RFC 5782"));
    }

    #[test]
    fn spamhaus_codes_are_named_and_other_lists_codes_are_not() {
        let listed = |c: &str| DnsblStatus::Listed {
            codes: vec![c.parse().unwrap()],
            reason: None,
        };
        assert_eq!(
            listed("127.0.0.11").describe("zen.spamhaus.org."),
            "listed (127.0.0.11: PBL: an end-user range that should not send mail directly)"
        );
        assert!(
            listed("127.0.0.4")
                .describe("ZEN.SPAMHAUS.ORG")
                .contains("XBL")
        );
        assert_eq!(
            listed("127.0.0.2").describe("bl.example"),
            "listed (127.0.0.2)"
        );
        assert_eq!(DnsblStatus::NotListed.describe("bl.example"), "not listed");
    }

    #[test]
    fn default_zones_are_public_lists() {
        assert!(DEFAULT_DNSBL_ZONES.contains(&"zen.spamhaus.org"));
        assert!(DEFAULT_DNSBL_ZONES.iter().all(|z| z.contains('.')));
    }
}
