//! Issue 13, end to end: `ceres-vps cert revoke` cuts a home off at once —
//! WireGuard peer, egress, live session — and a VPS restart does not bring
//! it back.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use ceres_tests::{Ceres, Lab, bin, echo_roundtrip, echo_server, require_root, sh, wait_until};

const HOME_TUN: &str = "10.77.77.2";

/// The peers of the VPS's WireGuard interface, from its UAPI socket.
fn vps_peers(lab: &Lab) -> String {
    sh(lab.vps.command("wg").args(["show", &lab.vps_tun, "peers"]))
        .unwrap()
        .trim()
        .to_owned()
}

/// Whether the VPS masquerades anything (the egress rules for home).
fn vps_masquerades(lab: &Lab) -> bool {
    sh(lab.vps.command("nft").args(["list", "ruleset"]))
        .unwrap()
        .contains("masquerade")
}

/// Counts "revoked certificate refused" lines: each is a reconnect refused.
fn refusals(log: &str) -> usize {
    log.matches("revoked certificate refused").count()
}

#[test]
fn revoking_home_removes_its_peer_egress_and_session_and_survives_a_restart() {
    if !require_root("revoking_home_removes_its_peer_egress_and_session_and_survives_a_restart") {
        return;
    }
    let lab = Lab::new().unwrap();
    // One plain relay to an echo server at home: the tunnel's input filter
    // lets the VPS reach home's forwarders only.
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=7001"], &[]).unwrap();
    // Joined under a name of its own (the default is the hostname, which
    // cerectl's certificate shares in the lab).
    let mut vps = ceres.start_vps().unwrap();
    let token = ceres.token("home").unwrap();
    sh(lab
        .home
        .command(bin("ceres-home"))
        .arg("--config")
        .arg(&ceres.home_config)
        .arg("--state-dir")
        .arg(&ceres.home_state)
        .args(["join", "--name", "lab-home", &token]))
    .unwrap();
    let home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();
    ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap();
    let _echo = echo_server(&lab.home, "127.0.0.1", 7001, lab.dir.path()).unwrap();
    let forwarder = ceres.forwarder_ports(1, Duration::from_secs(20)).unwrap()[&7001];
    wait_until(
        "the tunnel to carry traffic",
        Duration::from_secs(20),
        || echo_roundtrip(&lab.vps, HOME_TUN, forwarder, "before\n"),
    )
    .unwrap();
    assert!(!vps_peers(&lab).is_empty());
    assert!(vps_masquerades(&lab), "egress not installed to begin with");
    let (code, json) = ceres.status_json().unwrap();
    assert_eq!(json["home"]["access"], "allowed", "{json}");
    let _ = code;

    // Revoked by the name given at enrolment (CERES_NAME of the lab home).
    let t0 = Instant::now();
    let out = std::process::Command::new(bin("ceres-vps"))
        .arg("--config")
        .arg(&ceres.vps_config)
        .arg("--state-dir")
        .arg(&ceres.vps_state)
        .args(["cert", "revoke", "lab-home"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Within seconds: peer gone, egress gone, session cut, status says so.
    wait_until("the peer to leave the VPS", Duration::from_secs(5), || {
        Ok(vps_peers(&lab).is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", vps.log_text()));
    wait_until("the egress rules to go", Duration::from_secs(5), || {
        Ok(!vps_masquerades(&lab))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", vps.log_text()));
    let json = ceres
        .wait_home_connected(false, Duration::from_secs(5))
        .unwrap();
    eprintln!("home cut off {:?} after cert revoke", t0.elapsed());
    assert_eq!(json["home"]["access"], "revoked", "{json}");
    assert_eq!(json["home"]["revocation"]["name"], "lab-home", "{json}");
    let (code, text, _) = ceres.ctl(&["status"]).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("REVOKED") && text.contains("home revoked"),
        "{text}"
    );
    assert!(!echo_roundtrip(&lab.vps, HOME_TUN, forwarder, "after\n").unwrap());
    assert!(!ceres.vps_state.join("home-peer.json").exists());

    // Not re-established: home keeps trying and is refused at the handshake.
    let before = refusals(&vps.log_text());
    wait_until(
        "home's reconnect to be refused",
        Duration::from_secs(20),
        || Ok(refusals(&vps.log_text()) > before),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vps.log_text()));
    assert_eq!(ceres.status_json().unwrap().1["home"]["connected"], false);

    // Restarted: still revoked, no peer, no egress, home still refused.
    vps.terminate(Duration::from_secs(10)).unwrap();
    let vps = ceres.start_vps().unwrap();
    let (code, json) = ceres.status_json().unwrap();
    assert_eq!(code, 1);
    assert_eq!(json["home"]["access"], "revoked", "{json}");
    assert_eq!(json["home"]["connected"], false, "{json}");
    assert!(vps_peers(&lab).is_empty(), "the revoked peer came back");
    assert!(
        !vps_masquerades(&lab),
        "egress for the revoked home came back"
    );
    wait_until(
        "home's reconnect to be refused after the restart",
        Duration::from_secs(20),
        || Ok(refusals(&vps.log_text()) > 0),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vps.log_text()));
    assert_eq!(ceres.status_json().unwrap().1["home"]["connected"], false);
    assert!(vps_peers(&lab).is_empty());
    drop(home);
}
