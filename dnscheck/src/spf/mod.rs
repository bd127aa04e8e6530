//! An RFC 7208 SPF evaluator: `check_host()` for one address and domain, with the
//! DNS-lookup limit (10), the void-lookup limit (2), include/redirect chains, loop
//! detection and macro expansion. It answers "does this record authorise the VPS?".

mod macros;
mod parse;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use serde::Serialize;

use crate::lookup::{Lookup, LookupError, canonical};

pub use macros::MacroString;
pub use parse::{
    Directive, Mechanism, Qualifier, SpfRecord, SpfSyntaxError, is_spf_record, parse_record,
};

use macros::MacroContext;

/// RFC 7208 4.6.4: at most 10 mechanisms/modifiers that cause DNS queries.
pub const MAX_DNS_LOOKUPS: u32 = 10;
/// RFC 7208 4.6.4: at most 2 of those queries may come back empty (NXDOMAIN/no data).
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// RFC 7208 4.6.4: an `mx` (or `ptr`) term looks at no more than 10 names.
const MAX_NAMES_PER_TERM: usize = 10;

/// The result of `check_host()` (RFC 7208 2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfResult {
    /// No SPF record was found.
    None,
    /// The record makes no statement about the address.
    Neutral,
    /// The address is authorised.
    Pass,
    /// The address is not authorised.
    Fail,
    /// The address is probably not authorised.
    SoftFail,
    /// A transient DNS error stopped the evaluation.
    TempError,
    /// The record(s) could not be interpreted.
    PermError,
}

impl std::fmt::Display for SpfResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Neutral => "neutral",
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        })
    }
}

impl From<Qualifier> for SpfResult {
    fn from(q: Qualifier) -> Self {
        match q {
            Qualifier::Pass => Self::Pass,
            Qualifier::Fail => Self::Fail,
            Qualifier::SoftFail => Self::SoftFail,
            Qualifier::Neutral => Self::Neutral,
        }
    }
}

/// What `check_host()` concluded and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpfOutcome {
    /// The SPF result.
    pub result: SpfResult,
    /// Human-readable reason: the matching term and where it was, or the error.
    pub reason: String,
    /// The top-level SPF record evaluated, if one was found.
    pub record: Option<String>,
    /// DNS-querying terms used (limit [`MAX_DNS_LOOKUPS`]).
    pub dns_lookups: u32,
    /// Queries that came back empty (limit [`MAX_VOID_LOOKUPS`]).
    pub void_lookups: u32,
}

/// Evaluates SPF for a message from `ip` with envelope sender `sender` at `domain`.
pub async fn check_host<L: Lookup>(
    lookup: &L,
    ip: IpAddr,
    domain: &str,
    sender: &str,
) -> SpfOutcome {
    let mut ev = Evaluator {
        lookup,
        ip,
        sender: sender.to_owned(),
        dns_lookups: 0,
        void_lookups: 0,
        stack: Vec::new(),
        top_record: None,
    };
    let (result, reason) = ev.check(canonical(domain)).await;
    SpfOutcome {
        result,
        reason,
        record: ev.top_record,
        dns_lookups: ev.dns_lookups,
        void_lookups: ev.void_lookups,
    }
}

/// Fetches the SPF record text of `domain`: `Ok(None)` when there is none,
/// `Err((result, reason))` for several records or DNS trouble.
pub async fn fetch_record<L: Lookup>(
    lookup: &L,
    domain: &str,
) -> Result<Option<String>, (SpfResult, String)> {
    match lookup.txt(domain).await {
        Ok(txts) => {
            let spf: Vec<String> = txts.into_iter().filter(|t| is_spf_record(t)).collect();
            match spf.len() {
                0 => Ok(None),
                1 => Ok(spf.into_iter().next()),
                n => Err((
                    SpfResult::PermError,
                    format!(
                        "{domain} has {n} SPF records ({}); exactly one is allowed",
                        spf.iter()
                            .map(|s| format!("\"{s}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        Err(e) if e.is_negative() => Ok(None),
        Err(e) => Err((SpfResult::TempError, e.to_string())),
    }
}

type Verdict = (SpfResult, String);

struct Evaluator<'l, L> {
    lookup: &'l L,
    ip: IpAddr,
    sender: String,
    dns_lookups: u32,
    void_lookups: u32,
    /// Domains whose records are being evaluated, to name include/redirect loops.
    stack: Vec<String>,
    top_record: Option<String>,
}

/// What a mechanism did.
enum Matched {
    Yes(String),
    No,
    Stop(Verdict),
}

impl<'l, L: Lookup> Evaluator<'l, L> {
    fn check<'a>(&'a mut self, domain: String) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>
    where
        'l: 'a,
    {
        Box::pin(async move {
            // RFC 7208 4.3: a malformed domain has no SPF record ("none"), which an
            // include or redirect then turns into permerror with its own context.
            if !valid_domain(&domain) {
                return (
                    SpfResult::None,
                    format!("{domain:?} is not a valid domain name"),
                );
            }
            if self.stack.contains(&domain) {
                return (
                    SpfResult::PermError,
                    format!(
                        "loop: {} includes itself again",
                        self.stack
                            .iter()
                            .chain(std::iter::once(&domain))
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    ),
                );
            }
            let text = match fetch_record(self.lookup, &domain).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    return (SpfResult::None, format!("no SPF record at {domain}"));
                }
                Err(v) => return v,
            };
            if self.stack.is_empty() {
                self.top_record = Some(text.clone());
            }
            let record = match parse_record(&text) {
                Ok(r) => r,
                Err(e) => {
                    return (
                        SpfResult::PermError,
                        format!("syntax error in SPF record at {domain}: {e}"),
                    );
                }
            };
            self.stack.push(domain.clone());
            let verdict = self.evaluate(&domain, &record).await;
            self.stack.pop();
            verdict
        })
    }

    async fn evaluate(&mut self, domain: &str, record: &SpfRecord) -> Verdict {
        for d in &record.directives {
            match self.mechanism(domain, d).await {
                Matched::Yes(detail) => {
                    let result = SpfResult::from(d.qualifier);
                    return (result, format!("matched {}{detail} at {domain}", d.text));
                }
                Matched::No => {}
                Matched::Stop(v) => return v,
            }
        }
        if let Some(target) = &record.redirect {
            if let Err(v) = self.count_lookup("redirect") {
                return v;
            }
            let target = self.expand(target, domain);
            let (result, reason) = self.check(target.clone()).await;
            if result == SpfResult::None {
                return (
                    SpfResult::PermError,
                    format!("redirect={target} from {domain}: {reason}"),
                );
            }
            return (result, format!("via redirect={target}: {reason}"));
        }
        (
            SpfResult::Neutral,
            format!("no term matched at {domain} and there is no \"all\" (default neutral)"),
        )
    }

    fn expand(&self, spec: &MacroString, domain: &str) -> String {
        let ctx = MacroContext {
            sender: &self.sender,
            domain,
            ip: self.ip,
        };
        let mut name = canonical(&spec.expand(&ctx));
        // RFC 7208 7.3: over-long expansions lose labels from the left.
        while name.len() > 253 {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_owned(),
                None => break,
            }
        }
        name
    }

    fn count_lookup(&mut self, term: &str) -> Result<(), Verdict> {
        self.dns_lookups += 1;
        if self.dns_lookups > MAX_DNS_LOOKUPS {
            return Err((
                SpfResult::PermError,
                format!(
                    "too many DNS lookups: {term} is lookup number {} (RFC 7208 allows {MAX_DNS_LOOKUPS}); flatten includes or use ip4:/ip6:",
                    self.dns_lookups
                ),
            ));
        }
        Ok(())
    }

    /// Classifies a failed query: empty answers count as void lookups, anything else
    /// stops the evaluation with temperror.
    fn on_lookup_error(&mut self, term: &str, e: &LookupError) -> Option<Verdict> {
        if e.is_negative() {
            self.void_lookups += 1;
            if self.void_lookups > MAX_VOID_LOOKUPS {
                return Some((
                    SpfResult::PermError,
                    format!(
                        "too many void lookups: {term} found nothing ({e}), the {} empty answer (RFC 7208 allows {MAX_VOID_LOOKUPS})",
                        ordinal(self.void_lookups)
                    ),
                ));
            }
            None
        } else {
            Some((SpfResult::TempError, format!("{term}: {e}")))
        }
    }

    async fn addresses_of(&mut self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        match self.ip {
            IpAddr::V4(_) => Ok(self
                .lookup
                .a(name)
                .await?
                .into_iter()
                .map(IpAddr::V4)
                .collect()),
            IpAddr::V6(_) => Ok(self
                .lookup
                .aaaa(name)
                .await?
                .into_iter()
                .map(IpAddr::V6)
                .collect()),
        }
    }

    async fn mechanism(&mut self, domain: &str, d: &Directive) -> Matched {
        let term = d.text.as_str();
        match &d.mechanism {
            Mechanism::All => Matched::Yes(String::new()),
            Mechanism::Ip4(net, len) => match self.ip {
                IpAddr::V4(ip) if in_prefix4(ip.into(), (*net).into(), *len) => {
                    Matched::Yes(String::new())
                }
                _ => Matched::No,
            },
            Mechanism::Ip6(net, len) => match self.ip {
                IpAddr::V6(ip) if in_prefix6(ip.into(), (*net).into(), *len) => {
                    Matched::Yes(String::new())
                }
                _ => Matched::No,
            },
            Mechanism::Include(spec) => {
                if let Err(v) = self.count_lookup(term) {
                    return Matched::Stop(v);
                }
                let target = self.expand(spec, domain);
                let (result, reason) = self.check(target.clone()).await;
                match result {
                    SpfResult::Pass => Matched::Yes(format!(" ({reason})")),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Matched::No,
                    SpfResult::TempError => Matched::Stop((result, format!("{term}: {reason}"))),
                    SpfResult::PermError => Matched::Stop((result, format!("{term}: {reason}"))),
                    SpfResult::None => Matched::Stop((
                        SpfResult::PermError,
                        format!("{term} at {domain}: {reason}, so the include is an error"),
                    )),
                }
            }
            Mechanism::A {
                domain: spec,
                cidr4,
                cidr6,
            } => {
                if let Err(v) = self.count_lookup(term) {
                    return Matched::Stop(v);
                }
                let target = spec
                    .as_ref()
                    .map_or_else(|| domain.to_owned(), |s| self.expand(s, domain));
                match self.addresses_of(&target).await {
                    Ok(addrs) => {
                        if addrs.iter().any(|a| self.matches(*a, *cidr4, *cidr6)) {
                            Matched::Yes(format!(" ({target} has {})", self.ip))
                        } else {
                            Matched::No
                        }
                    }
                    Err(e) => match self.on_lookup_error(term, &e) {
                        Some(v) => Matched::Stop(v),
                        None => Matched::No,
                    },
                }
            }
            Mechanism::Mx {
                domain: spec,
                cidr4,
                cidr6,
            } => {
                if let Err(v) = self.count_lookup(term) {
                    return Matched::Stop(v);
                }
                let target = spec
                    .as_ref()
                    .map_or_else(|| domain.to_owned(), |s| self.expand(s, domain));
                let mut mxs = match self.lookup.mx(&target).await {
                    Ok(m) => m,
                    Err(e) => {
                        return match self.on_lookup_error(term, &e) {
                            Some(v) => Matched::Stop(v),
                            None => Matched::No,
                        };
                    }
                };
                if mxs.len() > MAX_NAMES_PER_TERM {
                    return Matched::Stop((
                        SpfResult::PermError,
                        format!(
                            "{term}: {target} has {} MX records, more than the {MAX_NAMES_PER_TERM} an mx term may look at",
                            mxs.len()
                        ),
                    ));
                }
                mxs.sort_by_key(|m| m.preference);
                for mx in mxs {
                    match self.addresses_of(&mx.exchange).await {
                        Ok(addrs) => {
                            if addrs.iter().any(|a| self.matches(*a, *cidr4, *cidr6)) {
                                return Matched::Yes(format!(
                                    " (MX {} {} has {})",
                                    mx.preference, mx.exchange, self.ip
                                ));
                            }
                        }
                        // An MX host without addresses simply does not match.
                        Err(e) if e.is_negative() => {}
                        Err(e) => {
                            return Matched::Stop((SpfResult::TempError, format!("{term}: {e}")));
                        }
                    }
                }
                Matched::No
            }
            Mechanism::Ptr(spec) => {
                if let Err(v) = self.count_lookup(term) {
                    return Matched::Stop(v);
                }
                let target = spec
                    .as_ref()
                    .map_or_else(|| domain.to_owned(), |s| self.expand(s, domain));
                // RFC 7208 5.5: errors during ptr evaluation just mean "no match".
                let names = match self.lookup.ptr(self.ip).await {
                    Ok(n) => n,
                    Err(e) => {
                        if e.is_negative() {
                            self.void_lookups += 1;
                        }
                        return Matched::No;
                    }
                };
                for name in names.into_iter().take(MAX_NAMES_PER_TERM) {
                    if !(name == target || name.ends_with(&format!(".{target}"))) {
                        continue;
                    }
                    if let Ok(addrs) = self.addresses_of(&name).await
                        && addrs.contains(&self.ip)
                    {
                        return Matched::Yes(format!(" ({name})"));
                    }
                }
                Matched::No
            }
            Mechanism::Exists(spec) => {
                if let Err(v) = self.count_lookup(term) {
                    return Matched::Stop(v);
                }
                let target = self.expand(spec, domain);
                match self.lookup.a(&target).await {
                    Ok(_) => Matched::Yes(format!(" ({target} exists)")),
                    Err(e) => match self.on_lookup_error(term, &e) {
                        Some(v) => Matched::Stop(v),
                        None => Matched::No,
                    },
                }
            }
        }
    }

    fn matches(&self, addr: IpAddr, cidr4: u8, cidr6: u8) -> bool {
        match (self.ip, addr) {
            (IpAddr::V4(ip), IpAddr::V4(a)) => in_prefix4(ip.into(), a.into(), cidr4),
            (IpAddr::V6(ip), IpAddr::V6(a)) => in_prefix6(ip.into(), a.into(), cidr6),
            _ => false,
        }
    }
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

fn in_prefix4(ip: u32, net: u32, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    ip & mask == net & mask
}

fn in_prefix6(ip: u128, net: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    ip & mask == net & mask
}

fn ordinal(n: u32) -> String {
    match n {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        n => format!("{n}th"),
    }
}

#[cfg(test)]
mod tests;
