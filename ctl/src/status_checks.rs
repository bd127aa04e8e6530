//! The VPS watchdog in `cerectl status`: each check with its state and
//! since when, and where notifications go — their JSON form (the `checks`
//! and `alert_channels` fields, docs/status-json.md) and their text.

use ceres_proto::{AlertChannel, AlertChannelKind, CheckState, WatchCheck};
use serde::{Deserialize, Serialize};

/// One watchdog check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckPart {
    /// Stable id: `home`, `relays`, `egress`, `home_firewall`, `rotation`,
    /// `certificates`, `dnsbl`, `ptr`, `spf`, `mx`.
    pub id: String,
    /// What it watches.
    pub title: String,
    /// `ok`, `warning`, `failing`, or `pending` (not run yet).
    pub state: String,
    /// Since when it is in this state, RFC 3339; null before its first run.
    pub since: Option<String>,
    /// What was found, one line.
    pub detail: String,
    /// The parts that are not ok.
    pub findings: Vec<FindingPart>,
    /// The last run, RFC 3339.
    pub last_run: Option<String>,
    /// Seconds between runs.
    pub interval_secs: u64,
    /// A "failing" notification went out and its "resolved" not yet.
    pub notified: bool,
}

/// One part of a check that is not ok.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FindingPart {
    /// A blocklist and address, a VPS address, a certificate, a port.
    pub subject: String,
    /// `warning` or `failing`.
    pub state: String,
    /// What was found and the fix.
    pub text: String,
}

/// Where notifications go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertChannelPart {
    /// `webhook` or `email`.
    pub kind: String,
    /// The webhook without its path and query (they may hold a token), or the address.
    pub target: String,
    /// Webhook body format: `json`, `ntfy`, `gotify`; null for e-mail.
    pub format: Option<String>,
    /// Notifications sent.
    pub sent: u64,
    /// Tries that failed.
    pub failed: u64,
    /// The last try, RFC 3339.
    pub last_attempt: Option<String>,
    /// Its error, when it failed.
    pub last_error: Option<String>,
}

fn state_word(state: i32) -> &'static str {
    match CheckState::try_from(state).unwrap_or(CheckState::Unspecified) {
        CheckState::Unspecified => "pending",
        CheckState::Ok => "ok",
        CheckState::Warning => "warning",
        CheckState::Failing => "failing",
    }
}

fn rfc3339(unix: i64) -> Option<String> {
    (unix > 0).then(|| ceres_pki::rfc3339(unix))
}

/// The checks of a status answer (empty from a VPS without a watchdog).
pub fn checks(checks: &[WatchCheck]) -> Vec<CheckPart> {
    checks
        .iter()
        .map(|c| CheckPart {
            id: c.id.clone(),
            title: c.title.clone(),
            state: state_word(c.state).to_owned(),
            since: rfc3339(c.since_unix),
            detail: c.detail.clone(),
            findings: c
                .findings
                .iter()
                .map(|f| FindingPart {
                    subject: f.subject.clone(),
                    state: state_word(f.state).to_owned(),
                    text: f.text.clone(),
                })
                .collect(),
            last_run: rfc3339(c.last_run_unix),
            interval_secs: c.interval_secs,
            notified: c.notified,
        })
        .collect()
}

/// The alert channels of a status answer.
pub fn channels(channels: &[AlertChannel]) -> Vec<AlertChannelPart> {
    channels.iter().map(channel).collect()
}

/// One channel.
pub fn channel(c: &AlertChannel) -> AlertChannelPart {
    AlertChannelPart {
        kind: match c.kind() {
            AlertChannelKind::Webhook => "webhook",
            AlertChannelKind::Email => "email",
            AlertChannelKind::Unspecified => "unknown",
        }
        .to_owned(),
        target: c.target.clone(),
        format: (!c.format.is_empty()).then(|| c.format.clone()),
        sent: c.sent,
        failed: c.failed,
        last_attempt: rfc3339(c.last_attempt_unix),
        last_error: (!c.last_error.is_empty()).then(|| c.last_error.clone()),
    }
}

/// Checks whose failure nothing else in the status judges: each failing one
/// is a problem (exit 1). Home, tunnel, relays, egress, home's firewall and
/// rotation have their own lines and problems already.
pub fn failing_own_verdict(checks: &[CheckPart]) -> impl Iterator<Item = &CheckPart> {
    const OWN_VERDICT: [&str; 5] = ["certificates", "dnsbl", "ptr", "spf", "mx"];
    checks
        .iter()
        .filter(|c| c.state == "failing" && OWN_VERDICT.contains(&c.id.as_str()))
}

/// The text section; empty when the VPS runs no watchdog.
pub fn render(checks: &[CheckPart], channels: &[AlertChannelPart], fancy: bool) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let paint = |state: &str, text: &str| -> String {
        let code = match state {
            "ok" => "32",
            "warning" => "33",
            "failing" => "31;1",
            _ => return text.to_owned(),
        };
        if fancy {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let mut out = String::from("  watchdog (the VPS checks these itself)\n");
    for c in checks {
        let since = c
            .since
            .as_deref()
            .map(|s| format!(" since {s}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "              {:<13} {}{since} · {}{}\n",
            c.id,
            paint(&c.state, &format!("{:<7}", c.state)),
            c.detail,
            if c.notified { " · notified" } else { "" }
        ));
    }
    if channels.is_empty() {
        out.push_str("              alerts: no channel (set CERES_ALERT_WEBHOOK or CERES_ALERT_EMAIL on the VPS)\n");
    }
    for a in channels {
        out.push_str(&format!(
            "              alerts → {} {}{} · sent {} · failed {}{}\n",
            a.kind,
            a.target,
            a.format
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default(),
            a.sent,
            a.failed,
            a.last_error
                .as_deref()
                .map(|e| format!(" · last error: {e}"))
                .unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_proto::CheckFinding;

    fn check(id: &str, state: CheckState) -> WatchCheck {
        WatchCheck {
            id: id.into(),
            title: format!("{id} title"),
            state: state as i32,
            since_unix: 1_700_000_000,
            detail: format!("{id} detail"),
            findings: vec![CheckFinding {
                subject: "203.0.113.10 on bl.example".into(),
                state: state as i32,
                text: "listed (127.0.0.2)".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn failing_checks_without_their_own_verdict_are_problems() {
        let parts = checks(&[
            check("home", CheckState::Failing),
            check("dnsbl", CheckState::Failing),
            check("spf", CheckState::Warning),
            WatchCheck {
                id: "mx".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(parts[3].state, "pending");
        assert_eq!(parts[3].since, None);
        let failing: Vec<&str> = failing_own_verdict(&parts).map(|c| c.id.as_str()).collect();
        assert_eq!(
            failing,
            ["dnsbl"],
            "a failing spf would be listed too; a warning is not"
        );
        let json = serde_json::to_value(&parts[1]).unwrap();
        assert_eq!(json["state"], "failing");
        assert_eq!(json["findings"][0]["text"], "listed (127.0.0.2)");
        assert_eq!(json["since"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn text_shows_each_check_and_the_channels() {
        let parts = checks(&[
            check("home", CheckState::Ok),
            check("dnsbl", CheckState::Failing),
        ]);
        let chans = channels(&[AlertChannel {
            kind: AlertChannelKind::Webhook as i32,
            target: "https://ntfy.example.net/…".into(),
            format: "ntfy".into(),
            sent: 2,
            ..Default::default()
        }]);
        let text = render(&parts, &chans, false);
        assert!(
            text.contains("home          ok      since 2023-11-14T22:13:20Z · home detail"),
            "{text}"
        );
        assert!(text.contains("dnsbl         failing"), "{text}");
        assert!(
            text.contains("alerts → webhook https://ntfy.example.net/… (ntfy) · sent 2 · failed 0"),
            "{text}"
        );
        assert!(render(&[], &chans, false).is_empty());
        assert!(render(&parts, &[], false).contains("no channel"));
    }
}
