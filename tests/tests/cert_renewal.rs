//! Client certificates renew themselves at two thirds of their life: the
//! home agent in the background, cerectl when it is used. No root needed:
//! the VPS runs on loopback with the tunnel off.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use ceres_pki::CertificateInfo;
use ceres_tests::{Daemon, LoopVps, bin, sh, wait_until};

fn cert_serial(path: &std::path::Path) -> String {
    CertificateInfo::from_pem(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .serial
}

#[test]
fn home_and_cerectl_certificates_renew_before_expiry() {
    // Six-second certificates: renewal due after four.
    let vps = LoopVps::start(&["CERES_CLIENT_CERT_TTL=6s"]).unwrap();
    let home_state = vps.dir.path().join("home-state");
    let home_config = vps.dir.path().join("home.env");
    std::fs::write(
        &home_config,
        "CERES_TUNNEL=off\nCERES_RECONNECT_MAX=1s\nCERES_METRICS_LISTEN=off\n",
    )
    .unwrap();
    let token = vps.token("home", "1h").unwrap();
    sh(Command::new(bin("ceres-home"))
        .arg("--config")
        .arg(&home_config)
        .arg("--state-dir")
        .arg(&home_state)
        .args(["join", &token]))
    .unwrap();
    let first = cert_serial(&home_state.join("home.pem"));
    let mut cmd = Command::new(bin("ceres-home"));
    cmd.arg("--config")
        .arg(&home_config)
        .arg("--state-dir")
        .arg(&home_state)
        .arg("run");
    let mut home = Daemon::spawn("home", cmd, vps.dir.path()).unwrap();
    home.wait_ready(Duration::from_secs(20)).unwrap();

    // The home agent renews twice by itself, and keeps its session.
    let mut seen = vec![first.clone()];
    wait_until(
        "two renewals of the home certificate",
        Duration::from_secs(30),
        || {
            let now = cert_serial(&home_state.join("home.pem"));
            if !seen.contains(&now) {
                seen.push(now);
            }
            Ok(seen.len() >= 3)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", home.log_text()));
    assert!(home.log_text().contains("certificate renewed"));

    // cerectl renews its own when it is used after two thirds of the life.
    let ctl = vps.enroll_ctl().unwrap();
    let before = cert_serial(&ctl.join("admin.pem"));
    let info = CertificateInfo::from_pem(&std::fs::read_to_string(ctl.join("admin.pem")).unwrap())
        .unwrap();
    let due = ceres_pki::renew_at(info.not_before, info.not_after);
    wait_until("cerectl's renewal time", Duration::from_secs(10), || {
        Ok(std::time::SystemTime::now() >= due)
    })
    .unwrap();
    let out = Command::new(bin("cerectl"))
        .arg("--dir")
        .arg(&ctl)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["home"]["connected"], true,
        "home lost its session across renewals: {json}"
    );
    assert_ne!(
        cert_serial(&ctl.join("admin.pem")),
        before,
        "cerectl did not renew"
    );
    home.terminate(Duration::from_secs(10)).unwrap();
}
