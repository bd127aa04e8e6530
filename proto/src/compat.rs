//! Peers one release apart: the strings that older agents send instead of
//! the typed fields, in one place.
//!
//! The rule (also in `docs/status-json.md`): for one release a producer
//! fills both the enum and the old string — written with the constants
//! below, so an older reader still finds what it looks for — and a reader
//! takes the enum, falling back to the old string only when the enum is
//! UNSPECIFIED (the peer predates it). This module is the only code that
//! reads those sentences for a decision; it goes, with the constants, once
//! no supported peer sends the strings alone. (`RelayPort.proxy` is no
//! sentence but the option's name in `CERES_RELAYS`: `ceres_relay::ProxyMode`
//! reads and writes it.)

use crate::{
    CheckKind, EgressState, EgressStatus, RotationOutcome, RotationStatus, RotationStep,
    TunnelReport, TunnelState, WatchCheck,
};

/// `TunnelReport.error` of a tunnel off by configuration.
pub const TUNNEL_OFF: &str = "disabled (CERES_TUNNEL=off)";
/// What older readers look for in `TunnelReport.error` (a substring).
const TUNNEL_OFF_MARK: &str = "CERES_TUNNEL=off";
/// `TunnelReport.error` of home's tunnel before the VPS sent its parameters.
pub const TUNNEL_WAITING: &str = "waiting for parameters from the VPS";
/// `EgressStatus.error` of egress off by configuration (older readers look
/// for the prefix "disabled").
pub const EGRESS_DISABLED: &str = "disabled (CERES_EGRESS=off)";
/// `EgressStatus.error` of the VPS's egress with the tunnel off.
pub const EGRESS_TUNNEL_OFF: &str = "not installed (tunnel off)";
/// `EgressStatus.error` of the VPS's egress removed for a revoked home.
pub const EGRESS_REVOKED: &str = "removed: home was revoked (back when a new home joins)";
/// `RotationStatus.last_outcome` of a rotation that finished.
pub const ROTATION_OK: &str = "ok";
/// Prefix of `RotationStatus.last_outcome` of a rotation that failed.
pub const ROTATION_FAILED_PREFIX: &str = "failed: ";

/// `RotationStatus.pending_step`, as older peers send it.
pub fn step_name(step: RotationStep) -> &'static str {
    match step {
        RotationStep::Prepared => "prepared",
        RotationStep::Staged => "staged",
        RotationStep::Unspecified => "",
    }
}

/// `RotationStatus.last_outcome` for a typed outcome.
pub fn outcome_text(outcome: RotationOutcome, failure: &str) -> String {
    match outcome {
        RotationOutcome::Ok => ROTATION_OK.to_owned(),
        RotationOutcome::Failed => format!("{ROTATION_FAILED_PREFIX}{failure}"),
        RotationOutcome::Never | RotationOutcome::Unspecified => String::new(),
    }
}

/// Every watchdog check this build knows.
const CHECK_KINDS: [CheckKind; 10] = [
    CheckKind::Home,
    CheckKind::Relays,
    CheckKind::Egress,
    CheckKind::HomeFirewall,
    CheckKind::Rotation,
    CheckKind::Certificates,
    CheckKind::Dnsbl,
    CheckKind::Ptr,
    CheckKind::Spf,
    CheckKind::Mx,
];

/// `WatchCheck.id` of a check, as readers one release older compare it
/// (also the check's name in the VPS's metrics and notifications); empty
/// for UNSPECIFIED.
pub fn check_name(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Home => "home",
        CheckKind::Relays => "relays",
        CheckKind::Egress => "egress",
        CheckKind::HomeFirewall => "home_firewall",
        CheckKind::Rotation => "rotation",
        CheckKind::Certificates => "certificates",
        CheckKind::Dnsbl => "dnsbl",
        CheckKind::Ptr => "ptr",
        CheckKind::Spf => "spf",
        CheckKind::Mx => "mx",
        CheckKind::Unspecified => "",
    }
}

/// An enum field as its known value; a value this build does not know (a
/// newer peer) reads as UNSPECIFIED.
fn known<E: TryFrom<i32> + Default>(raw: i32) -> E {
    E::try_from(raw).unwrap_or_default()
}

impl TunnelReport {
    /// The engine's state: `state`, or for an older agent what its
    /// `running` and `error` said.
    pub fn effective_state(&self) -> TunnelState {
        match known(self.state) {
            TunnelState::Unspecified if self.running => TunnelState::Running,
            TunnelState::Unspecified if self.error.contains(TUNNEL_OFF_MARK) => TunnelState::Off,
            TunnelState::Unspecified if self.error == TUNNEL_WAITING => TunnelState::Waiting,
            TunnelState::Unspecified => TunnelState::Failed,
            typed => typed,
        }
    }
}

impl EgressStatus {
    /// The routing's state: `state`, or for an older agent what `enabled`
    /// and `error` said.
    pub fn effective_state(&self) -> EgressState {
        match known(self.state) {
            EgressState::Unspecified => legacy_egress(self.enabled, &self.error),
            typed => typed,
        }
    }
}

/// What an older agent's `enabled` and `error` meant.
fn legacy_egress(enabled: bool, error: &str) -> EgressState {
    match (enabled, error) {
        (true, "") => EgressState::Installed,
        (true, _) => EgressState::Blocked,
        (false, "") => EgressState::Pending,
        (false, e) if e.starts_with("disabled") => EgressState::Disabled,
        (false, e) if e.starts_with(EGRESS_TUNNEL_OFF) => EgressState::TunnelOff,
        (false, e) if e.starts_with("removed") => EgressState::Revoked,
        (false, _) => EgressState::Failed,
    }
}

impl RotationStatus {
    /// How the last rotation ended: `last_result`, or for an older VPS agent
    /// what `last_outcome` said.
    pub fn effective_result(&self) -> RotationOutcome {
        match known(self.last_result) {
            RotationOutcome::Unspecified => match self.last_outcome.as_str() {
                "" => RotationOutcome::Never,
                ROTATION_OK => RotationOutcome::Ok,
                _ => RotationOutcome::Failed,
            },
            typed => typed,
        }
    }

    /// Why the last rotation failed (empty when it did not).
    pub fn effective_failure(&self) -> &str {
        match known(self.last_result) {
            RotationOutcome::Unspecified => self
                .last_outcome
                .strip_prefix(ROTATION_FAILED_PREFIX)
                .unwrap_or(""),
            _ => &self.last_failure,
        }
    }

    /// The step of the rotation in progress (UNSPECIFIED: none, or a step
    /// this build does not know).
    pub fn effective_step(&self) -> RotationStep {
        match known(self.step) {
            RotationStep::Unspecified if self.pending != 0 => {
                [RotationStep::Prepared, RotationStep::Staged]
                    .into_iter()
                    .find(|s| step_name(*s) == self.pending_step)
                    .unwrap_or(RotationStep::Unspecified)
            }
            typed => typed,
        }
    }
}

impl WatchCheck {
    /// Which check this is: `kind`, or for an older VPS agent what its `id`
    /// named (UNSPECIFIED: a check this build does not know).
    pub fn effective_kind(&self) -> CheckKind {
        match known(self.kind) {
            CheckKind::Unspecified => CHECK_KINDS
                .into_iter()
                .find(|k| check_name(*k) == self.id)
                .unwrap_or(CheckKind::Unspecified),
            typed => typed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an agent of the release before the typed fields sent.
    fn old_tunnel(running: bool, error: &str) -> TunnelReport {
        TunnelReport {
            running,
            error: error.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_old_tunnel_report_reads_as_its_state() {
        assert_eq!(old_tunnel(true, "").effective_state(), TunnelState::Running);
        assert_eq!(
            old_tunnel(false, "disabled (CERES_TUNNEL=off)").effective_state(),
            TunnelState::Off
        );
        assert_eq!(
            old_tunnel(false, "waiting for parameters from the VPS").effective_state(),
            TunnelState::Waiting
        );
        assert_eq!(
            old_tunnel(
                false,
                "starting the WireGuard tunnel ceres0: Operation not permitted"
            )
            .effective_state(),
            TunnelState::Failed
        );
    }

    #[test]
    fn the_typed_state_wins_over_the_old_string() {
        // A new agent rewording its error changes nothing.
        let mut r = old_tunnel(false, "tunnel switched off by the admin");
        r.state = TunnelState::Off.into();
        assert_eq!(r.effective_state(), TunnelState::Off);
        // A state from a newer agent this build does not know: the old fields.
        r.state = 99;
        assert_eq!(r.effective_state(), TunnelState::Failed);
    }

    #[test]
    fn old_egress_reads_as_its_state() {
        let e = |enabled, error: &str| EgressStatus {
            enabled,
            error: error.into(),
            ..Default::default()
        };
        for (enabled, error, want) in [
            (true, "", EgressState::Installed),
            (
                true,
                "the firewall chain FORWARD of table ip filter drops forwarded traffic by default",
                EgressState::Blocked,
            ),
            (false, "disabled (CERES_EGRESS=off)", EgressState::Disabled),
            (false, "not installed (tunnel off)", EgressState::TunnelOff),
            (
                false,
                "removed: home was revoked (back when a new home joins)",
                EgressState::Revoked,
            ),
            (false, "nft: Operation not permitted", EgressState::Failed),
            (false, "", EgressState::Pending),
        ] {
            assert_eq!(e(enabled, error).effective_state(), want, "{error}");
        }
        let mut typed = e(false, "anything at all");
        typed.state = EgressState::Disabled.into();
        assert_eq!(typed.effective_state(), EgressState::Disabled);
    }

    #[test]
    fn the_constants_are_what_old_readers_look_for() {
        // The checks of the release before (cerectl and the agents' status).
        assert!(TUNNEL_OFF.contains("CERES_TUNNEL=off"));
        assert!(EGRESS_DISABLED.starts_with("disabled"));
        assert!(EGRESS_TUNNEL_OFF.starts_with("not installed (tunnel off)"));
        assert!(EGRESS_REVOKED.starts_with("removed"));
        assert_eq!(outcome_text(RotationOutcome::Ok, ""), "ok");
        assert!(outcome_text(RotationOutcome::Failed, "home went away").starts_with("failed"));
        assert_eq!(outcome_text(RotationOutcome::Never, ""), "");
    }

    #[test]
    fn an_old_watch_check_reads_as_its_kind() {
        let old = |id: &str| WatchCheck {
            id: id.into(),
            ..Default::default()
        };
        for kind in CHECK_KINDS {
            assert_eq!(old(check_name(kind)).effective_kind(), kind, "{kind:?}");
        }
        assert_eq!(old("").effective_kind(), CheckKind::Unspecified);
        assert_eq!(old("smtp_banner").effective_kind(), CheckKind::Unspecified);
        // The typed kind wins over the name; a kind from a newer agent this
        // build does not know: the name.
        let mut c = old("dnsbl");
        c.kind = CheckKind::Spf.into();
        assert_eq!(c.effective_kind(), CheckKind::Spf);
        c.kind = 99;
        assert_eq!(c.effective_kind(), CheckKind::Dnsbl);
        // Every kind has its own name, the one older readers know.
        let mut names: Vec<&str> = CHECK_KINDS.iter().map(|k| check_name(*k)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CHECK_KINDS.len());
        assert!(names.iter().all(|n| !n.is_empty()));
    }

    #[test]
    fn old_rotation_status_reads_as_its_outcome_and_step() {
        let old = |outcome: &str, pending, step: &str| RotationStatus {
            last_outcome: outcome.into(),
            pending,
            pending_step: step.into(),
            ..Default::default()
        };
        assert_eq!(old("", 0, "").effective_result(), RotationOutcome::Never);
        assert_eq!(old("ok", 0, "").effective_result(), RotationOutcome::Ok);
        let failed = old("failed: home went away", 3, "staged");
        assert_eq!(failed.effective_result(), RotationOutcome::Failed);
        assert_eq!(failed.effective_failure(), "home went away");
        assert_eq!(failed.effective_step(), RotationStep::Staged);
        assert_eq!(
            old("", 4, "prepared").effective_step(),
            RotationStep::Prepared
        );
        assert_eq!(old("", 0, "").effective_step(), RotationStep::Unspecified);
        let new = RotationStatus {
            last_result: RotationOutcome::Failed.into(),
            last_failure: "timed out".into(),
            last_outcome: outcome_text(RotationOutcome::Failed, "timed out"),
            pending: 5,
            step: RotationStep::Prepared.into(),
            pending_step: step_name(RotationStep::Prepared).into(),
            ..Default::default()
        };
        assert_eq!(new.effective_result(), RotationOutcome::Failed);
        assert_eq!(new.effective_failure(), "timed out");
        assert_eq!(new.effective_step(), RotationStep::Prepared);
    }
}
