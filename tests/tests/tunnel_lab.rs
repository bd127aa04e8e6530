//! Issue 3, end to end: the agents bring the WireGuard tunnel up by
//! themselves after joining, `wg show` reads it, and it survives home's
//! address changing, the VPS agent restarting (same keys) and the home link
//! going away for 30 s.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use ceres_tests::{
    Ceres, Lab, addr, assert_no_secrets, echo_roundtrip, echo_server, lab_secrets, require_root,
    sh, wait_until, wireguard_key_hex,
};

const HOME_TUN: &str = "10.77.77.2";

/// The one relayed port: an echo server at home behind it.
const ECHO_PORT: u16 = 7001;

/// Each end's input filter admits, from the tunnel, only the VPS to home's
/// forwarders (and replies): a TCP round trip from the VPS to the forwarder
/// of the echo port is what crosses the tunnel both ways.
fn tunnel_works(lab: &Lab, forwarder: u16, payload: &str) -> anyhow::Result<bool> {
    echo_roundtrip(&lab.vps, HOME_TUN, forwarder, payload)
}

/// Home's echo server and the forwarder port that reaches it.
fn echo_at_home(lab: &Lab, ceres: &Ceres<'_>) -> (ceres_tests::Daemon, u16) {
    let echo = echo_server(&lab.home, "127.0.0.1", ECHO_PORT, lab.dir.path()).unwrap();
    let ports = ceres.forwarder_ports(1, Duration::from_secs(20)).unwrap();
    (echo, ports[&ECHO_PORT])
}

fn wait_tunnel(lab: &Lab, forwarder: u16, what: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_until(what, timeout, || {
        tunnel_works(lab, forwarder, "ping through the tunnel\n")
    })
    .unwrap();
    t0.elapsed()
}

#[test]
fn tunnel_comes_up_by_itself_roams_and_survives_vps_restart() {
    if !require_root("tunnel_comes_up_by_itself_roams_and_survives_vps_restart") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(
        &lab,
        &["CERES_EGRESS=off", &format!("CERES_RELAYS={ECHO_PORT}")],
        &["CERES_EGRESS=off"],
    )
    .unwrap();
    let mut vps = ceres.start_vps().unwrap();
    ceres.join_home().unwrap();
    let home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();
    let (_echo, fwd) = echo_at_home(&lab, &ceres);

    // Up by itself: TCP both ways through the tunnel.
    wait_tunnel(&lab, fwd, "tunnel up after join", Duration::from_secs(20));

    // Status shows it, with public keys only.
    let (_, json) = ceres.status_json().unwrap();
    let t = &json["tunnel"];
    assert_eq!(t["up"], true, "{json}");
    assert!(
        t["vps"]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(addr::HOME),
        "{t}"
    );
    assert!(
        t["vps"]["rx_bytes"].as_u64().unwrap() > 0 && t["vps"]["tx_packets"].as_u64().unwrap() > 0
    );
    let vps_key = t["vps"]["public_key"].as_str().unwrap().to_owned();
    assert_eq!(t["home"]["peer_public_key"], vps_key.as_str());
    assert_eq!(t["vps"]["peer_public_key"], t["home"]["public_key"]);

    // `wg show` reads our interface like any WireGuard interface.
    let show = sh(lab.vps.command("wg").args(["show", &lab.vps_tun])).unwrap();
    assert!(
        show.contains(&vps_key) && show.contains("latest handshake"),
        "{show}"
    );
    assert!(show.contains("preshared key: (hidden)"), "{show}");

    // No secret where an operator looks: status (JSON and text), `wg show`,
    // either agent's log. The secrets: both WireGuard private keys and the
    // PSK, which only the VPS keeps on disk (home-peer.json), each in base64
    // and in hex.
    let read = |path: std::path::PathBuf| std::fs::read_to_string(&path).unwrap();
    let peer: serde_json::Value =
        serde_json::from_str(&read(ceres.vps_state.join("home-peer.json"))).unwrap();
    let psk = peer["preshared_key"]
        .as_str()
        .expect("home-peer.json holds the PSK")
        .to_owned();
    let vps_private = read(ceres.vps_state.join("wg.key")).trim().to_owned();
    let home_private = read(ceres.home_state.join("wg.key")).trim().to_owned();
    let secrets = lab_secrets(&ceres);
    for (what, b64) in [
        ("the PSK", &psk),
        ("the VPS's private key", &vps_private),
        ("home's private key", &home_private),
    ] {
        // A real key, in both forms, or the check below would prove nothing.
        let hex = wireguard_key_hex(b64).unwrap_or_else(|| panic!("{what} is not a WireGuard key"));
        assert!(
            secrets.contains(b64) && secrets.contains(&hex),
            "lab_secrets misses {what}"
        );
    }
    let (_, status_human, _) = ceres.ctl(&["status"]).unwrap();
    assert_no_secrets(
        &secrets,
        &[
            (
                "cerectl status --json",
                serde_json::to_string(&json).unwrap(),
            ),
            ("cerectl status", status_human),
            ("wg show", show),
            ("vps log", vps.log_text()),
            ("home log", home.log_text()),
        ],
    );

    // Home's public address changes: traffic resumes without restarting anything.
    lab.home
        .ip(&[
            "addr",
            "del",
            &format!("{}/24", addr::HOME),
            "dev",
            &lab.home_if,
        ])
        .unwrap();
    lab.home
        .ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::HOME_ALT),
            "dev",
            &lab.home_if,
        ])
        .unwrap();
    lab.home
        .ip(&["route", "replace", "default", "via", addr::HOME_GW])
        .unwrap();
    let took = wait_tunnel(
        &lab,
        fwd,
        "tunnel after home's address changed",
        Duration::from_secs(40),
    );
    eprintln!("tunnel resumed {took:?} after home's address changed");
    let (_, json) = ceres.status_json().unwrap();
    assert!(
        json["tunnel"]["vps"]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(addr::HOME_ALT),
        "{json}"
    );
    ceres
        .wait_home_connected(true, Duration::from_secs(30))
        .unwrap();

    // The VPS agent restarts with its state: same key, home re-handshakes.
    vps.terminate(Duration::from_secs(10)).unwrap();
    let vps = ceres.start_vps().unwrap();
    let took = wait_tunnel(
        &lab,
        fwd,
        "tunnel after VPS restart",
        Duration::from_secs(40),
    );
    eprintln!("tunnel resumed {took:?} after the VPS agent restarted");
    let json = ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\nhome:\n{}\nvps:\n{}", home.log_text(), vps.log_text()));
    assert_eq!(
        json["tunnel"]["vps"]["public_key"],
        vps_key.as_str(),
        "VPS key changed across restart"
    );
}

#[test]
fn tunnel_comes_back_after_home_link_is_down_30s() {
    if !require_root("tunnel_comes_back_after_home_link_is_down_30s") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(
        &lab,
        &["CERES_EGRESS=off", &format!("CERES_RELAYS={ECHO_PORT}")],
        &["CERES_EGRESS=off"],
    )
    .unwrap();
    let _vps = ceres.start_vps().unwrap();
    ceres.join_home().unwrap();
    let _home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();
    let (_echo, fwd) = echo_at_home(&lab, &ceres);
    wait_tunnel(&lab, fwd, "tunnel up", Duration::from_secs(20));

    // The ISP side of home's link goes away for 30 s.
    let isp_side = format!("{}i", lab.home_if);
    lab.internet
        .ip(&["link", "set", &isp_side, "down"])
        .unwrap();
    let down_for = Duration::from_secs(30);
    let t0 = Instant::now();
    assert!(
        !tunnel_works(&lab, fwd, "x\n").unwrap(),
        "tunnel must not work while the link is down"
    );
    std::thread::sleep(down_for.saturating_sub(t0.elapsed())); // the outage itself, not a readiness wait
    lab.internet.ip(&["link", "set", &isp_side, "up"]).unwrap();
    lab.internet
        .ip(&["route", "replace", "198.51.100.0/24", "dev", &isp_side])
        .unwrap();
    let took = wait_tunnel(
        &lab,
        fwd,
        "tunnel after the link came back",
        Duration::from_secs(30),
    );
    eprintln!("tunnel back {took:?} after a 30 s link outage");
    assert!(
        took < Duration::from_secs(15),
        "tunnel took {took:?} to come back"
    );
    ceres
        .wait_home_connected(true, Duration::from_secs(40))
        .unwrap();
}
