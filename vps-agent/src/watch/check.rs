//! What a check is and what one run of it found: the vocabulary shared by
//! the checks, the state tracker, the notifications and the surfaces.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The checks the VPS agent runs. The names (`as_str`) are stable: they are
/// the `check` label in Prometheus, the `id` in status (also in the local
/// status file, through serde), and what alert rules match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    /// The home agent's session, and the tunnel's handshakes.
    Home,
    /// Relays turning senders away (421) or failing to reach home.
    Relays,
    /// Home's outbound mail through the VPS (egress NAT, other firewalls).
    Egress,
    /// What home reports about its own firewall and input filter.
    HomeFirewall,
    /// WireGuard key rotation.
    Rotation,
    /// Expiry of the CA, the VPS's server certificate and the client certificates.
    Certificates,
    /// The VPS addresses on DNS blocklists.
    Dnsbl,
    /// Reverse DNS of the VPS addresses, forward-confirmed.
    Ptr,
    /// The SPF record still authorising every VPS address.
    Spf,
    /// MX still pointing at the mail host, and the mail host at the VPS.
    Mx,
}

impl CheckId {
    /// Every check, in the order status shows them.
    pub const ALL: [CheckId; 10] = [
        CheckId::Home,
        CheckId::Relays,
        CheckId::Egress,
        CheckId::HomeFirewall,
        CheckId::Rotation,
        CheckId::Certificates,
        CheckId::Dnsbl,
        CheckId::Ptr,
        CheckId::Spf,
        CheckId::Mx,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::Home => "home",
            CheckId::Relays => "relays",
            CheckId::Egress => "egress",
            CheckId::HomeFirewall => "home_firewall",
            CheckId::Rotation => "rotation",
            CheckId::Certificates => "certificates",
            CheckId::Dnsbl => "dnsbl",
            CheckId::Ptr => "ptr",
            CheckId::Spf => "spf",
            CheckId::Mx => "mx",
        }
    }

    /// As the protocol enum.
    pub fn to_proto(self) -> ceres_proto::CheckKind {
        use ceres_proto::CheckKind as K;
        match self {
            CheckId::Home => K::Home,
            CheckId::Relays => K::Relays,
            CheckId::Egress => K::Egress,
            CheckId::HomeFirewall => K::HomeFirewall,
            CheckId::Rotation => K::Rotation,
            CheckId::Certificates => K::Certificates,
            CheckId::Dnsbl => K::Dnsbl,
            CheckId::Ptr => K::Ptr,
            CheckId::Spf => K::Spf,
            CheckId::Mx => K::Mx,
        }
    }

    /// What it watches, for people.
    pub fn title(self) -> &'static str {
        match self {
            CheckId::Home => "Home agent and tunnel",
            CheckId::Relays => "Mail relays",
            CheckId::Egress => "Outbound mail through the VPS",
            CheckId::HomeFirewall => "Home firewall",
            CheckId::Rotation => "Key rotation",
            CheckId::Certificates => "Certificates",
            CheckId::Dnsbl => "DNS blocklists",
            CheckId::Ptr => "Reverse DNS (PTR)",
            CheckId::Spf => "SPF record",
            CheckId::Mx => "MX and mail host address",
        }
    }

    /// Whether the check watches live state that can flip within seconds
    /// (a session, counters): those must stay failing for the alert delay
    /// before anyone is told, and stay fixed as long before "resolved". The
    /// others (DNS, certificates) are facts checked minutes or hours apart:
    /// each run is already a considered answer, so a change is told at once.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            CheckId::Home
                | CheckId::Relays
                | CheckId::Egress
                | CheckId::HomeFirewall
                | CheckId::Rotation
        )
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad something is. Ordered: the worst finding decides a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// As it should be.
    Ok,
    /// Works but is risky, or could not be checked. Shown, never notified.
    Warning,
    /// Broken: notified.
    Failing,
}

impl Level {
    /// Lower-case word for status, JSON and notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Failing => "failing",
        }
    }

    /// The Prometheus gauge value (`ceres_check_state`): 0, 1, 2.
    pub fn gauge(self) -> f64 {
        match self {
            Level::Ok => 0.0,
            Level::Warning => 1.0,
            Level::Failing => 2.0,
        }
    }

    /// As the protocol enum.
    pub fn to_proto(self) -> ceres_proto::CheckState {
        match self {
            Level::Ok => ceres_proto::CheckState::Ok,
            Level::Warning => ceres_proto::CheckState::Warning,
            Level::Failing => ceres_proto::CheckState::Failing,
        }
    }
}

/// One part of a check that is not ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is about: a blocklist and address, a VPS address, a certificate, a port.
    pub subject: String,
    /// How bad.
    pub level: Level,
    /// What was found and, where there is one, the fix.
    pub text: String,
    /// This run could not tell (a DNS timeout, a blocklist refusing the
    /// resolver): says nothing about the subject, so it does not undo what
    /// an earlier run found ([`carry_forward`]).
    pub inconclusive: bool,
}

impl Finding {
    /// A finding about `subject`.
    pub fn new(subject: impl Into<String>, level: Level, text: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            level,
            text: text.into(),
            inconclusive: false,
        }
    }

    /// `subject` could not be checked this time (a warning).
    pub fn unknown(subject: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            inconclusive: true,
            ..Self::new(subject, Level::Warning, text)
        }
    }
}

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The verdict: the worst finding, or ok.
    pub level: Level,
    /// One line for people.
    pub detail: String,
    /// The parts that are not ok.
    pub findings: Vec<Finding>,
    /// The whole run could not tell (no resolver): see [`carry_forward`].
    pub inconclusive: bool,
}

impl Observation {
    /// All is well: `detail` says what was seen.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self::one(Level::Ok, detail)
    }

    /// One problem, with no subject of its own.
    pub fn one(level: Level, detail: impl Into<String>) -> Self {
        Self {
            level,
            detail: detail.into(),
            findings: Vec::new(),
            inconclusive: false,
        }
    }

    /// The run could not check anything (a warning).
    pub fn unknown(detail: impl Into<String>) -> Self {
        Self {
            inconclusive: true,
            ..Self::one(Level::Warning, detail)
        }
    }

    /// The verdict of several findings (ok ones are dropped): the worst one
    /// decides, the detail lists the failing ones first; `ok_detail` when
    /// nothing is wrong.
    pub fn from_findings(ok_detail: impl Into<String>, findings: Vec<Finding>) -> Self {
        let mut findings: Vec<Finding> = findings
            .into_iter()
            .filter(|f| f.level > Level::Ok)
            .collect();
        findings.sort_by_key(|f| std::cmp::Reverse(f.level));
        let Some(worst) = findings.first().map(|f| f.level) else {
            return Self::ok(ok_detail);
        };
        let detail = findings
            .iter()
            .map(|f| {
                if f.subject.is_empty() {
                    f.text.clone()
                } else {
                    format!("{}: {}", f.subject, f.text)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            level: worst,
            detail,
            findings,
            inconclusive: false,
        }
    }
}

/// Marks a finding kept from an earlier run.
const LAST_KNOWN: &str = " (last known: not confirmed by this run, which could not check)";

/// What a run could not check does not undo what the run before found
/// failing: a DNS timeout or a blocklist refusing the resolver is no
/// delisting, and must not send "resolved" (then "failing" again at the next
/// run). Such a subject keeps its failing finding, marked; a run that could
/// check nothing keeps every failing finding. A conclusive finding always wins.
pub fn carry_forward(previous: Option<&Observation>, new: Observation) -> Observation {
    let kept: Vec<&Finding> = previous
        .map(|p| {
            p.findings
                .iter()
                .filter(|f| f.level == Level::Failing && !f.subject.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let was_failing = previous.is_some_and(|p| p.level == Level::Failing);
    if kept.is_empty() && !(new.inconclusive && was_failing) {
        return new;
    }
    let mark = |f: &Finding| {
        let mut f = f.clone();
        if !f.text.ends_with(LAST_KNOWN) {
            f.text.push_str(LAST_KNOWN);
        }
        f
    };
    if new.inconclusive {
        let Some(p) = previous.filter(|_| was_failing) else {
            return new;
        };
        let mut findings: Vec<Finding> = if kept.is_empty() {
            // A failure without subjects (one line): keep it whole.
            vec![Finding::new("", Level::Failing, p.detail.clone())]
        } else {
            kept.into_iter().map(mark).collect()
        };
        findings.push(Finding::unknown("", new.detail));
        return Observation::from_findings("", findings);
    }
    let findings = new
        .findings
        .iter()
        .map(|f| match kept.iter().find(|k| k.subject == f.subject) {
            Some(k) if f.inconclusive => mark(k),
            _ => f.clone(),
        })
        .collect();
    let mut out = Observation::from_findings(new.detail.clone(), findings);
    if out.level == Level::Ok {
        out.detail = new.detail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_decides_and_comes_first() {
        let o = Observation::from_findings(
            "all good",
            vec![
                Finding::new("a", Level::Warning, "meh"),
                Finding::new("b", Level::Ok, "fine"),
                Finding::new("c", Level::Failing, "broken"),
            ],
        );
        assert_eq!(o.level, Level::Failing);
        assert_eq!(o.detail, "c: broken; a: meh");
        assert_eq!(o.findings.len(), 2);
        let ok = Observation::from_findings("all good", vec![Finding::new("b", Level::Ok, "x")]);
        assert_eq!(ok, Observation::ok("all good"));
    }

    #[test]
    fn a_run_that_could_not_check_does_not_undo_a_failure() {
        let listed = Observation::from_findings(
            "clean",
            vec![
                Finding::new("ip on bl", Level::Failing, "listed (127.0.0.2)"),
                Finding::new("ip on other", Level::Warning, "refused"),
            ],
        );
        // The list timed out this time: still listed, as last known.
        let timeout = Observation::from_findings(
            "clean",
            vec![Finding::unknown(
                "ip on bl",
                "could not be checked: timed out",
            )],
        );
        let kept = carry_forward(Some(&listed), timeout);
        assert_eq!(kept.level, Level::Failing);
        assert!(
            kept.findings[0]
                .text
                .starts_with("listed (127.0.0.2) (last known")
        );
        // Twice: the mark is not repeated.
        let again = carry_forward(
            Some(&kept),
            Observation::from_findings("clean", vec![Finding::unknown("ip on bl", "timed out")]),
        );
        assert_eq!(again.findings[0].text, kept.findings[0].text);
        // Nothing could be checked: the failure stays, with why.
        let none = carry_forward(Some(&listed), Observation::unknown("no resolver"));
        assert_eq!(none.level, Level::Failing);
        assert!(none.detail.contains("no resolver"), "{none:?}");
        // A conclusive answer wins: delisted is ok.
        let clean = carry_forward(Some(&listed), Observation::ok("clean"));
        assert_eq!(clean, Observation::ok("clean"));
        // Nothing failing before: an inconclusive run is just a warning.
        let w = carry_forward(Some(&Observation::ok("clean")), Observation::unknown("x"));
        assert_eq!(w.level, Level::Warning);
        let one = Observation::one(Level::Failing, "MX points elsewhere");
        let kept = carry_forward(Some(&one), Observation::unknown("no resolver"));
        assert_eq!(kept.level, Level::Failing);
        assert!(kept.detail.starts_with("MX points elsewhere"), "{kept:?}");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CheckId::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CheckId::ALL.len());
    }

    #[test]
    fn one_name_everywhere_and_one_kind_each() {
        let mut kinds = Vec::new();
        for id in CheckId::ALL {
            // The status file, the wire's old `id` and the metrics agree.
            assert_eq!(serde_json::to_value(id).unwrap(), id.as_str());
            assert_eq!(ceres_proto::compat::check_name(id.to_proto()), id.as_str());
            assert_ne!(id.to_proto(), ceres_proto::CheckKind::Unspecified);
            kinds.push(id.to_proto());
        }
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), CheckId::ALL.len());
    }
}
