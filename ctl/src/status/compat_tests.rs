//! Peers one release apart, both ways, against the real previous reader
//! (`ctl/tests/fixtures/status_before_typed.rs`, cerectl's status code
//! before the typed facts):
//!
//! - this cerectl reads a status from agents of the previous release (old
//!   fields only) to the same problems, warnings and text as the previous
//!   cerectl did;
//! - the previous cerectl reads a status from agents of this release (old
//!   fields still filled, beside the typed ones) as it read its own
//!   release's — so the old fields still say what they said;
//! - this cerectl decides on the typed fields alone: with every sentence
//!   reworded, the diagnosis is the same.
//!
//! Each scenario is written once and sent three ways ([`Wire`]); its
//! expected problem kinds are the diagnosis tests.

#[path = "../../tests/fixtures/status_before_typed.rs"]
mod before;

use ceres_proto::{
    DirectIpv6, EgressStatus, FirewallFinding, FirewallFindingKind, HomeAccess, HomeRevocation,
    HomeStatus, InputFilter, Ipv6Egress, MailProbe, PostfixReport, ProxyV2Relay, RelayPort, Report,
    RotationOutcome, RotationStatus, RotationStep, StatusResponse, TunnelReport, VpsStatus, compat,
};

use super::Status;
use super::problem::{ProblemKind, WarningKind};

/// How the agents fill a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// The previous release: sentences and names only, no typed fields.
    Old,
    /// This release: typed fields, and the old strings for old readers.
    New,
    /// A later release that reworded every sentence: typed fields decide.
    Reworded,
}

const NOW: i64 = 1_800_000_000;

/// A sentence as the wire carries it: the old words, or reworded.
fn words(w: Wire, old: &str) -> String {
    match (w, old) {
        (_, "") => String::new(),
        (Wire::Reworded, old) => format!("(reworded) {}", old.len()),
        (_, old) => old.to_owned(),
    }
}

/// An enum field as the wire carries it: nothing from the old release.
fn typed<E: Into<i32>>(w: Wire, e: E) -> i32 {
    match w {
        Wire::Old => 0,
        Wire::New | Wire::Reworded => e.into(),
    }
}

fn tunnel_running(w: Wire, handshake_age: Option<i64>) -> TunnelReport {
    TunnelReport {
        running: true,
        ifname: "ceres0".into(),
        listen_port: 51820,
        public_key: vec![7; 32],
        last_handshake_unix: handshake_age.map_or(0, |a| NOW - a),
        state: typed(w, ceres_proto::TunnelState::Running),
        ..Default::default()
    }
}

fn tunnel_down(w: Wire, state: ceres_proto::TunnelState, old_error: &str) -> TunnelReport {
    TunnelReport {
        running: false,
        ifname: "ceres0".into(),
        error: words(w, old_error),
        state: typed(w, state),
        ..Default::default()
    }
}

fn egress(
    w: Wire,
    state: ceres_proto::EgressState,
    enabled: bool,
    old_error: &str,
    findings: Vec<FirewallFinding>,
) -> EgressStatus {
    EgressStatus {
        enabled,
        tcp_ports: vec![25, 465, 587],
        error: words(w, old_error),
        state: typed(w, state),
        firewall_findings: if w == Wire::Old { vec![] } else { findings },
        ..Default::default()
    }
}

fn relay(w: Wire, port: u32, target: u32, mode: ceres_relay::ProxyMode) -> RelayPort {
    relay_in(w, port, target, mode, ceres_proto::RelayState::Relaying)
}

fn relay_in(
    w: Wire,
    port: u32,
    target: u32,
    mode: ceres_relay::ProxyMode,
    state: ceres_proto::RelayState,
) -> RelayPort {
    RelayPort {
        port,
        target_port: target,
        // Not a sentence but the mode's name: the same in every release.
        proxy: mode.option().unwrap_or_default().into(),
        proxy_mode: typed(w, ceres_control::wire::proxy_mode(mode)),
        state: typed(w, state),
        ..Default::default()
    }
}

fn forward(w: Wire, port: u32, target: u32) -> RelayPort {
    RelayPort {
        port,
        target_port: target,
        proxy_mode: typed(w, ceres_proto::ProxyMode::None),
        state: typed(w, ceres_proto::RelayState::Relaying),
        ..Default::default()
    }
}

fn drop_chain(kind: FirewallFindingKind, chain: &str) -> FirewallFinding {
    FirewallFinding {
        kind: kind.into(),
        family: "ip".into(),
        table: "filter".into(),
        chain: chain.into(),
    }
}

/// The words the agents use for a chain in the way.
fn advice(f: &FirewallFinding) -> String {
    ceres_control::wire::drop_chain(f)
        .map(|d| d.advice("ceres0"))
        .unwrap_or_default()
}

/// A connected home with the tunnel up, egress installed at both ends,
/// 25 relayed with PROXY v2 to home's 10025 and its forwarder: nothing
/// wrong. Scenarios change it.
fn healthy(w: Wire) -> StatusResponse {
    use ceres_proto::EgressState as E;
    use ceres_relay::ProxyMode as M;
    StatusResponse {
        checks: Vec::new(),
        alert_channels: Vec::new(),
        vps: Some(VpsStatus {
            domain: "example.com".into(),
            mail_host: "mail.example.com".into(),
            now_unix: NOW,
            uptime_secs: 4000,
            ..Default::default()
        }),
        home: Some(HomeStatus {
            connected: true,
            since_unix: NOW - 3600,
            last_report_unix: NOW - 5,
            hostname: "mailbox".into(),
            agent_version: "0.1.0".into(),
            access: typed(w, HomeAccess::Allowed),
            last_report: Some(Report {
                uptime_secs: 3600,
                tunnel: Some(tunnel_running(w, Some(5))),
                forwards: vec![forward(w, 41025, 10025)],
                egress: Some(egress(w, E::Installed, true, "", vec![])),
                probes: vec![MailProbe {
                    port: 10025,
                    reachable: true,
                    expects_proxy: true,
                    ..Default::default()
                }],
                input_filter: InputFilter::Installed.into(),
                direct_ipv6: DirectIpv6::None.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        vps_tunnel: Some(tunnel_running(w, Some(5))),
        relays: vec![relay(w, 25, 10025, M::V2)],
        egress: Some(egress(w, E::Installed, true, "", vec![])),
        rotation: Some(RotationStatus {
            keys_since_unix: NOW - 86_400,
            next_unix: NOW + 86_400,
            last_outcome: String::new(),
            last_result: typed(w, RotationOutcome::Never),
            ..Default::default()
        }),
    }
}

fn report(r: &mut StatusResponse) -> &mut Report {
    r.home
        .as_mut()
        .and_then(|h| h.last_report.as_mut())
        .unwrap_or_else(|| unreachable!("every scenario starts from a reporting home"))
}

/// One situation, the problems it must give, and the warnings.
struct Scenario {
    name: &'static str,
    status: fn(Wire) -> StatusResponse,
    problems: &'static [ProblemKind],
    warnings: &'static [WarningKind],
}

fn scenarios() -> Vec<Scenario> {
    use ProblemKind as P;
    use ceres_proto::EgressState as E;
    use ceres_proto::TunnelState as T;
    use ceres_relay::ProxyMode as M;
    vec![
        Scenario {
            name: "healthy",
            status: healthy,
            problems: &[],
            warnings: &[],
        },
        Scenario {
            name: "never joined, both ends with the tunnel off",
            status: |w| {
                let mut r = healthy(w);
                r.home = Some(HomeStatus::default());
                r.vps_tunnel = Some(tunnel_down(w, T::Off, compat::TUNNEL_OFF));
                r.egress = Some(egress(
                    w,
                    E::TunnelOff,
                    false,
                    compat::EGRESS_TUNNEL_OFF,
                    vec![],
                ));
                r.relays.clear();
                r
            },
            problems: &[P::HomeNeverConnected],
            warnings: &[],
        },
        Scenario {
            name: "loopback lab: connected, tunnel off at both ends",
            status: |w| {
                let mut r = healthy(w);
                r.vps_tunnel = Some(tunnel_down(w, T::Off, compat::TUNNEL_OFF));
                r.egress = Some(egress(
                    w,
                    E::TunnelOff,
                    false,
                    compat::EGRESS_TUNNEL_OFF,
                    vec![],
                ));
                r.relays.clear();
                let rep = report(&mut r);
                rep.tunnel = Some(tunnel_down(w, T::Off, compat::TUNNEL_OFF));
                rep.egress = Some(egress(w, E::TunnelOff, false, "", vec![]));
                rep.forwards.clear();
                rep.probes.clear();
                rep.input_filter = InputFilter::Off.into();
                r
            },
            problems: &[],
            warnings: &[],
        },
        Scenario {
            name: "home went away",
            status: |w| {
                let mut r = healthy(w);
                if let Some(h) = r.home.as_mut() {
                    h.connected = false;
                }
                r.relays = vec![relay_in(
                    w,
                    25,
                    10025,
                    M::V2,
                    ceres_proto::RelayState::HomeDown,
                )];
                r
            },
            problems: &[P::HomeNotConnected],
            warnings: &[],
        },
        Scenario {
            name: "home revoked, its egress removed",
            status: |w| {
                let mut r = healthy(w);
                if let Some(h) = r.home.as_mut() {
                    h.connected = false;
                    h.access = HomeAccess::Revoked.into();
                    h.revocation = Some(HomeRevocation {
                        name: "mailbox".into(),
                        serial: "0a1b".into(),
                        lineage: "0a1b".into(),
                        revoked_unix: NOW - 60,
                    });
                }
                r.egress = Some(egress(w, E::Revoked, false, compat::EGRESS_REVOKED, vec![]));
                r
            },
            problems: &[P::HomeRevoked],
            warnings: &[],
        },
        Scenario {
            name: "egress off by configuration at both ends",
            status: |w| {
                let mut r = healthy(w);
                r.egress = Some(egress(
                    w,
                    E::Disabled,
                    false,
                    compat::EGRESS_DISABLED,
                    vec![],
                ));
                report(&mut r).egress = Some(egress(
                    w,
                    E::Disabled,
                    false,
                    compat::EGRESS_DISABLED,
                    vec![],
                ));
                r
            },
            problems: &[],
            warnings: &[],
        },
        Scenario {
            name: "Docker's forward chain drops home's mail on the VPS",
            status: |w| {
                let mut r = healthy(w);
                let chain = drop_chain(FirewallFindingKind::ForwardDrop, "FORWARD");
                let text = advice(&chain);
                r.egress = Some(egress(w, E::Blocked, true, &text, vec![chain]));
                r
            },
            problems: &[P::EgressBlocked],
            warnings: &[],
        },
        Scenario {
            name: "home could not install its egress routing",
            status: |w| {
                let mut r = healthy(w);
                report(&mut r).egress = Some(egress(
                    w,
                    E::Failed,
                    false,
                    "ip rule add: Operation not permitted",
                    vec![],
                ));
                r
            },
            problems: &[P::EgressFailed],
            warnings: &[],
        },
        Scenario {
            name: "home waits for the tunnel before routing mail",
            status: |w| {
                let mut r = healthy(w);
                report(&mut r).egress = Some(egress(w, E::Pending, false, "", vec![]));
                r
            },
            problems: &[],
            warnings: &[],
        },
        Scenario {
            name: "the VPS's tunnel failed",
            status: |w| {
                let mut r = healthy(w);
                r.vps_tunnel = Some(tunnel_down(
                    w,
                    T::Failed,
                    "starting the WireGuard tunnel ceres0: Operation not permitted",
                ));
                r
            },
            problems: &[P::TunnelNotRunning],
            warnings: &[],
        },
        Scenario {
            name: "home runs with the tunnel off, the VPS with it on",
            status: |w| {
                let mut r = healthy(w);
                r.vps_tunnel = Some(tunnel_running(w, None));
                report(&mut r).tunnel = Some(tunnel_down(w, T::Off, compat::TUNNEL_OFF));
                r
            },
            problems: &[P::TunnelOffAtHome],
            warnings: &[],
        },
        Scenario {
            name: "home still waits for the tunnel parameters",
            status: |w| {
                let mut r = healthy(w);
                r.vps_tunnel = Some(tunnel_running(w, None));
                report(&mut r).tunnel = Some(tunnel_down(w, T::Waiting, compat::TUNNEL_WAITING));
                r
            },
            problems: &[P::TunnelNotRunningAtHome],
            warnings: &[],
        },
        Scenario {
            name: "home's tunnel failed",
            status: |w| {
                let mut r = healthy(w);
                r.vps_tunnel = Some(tunnel_running(w, Some(600)));
                report(&mut r).tunnel = Some(tunnel_down(w, T::Failed, "TUN: permission denied"));
                r
            },
            problems: &[P::TunnelNotRunningAtHome],
            warnings: &[],
        },
        Scenario {
            name: "both ends run, no handshake (UDP blocked)",
            status: |w| {
                let mut r = healthy(w);
                r.vps_tunnel = Some(tunnel_running(w, Some(600)));
                report(&mut r).tunnel = Some(tunnel_running(w, Some(600)));
                r
            },
            problems: &[P::TunnelNoHandshake],
            warnings: &[],
        },
        Scenario {
            name: "no forwarder for 587, home says why",
            status: |w| {
                let mut r = healthy(w);
                r.relays.push(relay_in(
                    w,
                    587,
                    10587,
                    M::V2,
                    ceres_proto::RelayState::NoForwarder,
                ));
                report(&mut r).forward_error = "too many open files".into();
                r
            },
            problems: &[P::NoForwarder],
            warnings: &[],
        },
        Scenario {
            name: "a firewall at home keeps the VPS from the forwarders",
            status: |w| {
                let mut r = healthy(w);
                let chain = drop_chain(FirewallFindingKind::InputDrop, "INPUT");
                let rep = report(&mut r);
                rep.firewall = words(w, &advice(&chain));
                if w != Wire::Old {
                    rep.firewall_findings = vec![chain];
                }
                r
            },
            problems: &[P::FirewallBlocksForwarders],
            warnings: &[],
        },
        Scenario {
            name: "PROXY mismatches both ways, and a port relayed plain",
            status: |w| {
                let mut r = healthy(w);
                r.relays = vec![
                    relay(w, 25, 10025, M::V2),
                    relay(w, 143, 143, M::None),
                    relay(w, 993, 10993, M::V1),
                ];
                let rep = report(&mut r);
                rep.forwards = vec![
                    forward(w, 41025, 10025),
                    forward(w, 41143, 143),
                    forward(w, 41993, 10993),
                ];
                rep.probes = vec![
                    MailProbe {
                        port: 10025,
                        reachable: true,
                        banner: "220 mail.example.com ESMTP".into(),
                        ..Default::default()
                    },
                    MailProbe {
                        port: 143,
                        reachable: true,
                        expects_proxy: true,
                        ..Default::default()
                    },
                    MailProbe {
                        port: 10993,
                        reachable: false,
                        error: "connection refused".into(),
                        ..Default::default()
                    },
                ];
                r
            },
            problems: &[P::ProxyNotExpected, P::ProxyExpected],
            warnings: &[WarningKind::PlainRelay],
        },
        Scenario {
            name: "home's input filter could not be updated",
            status: |w| {
                let mut r = healthy(w);
                let rep = report(&mut r);
                rep.input_filter = InputFilter::Failed.into();
                rep.input_filter_error = "nft: no such table".into();
                r
            },
            problems: &[P::InputFilterFailed],
            warnings: &[],
        },
        Scenario {
            name: "Postfix 3.4 behind PROXY v2",
            status: |w| {
                let mut r = healthy(w);
                report(&mut r).postfix = Some(PostfixReport {
                    version: "3.4.14".into(),
                    proxy_v2_unsupported: vec![ProxyV2Relay {
                        public_port: 25,
                        home_port: 10025,
                    }],
                });
                r
            },
            problems: &[P::PostfixCannotReadProxyV2],
            warnings: &[],
        },
        Scenario {
            name: "home has IPv6, the VPS none",
            status: |w| {
                let mut r = healthy(w);
                if let Some(e) = r.egress.as_mut() {
                    e.ipv6 = Ipv6Egress::NoPublicIpv6.into();
                }
                report(&mut r).direct_ipv6 = DirectIpv6::DefaultRoute.into();
                r
            },
            problems: &[P::Ipv6BypassesVps],
            warnings: &[],
        },
        Scenario {
            name: "the last rotation failed, another is under way",
            status: |w| {
                let mut r = healthy(w);
                r.rotation = Some(RotationStatus {
                    keys_since_unix: NOW - 86_400,
                    last_unix: NOW - 100,
                    last_outcome: words(w, "failed: home went away"),
                    last_result: typed(w, RotationOutcome::Failed),
                    last_failure: if w == Wire::Old {
                        String::new()
                    } else {
                        "home went away".into()
                    },
                    completed: 3,
                    pending: 9,
                    pending_step: words(w, "staged"),
                    step: typed(w, RotationStep::Staged),
                    next_unix: NOW + 3600,
                });
                r
            },
            problems: &[],
            warnings: &[],
        },
    ]
}

/// Sentences compared as words: the previous release padded one with
/// stray spaces.
fn normalized(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn old_reader(r: StatusResponse) -> before::Status {
    before::Status::from_response(r)
}

#[test]
fn this_cerectl_reads_an_old_status_as_the_previous_one_did() {
    for s in scenarios() {
        let new = Status::from_response((s.status)(Wire::Old));
        let old = old_reader((s.status)(Wire::Old));
        assert_eq!(new.ok, old.ok, "{}", s.name);
        assert_eq!(
            normalized(&new.problems),
            normalized(&old.problems),
            "{}",
            s.name
        );
        assert_eq!(new.warnings, old.warnings, "{}", s.name);
        assert_eq!(
            normalized(&[new.render(false)]),
            normalized(&[old.render(false)]),
            "{}",
            s.name
        );
    }
}

#[test]
fn the_previous_cerectl_reads_a_new_status_as_it_read_its_own() {
    for s in scenarios() {
        let on_new = old_reader((s.status)(Wire::New));
        let on_old = old_reader((s.status)(Wire::Old));
        assert_eq!(on_new.ok, on_old.ok, "{}", s.name);
        assert_eq!(on_new.problems, on_old.problems, "{}", s.name);
        assert_eq!(on_new.warnings, on_old.warnings, "{}", s.name);
        assert_eq!(on_new.render(false), on_old.render(false), "{}", s.name);
        // And this cerectl agrees with it.
        let new = Status::from_response((s.status)(Wire::New));
        assert_eq!(
            normalized(&new.problems),
            normalized(&on_new.problems),
            "{}",
            s.name
        );
    }
}

#[test]
fn the_diagnosis_comes_from_the_typed_fields_whatever_the_words() {
    for s in scenarios() {
        for w in [Wire::Old, Wire::New, Wire::Reworded] {
            let st = Status::from_response((s.status)(w));
            let kinds: Vec<ProblemKind> = st.diagnosis.problems.iter().map(|p| p.kind).collect();
            assert_eq!(kinds, s.problems, "{} ({w:?})", s.name);
            let warnings: Vec<WarningKind> = st.diagnosis.warnings.iter().map(|p| p.kind).collect();
            assert_eq!(warnings, s.warnings, "{} ({w:?})", s.name);
            assert_eq!(st.ok, s.problems.is_empty(), "{} ({w:?})", s.name);
        }
    }
}

#[test]
fn the_scenarios_would_catch_a_reader_that_decides_on_words() {
    // Sanity of the test above: reworded sentences do fool the previous
    // reader, so agreeing on them means something.
    let fooled = scenarios().iter().any(|s| {
        let old = old_reader((s.status)(Wire::Old));
        let reworded = old_reader((s.status)(Wire::Reworded));
        old.problems.len() != reworded.problems.len()
    });
    assert!(fooled, "no scenario depends on the old sentences");
}

/// A watchdog check as the wire carries it: the previous release's VPS
/// names it only (`id`), this one sends the kind beside the name.
fn watch_check(
    w: Wire,
    kind: ceres_proto::CheckKind,
    state: ceres_proto::CheckState,
) -> ceres_proto::WatchCheck {
    ceres_proto::WatchCheck {
        id: words(w, compat::check_name(kind)),
        kind: typed(w, kind),
        title: words(w, "A check"),
        state: state.into(),
        since_unix: NOW - 60,
        detail: words(w, "203.0.113.10 on bl.example: listed (127.0.0.2)"),
        ..Default::default()
    }
}

#[test]
fn a_watch_check_is_judged_by_its_kind_and_from_an_old_vps_by_its_name() {
    use ceres_proto::CheckKind as K;
    use ceres_proto::CheckState as S;
    for w in [Wire::Old, Wire::New, Wire::Reworded] {
        let mut r = healthy(w);
        r.checks = vec![
            watch_check(w, K::Relays, S::Failing),
            watch_check(w, K::Dnsbl, S::Failing),
            watch_check(w, K::Spf, S::Warning),
            watch_check(w, K::Mx, S::Ok),
        ];
        let st = Status::from_response(r);
        let kinds: Vec<ProblemKind> = st.diagnosis.problems.iter().map(|p| p.kind).collect();
        // The failing blocklist check; relays are judged by their own facts.
        assert_eq!(kinds, [ProblemKind::WatchCheckFailing], "{w:?}");
        let names: Vec<&str> = st.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(names, ["relays", "dnsbl", "spf", "mx"], "{w:?}");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["checks"][1]["kind"], "dnsbl", "{w:?}");
        assert!(
            st.problems[0].contains("(dnsbl check)"),
            "{w:?}: {:?}",
            st.problems
        );
    }
}
