//! Issue 13, end to end: `ceres-vps cert revoke` cuts a home off at once —
//! WireGuard peer, egress, live session — a VPS restart does not bring it
//! back, and a new home joining with a new token does.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ceres_tests::postfix::smtp::{connect_from, in_netns};
use ceres_tests::{
    Ceres, Daemon, Lab, addr, bin, echo_roundtrip, echo_server, require_root, sh, wait_until,
};

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

/// Whether the VPS's egress table (`table inet ceres`) exists.
fn vps_egress_table(lab: &Lab) -> bool {
    lab.vps
        .command("nft")
        .args(["list", "table", "inet", "ceres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Home's own WireGuard public key, from its UAPI socket.
fn home_public_key(lab: &Lab) -> String {
    sh(lab
        .home
        .command("wg")
        .args(["show", &lab.home_tun, "public-key"]))
    .unwrap()
    .trim()
    .to_owned()
}

/// Joins a second home (a new host replacing the revoked one): a new token,
/// a fresh state dir, the name `lab-home-2`; started and ready.
fn join_and_start_new_home(ceres: &Ceres<'_>) -> Daemon {
    let lab = ceres.lab;
    let state = lab.path("home-state-2");
    let config = lab.path("home-2.env");
    let text = std::fs::read_to_string(&ceres.home_config)
        .unwrap()
        .replace("CERES_NAME=lab-home\n", "CERES_NAME=lab-home-2\n");
    assert!(text.contains("CERES_NAME=lab-home-2"), "{text}");
    std::fs::write(&config, text).unwrap();
    let token = ceres.token("home").unwrap();
    let home = |args: &[&str]| {
        let mut cmd = lab.home.command(bin("ceres-home"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args);
        cmd
    };
    sh(&mut home(&["join", "--name", "lab-home-2", &token])).unwrap();
    let mut cmd = home(&["run"]);
    cmd.env("RUST_LOG", "info");
    let mut d = Daemon::spawn("home-2", cmd, lab.dir.path()).unwrap();
    d.wait_ready(Duration::from_secs(20)).unwrap();
    d
}

/// Counts "revoked certificate refused" lines: each is a reconnect refused.
fn refusals(log: &str) -> usize {
    log.matches("revoked certificate refused").count()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A mail server on the internet: listens on the outside client's address,
/// port 25 (the socket stays in the internet namespace).
fn internet_mx(lab: &Lab) -> TcpListener {
    let mx = in_netns(&lab.internet, || {
        TcpListener::bind(SocketAddr::new(ip(addr::CLIENT), 25))
    })
    .unwrap()
    .unwrap();
    mx.set_nonblocking(true).unwrap();
    mx
}

/// Mail out: connects from home's tunnel address (Postfix's
/// `smtp_bind_address`; home's policy routing takes it into the tunnel) to
/// `mx`, and returns the address the MX saw, `None` when the connection
/// does not get through within `timeout`.
fn mail_out_seen_from(lab: &Lab, mx: &TcpListener, timeout: Duration) -> Option<IpAddr> {
    let to = SocketAddr::new(ip(addr::CLIENT), 25);
    let _conn = connect_from(&lab.home, ip(HOME_TUN), to, timeout).ok()?;
    let mut seen = None;
    // Connected means the MX's kernel accepted it: it is in the queue now.
    wait_until("the MX to accept", Duration::from_secs(5), || {
        match mx.accept() {
            Ok((_, peer)) => seen = Some(peer.ip()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        Ok(seen.is_some())
    })
    .unwrap();
    seen
}

/// Mail in: a line sent to the VPS's port 25 from the internet comes back
/// from the echo server standing in for home's mail server — relayed
/// through the tunnel to home's forwarder (home's input filter on the
/// tunnel lets in nothing else).
fn relayed(lab: &Lab) -> anyhow::Result<bool> {
    echo_roundtrip(&lab.internet, addr::VPS, 25, "ping\n")
}

#[test]
fn revoking_home_removes_its_peer_egress_and_session_until_a_new_home_joins() {
    if !require_root("revoking_home_removes_its_peer_egress_and_session_until_a_new_home_joins") {
        return;
    }
    let lab = Lab::new().unwrap();
    // Port 25 relayed without PROXY, to an echo server as home's mail server.
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25"], &[]).unwrap();
    let _mail = echo_server(&lab.home, "127.0.0.1", 25, lab.dir.path()).unwrap();
    let mx = internet_mx(&lab);
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
    let mut home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();
    ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap();
    wait_until(
        "the tunnel to carry relayed mail",
        Duration::from_secs(20),
        || relayed(&lab),
    )
    .unwrap();
    wait_until("home's egress installed", Duration::from_secs(10), || {
        Ok(ceres.status_json()?.1["egress"]["home"]["enabled"] == true)
    })
    .unwrap();
    assert_eq!(
        mail_out_seen_from(&lab, &mx, Duration::from_secs(5)),
        Some(ip(addr::VPS)),
        "mail out does not leave from the VPS to begin with"
    );
    let old_key = vps_peers(&lab);
    assert_eq!(old_key, home_public_key(&lab), "the peer is home's key");
    assert!(vps_masquerades(&lab), "egress not installed to begin with");
    let (_, json) = ceres.status_json().unwrap();
    assert_eq!(json["home"]["access"], "allowed", "{json}");

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
    assert!(!vps_egress_table(&lab), "table inet ceres is still there");
    ceres
        .wait_home_connected(false, Duration::from_secs(5))
        .unwrap();
    eprintln!("home cut off {:?} after cert revoke", t0.elapsed());
    // The VPS notes the revocation (a file it fsyncs) after it has removed
    // the peer and the egress rules: status may say "not connected" for a
    // moment before it says "revoked".
    let mut json = serde_json::Value::Null;
    wait_until("status to say home revoked", Duration::from_secs(5), || {
        json = ceres.status_json()?.1;
        Ok(json["home"]["access"] == "revoked")
    })
    .unwrap_or_else(|e| panic!("{e}: {json}"));
    eprintln!("status says revoked {:?} after cert revoke", t0.elapsed());
    assert_eq!(json["home"]["connected"], false, "{json}");
    assert_eq!(json["home"]["revocation"]["name"], "lab-home", "{json}");
    let (code, text, _) = ceres.ctl(&["status"]).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("REVOKED") && text.contains("home revoked"),
        "{text}"
    );
    assert!(
        !relayed(&lab).unwrap(),
        "mail still relayed to the revoked home"
    );
    let out_seen = mail_out_seen_from(&lab, &mx, Duration::from_secs(2));
    assert_eq!(out_seen, None, "the revoked home still sends mail out");
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
    // Egress says why it is gone (not "tunnel off"), and is not a second problem.
    assert!(
        json["egress"]["vps"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("removed: home was revoked")),
        "{json}"
    );
    assert!(
        !json["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap_or_default()
            .contains("outbound mail routing")),
        "{json}"
    );
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

    // A new home replaces the revoked one: the old host is gone (its agent
    // stopped, freeing the tunnel device), a new one joins with a new token.
    home.terminate(Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    let home2 = join_and_start_new_home(&ceres);
    let json = ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", vps.log_text(), home2.log_text()));
    assert_eq!(json["home"]["access"], "allowed", "{json}");
    assert!(json["home"]["revocation"].is_null(), "{json}");
    assert!(!ceres.vps_state.join("home-revoked.json").exists());
    // The VPS's peer is the new home's key, and only that.
    let new_key = home_public_key(&lab);
    assert_ne!(new_key, old_key, "the new home has a key of its own");
    wait_until("the new home's peer", Duration::from_secs(10), || {
        Ok(vps_peers(&lab) == new_key)
    })
    .unwrap_or_else(|e| panic!("{e}: peers {:?}\n{}", vps_peers(&lab), vps.log_text()));
    wait_until("the egress table back", Duration::from_secs(10), || {
        Ok(vps_egress_table(&lab) && vps_masquerades(&lab))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", vps.log_text()));
    wait_until("home's egress installed", Duration::from_secs(10), || {
        Ok(ceres.status_json()?.1["egress"]["home"]["enabled"] == true)
    })
    .unwrap();
    eprintln!(
        "new home allowed, peered and egress back {:?} after it started joining",
        t0.elapsed()
    );

    // Mail flows both ways again: out from the VPS's public address, in
    // through the tunnel to the new home's forwarder.
    assert_eq!(
        mail_out_seen_from(&lab, &mx, Duration::from_secs(5)),
        Some(ip(addr::VPS)),
        "mail out from the new home does not leave from the VPS"
    );
    wait_until(
        "relayed mail to reach the new home",
        Duration::from_secs(10),
        || relayed(&lab),
    )
    .unwrap();
    let (_, text, _) = ceres.ctl(&["status"]).unwrap();
    assert!(!text.contains("REVOKED"), "{text}");
}
