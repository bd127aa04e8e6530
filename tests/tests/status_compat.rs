//! Issue 15, peers one release apart, with the real agents (on loopback, no
//! root: the tunnel is off at both ends): the status they send carries the
//! typed facts, and beside them the old strings exactly as the previous
//! cerectl looks for them; this cerectl reads the typed facts.
//!
//! (Every diagnosis against statuses of both releases, through this cerectl
//! and the previous one's code, is in ctl/src/status/compat_tests.rs.)

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ceres_pki::tls::ClientIdentity;
use ceres_pki::{Ca, KeyAndCsr, Role};
use ceres_proto::admin_client::AdminClient;
use ceres_proto::{
    CheckKind, EgressState, RotationOutcome, StatusRequest, StatusResponse, TunnelReport,
    TunnelState, compat,
};
use ceres_tests::{Daemon, LoopVps, bin, sh, wait_until};

/// A home agent with the tunnel off, joined to `vps` and running.
fn start_home(vps: &LoopVps) -> Daemon {
    let state = vps.dir.path().join("home-state");
    let config = vps.dir.path().join("home.env");
    std::fs::write(
        &config,
        "CERES_TUNNEL=off\nCERES_RECONNECT_MAX=1s\nCERES_METRICS_LISTEN=off\nCERES_NAME=compat-home\n",
    )
    .unwrap();
    let token = vps.token("home", "1h").unwrap();
    let home = |args: &[&str]| {
        let mut c = Command::new(bin("ceres-home"));
        c.arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args);
        c
    };
    sh(&mut home(&["join", &token])).unwrap();
    let mut daemon = Daemon::spawn("home", home(&["run"]), vps.dir.path()).unwrap();
    daemon.wait_ready(Duration::from_secs(20)).unwrap();
    daemon
}

/// The raw Admin.Status, as any reader gets it.
fn raw_status(vps: &LoopVps, rt: &tokio::runtime::Runtime) -> StatusResponse {
    let ca_pem = std::fs::read_to_string(vps.state_file("ca.pem")).unwrap();
    let ca = Ca::from_pem(
        &ca_pem,
        &std::fs::read_to_string(vps.state_file("ca.key")).unwrap(),
    )
    .unwrap();
    let key = KeyAndCsr::generate("compat-reader").unwrap();
    let now = std::time::SystemTime::now();
    let cert_pem = ca
        .sign_client_with_validity(
            key.csr_pem(),
            Role::Admin,
            "compat-reader",
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
    let identity = ClientIdentity {
        cert_pem,
        key_pem: key.key_pem(),
    };
    let tls = ceres_pki::tls::client_config(&ca_pem, Some(&identity)).unwrap();
    rt.block_on(async {
        let channel = ceres_control::connect(&vps.addr, tls).await.unwrap();
        AdminClient::new(channel)
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    })
}

fn ctl_status(ctl: &PathBuf) -> (i32, serde_json::Value) {
    let out = Command::new(bin("cerectl"))
        .arg("--dir")
        .arg(ctl)
        .args(["status", "--json"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

/// What the previous cerectl read in a tunnel report: off when not running
/// and the error names CERES_TUNNEL=off.
fn old_reader_sees_tunnel_off(t: &TunnelReport) -> bool {
    !t.running && t.error.contains("CERES_TUNNEL=off")
}

#[test]
fn the_agents_send_typed_facts_and_the_old_strings_beside_them() {
    ceres_pki::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vps = LoopVps::start(&[]).unwrap();
    let ctl = vps.enroll_ctl().unwrap();
    let home = start_home(&vps);
    let mut resp = StatusResponse::default();
    wait_until("home's first report", Duration::from_secs(30), || {
        resp = raw_status(&vps, &rt);
        Ok(resp
            .home
            .as_ref()
            .is_some_and(|h| h.connected && h.last_report.is_some()))
    })
    .unwrap_or_else(|e| panic!("{e}: {resp:?}\n{}", home.log_text()));

    // The VPS's tunnel and egress: typed, and the old words.
    let vps_tunnel = resp.vps_tunnel.clone().unwrap_or_default();
    assert_eq!(vps_tunnel.state(), TunnelState::Off);
    assert!(old_reader_sees_tunnel_off(&vps_tunnel), "{vps_tunnel:?}");
    let egress = resp.egress.clone().unwrap_or_default();
    assert_eq!(egress.state(), EgressState::TunnelOff);
    // The previous cerectl: not enabled, and an error starting so is no problem.
    assert!(!egress.enabled && egress.error.starts_with("not installed (tunnel off)"));
    // Home's.
    let report = resp.home.clone().unwrap().last_report.unwrap();
    let home_tunnel = report.tunnel.clone().unwrap_or_default();
    assert_eq!(home_tunnel.state(), TunnelState::Off);
    assert!(old_reader_sees_tunnel_off(&home_tunnel), "{home_tunnel:?}");
    let home_egress = report.egress.clone().unwrap_or_default();
    assert_eq!(home_egress.state(), EgressState::TunnelOff);
    assert!(!home_egress.enabled && home_egress.error.is_empty());
    // Rotation: never, both ways.
    let rotation = resp.rotation.clone().unwrap_or_default();
    assert_eq!(rotation.last_result(), RotationOutcome::Never);
    assert_eq!(rotation.last_outcome, "");
    // Read back through the one place that knows the old strings, the old
    // fields alone say the same as the typed ones.
    let mut old_only = vps_tunnel.clone();
    old_only.state = 0;
    assert_eq!(old_only.effective_state(), vps_tunnel.state());
    let mut old_only = egress.clone();
    old_only.state = 0;
    assert_eq!(old_only.effective_state(), egress.state());
    // The watchdog's checks: each with its kind, and the name the previous
    // cerectl compares beside it.
    assert!(!resp.checks.is_empty(), "{resp:?}");
    for c in &resp.checks {
        assert_ne!(c.kind(), CheckKind::Unspecified, "{c:?}");
        assert_eq!(c.id, compat::check_name(c.kind()), "{c:?}");
        let mut old_only = c.clone();
        old_only.kind = 0;
        assert_eq!(old_only.effective_kind(), c.kind());
    }

    // This cerectl: the typed facts, nothing broken.
    let (code, j) = ctl_status(&ctl);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["tunnel"]["vps"]["state"], "off", "{j}");
    assert_eq!(j["tunnel"]["home"]["state"], "off", "{j}");
    assert_eq!(j["egress"]["vps"]["state"], "tunnel_off", "{j}");
    assert_eq!(j["egress"]["home"]["state"], "tunnel_off", "{j}");
    assert_eq!(j["rotation"]["last_result"], "never", "{j}");
    assert_eq!(j["checks"][0]["kind"], "home", "{j}");
    assert_eq!(j["diagnosis"]["problems"], serde_json::json!([]), "{j}");

    // Home gone: a typed problem, and the same sentence in `problems`.
    drop(home);
    let mut j = serde_json::Value::Null;
    wait_until("home to be seen gone", Duration::from_secs(30), || {
        j = ctl_status(&ctl).1;
        Ok(j["home"]["connected"] == false)
    })
    .unwrap_or_else(|e| panic!("{e}: {j}"));
    let problem = &j["diagnosis"]["problems"][0];
    assert_eq!(problem["kind"], "home_not_connected", "{j}");
    assert_eq!(problem["subject"], "home", "{j}");
    assert_eq!(problem["text"], j["problems"][0], "{j}");
    assert_eq!(j["problems"].as_array().map(Vec::len), Some(1), "{j}");
}
