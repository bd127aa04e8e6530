//! Issue 11, dual-stack outbound: the tunnel carries IPv6 (a ULA pair), the
//! VPS masquerades home's IPv6 tunnel source to its public IPv6 for the
//! egress ports only, and a VPS that cannot send IPv6 says so — with home's
//! IPv6 leak as a problem in `cerectl status`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use ceres_tests::postfix::smtp::{connect_from, in_netns};
use ceres_tests::{Ceres, Lab, Netns, addr, require_root, wait_until};

const HOME_TUN6: &str = "fd77:77:77::2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A listener on `addr` inside `ns` (the socket stays in that namespace).
fn listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    in_netns(ns, || TcpListener::bind(addr)).unwrap().unwrap()
}

/// Waits until the tunnel is up and home's egress routing is installed;
/// returns that status.
fn wait_egress(ceres: &Ceres<'_>) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(
        "the tunnel up and home's egress installed",
        Duration::from_secs(20),
        || {
            let (_, j) = ceres.status_json()?;
            let ok = j["tunnel"]["up"] == true && j["egress"]["home"]["enabled"] == true;
            last = j;
            Ok(ok)
        },
    )
    .unwrap();
    last
}

fn ipv6_leak_problem(j: &serde_json::Value) -> Option<String> {
    j["problems"]
        .as_array()?
        .iter()
        .filter_map(|p| p.as_str())
        .find(|p| p.contains("IPv6 straight from home"))
        .map(str::to_owned)
}

#[test]
fn home_ipv6_mail_leaves_from_the_vps_public_ipv6_and_only_on_mail_ports() {
    if !require_root("home_ipv6_mail_leaves_from_the_vps_public_ipv6_and_only_on_mail_ports") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25"], &[]).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let j = wait_egress(&ceres);
    assert_eq!(j["egress"]["vps"]["ipv6"], "available", "{j:#}");
    assert_eq!(
        j["vps"]["tunnel_home_address6"], "fd77:77:77::2/64",
        "{j:#}"
    );
    assert_eq!(j["vps"]["tunnel_vps_address6"], "fd77:77:77::1/64", "{j:#}");
    assert_eq!(j["home"]["direct_ipv6"], true, "{j:#}");
    assert!(ipv6_leak_problem(&j).is_none(), "{j:#}");

    // An IPv6-only server on the internet, as an IPv6 MX would be.
    let mx = listen(&lab.internet, SocketAddr::new(ip(addr::CLIENT6), 25));
    let web = listen(&lab.internet, SocketAddr::new(ip(addr::CLIENT6), 80));
    web.set_nonblocking(true).unwrap();

    // Postfix with smtp_bind_address6 = the tunnel address: policy routing
    // alone takes port 25 from that source into the tunnel.
    let to25 = || {
        connect_from(
            &lab.home,
            ip(HOME_TUN6),
            SocketAddr::new(ip(addr::CLIENT6), 25),
            Duration::from_secs(5),
        )
    };
    let _client = to25().unwrap();
    let (_conn, peer) = mx.accept().unwrap();
    assert_eq!(
        peer.ip(),
        ip(addr::VPS6),
        "the MX saw {peer}, not the VPS's public IPv6"
    );

    // Only the mail ports leave: force port 80 from the tunnel source into
    // the tunnel (a route for the server via the tunnel device); the VPS
    // drops it, while 25 by the same route still leaves from the VPS.
    lab.home
        .ip(&[
            "-6",
            "route",
            "add",
            &format!("{}/128", addr::CLIENT6),
            "dev",
            &lab.home_tun,
            "src",
            HOME_TUN6,
        ])
        .unwrap();
    let to80 = connect_from(
        &lab.home,
        ip(HOME_TUN6),
        SocketAddr::new(ip(addr::CLIENT6), 80),
        Duration::from_secs(3),
    );
    assert!(
        to80.is_err(),
        "tcp/80 over IPv6 through the tunnel was not blocked"
    );
    assert!(web.accept().is_err(), "the web server got a connection");
    let _client = to25().unwrap();
    let (_conn, peer) = mx.accept().unwrap();
    assert_eq!(peer.ip(), ip(addr::VPS6), "the MX saw {peer}");
}

#[test]
fn an_ipv4_only_tunnel_offers_no_ipv6_egress_and_home_ipv6_is_a_problem() {
    if !require_root("an_ipv4_only_tunnel_offers_no_ipv6_egress_and_home_ipv6_is_a_problem") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(
        &lab,
        &[
            "CERES_RELAYS=25",
            "CERES_TUNNEL_VPS_ADDRESS6=off",
            "CERES_TUNNEL_HOME_ADDRESS6=off",
        ],
        &[],
    )
    .unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let mut j = wait_egress(&ceres);
    assert_eq!(j["egress"]["vps"]["ipv6"], "tunnel_ipv4_only", "{j:#}");
    assert!(j["vps"]["tunnel_home_address6"].is_null(), "{j:#}");
    let tun = lab
        .home
        .ip(&["-6", "addr", "show", "dev", &lab.home_tun])
        .unwrap();
    assert!(
        !tun.contains("fd77"),
        "home's tunnel has an IPv6 address: {tun}"
    );
    // Home reports its IPv6 at its next report.
    wait_until(
        "home's IPv6 leak in status",
        Duration::from_secs(10),
        || {
            let (code, s) = ceres.status_json()?;
            j = s;
            Ok(code == 1 && ipv6_leak_problem(&j).is_some())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {j:#}"));
    let problem = ipv6_leak_problem(&j).unwrap();
    assert!(
        problem.contains("mailserver-config postfix --apply"),
        "{problem}"
    );
}

#[test]
fn a_vps_without_public_ipv6_reports_no_ipv6_egress_and_home_ipv6_is_a_problem() {
    if !require_root("a_vps_without_public_ipv6_reports_no_ipv6_egress_and_home_ipv6_is_a_problem")
    {
        return;
    }
    let lab = Lab::new().unwrap();
    // The VPS loses its IPv6 before the agent starts; the relays listen on
    // the IPv4 address only.
    lab.vps
        .ip(&[
            "-6",
            "addr",
            "del",
            &format!("{}/64", addr::VPS6),
            "dev",
            &lab.vps_if,
        ])
        .unwrap();
    let ceres = Ceres::init(
        &lab,
        &[
            "CERES_RELAYS=25",
            &format!("CERES_RELAY_LISTEN={}", addr::VPS),
        ],
        &[],
    )
    .unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let mut j = wait_egress(&ceres);
    assert_eq!(j["egress"]["vps"]["ipv6"], "no_public_ipv6", "{j:#}");
    assert_eq!(
        j["egress"]["vps"]["enabled"], true,
        "IPv4 egress stays: {j:#}"
    );
    // The tunnel itself is still dual stack.
    assert_eq!(
        j["vps"]["tunnel_home_address6"], "fd77:77:77::2/64",
        "{j:#}"
    );
    wait_until(
        "home's IPv6 leak in status",
        Duration::from_secs(10),
        || {
            let (code, s) = ceres.status_json()?;
            j = s;
            Ok(code == 1 && ipv6_leak_problem(&j).is_some())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {j:#}"));
    let (_, text, _) = ceres.ctl(&["status"]).unwrap();
    assert!(
        text.contains("no IPv6: the VPS has no public IPv6"),
        "{text}"
    );
}
