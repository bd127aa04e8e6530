//! One function per record kind; each returns findings, never errors, because a DNS
//! failure is itself a finding (status `error`, distinct from "missing").

use std::collections::BTreeSet;
use std::fmt::Display;
use std::net::IpAddr;

use super::{Check, CheckKind, Status};
use crate::checklist::{dkim_hint, recommended_dmarc, recommended_spf};
use crate::dkim::DkimRecord;
use crate::dmarc::{DmarcPolicy, DmarcRecord, looks_like_dmarc};
use crate::fleet::{FleetMember, MailFleet};
use crate::identity::MailIdentity;
use crate::lookup::{Lookup, LookupError, MxRecord, reverse_name};
use crate::spf::{self, Qualifier, SpfResult, parse_record};

const UNKNOWN_FIX: &str = "DNS did not answer usefully: retry, or ask another resolver; the record itself was not checked";

struct Ctx<'a> {
    kind: CheckKind,
    name: &'a str,
    address: Option<IpAddr>,
    expected: String,
    /// The VPS the check is about, when the output names VPSes.
    vps: Option<&'a str>,
}

impl Ctx<'_> {
    fn done(&self, status: Status, found: impl Into<String>, fix: Option<String>) -> Check {
        Check {
            kind: self.kind,
            name: self.name.to_owned(),
            address: self.address,
            status,
            found: found.into(),
            expected: self.expected.clone(),
            fix,
            vps: self.vps.map(str::to_owned),
        }
    }

    fn pass(&self, found: impl Into<String>) -> Check {
        self.done(Status::Pass, found, None)
    }

    /// A failed lookup: "missing" only when DNS said so; otherwise "not checked".
    fn lookup_failed(&self, e: &LookupError, fix_if_missing: String) -> Check {
        if e.is_negative() {
            self.done(Status::Fail, format!("nothing: {e}"), Some(fix_if_missing))
        } else {
            self.done(Status::Error, e.to_string(), Some(UNKNOWN_FIX.into()))
        }
    }
}

fn join<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

async fn addresses(
    kind: CheckKind,
    m: &FleetMember,
    expected: BTreeSet<IpAddr>,
    found: Result<BTreeSet<IpAddr>, LookupError>,
) -> Check {
    let host = m.id.mail_host();
    let rtype = kind.label();
    let ctx = Ctx {
        kind,
        name: host,
        address: None,
        vps: m.name(),
        expected: if expected.is_empty() {
            format!("no {rtype} record (the VPS has no such address)")
        } else {
            join(&expected)
        },
    };
    let found = match found {
        Ok(f) => f,
        Err(e) if e.is_negative() && expected.is_empty() => {
            return ctx.pass(format!("none ({e})"));
        }
        Err(e) => {
            return ctx.lookup_failed(
                &e,
                format!("add {rtype} {host} -> {} at your DNS host", join(&expected)),
            );
        }
    };
    if found == expected {
        return ctx.pass(join(&found));
    }
    let missing: Vec<_> = expected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&expected).collect();
    let mut fix = if expected.is_empty() {
        format!("remove the {rtype} records of {host}: the VPS has no such address")
    } else {
        format!("set {rtype} {host} to {} only", join(&expected))
    };
    let mut changes = Vec::new();
    if !missing.is_empty() && !expected.is_empty() {
        changes.push(format!("add {}", join(&missing)));
    }
    if !extra.is_empty() {
        changes.push(format!(
            "remove {} (mail sent there does not reach the VPS)",
            join(&extra)
        ));
    }
    if !changes.is_empty() && !expected.is_empty() {
        fix.push_str(&format!(": {}", changes.join("; ")));
    }
    ctx.done(Status::Fail, join(&found), Some(fix))
}

pub(super) async fn address_v4<L: Lookup>(m: &FleetMember, lookup: &L) -> Check {
    let expected = m.id.ipv4().iter().map(|ip| IpAddr::V4(*ip)).collect();
    let found = lookup
        .a(m.id.mail_host())
        .await
        .map(|v| v.into_iter().map(IpAddr::V4).collect());
    addresses(CheckKind::A, m, expected, found).await
}

pub(super) async fn address_v6<L: Lookup>(m: &FleetMember, lookup: &L) -> Check {
    let expected = m.id.ipv6().iter().map(|ip| IpAddr::V6(*ip)).collect();
    let found = lookup
        .aaaa(m.id.mail_host())
        .await
        .map(|v| v.into_iter().map(IpAddr::V6).collect());
    addresses(CheckKind::Aaaa, m, expected, found).await
}

/// One MX check per VPS, from one MX lookup of the domain.
pub(super) async fn mx<L: Lookup>(fleet: &MailFleet, lookup: &L) -> Vec<Check> {
    let mut found = lookup.mx(fleet.domain()).await;
    if let Ok(mxs) = &mut found {
        mxs.sort_by(|a, b| (a.preference, &a.exchange).cmp(&(b.preference, &b.exchange)));
    }
    fleet
        .members()
        .iter()
        .map(|m| mx_for(fleet, m, &found))
        .collect()
}

/// The MX of VPS `m`: its mail host must be an exchange, tried after no foreign
/// host and before every VPS meant to come after it.
fn mx_for(fleet: &MailFleet, m: &FleetMember, found: &Result<Vec<MxRecord>, LookupError>) -> Check {
    let host = m.id.mail_host();
    let domain = fleet.domain();
    let priority = m.priority;
    let ctx = Ctx {
        kind: CheckKind::Mx,
        name: domain,
        address: None,
        expected: format!("{priority} {host}"),
        vps: m.name(),
    };
    let add_fix = format!("set MX {domain} -> {host} priority {priority} at your DNS host");
    let mxs = match found {
        Ok(m) => m,
        Err(e) => return ctx.lookup_failed(e, add_fix),
    };
    let found = join(mxs.iter().map(|m| {
        let ex = if m.exchange.is_empty() {
            "."
        } else {
            &m.exchange
        };
        format!("{} {ex}", m.preference)
    }));
    if mxs.iter().any(|m| m.exchange.is_empty()) {
        return ctx.done(
            Status::Fail,
            format!("{found} (null MX: the domain says it accepts no mail)"),
            Some(add_fix),
        );
    }
    let fleet_hosts: Vec<&str> = fleet.members().iter().map(|m| m.id.mail_host()).collect();
    let Some(ours) = mxs.iter().find(|m| m.exchange == host) else {
        // Only hosts that are none of the VPSes are worth a word about removal.
        let foreign = mxs
            .iter()
            .any(|m| !fleet_hosts.contains(&m.exchange.as_str()));
        let fix = match (foreign, fleet.is_named()) {
            (false, _) => add_fix,
            (true, false) => {
                format!("{add_fix}; remove the other MX records unless they relay to {host}")
            }
            (true, true) => format!(
                "{add_fix}; remove the MX records of hosts that are none of your VPSes unless they relay to {host}"
            ),
        };
        return ctx.done(Status::Fail, found, Some(fix));
    };
    let before: Vec<_> = mxs
        .iter()
        .filter(|m| m.preference < ours.preference && !fleet_hosts.contains(&m.exchange.as_str()))
        .collect();
    if !before.is_empty() {
        return ctx.done(
            Status::Warn,
            format!(
                "{found}: {host} has priority {}, but {} is tried first",
                ours.preference,
                join(before.iter().map(|m| &m.exchange))
            ),
            Some(format!(
                "give {host} the lowest MX priority, or remove the others"
            )),
        );
    }
    // VPSes meant to come after this one, but tried before it or at random with it.
    let out_of_order: Vec<(&FleetMember, u16)> = fleet
        .members()
        .iter()
        .filter(|o| o.priority > priority)
        .filter_map(|o| {
            mxs.iter()
                .filter(|r| r.exchange == o.id.mail_host())
                .map(|r| r.preference)
                .min()
                .filter(|p| *p <= ours.preference)
                .map(|p| (o, p))
        })
        .collect();
    if !out_of_order.is_empty() {
        let names = join(out_of_order.iter().map(|(o, p)| {
            format!(
                "{} (VPS {}, priority {p})",
                o.id.mail_host(),
                o.name().unwrap_or("?")
            )
        }));
        let wanted = join(
            std::iter::once(format!("{host} {priority}")).chain(
                out_of_order
                    .iter()
                    .map(|(o, _)| format!("{} {}", o.id.mail_host(), o.priority)),
            ),
        );
        return ctx.done(
            Status::Warn,
            format!(
                "{found}: {host} has priority {}, but {names} is tried before it or as often",
                ours.preference
            ),
            Some(format!(
                "give the VPSes MX priorities in their order: {wanted}"
            )),
        );
    }
    ctx.pass(format!(
        "{found} (the mail host, priority {})",
        ours.preference
    ))
}

pub(super) async fn spf<L: Lookup>(fleet: &MailFleet, lookup: &L) -> Vec<Check> {
    let domain = fleet.domain();
    let recommended = recommended_spf(fleet);
    let set_fix = format!("set TXT {domain} \"{recommended}\" (one SPF record only)");
    let ctx = Ctx {
        kind: CheckKind::Spf,
        name: domain,
        address: None,
        expected: format!("exactly one SPF record, e.g. \"{recommended}\""),
        vps: None,
    };
    let mut out = Vec::new();
    let mut all = None;
    let mut unreachable = None;
    let record = match spf::fetch_record(lookup, domain).await {
        Ok(Some(text)) => Some(text),
        Ok(None) => {
            out.push(ctx.done(
                Status::Fail,
                format!("no SPF record (no TXT starting with v=spf1 at {domain})"),
                Some(format!("add TXT {domain} \"{recommended}\"")),
            ));
            None
        }
        Err((SpfResult::TempError, reason)) => {
            out.push(ctx.done(Status::Error, reason.clone(), Some(UNKNOWN_FIX.into())));
            unreachable = Some(reason);
            None
        }
        Err((_, reason)) => {
            out.push(ctx.done(Status::Fail, reason, Some(set_fix.clone())));
            None
        }
    };
    if let Some(text) = &record {
        match parse_record(text) {
            Err(e) => out.push(ctx.done(
                Status::Fail,
                format!("\"{text}\": syntax error: {e}"),
                Some(format!("correct the record, e.g. {set_fix}")),
            )),
            Ok(rec) => {
                all = rec.all_qualifier();
                let c = match (all, &rec.redirect) {
                    (Some(Qualifier::Pass), _) => ctx.done(
                        Status::Fail,
                        format!("\"{text}\": +all authorises every host on the internet to send as {domain}"),
                        Some(format!("end the record with -all (or ~all): {set_fix}")),
                    ),
                    (Some(Qualifier::Neutral), _) => ctx.done(
                        Status::Warn,
                        format!("\"{text}\": ?all makes no statement about other senders"),
                        Some("end the record with -all (or ~all)".into()),
                    ),
                    (None, None) => ctx.done(
                        Status::Warn,
                        format!("\"{text}\": no all term, so unlisted senders are neutral"),
                        Some("end the record with -all (or ~all)".into()),
                    ),
                    _ => ctx.pass(format!("\"{text}\"")),
                };
                out.push(c);
            }
        }
    }
    let per_ip = fleet
        .members()
        .iter()
        .flat_map(|m| m.id.addresses().into_iter().map(move |ip| (m.name(), ip)))
        .map(|(vps, ip)| {
            let set_fix = set_fix.clone();
            let unreachable = unreachable.clone();
            async move {
                let ctx = Ctx {
                    kind: CheckKind::Spf,
                    name: domain,
                    address: Some(ip),
                    expected: format!("pass for {ip}"),
                    vps,
                };
                // The record could not even be fetched: evaluating again would only wait
                // for the same timeout once more per address.
                if let Some(reason) = unreachable {
                    return ctx.done(
                        Status::Error,
                        format!("not evaluated: {reason}"),
                        Some(UNKNOWN_FIX.into()),
                    );
                }
                spf_for_address(ctx, lookup, domain, ip, all, &set_fix).await
            }
        });
    out.extend(futures::future::join_all(per_ip).await);
    out
}

async fn spf_for_address<L: Lookup>(
    ctx: Ctx<'_>,
    lookup: &L,
    domain: &str,
    ip: IpAddr,
    all: Option<Qualifier>,
    set_fix: &str,
) -> Check {
    let o = spf::check_host(lookup, ip, domain, &format!("postmaster@{domain}")).await;
    let found = format!(
        "{} for {ip}: {} ({} of {} DNS lookups)",
        o.result,
        o.reason,
        o.dns_lookups,
        spf::MAX_DNS_LOOKUPS
    );
    let mech = if ip.is_ipv4() { "ip4" } else { "ip6" };
    match o.result {
        SpfResult::Pass
            if all == Some(Qualifier::Pass)
                && (o.reason.starts_with("matched +all ")
                    || o.reason.starts_with("matched all ")) =>
        {
            ctx.done(
                Status::Warn,
                found,
                Some(format!(
                    "authorised only by +all: add {mech}:{ip} and end with -all"
                )),
            )
        }
        SpfResult::Pass => ctx.pass(found),
        SpfResult::TempError => ctx.done(Status::Error, found, Some(UNKNOWN_FIX.into())),
        SpfResult::PermError => ctx.done(
            Status::Fail,
            found,
            Some(format!("make the SPF record valid, e.g. {set_fix}")),
        ),
        _ => ctx.done(
            Status::Fail,
            found,
            Some(format!(
                "add {mech}:{ip} to the SPF record of {domain}, before the all term"
            )),
        ),
    }
}

pub(super) async fn dmarc<L: Lookup>(id: &MailIdentity, lookup: &L) -> Check {
    let name = id.dmarc_name();
    let recommended = recommended_dmarc(id);
    let record = format!("TXT {name} \"{recommended}\"");
    let ctx = Ctx {
        kind: CheckKind::Dmarc,
        name: &name,
        address: None,
        expected: format!("exactly one record like \"{recommended}\""),
        vps: None,
    };
    let txts = match lookup.txt(&name).await {
        Ok(t) => t,
        Err(e) => return ctx.lookup_failed(&e, format!("add {record}")),
    };
    let dmarcs: Vec<&String> = txts.iter().filter(|t| looks_like_dmarc(t)).collect();
    match dmarcs.as_slice() {
        [] => ctx.done(
            Status::Fail,
            format!(
                "no DMARC record; TXT found: {}",
                join(txts.iter().map(|t| format!("\"{t}\"")))
            ),
            Some(format!("add {record}")),
        ),
        [one] => match DmarcRecord::parse(one) {
            Ok(rec) => {
                let mut found = format!("\"{one}\": policy p={}", rec.policy);
                if rec.policy == DmarcPolicy::None {
                    found.push_str(" (monitoring only)");
                }
                if rec.pct < 100 {
                    found.push_str(&format!(", applied to {}% of mail", rec.pct));
                }
                if rec.rua.is_empty() {
                    return ctx.done(
                        Status::Warn,
                        format!("{found}, no rua= so no aggregate reports"),
                        Some(format!(
                            "add rua=mailto:dmarc@{} to see who sends as you",
                            id.domain()
                        )),
                    );
                }
                ctx.pass(found)
            }
            Err(e) => ctx.done(
                Status::Fail,
                format!("\"{one}\": {e}"),
                Some(format!("replace it with {record}")),
            ),
        },
        many => ctx.done(
            Status::Fail,
            format!(
                "{} DMARC records ({}): receivers ignore DMARC when there is more than one",
                many.len(),
                join(many.iter().map(|t| format!("\"{t}\"")))
            ),
            Some(format!("keep only one: {record}")),
        ),
    }
}

pub(super) async fn dkim<L: Lookup>(id: &MailIdentity, lookup: &L) -> Check {
    let Some(name) = id.dkim_name() else {
        let name = format!("<selector>._domainkey.{}", id.domain());
        return Ctx {
            kind: CheckKind::Dkim,
            name: &name,
            address: None,
            expected: "a DKIM key record".into(),
            vps: None,
        }
        .done(
            Status::Warn,
            "not checked: no DKIM selector configured",
            Some("configure the DKIM selector your mail software signs with".into()),
        );
    };
    let ctx = Ctx {
        kind: CheckKind::Dkim,
        name: &name,
        address: None,
        expected: "\"v=DKIM1; k=rsa; p=<public key>\" from your mail software".into(),
        vps: None,
    };
    let hint = format!("publish TXT {name}: {}", dkim_hint(id));
    let txts = match lookup.txt(&name).await {
        Ok(t) => t,
        Err(e) => return ctx.lookup_failed(&e, hint),
    };
    if txts.len() > 1 {
        return ctx.done(
            Status::Fail,
            format!(
                "{} TXT records ({}): verifiers pick one at random",
                txts.len(),
                join(txts.iter().map(|t| format!("\"{}\"", shorten(t))))
            ),
            Some(format!("keep only the current key at {name}")),
        );
    }
    let text = &txts[0];
    match DkimRecord::parse(text) {
        Ok(rec) if rec.key_type == crate::dkim::DkimKeyType::Rsa && rec.approx_bits < 1024 => ctx
            .done(
                Status::Fail,
                format!(
                    "\"{}\": RSA key of about {} bits; verifiers reject keys under 1024 bits",
                    shorten(text),
                    rec.approx_bits
                ),
                Some("generate a 2048-bit key in your mail software and publish it".into()),
            ),
        Ok(rec) => {
            let found = format!(
                "\"{}\": {} key, about {} bits{}",
                shorten(text),
                rec.key_type,
                rec.approx_bits,
                if rec.testing { ", t=y (testing)" } else { "" }
            );
            if rec.testing {
                ctx.done(
                    Status::Warn,
                    found,
                    Some(
                        "remove t=y once signing works: verifiers treat testing keys leniently"
                            .into(),
                    ),
                )
            } else {
                ctx.pass(found)
            }
        }
        Err(e) => ctx.done(
            Status::Fail,
            format!("\"{}\": {e}", shorten(text)),
            Some(hint),
        ),
    }
}

/// Long DKIM keys make unreadable lines; the start and end identify them well enough.
fn shorten(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_owned();
    }
    let head: String = s.chars().take(50).collect();
    let tail: String = s
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}...{tail}")
}

pub(super) async fn ptr<L: Lookup>(m: &FleetMember, lookup: &L) -> Vec<Check> {
    futures::future::join_all(
        m.id.addresses()
            .into_iter()
            .map(|ip| ptr_for(m, lookup, ip)),
    )
    .await
}

async fn ptr_for<L: Lookup>(m: &FleetMember, lookup: &L, ip: IpAddr) -> Check {
    let host = m.id.mail_host();
    let rname = reverse_name(ip);
    let ctx = Ctx {
        kind: CheckKind::Ptr,
        name: &rname,
        address: Some(ip),
        expected: format!("{host}, which resolves back to {ip}"),
        vps: m.name(),
    };
    let set_fix =
        format!("in the VPS provider's control panel, set the reverse DNS (PTR) of {ip} to {host}");
    let names = match lookup.ptr(ip).await {
        Ok(n) => n,
        Err(e) => return ctx.lookup_failed(&e, set_fix),
    };
    if !names.iter().any(|n| n == host) {
        return ctx.done(Status::Fail, join(&names), Some(set_fix));
    }
    let back: Result<Vec<IpAddr>, LookupError> = match ip {
        IpAddr::V4(_) => lookup
            .a(host)
            .await
            .map(|v| v.into_iter().map(IpAddr::V4).collect()),
        IpAddr::V6(_) => lookup
            .aaaa(host)
            .await
            .map(|v| v.into_iter().map(IpAddr::V6).collect()),
    };
    let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
    let forward_fix = format!("set {rtype} {host} -> {ip} at your DNS host");
    match back {
        Ok(addrs) if addrs.contains(&ip) => {
            if names.len() > 1 {
                ctx.done(
                    Status::Warn,
                    format!(
                        "{} (forward-confirmed, but several PTR names)",
                        join(&names)
                    ),
                    Some(format!("keep only {host} as reverse DNS of {ip}")),
                )
            } else {
                ctx.pass(format!(
                    "{host}, which resolves back to {ip} (forward-confirmed)"
                ))
            }
        }
        Ok(addrs) => ctx.done(
            Status::Fail,
            format!(
                "{host}, but {host} resolves to {}, not {ip}: not forward-confirmed",
                join(&addrs)
            ),
            Some(forward_fix),
        ),
        Err(e) if e.is_negative() => ctx.done(
            Status::Fail,
            format!("{host}, but {e}: not forward-confirmed"),
            Some(forward_fix),
        ),
        Err(e) => ctx.done(
            Status::Error,
            format!("{host}, but the forward check failed: {e}"),
            Some(UNKNOWN_FIX.into()),
        ),
    }
}
