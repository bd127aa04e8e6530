//! Egress rules applied for real, as root, inside network namespaces this test creates:
//! idempotence, removal that leaves other tables alone, and the VPS NAT actually letting
//! mail ports out with the VPS address while blocking other ports.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ceres_relay::egress::{HomeEgress, HostSystem, System, VpsEgress};
use ceres_testkit::require_root;
use common::{Netns, sh};

/// What these tests do in a namespace besides entering it.
trait NetnsExt {
    fn sys(&self) -> HostSystem;
    fn run(&self, program: &str, args: &[&str]) -> String;
}

impl NetnsExt for Netns {
    fn sys(&self) -> HostSystem {
        HostSystem {
            netns: Some(self.name.clone()),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        self.sys()
            .run(program, args, None)
            .expect("command in namespace")
    }
}

/// An interface with an address, up. A veth pair inside the namespace stands in for
/// the TUN/public devices (this kernel has no `dummy` module).
fn add_link(ns: &Netns, ifname: &str, addr: &str) {
    let peer = format!("{ifname}p");
    sh(&[
        "ip", "-n", &ns.name, "link", "add", ifname, "type", "veth", "peer", "name", &peer,
    ]);
    sh(&["ip", "-n", &ns.name, "link", "set", &peer, "up"]);
    sh(&["ip", "-n", &ns.name, "addr", "add", addr, "dev", ifname]);
    sh(&["ip", "-n", &ns.name, "link", "set", ifname, "up"]);
}

const OTHER_TABLE: &str = "table inet other {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 9 counter accept\n\t}\n}\n";

#[test]
fn vps_rules_apply_idempotently_and_remove_cleanly() {
    if !require_root("vps_rules_apply_idempotently_and_remove_cleanly") {
        return;
    }
    let ns = Netns::new();
    add_link(&ns, "ceres0", "10.77.77.1/24");
    add_link(&ns, "pub0", "203.0.113.1/24");
    ns.sys()
        .run("nft", &["-f", "-"], Some(OTHER_TABLE))
        .unwrap();
    let other_before = ns.run("nft", &["list", "table", "inet", "other"]);

    let egress = VpsEgress::new("ceres0", "pub0", "10.77.77.2".parse().unwrap());
    let state = egress.apply(&ns.sys()).unwrap();
    let first = ns.run("nft", &["list", "table", "inet", "ceres"]);
    assert!(
        first.contains("iifname \"ceres0\" oifname \"pub0\" ip saddr 10.77.77.2 tcp dport { 25, 465, 587 } masquerade"),
        "{first}"
    );
    assert!(first.contains("hook forward"), "{first}");
    let forwarding = |key: &str| ns.run("sysctl", &["-n", key]).trim().to_owned();
    assert_eq!(forwarding("net/ipv4/conf/ceres0/forwarding"), "1");
    assert_eq!(forwarding("net/ipv4/conf/pub0/forwarding"), "1");
    // Only the two interfaces: not the namespace-wide switch.
    assert_eq!(forwarding("net/ipv4/conf/all/forwarding"), "0");

    // Applying again gives the same table, once.
    let state2 = egress.apply(&ns.sys()).unwrap();
    assert_eq!(ns.run("nft", &["list", "table", "inet", "ceres"]), first);
    let tables = ns.run("nft", &["list", "tables"]);
    assert_eq!(tables.matches("table inet ceres").count(), 1, "{tables}");

    // Remove with the state of the first apply (the second saw forwarding already on).
    egress.remove(&ns.sys(), &state2).unwrap();
    egress.remove(&ns.sys(), &state).unwrap();
    let tables = ns.run("nft", &["list", "tables"]);
    assert!(!tables.contains("ceres"), "{tables}");
    assert_eq!(
        ns.run("nft", &["list", "table", "inet", "other"]),
        other_before
    );
    assert_eq!(forwarding("net/ipv4/conf/ceres0/forwarding"), "0");
    assert_eq!(forwarding("net/ipv4/conf/pub0/forwarding"), "0");
    // Removing what is not there is fine.
    egress.remove(&ns.sys(), &state).unwrap();
}

#[test]
fn home_routing_apply_idempotently_and_remove_cleanly() {
    if !require_root("home_routing_apply_idempotently_and_remove_cleanly") {
        return;
    }
    let ns = Netns::new();
    add_link(&ns, "ceres0", "10.77.77.2/24");
    // The home line: the main table's default route.
    add_link(&ns, "lan0", "198.51.100.2/24");
    ns.run("ip", &["route", "add", "default", "via", "198.51.100.1"]);
    ns.sys()
        .run("nft", &["-f", "-"], Some(OTHER_TABLE))
        .unwrap();
    let mut egress = HomeEgress::new("ceres0", "10.77.77.2".parse().unwrap());
    // The tunnel address plus a Docker-style network, which also needs masquerading.
    egress.sources.push("172.30.0.0/16".parse().unwrap());

    let rules = || {
        ns.run("ip", &["-4", "rule", "show"])
            .lines()
            .filter(|l| l.starts_with("7277:"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    egress.apply(&ns.sys()).unwrap();
    let first = rules();
    assert_eq!(first.len(), 6, "{first:?}");
    assert!(
        first
            .iter()
            .any(|r| r.contains("from 10.77.77.2 ipproto tcp dport 25 lookup 7277")),
        "{first:?}"
    );
    let routes = ns.run("ip", &["-4", "route", "show", "table", "7277"]);
    assert_eq!(routes.trim(), "default dev ceres0 scope link");
    let nat = ns.run("nft", &["list", "table", "inet", "ceres"]);
    assert!(
        nat.contains("oifname \"ceres0\" ip saddr 172.30.0.0/16 masquerade"),
        "{nat}"
    );

    egress.apply(&ns.sys()).unwrap();
    assert_eq!(rules(), first);

    // Traffic from the tunnel address to port 25 would use our table, port 80 not.
    let lookup = |dport: &str| {
        ns.run(
            "ip",
            &[
                "route",
                "get",
                "192.0.2.25",
                "from",
                "10.77.77.2",
                "ipproto",
                "tcp",
                "dport",
                dport,
            ],
        )
    };
    assert!(lookup("25").contains("table 7277"), "{}", lookup("25"));
    assert!(lookup("80").contains("dev lan0"), "{}", lookup("80"));

    egress.remove(&ns.sys()).unwrap();
    assert!(rules().is_empty());
    assert!(
        ns.run("ip", &["-4", "route", "show", "table", "7277"])
            .trim()
            .is_empty()
    );
    assert!(!ns.run("nft", &["list", "tables"]).contains("ceres"));
    assert!(
        ns.run("nft", &["list", "tables"])
            .contains("table inet other")
    );
    egress.remove(&ns.sys()).unwrap();
}

/// home ⇄ vps ⇄ internet over veth pairs; the VPS rules decide what gets out.
#[test]
fn vps_nat_lets_mail_ports_out_and_blocks_the_rest() {
    if !require_root("vps_nat_lets_mail_ports_out_and_blocks_the_rest") {
        return;
    }
    let (home, vps, net) = (Netns::new(), Netns::new(), Netns::new());
    let veth = |a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str| {
        sh(&[
            "ip", "-n", &a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
            "netns", &b.name,
        ]);
        sh(&["ip", "-n", &a.name, "addr", "add", a_addr, "dev", a_if]);
        sh(&["ip", "-n", &b.name, "addr", "add", b_addr, "dev", b_if]);
        sh(&["ip", "-n", &a.name, "link", "set", a_if, "up"]);
        sh(&["ip", "-n", &b.name, "link", "set", b_if, "up"]);
    };
    veth(
        &home,
        "ceres0",
        "10.77.77.2/24",
        &vps,
        "ceres0",
        "10.77.77.1/24",
    );
    veth(
        &vps,
        "pub0",
        "203.0.113.1/24",
        &net,
        "eth0",
        "203.0.113.2/24",
    );
    home.run("ip", &["route", "add", "default", "via", "10.77.77.1"]);

    let egress = VpsEgress::new("ceres0", "pub0", "10.77.77.2".parse().unwrap());
    let state = egress.apply(&vps.sys()).unwrap();

    let smtp = net.enter(|| TcpListener::bind("203.0.113.2:25").unwrap());
    let web = net.enter(|| TcpListener::bind("203.0.113.2:80").unwrap());
    let connect = |port: u16| {
        home.enter(|| {
            let to = SocketAddr::new("203.0.113.2".parse().unwrap(), port);
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
        })
    };
    let _c = connect(25).expect("port 25 is allowed out");
    let (_s, peer) = smtp.accept().unwrap();
    assert_eq!(
        peer.ip(),
        "203.0.113.1".parse::<IpAddr>().unwrap(),
        "masqueraded to the VPS address"
    );
    // Dropped, not rejected: the connect attempt times out.
    let err = connect(80).expect_err("port 80 must be blocked");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    web.set_nonblocking(true).unwrap();
    assert_eq!(
        web.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );

    egress.remove(&vps.sys(), &state).unwrap();
    // With the rules gone, forwarding is off again: nothing gets through at all.
    assert!(connect(25).is_err());
}
