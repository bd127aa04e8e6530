//! The watchdog's checks in `ceres-vps status`: each with its state and
//! since when, as the running agent wrote them into its status file, and the
//! failing ones that are problems. `cerectl status` counts a failing check
//! only where it has no verdict of its own on the same thing
//! ([`ceres_proto::CheckKind::has_own_verdict`]); the local status judges
//! fewer things itself (home's session and the egress, not the relays, home's
//! firewall or the rotation), so here every other failing check counts, and
//! nothing is said twice or left unsaid.

use ceres_daemon::status_file::human_secs;
use ceres_daemon::terminal::escape_controls;
use serde::{Deserialize, Deserializer, Serialize};

use crate::watch::CheckId;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Not run yet.
    Pending,
    /// As it should be.
    Ok,
    /// Works but risky, or could not be checked: shown, never notified.
    Warning,
    /// Broken: notified.
    Failing,
}

/// One watchdog check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPart {
    /// Which check (`home`, `relays`, ..., `mx`).
    pub id: CheckId,
    /// Its state.
    pub state: CheckState,
    /// Since when it is in this state (Unix seconds; 0 before its first run).
    pub since_unix: i64,
    /// What was found, one line (prose: decide on `state` and `findings`).
    pub detail: String,
    /// The parts that are not ok.
    #[serde(default)]
    pub findings: Vec<FindingPart>,
    /// A "failing" notification went out and its "resolved" not yet.
    #[serde(default)]
    pub notified: bool,
}

/// One part of a check that is not ok.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingPart {
    /// A blocklist and address, a VPS address, a certificate, a port.
    pub subject: String,
    /// `warning` or `failing`.
    pub state: CheckState,
    /// What was found and, where there is one, the fix.
    pub text: String,
}

impl CheckPart {
    /// The problem line, when the check fails and nothing else in the local
    /// status judges what it watches.
    pub fn problem(&self) -> Option<String> {
        use ceres_proto::CheckKind as K;
        let judged_here = matches!(self.id.to_proto(), K::Home | K::Egress);
        (self.state == CheckState::Failing && !judged_here).then(|| {
            format!(
                "{} ({} check): {}",
                self.id.title(),
                self.id,
                escape_controls(&self.detail)
            )
        })
    }

    /// The text line: id, state, since how long, detail. The detail may
    /// quote DNS or home: escaped.
    pub fn line(&self, now_unix: i64) -> String {
        let state = match self.state {
            CheckState::Pending => "pending".to_owned(),
            CheckState::Ok => "ok".to_owned(),
            CheckState::Warning => "warning".to_owned(),
            CheckState::Failing => "FAILING".to_owned(),
        };
        let since = if self.since_unix > 0 {
            format!(" for {}", human_secs(now_unix - self.since_unix))
        } else {
            String::new()
        };
        format!(
            "check    {:<13} {state}{since} · {}{}",
            self.id.as_str(),
            escape_controls(&self.detail),
            if self.notified { " · notified" } else { "" }
        )
    }
}

/// The checks in a status file. A check this build does not know (written
/// by a newer agent) is left out, rather than making the whole file
/// unreadable; a file from an agent without checks has none (`#[serde(default)]`
/// on the field).
pub fn known_checks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CheckPart>, D::Error> {
    let raw = Vec::<serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: CheckId, state: CheckState) -> CheckPart {
        CheckPart {
            id,
            state,
            since_unix: 700,
            detail: format!("{id} detail"),
            findings: Vec::new(),
            notified: false,
        }
    }

    #[test]
    fn failing_checks_are_problems_unless_the_local_status_judges_the_same_thing() {
        use CheckState::{Failing, Ok, Pending, Warning};
        for (id, state, problem) in [
            (CheckId::Certificates, Failing, true),
            (CheckId::Dnsbl, Failing, true),
            (CheckId::Ptr, Failing, true),
            (CheckId::Spf, Failing, true),
            (CheckId::Mx, Failing, true),
            (CheckId::Dnsbl, Warning, false),
            (CheckId::Mx, Pending, false),
            (CheckId::Spf, Ok, false),
            // Judged by the local status's own facts (home's session, the
            // egress): shown only.
            (CheckId::Home, Failing, false),
            (CheckId::Egress, Failing, false),
            // Nothing else in the local status judges these (cerectl does,
            // from the report): the failing check is the problem here.
            (CheckId::Relays, Failing, true),
            (CheckId::HomeFirewall, Failing, true),
            (CheckId::Rotation, Failing, true),
            (CheckId::Rotation, Warning, false),
        ] {
            assert_eq!(
                check(id, state).problem().is_some(),
                problem,
                "{id} {state:?}"
            );
        }
        assert_eq!(
            check(CheckId::Dnsbl, Failing).problem().unwrap(),
            "DNS blocklists (dnsbl check): dnsbl detail"
        );
    }

    #[test]
    fn a_line_says_id_state_since_and_detail() {
        let mut c = check(CheckId::Dnsbl, CheckState::Failing);
        c.notified = true;
        assert_eq!(
            c.line(1000),
            "check    dnsbl         FAILING for 5 min · dnsbl detail · notified"
        );
        let ok = check(CheckId::HomeFirewall, CheckState::Ok);
        assert_eq!(
            ok.line(700 + 7200),
            "check    home_firewall ok for 2 h · home_firewall detail"
        );
        let pending = CheckPart {
            since_unix: 0,
            detail: "not run yet".into(),
            ..check(CheckId::Mx, CheckState::Pending)
        };
        assert_eq!(
            pending.line(1000),
            "check    mx            pending · not run yet"
        );
        // What DNS or home said cannot drive the terminal or forge a line.
        let mut evil = check(CheckId::Spf, CheckState::Failing);
        evil.detail = "v=spf1\n\x1b[2Jproblems: none".into();
        assert!(!evil.line(1000).contains(['\n', '\x1b']));
        assert!(!evil.problem().unwrap().contains(['\n', '\x1b']));
    }

    #[test]
    fn json_is_the_names_and_a_check_a_newer_agent_added_is_left_out() {
        let c = check(CheckId::HomeFirewall, CheckState::Warning);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["id"], "home_firewall");
        assert_eq!(v["state"], "warning");
        #[derive(Deserialize)]
        struct File {
            #[serde(default, deserialize_with = "known_checks")]
            checks: Vec<CheckPart>,
        }
        let newer = serde_json::json!({"checks": [
            v,
            {"id": "smtp_banner", "state": "ok", "since_unix": 1, "detail": "x"},
            {"id": "mx", "state": "on_fire", "since_unix": 1, "detail": "x"},
        ]});
        let f: File = serde_json::from_value(newer).unwrap();
        assert_eq!(f.checks, [c]);
        let older: File = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(older.checks.is_empty());
    }
}
