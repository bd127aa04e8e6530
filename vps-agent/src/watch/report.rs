//! A check's state as the surfaces show it: `cerectl status` (the
//! protocol's [`WatchCheck`]) and `ceres-vps status` (the local status
//! file's [`CheckPart`]).

use std::time::Duration;

use ceres_proto::{CheckFinding, WatchCheck};

use super::check::{CheckId, Level};
use super::state::View;
use crate::local_status::{CheckPart, CheckState, FindingPart};

/// For `cerectl status`: the kind, and beside it the name older readers
/// compare (`ceres_proto::compat`).
pub(super) fn to_proto(id: CheckId, interval: Duration, view: Option<&View>) -> WatchCheck {
    let kind = id.to_proto();
    let mut c = WatchCheck {
        id: ceres_proto::compat::check_name(kind).to_owned(),
        kind: kind.into(),
        title: id.title().to_owned(),
        interval_secs: interval.as_secs(),
        detail: "not run yet".into(),
        ..Default::default()
    };
    if let Some(v) = view {
        c.state = v.observation.level.to_proto().into();
        c.since_unix = v.since_unix;
        c.detail = v.observation.detail.clone();
        c.last_run_unix = v.last_run_unix;
        c.notified = v.notified;
        c.findings = v
            .observation
            .findings
            .iter()
            .map(|f| CheckFinding {
                subject: f.subject.clone(),
                state: f.level.to_proto().into(),
                text: f.text.clone(),
            })
            .collect();
    }
    c
}

/// For the local status file.
pub(super) fn to_local(id: CheckId, view: Option<&View>) -> CheckPart {
    let Some(v) = view else {
        return CheckPart {
            id,
            state: CheckState::Pending,
            since_unix: 0,
            detail: "not run yet".into(),
            findings: Vec::new(),
            notified: false,
        };
    };
    CheckPart {
        id,
        state: state(v.observation.level),
        since_unix: v.since_unix,
        detail: v.observation.detail.clone(),
        findings: v
            .observation
            .findings
            .iter()
            .map(|f| FindingPart {
                subject: f.subject.clone(),
                state: state(f.level),
                text: f.text.clone(),
            })
            .collect(),
        notified: v.notified,
    }
}

fn state(level: Level) -> CheckState {
    match level {
        Level::Ok => CheckState::Ok,
        Level::Warning => CheckState::Warning,
        Level::Failing => CheckState::Failing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::check::{Finding, Observation};

    fn failing_view() -> View {
        View {
            observation: Observation::from_findings(
                "clean",
                vec![Finding::new(
                    "203.0.113.10 on bl.example",
                    Level::Failing,
                    "listed (127.0.0.2)",
                )],
            ),
            since_unix: 1_700_000_000,
            last_run_unix: 1_700_000_060,
            notified: true,
        }
    }

    #[test]
    fn both_surfaces_say_the_same() {
        let v = failing_view();
        let wire = to_proto(CheckId::Dnsbl, Duration::from_secs(3600), Some(&v));
        assert_eq!(wire.kind(), ceres_proto::CheckKind::Dnsbl);
        assert_eq!(wire.id, "dnsbl");
        assert_eq!(wire.state(), ceres_proto::CheckState::Failing);
        let local = to_local(CheckId::Dnsbl, Some(&v));
        assert_eq!(local.state, CheckState::Failing);
        assert_eq!(local.since_unix, wire.since_unix);
        assert_eq!(local.detail, wire.detail);
        assert!(local.notified && wire.notified);
        assert_eq!(local.findings[0].state, CheckState::Failing);
        assert_eq!(local.findings[0].text, wire.findings[0].text);
    }

    #[test]
    fn a_check_not_run_yet_is_pending() {
        let wire = to_proto(CheckId::Mx, Duration::from_secs(900), None);
        assert_eq!(wire.state(), ceres_proto::CheckState::Unspecified);
        assert_eq!(wire.kind(), ceres_proto::CheckKind::Mx);
        let local = to_local(CheckId::Mx, None);
        assert_eq!(local.state, CheckState::Pending);
        assert_eq!(local.since_unix, 0);
    }
}
