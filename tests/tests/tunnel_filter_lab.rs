//! Issues 11 and 13: each end's input filter on the tunnel. Whoever controls
//! the VPS reaches nothing at home but the forwarders; home reaches nothing
//! on the VPS, also with egress off.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use ceres_tests::postfix::smtp::{connect, in_netns};
use ceres_tests::{Ceres, Lab, Netns, require_root, run, wait_until};

/// Something listening on every address, IPv4 and IPv6, inside `ns`: what a
/// host's sshd or a database bound to `::` looks like.
fn listen_everywhere(ns: &Netns, port: u16) -> TcpListener {
    let l = in_netns(ns, || TcpListener::bind(("::", port)))
        .unwrap()
        .unwrap();
    // It is reachable from inside its own host, both families.
    for local in ["127.0.0.1", "::1"] {
        let to = SocketAddr::new(local.parse().unwrap(), port);
        connect(ns, to, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("the listener does not answer locally: {e:#}"));
        l.accept().unwrap();
    }
    l
}

/// Packets dropped by the `counter drop` rules of table inet ceres_tunnel in
/// `ns`; `None` when there is no such table.
fn drops(ns: &Netns) -> Option<u64> {
    let out = run(ns
        .command("nft")
        .args(["list", "table", "inet", "ceres_tunnel"]))
    .unwrap();
    if !out.status.success() {
        return None;
    }
    let n = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_end().ends_with("drop"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "packets")?;
            words.get(at + 1)?.parse::<u64>().ok()
        })
        .sum();
    Some(n)
}

fn has_filter(ns: &Netns) -> bool {
    run(ns
        .command("nft")
        .args(["list", "table", "inet", "ceres_tunnel"]))
    .unwrap()
    .status
    .success()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn from_the_tunnel_the_vps_reaches_only_homes_forwarders() {
    if !require_root("from_the_tunnel_the_vps_reaches_only_homes_forwarders") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25"], &[]).unwrap();
    let (_vps, mut home) = ceres.up().unwrap();
    let forwarder = ceres.forwarder_ports(1, Duration::from_secs(20)).unwrap()[&25];
    let _other = listen_everywhere(&lab.home, 2525);
    let before = drops(&lab.home).unwrap_or(0);
    // Anything listening at home but the forwarders: dropped, IPv4 and IPv6.
    for to in ["10.77.77.2:2525", "[fd77:77:77::2]:2525"] {
        let r = connect(&lab.vps, sa(to), Duration::from_secs(2));
        assert!(
            r.is_err(),
            "the VPS reached {to} at home through the tunnel"
        );
    }
    // The forwarder: open to the VPS.
    connect(
        &lab.vps,
        sa(&format!("10.77.77.2:{forwarder}")),
        Duration::from_secs(5),
    )
    .unwrap();
    let after = drops(&lab.home).expect("no table inet ceres_tunnel at home");
    assert!(
        after >= before + 2,
        "the drop counter did not count: {before} -> {after}"
    );
    wait_until(
        "home's input filter in status",
        Duration::from_secs(10),
        || {
            let (_, j) = ceres.status_json()?;
            Ok(j["home"]["input_filter"] == "installed")
        },
    )
    .unwrap();
    let (_, text, _) = ceres.ctl(&["status"]).unwrap();
    assert!(
        text.contains("home filter from the tunnel only the VPS"),
        "{text}"
    );

    // A clean shutdown takes the filter away with the tunnel.
    home.terminate(Duration::from_secs(10)).unwrap();
    assert!(!has_filter(&lab.home), "home's filter left behind");
}

#[test]
fn with_egress_off_home_reaches_nothing_on_the_vps_through_the_tunnel() {
    if !require_root("with_egress_off_home_reaches_nothing_on_the_vps_through_the_tunnel") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(
        &lab,
        &["CERES_EGRESS=off", "CERES_RELAYS=25"],
        &["CERES_EGRESS=off"],
    )
    .unwrap();
    let (mut vps, _home) = ceres.up().unwrap();
    wait_until("the tunnel up", Duration::from_secs(20), || {
        Ok(ceres.status_json()?.1["tunnel"]["up"] == true)
    })
    .unwrap();
    let _other = listen_everywhere(&lab.vps, 2626);
    let before = drops(&lab.vps).unwrap_or(0);
    // No connection to the VPS's own services through the tunnel: a
    // listener on every address, the control port. The packets do cross the
    // tunnel: the VPS's filter counts them.
    for to in ["10.77.77.1:2626", "[fd77:77:77::1]:2626", "10.77.77.1:7443"] {
        let r = connect(&lab.home, sa(to), Duration::from_secs(2));
        assert!(
            r.is_err(),
            "home reached {to} on the VPS through the tunnel"
        );
    }
    let after = drops(&lab.vps).expect("no table inet ceres_tunnel on the VPS");
    assert!(
        after >= before + 3,
        "the VPS's drop counter did not count: {before} -> {after}"
    );
    vps.terminate(Duration::from_secs(10)).unwrap();
    assert!(!has_filter(&lab.vps), "the VPS's filter left behind");
}
