//! The status from the VPS's answer: parts, problems, text and JSON.
//! (Every problem kind against agents of both releases is in
//! `compat_tests.rs`.)

use super::facts::*;
use super::problem::{ProblemKind, WarningKind};
use super::*;
use ceres_proto::{
    DirectIpv6, EgressStatus, HomeStatus, InputFilter, Ipv6Egress, RelayPort, Report,
    StatusResponse, TunnelReport, VpsStatus,
};

fn kinds(s: &Status) -> Vec<ProblemKind> {
    s.diagnosis.problems.iter().map(|p| p.kind).collect()
}

fn resp(connected: bool, since: i64) -> StatusResponse {
    StatusResponse {
        checks: Vec::new(),
        alert_channels: Vec::new(),
        vps: Some(VpsStatus {
            domain: "example.com".into(),
            now_unix: 1_800_000_000,
            ..Default::default()
        }),
        vps_tunnel: Some(TunnelReport {
            error: ceres_proto::compat::TUNNEL_OFF.into(),
            state: ceres_proto::TunnelState::Off.into(),
            ..Default::default()
        }),
        relays: Vec::new(),
        egress: None,
        rotation: None,
        home: Some(HomeStatus {
            connected,
            since_unix: since,
            last_report_unix: 1_799_999_990,
            hostname: "mail".into(),
            agent_version: "0.1.0".into(),
            ..Default::default()
        }),
    }
}

#[test]
fn strings_from_home_are_escaped_in_text_but_kept_in_json() {
    let mut r = resp(true, 1_799_999_000);
    let evil = "mail\x1b]0;pwned\x07\x1b[2J\u{202e}\u{9b}31m";
    if let Some(h) = r.home.as_mut() {
        h.hostname = evil.into();
        h.last_report = Some(Report {
            forward_error: "boom\x1b[1A".into(),
            ..Default::default()
        });
    }
    let s = Status::from_response(r);
    for fancy in [false, true] {
        let text = s.render(fancy);
        let ours = if fancy {
            text.replace("\x1b[32m", "")
                .replace("\x1b[31;1m", "")
                .replace("\x1b[0m", "")
        } else {
            text.clone()
        };
        assert!(
            !ours
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "control characters from home reached the terminal: {text:?}"
        );
        assert!(text.contains("mail\\u{1b}]0;pwned\\u{7}"), "{text}");
    }
    // JSON keeps the value (serde escapes it for JSON).
    assert_eq!(s.home.hostname.as_deref(), Some(evil));
}

#[test]
fn a_revoked_home_is_shown_and_is_a_problem() {
    let mut r = resp(false, 1_799_999_000);
    if let Some(h) = r.home.as_mut() {
        h.access = ceres_proto::HomeAccess::Revoked as i32;
        h.revocation = Some(ceres_proto::HomeRevocation {
            name: "mailbox".into(),
            serial: "0a1b".into(),
            lineage: "0a1b".into(),
            revoked_unix: 1_799_999_500,
        });
    }
    let s = Status::from_response(r);
    assert!(!s.ok);
    assert_eq!(s.home.access, Some(Access::Revoked));
    assert_eq!(kinds(&s), [ProblemKind::HomeRevoked]);
    assert!(s.render(false).contains("REVOKED"));
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["home"]["access"], "revoked");
    assert_eq!(v["home"]["revocation"]["serial"], "0a1b");
    assert_eq!(v["diagnosis"]["problems"][0]["kind"], "home_revoked");
    assert_eq!(v["diagnosis"]["problems"][0]["subject"], "home");
    assert_eq!(v["diagnosis"]["problems"][0]["text"], v["problems"][0]);
}

#[test]
fn connected_home_is_ok() {
    let s = Status::from_response(resp(true, 1_799_999_000));
    assert!(s.ok && s.problems.is_empty());
    assert_eq!(s.home.last_report_age_secs, Some(10));
    assert!(s.render(false).contains("connected since"));
}

#[test]
fn disconnected_home_is_a_problem_with_advice() {
    let s = Status::from_response(resp(false, 1_799_999_000));
    assert!(!s.ok);
    assert_eq!(kinds(&s), [ProblemKind::HomeNotConnected]);
    assert!(s.diagnosis.problems[0].fix.contains("ceres-home run"));
    assert!(s.render(false).contains("NOT CONNECTED"));
}

#[test]
fn never_connected_home_says_how_to_join() {
    let s = Status::from_response(resp(false, 0));
    assert_eq!(kinds(&s), [ProblemKind::HomeNeverConnected]);
    assert!(s.diagnosis.problems[0].fix.contains("ceres-home join"));
    assert!(s.home.since.is_none() && s.home.last_report.is_none());
}

#[test]
fn stale_tunnel_with_home_connected_is_a_problem() {
    let mut r = resp(true, 5);
    r.vps_tunnel = Some(TunnelReport {
        running: true,
        ifname: "ceres0".into(),
        last_handshake_unix: 1_800_000_000 - 600,
        listen_port: 51820,
        ..Default::default()
    });
    let s = Status::from_response(r);
    assert!(!s.ok && !s.tunnel.up);
    assert_eq!(kinds(&s), [ProblemKind::TunnelNoHandshake]);
    assert!(s.diagnosis.problems[0].fix.contains("UDP 51820"));
}

#[test]
fn a_relayed_port_without_home_forwarder_is_a_problem() {
    let mut r = resp(true, 5);
    r.vps_tunnel = Some(TunnelReport {
        running: true,
        last_handshake_unix: 1_800_000_000 - 5,
        ..Default::default()
    });
    let relay = |port| RelayPort {
        port,
        target_port: port,
        ..Default::default()
    };
    r.relays = vec![relay(25), relay(587), relay(2525)];
    r.relays[2].target_port = 25; // 2525 -> home's 25: same forwarder
    let forward = |port, target_port| RelayPort {
        port,
        target_port,
        ..Default::default()
    };
    r.home.as_mut().unwrap().last_report = Some(Report {
        forwards: vec![forward(40001, 25)],
        ..Default::default()
    });
    let s = Status::from_response(r.clone());
    assert!(!s.ok);
    assert_eq!(kinds(&s), [ProblemKind::NoForwarder]);
    let p = &s.diagnosis.problems[0];
    assert_eq!(
        (p.ports.as_slice(), p.detail.as_deref()),
        (&[587][..], None)
    );
    assert!(p.text.contains("home agent's log"), "{}", p.text);
    // With home's reason.
    r.home.as_mut().unwrap().last_report = Some(Report {
        forwards: vec![],
        forward_error: "too many open files".into(),
        ..Default::default()
    });
    let s = Status::from_response(r.clone());
    assert_eq!(kinds(&s), [ProblemKind::NoForwarder]);
    let p = &s.diagnosis.problems[0];
    assert_eq!(p.ports, [25, 587]);
    assert_eq!(p.detail.as_deref(), Some("too many open files"));
    assert!(
        p.text.contains("port 25, 587:") && p.text.contains("home says: too many open files"),
        "{}",
        p.text
    );
    r.home.as_mut().unwrap().last_report = Some(Report {
        forwards: vec![forward(40001, 25), forward(40002, 587)],
        ..Default::default()
    });
    let s = Status::from_response(r);
    assert!(s.ok, "{:?}", s.problems);
}

#[test]
fn fresh_handshake_means_up() {
    let mut r = resp(true, 5);
    r.vps_tunnel = Some(TunnelReport {
        running: true,
        last_handshake_unix: 1_800_000_000 - 5,
        public_key: vec![7; 32],
        ..Default::default()
    });
    let s = Status::from_response(r);
    assert!(s.ok && s.tunnel.up, "{:?}", s.problems);
    assert_eq!(s.tunnel.vps.last_handshake_age_secs, Some(5));
    assert!(s.render(false).contains("tunnel      up"));
}

#[test]
fn plain_rendering_has_no_escape_codes_and_fancy_has() {
    let s = Status::from_response(resp(false, 5));
    assert!(!s.render(false).contains('\x1b'));
    assert!(s.render(true).contains('\x1b'));
}

#[test]
fn probes_show_and_a_proxy_mismatch_is_a_problem() {
    let mut r = resp(true, 5);
    r.relays = vec![
        RelayPort {
            port: 25,
            target_port: 25,
            proxy: "proxy-v2".into(),
            ..Default::default()
        },
        RelayPort {
            port: 110,
            target_port: 110,
            ..Default::default()
        },
    ];
    let probe = |port, reachable, banner: &str, expects_proxy| ceres_proto::MailProbe {
        port,
        reachable,
        banner: banner.into(),
        expects_proxy,
        error: String::new(),
    };
    r.home.as_mut().unwrap().last_report = Some(Report {
        probes: vec![probe(25, true, "", true), probe(110, false, "", false)],
        // Home's forwarder for 25 listens on 41025; none for 110.
        forwards: vec![RelayPort {
            port: 41025,
            target_port: 25,
            ..Default::default()
        }],
        ..Default::default()
    });
    let s = Status::from_response(r.clone());
    assert!(s.ok, "{:?}", s.problems);
    // 110 is relayed plain: said plainly, not counted as broken.
    let w = &s.diagnosis.warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (w[0].kind, w[0].ports.as_slice()),
        (WarningKind::PlainRelay, &[110][..])
    );
    assert_eq!(s.warnings, [w[0].text.clone()]);
    assert!(w[0].text.contains("cleartext passwords"), "{}", w[0].text);
    assert!(
        s.render(false)
            .contains("warning: port 110 is relayed without PROXY")
    );
    assert_eq!(s.mail_server.len(), 2);
    assert_eq!(s.mail_server[0].relay_proxy.name(), Some("proxy-v2"));
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["mail_server"][0]["relay_proxy"], "proxy-v2");
    assert_eq!(v["relays"][1]["proxy"], serde_json::Value::Null);
    let text = s.render(false);
    assert!(text.contains("25   → 25    41025  proxy-v2"), "{text}");
    assert!(text.contains("110  → 110   -      -"), "{text}");
    assert!(
        text.contains("25    relay sends proxy-v2 · expects PROXY"),
        "{text}"
    );
    assert!(
        text.contains("110   relay sends none     · not reachable"),
        "{text}"
    );
    r.home.as_mut().unwrap().last_report = Some(Report {
        probes: vec![probe(25, true, "220 mail.example.com ESMTP", false)],
        ..Default::default()
    });
    let s = Status::from_response(r);
    assert!(!s.ok);
    assert_eq!(kinds(&s), [ProblemKind::ProxyNotExpected]);
    assert_eq!(s.diagnosis.problems[0].ports, [25]);
}

#[test]
fn json_has_the_documented_top_level_fields() {
    let v = serde_json::to_value(Status::from_response(resp(true, 5))).unwrap();
    for k in [
        "schema",
        "ok",
        "problems",
        "warnings",
        "diagnosis",
        "vps",
        "home",
        "tunnel",
        "relays",
        "forwards",
        "egress",
        "rotation",
        "mail_server",
    ] {
        assert!(v.get(k).is_some(), "{k} missing");
    }
    assert_eq!(v["schema"], 1);
    assert_eq!(v["home"]["connected"], true);
}

/// Home with a global IPv6 route, routing its mail through the VPS, and
/// the VPS's IPv6 egress as given.
fn dual_stack_home(vps_ipv6: Ipv6Egress, direct: DirectIpv6) -> StatusResponse {
    let mut r = resp(true, 1_799_999_000);
    let egress = |ipv6: Ipv6Egress| EgressStatus {
        enabled: true,
        tcp_ports: vec![25],
        ipv6: ipv6.into(),
        ..Default::default()
    };
    r.egress = Some(egress(vps_ipv6));
    if let Some(h) = r.home.as_mut() {
        h.last_report = Some(Report {
            egress: Some(egress(Ipv6Egress::Unspecified)),
            direct_ipv6: direct.into(),
            input_filter: InputFilter::Installed.into(),
            ..Default::default()
        });
    }
    if let Some(v) = r.vps.as_mut() {
        v.tunnel_home_address6 = "fd77:77:77::2/64".into();
    }
    r
}

fn ipv6_leak(s: &Status) -> bool {
    kinds(s).contains(&ProblemKind::Ipv6BypassesVps)
}

#[test]
fn home_with_ipv6_and_a_vps_without_ipv6_egress_is_a_problem() {
    let s = Status::from_response(dual_stack_home(
        Ipv6Egress::NoPublicIpv6,
        DirectIpv6::DefaultRoute,
    ));
    assert!(ipv6_leak(&s), "{:?}", s.problems);
    assert!(!s.ok);
    assert!(
        s.render(false)
            .contains("no IPv6: the VPS has no public IPv6")
    );
    let s = Status::from_response(dual_stack_home(
        Ipv6Egress::TunnelIpv4Only,
        DirectIpv6::DefaultRoute,
    ));
    assert!(ipv6_leak(&s), "{:?}", s.problems);
    // IPv6 egress at the VPS, or no IPv6 at home, or facts not reported
    // (older agents): no problem.
    for (vps, home) in [
        (Ipv6Egress::Available, DirectIpv6::DefaultRoute),
        (Ipv6Egress::NoPublicIpv6, DirectIpv6::None),
        (Ipv6Egress::NoPublicIpv6, DirectIpv6::Unspecified),
        (Ipv6Egress::Unspecified, DirectIpv6::DefaultRoute),
    ] {
        let s = Status::from_response(dual_stack_home(vps, home));
        assert!(!ipv6_leak(&s), "{vps:?} {home:?}: {:?}", s.problems);
    }
}

#[test]
fn tunnel_ipv6_addresses_and_the_home_filter_are_in_the_json() {
    let s = Status::from_response(dual_stack_home(
        Ipv6Egress::Available,
        DirectIpv6::DefaultRoute,
    ));
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["vps"]["tunnel_home_address6"], "fd77:77:77::2/64");
    assert_eq!(v["vps"]["tunnel_vps_address6"], serde_json::Value::Null);
    assert_eq!(v["egress"]["vps"]["ipv6"], "available");
    assert_eq!(v["home"]["direct_ipv6"], true);
    assert_eq!(v["home"]["input_filter"], "installed");
    assert!(
        s.render(false)
            .contains("home filter from the tunnel only the VPS")
    );
}

#[test]
fn an_old_postfix_behind_proxy_v2_is_a_problem_with_the_fix() {
    let mut r = dual_stack_home(Ipv6Egress::Available, DirectIpv6::None);
    if let Some(rep) = r.home.as_mut().and_then(|h| h.last_report.as_mut()) {
        rep.postfix = Some(ceres_proto::PostfixReport {
            version: "3.4.14".into(),
            proxy_v2_unsupported: vec![
                ceres_proto::ProxyV2Relay {
                    public_port: 25,
                    home_port: 10025,
                },
                ceres_proto::ProxyV2Relay {
                    public_port: 587,
                    home_port: 10587,
                },
            ],
        });
    }
    let s = Status::from_response(r.clone());
    assert!(!s.ok);
    assert_eq!(kinds(&s), [ProblemKind::PostfixCannotReadProxyV2]);
    let p = &s.diagnosis.problems[0];
    assert_eq!(p.ports, [25, 587]);
    assert!(
        p.fix
            .contains("25:10025/proxy-v1,587:10587/proxy-v1 in CERES_RELAYS")
            && p.fix.contains("upgrade Postfix to 3.5+"),
        "{}",
        p.fix
    );
    assert!(p.text.contains("Postfix 3.4.14"), "{}", p.text);
    assert_eq!(
        serde_json::to_value(&s).unwrap()["home"]["postfix_version"],
        "3.4.14"
    );
    // A Postfix that reads v2: the version, no problem.
    if let Some(rep) = r.home.as_mut().and_then(|h| h.last_report.as_mut()) {
        rep.postfix = Some(ceres_proto::PostfixReport {
            version: "3.7.11".into(),
            proxy_v2_unsupported: vec![],
        });
    }
    let s = Status::from_response(r);
    assert!(s.ok, "{:?}", s.problems);
    assert_eq!(
        serde_json::to_value(&s).unwrap()["home"]["postfix_version"],
        "3.7.11"
    );
}

#[test]
fn a_home_filter_that_could_not_be_updated_is_a_problem() {
    let mut r = dual_stack_home(Ipv6Egress::Available, DirectIpv6::None);
    if let Some(rep) = r.home.as_mut().and_then(|h| h.last_report.as_mut()) {
        rep.input_filter = InputFilter::Failed.into();
        rep.input_filter_error = "nft: no such table".into();
    }
    let s = Status::from_response(r);
    assert_eq!(kinds(&s), [ProblemKind::InputFilterFailed]);
    assert_eq!(
        s.diagnosis.problems[0].detail.as_deref(),
        Some("nft: no such table")
    );
}

#[test]
fn a_reworded_agent_sentence_changes_no_diagnosis() {
    // The tunnel and egress off on purpose, said in words no release used:
    // the typed states decide, the words are only shown.
    let mut r = resp(true, 1_799_999_000);
    r.vps_tunnel = Some(TunnelReport {
        error: "switched off by the administrator".into(),
        state: ceres_proto::TunnelState::Off.into(),
        ..Default::default()
    });
    r.egress = Some(EgressStatus {
        error: "outbound relaying not wanted here".into(),
        state: ceres_proto::EgressState::Disabled.into(),
        ..Default::default()
    });
    let s = Status::from_response(r.clone());
    assert!(s.ok, "{:?}", s.problems);
    assert_eq!(s.tunnel.vps.state, Some(TunnelState::Off));
    assert_eq!(s.egress.vps.state, Some(EgressState::Disabled));
    assert!(
        s.render(false)
            .contains("switched off by the administrator"),
        "the words are still shown"
    );
    // The same words with a failed state are a problem, the words its detail.
    r.vps_tunnel = Some(TunnelReport {
        error: "switched off by the administrator".into(),
        state: ceres_proto::TunnelState::Failed.into(),
        ..Default::default()
    });
    let s = Status::from_response(r);
    assert_eq!(kinds(&s), [ProblemKind::TunnelNotRunning]);
    assert_eq!(
        s.diagnosis.problems[0].detail.as_deref(),
        Some("switched off by the administrator")
    );
}

#[test]
fn a_firewall_in_the_way_gives_its_fix_from_the_chain() {
    let finding =
        |kind: ceres_proto::FirewallFindingKind, chain: &str| ceres_proto::FirewallFinding {
            kind: kind.into(),
            family: "inet".into(),
            table: "filter".into(),
            chain: chain.into(),
        };
    let mut r = resp(true, 1_799_999_000);
    r.egress = Some(EgressStatus {
        enabled: true,
        error: "(the VPS's own words)".into(),
        state: ceres_proto::EgressState::Blocked.into(),
        firewall_findings: vec![finding(
            ceres_proto::FirewallFindingKind::ForwardDrop,
            "forward",
        )],
        ..Default::default()
    });
    if let Some(h) = r.home.as_mut() {
        h.last_report = Some(Report {
            uptime_secs: 5,
            tunnel: Some(TunnelReport {
                ifname: "ceres7".into(),
                ..Default::default()
            }),
            firewall: "(home's own words)".into(),
            firewall_findings: vec![finding(
                ceres_proto::FirewallFindingKind::InputDrop,
                "input",
            )],
            ..Default::default()
        });
    }
    let s = Status::from_response(r);
    assert_eq!(
        kinds(&s),
        [
            ProblemKind::EgressBlocked,
            ProblemKind::FirewallBlocksForwarders
        ]
    );
    let [egress, firewall] = &s.diagnosis.problems[..] else {
        unreachable!()
    };
    assert_eq!(egress.subject, "egress.vps");
    assert!(
        egress.fix.contains("nft insert rule inet filter forward"),
        "{}",
        egress.fix
    );
    assert_eq!(egress.detail.as_deref(), Some("(the VPS's own words)"));
    // Home's fix names home's tunnel interface.
    assert!(
        firewall.fix.contains("ufw allow in on ceres7"),
        "{}",
        firewall.fix
    );
    assert_eq!(firewall.detail.as_deref(), Some("(home's own words)"));
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["egress"]["vps"]["state"], "blocked");
    assert_eq!(v["egress"]["vps"]["firewall"][0]["kind"], "forward_drop");
    assert_eq!(v["home"]["firewall"][0]["chain"], "input");
    assert!(
        s.render(false)
            .contains("blocked by another firewall table")
    );
}

#[test]
fn a_failed_rotation_marks_the_keys_line_from_the_typed_result() {
    let mut r = resp(true, 1_799_999_000);
    r.vps_tunnel = Some(TunnelReport {
        running: true,
        last_handshake_unix: 1_800_000_000 - 5,
        state: ceres_proto::TunnelState::Running.into(),
        ..Default::default()
    });
    r.rotation = Some(ceres_proto::RotationStatus {
        last_unix: 1_799_999_900,
        last_outcome: "it did not work out".into(),
        last_result: ceres_proto::RotationOutcome::Failed.into(),
        last_failure: "home went away".into(),
        pending: 4,
        step: ceres_proto::RotationStep::Prepared.into(),
        ..Default::default()
    });
    let s = Status::from_response(r);
    assert!(s.ok, "a failed rotation keeps the old keys: not broken");
    let keys = s
        .render(false)
        .lines()
        .find(|l| l.contains("keys "))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        keys.starts_with("FAIL") && keys.contains("(failed: home went away)"),
        "{keys}"
    );
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["rotation"]["last_result"], "failed");
    assert_eq!(v["rotation"]["pending_step"], "prepared");
    // The VPS's sentence stays in the JSON as it was sent.
    assert_eq!(v["rotation"]["last_outcome"], "it did not work out");
}

#[test]
fn the_json_reads_back_to_the_same_status() {
    // `render` goes through the JSON form: every typed fact must survive it.
    let mut r = resp(true, 1_799_999_000);
    r.relays = vec![RelayPort {
        port: 25,
        target_port: 10025,
        proxy_mode: ceres_proto::ProxyMode::V1.into(),
        state: ceres_proto::RelayState::NoForwarder.into(),
        ..Default::default()
    }];
    let s = Status::from_response(r);
    let back: Status = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&s).unwrap()
    );
    assert_eq!(back.relays[0].proxy.name(), Some("proxy-v1"));
    assert_eq!(back.relays[0].state, Some(RelayState::NoForwarder));
}
