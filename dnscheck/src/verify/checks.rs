//! One function per record kind; each returns findings, never errors, because a DNS
//! failure is itself a finding (status `error`, distinct from "missing").

use std::collections::BTreeSet;
use std::fmt::Display;
use std::net::IpAddr;

use super::{Check, CheckKind, Status};
use crate::checklist::{MX_PRIORITY, dkim_hint, recommended_dmarc, recommended_spf};
use crate::dkim::DkimRecord;
use crate::dmarc::{DmarcPolicy, DmarcRecord, looks_like_dmarc};
use crate::identity::MailIdentity;
use crate::lookup::{Lookup, LookupError, reverse_name};
use crate::spf::{self, Qualifier, SpfResult, parse_record};

const UNKNOWN_FIX: &str = "DNS did not answer usefully: retry, or ask another resolver; the record itself was not checked";

struct Ctx<'a> {
    kind: CheckKind,
    name: &'a str,
    address: Option<IpAddr>,
    expected: String,
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
    id: &MailIdentity,
    expected: BTreeSet<IpAddr>,
    found: Result<BTreeSet<IpAddr>, LookupError>,
) -> Check {
    let host = id.mail_host();
    let rtype = kind.label();
    let ctx = Ctx {
        kind,
        name: host,
        address: None,
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

pub(super) async fn address_v4<L: Lookup>(id: &MailIdentity, lookup: &L) -> Check {
    let expected = id.ipv4().iter().map(|ip| IpAddr::V4(*ip)).collect();
    let found = lookup
        .a(id.mail_host())
        .await
        .map(|v| v.into_iter().map(IpAddr::V4).collect());
    addresses(CheckKind::A, id, expected, found).await
}

pub(super) async fn address_v6<L: Lookup>(id: &MailIdentity, lookup: &L) -> Check {
    let expected = id.ipv6().iter().map(|ip| IpAddr::V6(*ip)).collect();
    let found = lookup
        .aaaa(id.mail_host())
        .await
        .map(|v| v.into_iter().map(IpAddr::V6).collect());
    addresses(CheckKind::Aaaa, id, expected, found).await
}

pub(super) async fn mx<L: Lookup>(id: &MailIdentity, lookup: &L) -> Check {
    let host = id.mail_host();
    let ctx = Ctx {
        kind: CheckKind::Mx,
        name: id.domain(),
        address: None,
        expected: format!("{MX_PRIORITY} {host}"),
    };
    let add_fix = format!(
        "set MX {} -> {host} priority {MX_PRIORITY} at your DNS host",
        id.domain()
    );
    let mut mxs = match lookup.mx(id.domain()).await {
        Ok(m) => m,
        Err(e) => return ctx.lookup_failed(&e, add_fix),
    };
    mxs.sort_by(|a, b| (a.preference, &a.exchange).cmp(&(b.preference, &b.exchange)));
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
    let Some(ours) = mxs.iter().find(|m| m.exchange == host) else {
        return ctx.done(
            Status::Fail,
            found,
            Some(format!(
                "{add_fix}; remove the other MX records unless they relay to {host}"
            )),
        );
    };
    let before: Vec<_> = mxs
        .iter()
        .filter(|m| m.preference < ours.preference)
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
    ctx.pass(format!(
        "{found} (the mail host, priority {})",
        ours.preference
    ))
}

pub(super) async fn spf<L: Lookup>(id: &MailIdentity, lookup: &L) -> Vec<Check> {
    let domain = id.domain();
    let recommended = recommended_spf(id);
    let set_fix = format!("set TXT {domain} \"{recommended}\" (one SPF record only)");
    let ctx = Ctx {
        kind: CheckKind::Spf,
        name: domain,
        address: None,
        expected: format!("exactly one SPF record, e.g. \"{recommended}\""),
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
    let per_ip = id.addresses().into_iter().map(|ip| {
        let set_fix = set_fix.clone();
        let unreachable = unreachable.clone();
        async move {
            let ctx = Ctx {
                kind: CheckKind::Spf,
                name: domain,
                address: Some(ip),
                expected: format!("pass for {ip}"),
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

pub(super) async fn ptr<L: Lookup>(id: &MailIdentity, lookup: &L) -> Vec<Check> {
    futures::future::join_all(id.addresses().into_iter().map(|ip| ptr_for(id, lookup, ip))).await
}

async fn ptr_for<L: Lookup>(id: &MailIdentity, lookup: &L, ip: IpAddr) -> Check {
    let host = id.mail_host();
    let rname = reverse_name(ip);
    let ctx = Ctx {
        kind: CheckKind::Ptr,
        name: &rname,
        address: Some(ip),
        expected: format!("{host}, which resolves back to {ip}"),
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
