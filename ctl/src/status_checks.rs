//! The VPS watchdog in `cerectl status`: each check with its state and
//! since when, and where notifications go — their JSON form (the `checks`
//! and `alert_channels` fields, docs/status-json.md) and their text.
//!
//! Which check it is comes from `WatchCheck.kind`, through
//! [`ceres_proto::compat`] for a VPS one release older (its `id` alone).

use ceres_proto::{AlertChannel, AlertChannelKind, WatchCheck};
use serde::{Deserialize, Serialize};

/// Which check (`checks[].kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The home agent's session, and the tunnel's handshakes.
    Home,
    /// Relays turning senders away because home could not be reached.
    Relays,
    /// Home's outbound mail through the VPS.
    Egress,
    /// Home's firewall and input filter, as home reports them.
    HomeFirewall,
    /// WireGuard key rotation.
    Rotation,
    /// Certificate expiry.
    Certificates,
    /// The VPS addresses on DNS blocklists.
    Dnsbl,
    /// Reverse DNS of the VPS addresses.
    Ptr,
    /// The SPF record.
    Spf,
    /// MX and the mail host's addresses.
    Mx,
}

impl CheckKind {
    /// From a check, old or new (`None`: a check this cerectl does not know).
    pub fn of(c: &WatchCheck) -> Option<Self> {
        use ceres_proto::CheckKind as P;
        match c.effective_kind() {
            P::Home => Some(Self::Home),
            P::Relays => Some(Self::Relays),
            P::Egress => Some(Self::Egress),
            P::HomeFirewall => Some(Self::HomeFirewall),
            P::Rotation => Some(Self::Rotation),
            P::Certificates => Some(Self::Certificates),
            P::Dnsbl => Some(Self::Dnsbl),
            P::Ptr => Some(Self::Ptr),
            P::Spf => Some(Self::Spf),
            P::Mx => Some(Self::Mx),
            P::Unspecified => None,
        }
    }

    /// The protocol's enum.
    fn proto(self) -> ceres_proto::CheckKind {
        use ceres_proto::CheckKind as P;
        match self {
            Self::Home => P::Home,
            Self::Relays => P::Relays,
            Self::Egress => P::Egress,
            Self::HomeFirewall => P::HomeFirewall,
            Self::Rotation => P::Rotation,
            Self::Certificates => P::Certificates,
            Self::Dnsbl => P::Dnsbl,
            Self::Ptr => P::Ptr,
            Self::Spf => P::Spf,
            Self::Mx => P::Mx,
        }
    }

    /// The check's name (`checks[].id`): the same as its JSON `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Home => "home",
            Self::Relays => "relays",
            Self::Egress => "egress",
            Self::HomeFirewall => "home_firewall",
            Self::Rotation => "rotation",
            Self::Certificates => "certificates",
            Self::Dnsbl => "dnsbl",
            Self::Ptr => "ptr",
            Self::Spf => "spf",
            Self::Mx => "mx",
        }
    }
}

/// How a check came out (`checks[].state`, `checks[].findings[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Not run yet (also: a state this cerectl does not know).
    Pending,
    /// As it should be.
    Ok,
    /// Works but risky, or could not be checked.
    Warning,
    /// Broken.
    Failing,
}

impl CheckState {
    /// From the protocol's enum.
    fn of(state: i32) -> Self {
        use ceres_proto::CheckState as P;
        match P::try_from(state).unwrap_or(P::Unspecified) {
            P::Unspecified => Self::Pending,
            P::Ok => Self::Ok,
            P::Warning => Self::Warning,
            P::Failing => Self::Failing,
        }
    }

    /// The word shown: the same as in the JSON.
    fn word(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Failing => "failing",
        }
    }
}

/// One watchdog check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckPart {
    /// The check's name: `home`, `relays`, `egress`, `home_firewall`,
    /// `rotation`, `certificates`, `dnsbl`, `ptr`, `spf`, `mx` (the `kind`'s
    /// name; for a check this cerectl does not know, the name the VPS gave).
    pub id: String,
    /// Which check; null for one this cerectl does not know.
    #[serde(default)]
    pub kind: Option<CheckKind>,
    /// What it watches.
    pub title: String,
    /// Its state.
    pub state: CheckState,
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
    pub state: CheckState,
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

fn rfc3339(unix: i64) -> Option<String> {
    (unix > 0).then(|| ceres_pki::rfc3339(unix))
}

/// The checks of a status answer (empty from a VPS without a watchdog).
pub fn checks(checks: &[WatchCheck]) -> Vec<CheckPart> {
    checks
        .iter()
        .map(|c| {
            let kind = CheckKind::of(c);
            CheckPart {
                id: kind.map_or_else(|| c.id.clone(), |k| k.name().to_owned()),
                kind,
                title: c.title.clone(),
                state: CheckState::of(c.state),
                since: rfc3339(c.since_unix),
                detail: c.detail.clone(),
                findings: c
                    .findings
                    .iter()
                    .map(|f| FindingPart {
                        subject: f.subject.clone(),
                        state: CheckState::of(f.state),
                        text: f.text.clone(),
                    })
                    .collect(),
                last_run: rfc3339(c.last_run_unix),
                interval_secs: c.interval_secs,
                notified: c.notified,
            }
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

/// Checks whose failure nothing else in the status judges
/// ([`ceres_proto::CheckKind::has_own_verdict`]): each failing one is a
/// problem (exit 1). Home, tunnel, relays, egress, home's firewall and
/// rotation have their own lines and problems already.
pub fn failing_own_verdict(checks: &[CheckPart]) -> impl Iterator<Item = &CheckPart> {
    checks.iter().filter(|c| {
        c.state == CheckState::Failing && c.kind.is_some_and(|k| k.proto().has_own_verdict())
    })
}

/// The text section; empty when the VPS runs no watchdog.
pub fn render(checks: &[CheckPart], channels: &[AlertChannelPart], fancy: bool) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let paint = |state: CheckState, text: &str| -> String {
        let code = match state {
            CheckState::Ok => "32",
            CheckState::Warning => "33",
            CheckState::Failing => "31;1",
            CheckState::Pending => return text.to_owned(),
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
            paint(c.state, &format!("{:<7}", c.state.word())),
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
    use ceres_proto::{CheckFinding, CheckState as P};

    /// A check as this release's VPS sends it: the kind, and the name beside it.
    fn check(kind: ceres_proto::CheckKind, state: P) -> WatchCheck {
        let id = ceres_proto::compat::check_name(kind);
        WatchCheck {
            id: id.into(),
            kind: kind.into(),
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

    /// As a VPS one release older sends it: the name alone.
    fn old(kind: ceres_proto::CheckKind, state: P) -> WatchCheck {
        WatchCheck {
            kind: 0,
            ..check(kind, state)
        }
    }

    fn failing_names(parts: &[CheckPart]) -> Vec<&str> {
        failing_own_verdict(parts).map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn failing_checks_without_their_own_verdict_are_problems() {
        use ceres_proto::CheckKind as K;
        let parts = checks(&[
            check(K::Home, P::Failing),
            check(K::Dnsbl, P::Failing),
            check(K::Spf, P::Warning),
            WatchCheck {
                id: "mx".into(),
                kind: K::Mx.into(),
                ..Default::default()
            },
        ]);
        assert_eq!(parts[3].state, CheckState::Pending);
        assert_eq!(parts[3].since, None);
        assert_eq!(
            failing_names(&parts),
            ["dnsbl"],
            "a failing spf would be listed too; a warning is not"
        );
        let json = serde_json::to_value(&parts[1]).unwrap();
        assert_eq!(json["id"], "dnsbl");
        assert_eq!(json["kind"], "dnsbl");
        assert_eq!(json["state"], "failing");
        assert_eq!(json["findings"][0]["state"], "failing");
        assert_eq!(json["findings"][0]["text"], "listed (127.0.0.2)");
        assert_eq!(json["since"], "2023-11-14T22:13:20Z");
        assert_eq!(json["notified"], false);
        assert_eq!(json["interval_secs"], 0);
    }

    #[test]
    fn the_kind_decides_and_an_old_vps_is_read_by_its_name() {
        use ceres_proto::CheckKind as K;
        // Every kind: its own verdict by the shared rule, old or new.
        for kind in [
            K::Home,
            K::Relays,
            K::Egress,
            K::HomeFirewall,
            K::Rotation,
            K::Certificates,
            K::Dnsbl,
            K::Ptr,
            K::Spf,
            K::Mx,
        ] {
            let want: &[&str] = if kind.has_own_verdict() {
                &[ceres_proto::compat::check_name(kind)]
            } else {
                &[]
            };
            for c in [check(kind, P::Failing), old(kind, P::Failing)] {
                let parts = checks(&[c]);
                assert_eq!(failing_names(&parts), want, "{kind:?}");
                let json = serde_json::to_value(&parts[0]).unwrap();
                assert_eq!(json["kind"], json["id"], "{kind:?}");
                assert_eq!(parts[0].kind.map(CheckKind::proto), Some(kind));
            }
        }
        // The kind decides, not the name: a VPS that renamed a check.
        let renamed = WatchCheck {
            id: "blocklists".into(),
            ..check(K::Dnsbl, P::Failing)
        };
        let parts = checks(&[renamed]);
        assert_eq!(failing_names(&parts), ["dnsbl"]);
        // A check this cerectl does not know: shown under its name, no problem.
        let newer = WatchCheck {
            id: "smtp_banner".into(),
            kind: 99,
            ..check(K::Dnsbl, P::Failing)
        };
        let parts = checks(&[newer]);
        assert_eq!(parts[0].kind, None);
        assert_eq!(parts[0].id, "smtp_banner");
        assert!(failing_names(&parts).is_empty());
        let json = serde_json::to_value(&parts[0]).unwrap();
        assert_eq!(json["kind"], serde_json::Value::Null);
    }

    #[test]
    fn text_shows_each_check_and_the_channels() {
        use ceres_proto::CheckKind as K;
        let parts = checks(&[check(K::Home, P::Ok), check(K::Dnsbl, P::Failing)]);
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

    #[test]
    fn the_json_names_are_the_words_shown() {
        use ceres_proto::CheckKind as K;
        for state in [
            CheckState::Pending,
            CheckState::Ok,
            CheckState::Warning,
            CheckState::Failing,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.word());
        }
        for k in (1..=10).filter_map(|v| K::try_from(v).ok()) {
            let kind = CheckKind::of(&check(k, P::Ok)).unwrap();
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
