//! Live verification of the checklist: each published record is looked up and judged,
//! and every finding says what was found, what was expected and the one-line fix.

mod checks;
mod render;

pub use render::{Row, Table};

use std::net::IpAddr;

use serde::Serialize;

use crate::fleet::{MailFleet, VpsSummary};
use crate::identity::MailIdentity;
use crate::lookup::Lookup;

/// Which record a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A of the mail host.
    A,
    /// AAAA of the mail host.
    Aaaa,
    /// MX of the domain.
    Mx,
    /// SPF of the domain.
    Spf,
    /// DMARC at `_dmarc`.
    Dmarc,
    /// DKIM key at `<selector>._domainkey`.
    Dkim,
    /// Reverse DNS of a VPS address, forward-confirmed.
    Ptr,
    /// A DNS blocklist listing (from [`crate::dnsbl_check`]).
    Dnsbl,
}

impl CheckKind {
    /// Upper-case label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Mx => "MX",
            Self::Spf => "SPF",
            Self::Dmarc => "DMARC",
            Self::Dkim => "DKIM",
            Self::Ptr => "PTR",
            Self::Dnsbl => "DNSBL",
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Pass,
    /// Works, but is risky or unusual.
    Warn,
    /// Wrong or missing: mail will suffer.
    Fail,
    /// Could not be checked (timeout, SERVFAIL): says nothing about the record.
    Error,
}

impl Status {
    /// Upper-case label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Error => "ERROR",
        }
    }
}

/// One finding.
///
/// JSON (stable): `kind` (`"a"`, `"aaaa"`, `"mx"`, `"spf"`, `"dmarc"`, `"dkim"`,
/// `"ptr"`, `"dnsbl"`), `name` (the DNS name looked up, or the blocklist zone),
/// `address` (the VPS address the check is about, or `null`), `status` (`"pass"`,
/// `"warn"`, `"fail"`, `"error"`), `found`, `expected`, `fix` (`null` on pass); with
/// several VPSes also `vps` on the checks about one of them (absent otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Which record.
    pub kind: CheckKind,
    /// The DNS name asked about.
    pub name: String,
    /// The VPS address this check is about, if it is about one.
    pub address: Option<IpAddr>,
    /// The verdict.
    pub status: Status,
    /// What DNS answered.
    pub found: String,
    /// What should be there.
    pub expected: String,
    /// One line saying what to change; `None` when nothing is to be done.
    pub fix: Option<String>,
    /// The VPS this check is about, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vps: Option<String>,
}

/// Counts per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Checks that passed.
    pub pass: usize,
    /// Checks with warnings.
    pub warn: usize,
    /// Checks that failed.
    pub fail: usize,
    /// Checks that could not be completed.
    pub error: usize,
}

/// All findings for a domain.
///
/// JSON (stable): `{"domain", "mail_host", "ok": bool, "summary": {"pass", "warn",
/// "fail", "error"}, "checks": [Check...]}`; with several VPSes `mail_host` is the
/// first one's (by priority) and `vpses` lists them all (`[{"name", "priority",
/// "mail_host", "addresses"}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The mail domain.
    pub domain: String,
    /// The mail host (of the first VPS by priority).
    pub mail_host: String,
    /// Each VPS, when there are several (empty for one).
    pub vpses: Vec<VpsSummary>,
    /// Findings in checklist order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Counts per status.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.checks {
            match c.status {
                Status::Pass => s.pass += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
                Status::Error => s.error += 1,
            }
        }
        s
    }

    /// True when nothing failed and nothing was left unchecked (warnings are fine);
    /// `cerectl` exits non-zero otherwise.
    pub fn is_ok(&self) -> bool {
        self.checks
            .iter()
            .all(|c| matches!(c.status, Status::Pass | Status::Warn))
    }

    /// The worst status of all checks (`Pass` for an empty report).
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    /// Appends findings from elsewhere (e.g. DNSBL checks in `cerectl doctor`).
    pub fn extend(&mut self, checks: impl IntoIterator<Item = Check>) {
        self.checks.extend(checks);
    }

    /// Pretty-printed JSON (see [`Report`] for the schema).
    pub fn render_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            domain: &'a str,
            mail_host: &'a str,
            #[serde(skip_serializing_if = "<[VpsSummary]>::is_empty")]
            vpses: &'a [VpsSummary],
            ok: bool,
            summary: Summary,
            checks: &'a [Check],
        }
        serde_json::to_string_pretty(&Out {
            domain: &self.domain,
            mail_host: &self.mail_host,
            vpses: &self.vpses,
            ok: self.is_ok(),
            summary: self.summary(),
            checks: &self.checks,
        })
        .unwrap_or_default()
    }
}

/// Verifies every record of the checklist for one VPS through `lookup`.
pub async fn verify<L: Lookup>(id: &MailIdentity, lookup: &L) -> Report {
    verify_fleet(&MailFleet::from(id.clone()), lookup).await
}

/// Verifies every record of the checklist for every VPS of `fleet`: each VPS's
/// A/AAAA, MX (present, and tried in priority order) and forward-confirmed PTR,
/// the one SPF record authorising every address, DMARC and DKIM once.
pub async fn verify_fleet<L: Lookup>(fleet: &MailFleet, lookup: &L) -> Report {
    // Independent questions run concurrently in this task (no spawning): a slow or
    // dead resolver then costs one timeout, not one per record.
    let addresses = futures::future::join_all(fleet.members().iter().map(|m| async move {
        let (a, aaaa) = tokio::join!(checks::address_v4(m, lookup), checks::address_v6(m, lookup));
        [a, aaaa]
    }));
    let ptrs = futures::future::join_all(fleet.members().iter().map(|m| checks::ptr(m, lookup)));
    let (addresses, mx, spf, dmarc, dkim, ptrs) = tokio::join!(
        addresses,
        checks::mx(fleet, lookup),
        checks::spf(fleet, lookup),
        checks::dmarc(fleet.primary(), lookup),
        checks::dkim(fleet.primary(), lookup),
        ptrs,
    );
    let mut checks: Vec<Check> = addresses.into_iter().flatten().collect();
    checks.extend(mx);
    checks.extend(spf);
    checks.push(dmarc);
    checks.push(dkim);
    checks.extend(ptrs.into_iter().flatten());
    tracing::info!(
        domain = fleet.domain(),
        vpses = fleet.members().len(),
        checks = checks.len(),
        failed = checks.iter().filter(|c| c.status == Status::Fail).count(),
        "dns verification done"
    );
    Report {
        domain: fleet.domain().to_owned(),
        mail_host: fleet.primary().mail_host().to_owned(),
        vpses: fleet.summaries(),
        checks,
    }
}

/// Only the records that route mail to the VPS: MX of the domain, and A and
/// AAAA of the mail host (the VPS agent's watchdog checks these on their own
/// schedule, apart from the rest).
pub async fn verify_routing<L: Lookup>(id: &MailIdentity, lookup: &L) -> Vec<Check> {
    let fleet = MailFleet::from(id.clone());
    let member = &fleet.members()[0];
    let (mut mx, a, aaaa) = tokio::join!(
        checks::mx(&fleet, lookup),
        checks::address_v4(member, lookup),
        checks::address_v6(member, lookup),
    );
    mx.extend([a, aaaa]);
    mx
}

/// Only the SPF checks: the record, and whether it authorises each VPS address.
pub async fn verify_spf<L: Lookup>(id: &MailIdentity, lookup: &L) -> Vec<Check> {
    checks::spf(&MailFleet::from(id.clone()), lookup).await
}

/// Only the reverse DNS (forward-confirmed) of each VPS address.
pub async fn verify_ptr<L: Lookup>(id: &MailIdentity, lookup: &L) -> Vec<Check> {
    let fleet = MailFleet::from(id.clone());
    checks::ptr(&fleet.members()[0], lookup).await
}

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod tests;
