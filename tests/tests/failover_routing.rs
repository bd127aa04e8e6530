//! Issue 16, outbound failover at home, with real packets and without the
//! agents: two veth "uplinks" (stand-ins for the tunnel interfaces) into two
//! "VPS" namespaces that run the real VPS egress (masquerading only their
//! own home's tunnel address), and an "outside" listener that records where
//! connections come from. The routing is `ceres_relay::egress::FailoverEgress`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ceres_relay::egress::{FailoverEgress, HostSystem, UplinkRoute, VpsEgress};
use ceres_testkit::unique_id;
use ceres_tests::postfix::smtp::in_netns;
use ceres_tests::{Netns, require_root, sh};
use socket2::{Domain, Socket, Type};

const HOME_A: &str = "10.77.77.2";
const HOME_B: &str = "10.77.78.2";
const PUBLIC_A: &str = "198.51.100.1";
const PUBLIC_B: &str = "203.0.113.1";
const DEST: &str = "192.0.2.25:25";

struct World {
    home: Netns,
    vps_a: Netns,
    vps_b: Netns,
    out: Netns,
    if_a: String,
    if_b: String,
}

fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    sh(std::process::Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))
    .unwrap();
    a.ip(&["addr", "add", a_addr, "dev", a_if]).unwrap();
    b.ip(&["addr", "add", b_addr, "dev", b_if]).unwrap();
    a.ip(&["link", "set", a_if, "up"]).unwrap();
    b.ip(&["link", "set", b_if, "up"]).unwrap();
}

fn world() -> World {
    let id = unique_id();
    let home = Netns::new(format!("ceres-{id}-fohome")).unwrap();
    let vps_a = Netns::new(format!("ceres-{id}-foa")).unwrap();
    let vps_b = Netns::new(format!("ceres-{id}-fob")).unwrap();
    let out = Netns::new(format!("ceres-{id}-foout")).unwrap();
    let (if_a, if_b) = (format!("ha{id}"), format!("hb{id}"));
    let (pa, pb) = (format!("pa{id}"), format!("pb{id}"));
    let (oa, ob) = (format!("oa{id}"), format!("ob{id}"));
    link(&home, &if_a, "10.77.77.2/24", &vps_a, &pa, "10.77.77.1/24");
    link(&home, &if_b, "10.77.78.2/24", &vps_b, &pb, "10.77.78.1/24");
    link(
        &vps_a,
        &oa,
        "198.51.100.1/24",
        &out,
        &format!("xa{id}"),
        "198.51.100.10/24",
    );
    link(
        &vps_b,
        &ob,
        "203.0.113.1/24",
        &out,
        &format!("xb{id}"),
        "203.0.113.10/24",
    );
    out.ip(&["addr", "add", "192.0.2.25/32", "dev", "lo"])
        .unwrap();
    for (vps, tun, public, home_addr, via) in [
        (&vps_a, &pa, &oa, HOME_A, "198.51.100.10"),
        (&vps_b, &pb, &ob, HOME_B, "203.0.113.10"),
    ] {
        vps.ip(&["route", "add", "192.0.2.25/32", "via", via])
            .unwrap();
        // A tunnel is layer 3; the veth stand-in needs its peer to answer ARP
        // for the addresses behind it (home routes `default dev IF`).
        vps.sysctl(&format!("net.ipv4.conf.{tun}.proxy_arp"), "1")
            .unwrap();
        let egress = VpsEgress::new(tun.as_str(), public.as_str(), home_addr.parse().unwrap());
        egress
            .apply(&HostSystem {
                netns: Some(vps.name.clone()),
            })
            .unwrap();
    }
    // Strict reverse-path filtering at home, as many distributions set it:
    // the failover routing must cope.
    home.sysctl("net.ipv4.conf.all.rp_filter", "1").unwrap();
    World {
        home,
        vps_a,
        vps_b,
        out,
        if_a,
        if_b,
    }
}

fn egress(w: &World, active: Option<u8>) -> FailoverEgress {
    let mut e = FailoverEgress::new(Vec::new(), vec![25]);
    e.uplinks = vec![
        UplinkRoute {
            slot: 0,
            ifname: w.if_a.clone(),
            home: HOME_A.parse().unwrap(),
            home6: None,
        },
        UplinkRoute {
            slot: 1,
            ifname: w.if_b.clone(),
            home: HOME_B.parse().unwrap(),
            home6: None,
        },
    ];
    e.active = active;
    e
}

fn sys(ns: &Netns) -> HostSystem {
    HostSystem {
        netns: Some(ns.name.clone()),
    }
}

/// A connection from home, bound to `src`, to the outside listener.
fn dial(home: &Netns, src: &str) -> std::io::Result<TcpStream> {
    let src: IpAddr = src.parse().unwrap();
    in_netns(home, || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        let to: SocketAddr = DEST.parse().unwrap();
        s.connect_timeout(&to.into(), Duration::from_secs(3))?;
        Ok(TcpStream::from(s))
    })
    .unwrap()
}

/// Dials and accepts; returns both ends and the source the outside saw.
fn connect(w: &World, l: &TcpListener, src: &str) -> (TcpStream, TcpStream, IpAddr) {
    let client = dial(&w.home, src).unwrap();
    let (server, peer) = l.accept().unwrap();
    (client, server, peer.ip())
}

/// One byte from `from` arrives at `to`.
fn carries(from: &mut TcpStream, to: &mut TcpStream, byte: u8, what: &str) {
    from.write_all(&[byte]).unwrap();
    to.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    to.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: the connection stopped carrying data: {e}"));
    assert_eq!(buf[0], byte);
}

/// Both directions of an established connection still carry data.
fn still_works(client: &mut TcpStream, server: &mut TcpStream, what: &str) {
    carries(client, server, b'c', what);
    carries(server, client, b's', what);
}

#[test]
fn new_connections_follow_the_active_uplink_established_ones_stay() {
    if !require_root("new_connections_follow_the_active_uplink_established_ones_stay") {
        return;
    }
    let w = world();
    let l = in_netns(&w.out, || TcpListener::bind("0.0.0.0:25"))
        .unwrap()
        .unwrap();
    let home_sys = sys(&w.home);

    egress(&w, Some(0)).apply(&home_sys).unwrap();
    let (mut c1, mut s1, seen) = connect(&w, &l, HOME_A);
    assert_eq!(seen.to_string(), PUBLIC_A, "before the switch: through A");
    // B's own bind address goes through the active uplink too.
    let (_c, _s, seen) = connect(&w, &l, HOME_B);
    assert_eq!(seen.to_string(), PUBLIC_A, "B's address through A");

    egress(&w, Some(1)).switch(&home_sys).unwrap();
    let (mut c2, mut s2, seen) = connect(&w, &l, HOME_A);
    assert_eq!(seen.to_string(), PUBLIC_B, "after the switch: through B");
    still_works(&mut c1, &mut s1, "opened through A before the switch");

    egress(&w, Some(0)).switch(&home_sys).unwrap();
    let (_c3, _s3, seen) = connect(&w, &l, HOME_A);
    assert_eq!(seen.to_string(), PUBLIC_A, "switched back: through A");
    still_works(&mut c2, &mut s2, "opened through B before switching back");
    still_works(&mut c1, &mut s1, "opened through A at the start");

    egress(&w, Some(0)).remove_all(&home_sys).unwrap();
    let rules = w.home.ip(&["rule", "show"]).unwrap();
    assert_eq!(
        rules.lines().count(),
        3,
        "only local/main/default left: {rules}"
    );
    let rules6 = w.home.ip(&["-6", "rule", "show"]).unwrap();
    assert_eq!(rules6.lines().count(), 2, "only local/main left: {rules6}");
    for table in ["7280", "7281", "7282"] {
        let routes = w
            .home
            .ip(&["route", "show", "table", table])
            .unwrap_or_default();
        assert!(routes.trim().is_empty(), "table {table}: {routes}");
    }
    let nft = sh(w.home.command("nft").args(["list", "ruleset"])).unwrap();
    assert!(nft.trim().is_empty(), "{nft}");
    drop((w.vps_a, w.vps_b));
}

#[test]
fn a_vps_drops_another_homes_address() {
    if !require_root("a_vps_drops_another_homes_address") {
        return;
    }
    let w = world();
    let l = in_netns(&w.out, || TcpListener::bind("0.0.0.0:25"))
        .unwrap()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    // No failover routing: A's address sent straight into B, un-masqueraded.
    w.home
        .ip(&["route", "add", "192.0.2.25/32", "dev", &w.if_b])
        .unwrap();
    let r = dial(&w.home, HOME_A);
    assert!(r.is_err(), "B relayed A's home address: {r:?}");
    assert!(l.accept().is_err(), "the outside saw a connection");
    // B's own address on the same path works: the drop is the source check.
    let c = dial(&w.home, HOME_B);
    assert!(c.is_ok(), "{c:?}");
}
