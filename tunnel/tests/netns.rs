//! Namespace tests of the real `ceres-wg` binary: two engines, interop with
//! wireguard-go, `wg show`, bad input under load, and roaming. Need root.

// Helpers below the tests panic to fail the test.
#![allow(clippy::unwrap_used)]

mod lab;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use lab::*;
use rand::RngCore as _;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two engines, IPv6 outside and inside the tunnel, carry TCP in both directions.
#[test]
fn two_engines_carry_tcp_both_ways() {
    if !require_root("two_engines_carry_tcp_both_ways") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uapi = dir.path().join("uapi");
    let (a, b) = (Netns::new(), Netns::new());
    veth(&a, "2001:db8:1::1/64", &b, "2001:db8:1::2/64");
    let (ka, kb) = (keys(dir.path(), "a"), keys(dir.path(), "b"));
    let ea = engine(
        &a,
        dir.path(),
        &uapi,
        &ka,
        "2001:db8:77::1/64",
        &[
            "--listen-port",
            "51820",
            "--peer-public-key",
            &kb.public_b64,
            "--allowed-ips",
            "2001:db8:77::2/128",
        ],
    );
    let eb = engine(
        &b,
        dir.path(),
        &uapi,
        &kb,
        "2001:db8:77::2/64",
        &[
            "--peer-public-key",
            &ka.public_b64,
            "--allowed-ips",
            "2001:db8:77::1/128",
            "--endpoint",
            "[2001:db8:1::1]:51820",
            "--persistent-keepalive",
            "25",
        ],
    );
    tcp_check(&a, ip("2001:db8:77::1"), &b, 2 << 20);
    tcp_check(&b, ip("2001:db8:77::2"), &a, 2 << 20);

    let sa = stats(&ea);
    let sb = stats(&eb);
    assert!(sa["rx_packets"].as_u64().unwrap() > 100, "{sa}");
    assert!(sb["rx_packets"].as_u64().unwrap() > 100, "{sb}");
    assert!(sa["last_handshake"].is_u64(), "{sa}");
    // A learnt B's IPv6 endpoint from its packets.
    assert_eq!(
        sa["endpoint"].as_str().unwrap(),
        format!("[2001:db8:1::2]:{}", eb.listen_port)
    );
    assert_eq!(sa["dropped"]["garbage"], 0);
}

/// Our engine on one side, Debian's wireguard-go configured with `wg set` on
/// the other: TCP both ways.
#[test]
fn interop_with_wireguard_go() {
    if !require_root("interop_with_wireguard_go") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uapi = dir.path().join("uapi");
    let (a, b) = (Netns::new(), Netns::new());
    veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let (ka, kb) = (keys(dir.path(), "a"), keys(dir.path(), "b"));

    // wireguard-go's socket goes to the shared /var/run/wireguard: the
    // interface name is unique per test, and Proc's drop stops it.
    let gname = format!("gw{}", unique_id());
    let _wggo = Proc {
        child: b
            .cmd("wireguard-go")
            .args(["-f", &gname])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wireguard-go (apt-get install wireguard-go)"),
        name: gname.clone(),
    };
    let gsock = std::path::PathBuf::from(format!("/var/run/wireguard/{gname}.sock"));
    let _cleanup = RemoveOnDrop(gsock.clone());
    wait_until("wireguard-go socket", Duration::from_secs(10), || {
        Ok(gsock.exists())
    })
    .unwrap();
    let bkey = kb.file.to_str().unwrap().to_string();
    sh(&[
        "ip",
        "netns",
        "exec",
        &b.name,
        "wg",
        "set",
        &gname,
        "private-key",
        &bkey,
        "listen-port",
        "51820",
        "peer",
        &ka.public_b64,
        "allowed-ips",
        "198.51.100.1/32",
    ]);
    b.ip(&["addr", "add", "198.51.100.2/24", "dev", &gname]);
    b.ip(&["link", "set", &gname, "mtu", "1420", "up"]);

    let ea = engine(
        &a,
        dir.path(),
        &uapi,
        &ka,
        "198.51.100.1/24",
        &[
            "--peer-public-key",
            &kb.public_b64,
            "--allowed-ips",
            "198.51.100.2/32",
            "--endpoint",
            "192.0.2.2:51820",
            "--persistent-keepalive",
            "25",
        ],
    );
    tcp_check(&b, ip("198.51.100.2"), &a, 2 << 20);
    tcp_check(&a, ip("198.51.100.1"), &b, 2 << 20);

    // wireguard-go agrees a handshake happened with our key.
    let dump = sh_out(&[
        "ip",
        "netns",
        "exec",
        &b.name,
        "wg",
        "show",
        &gname,
        "latest-handshakes",
    ]);
    let (peer, ts) = dump.trim().split_once('\t').expect("one peer line");
    assert_eq!(peer, ka.public_b64);
    assert!(ts.parse::<u64>().unwrap() > 0, "{dump}");
    assert!(stats(&ea)["rx_packets"].as_u64().unwrap() > 100);
}

/// `wg show IFNAME` reads our interface through the UAPI socket in the
/// standard directory.
#[test]
fn wg_show_lists_our_interface() {
    if !require_root("wg_show_lists_our_interface") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let std_dir = std::path::PathBuf::from("/var/run/wireguard");
    let private_dir = dir.path().join("uapi");
    let (a, b) = (Netns::new(), Netns::new());
    veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let (ka, kb) = (keys(dir.path(), "a"), keys(dir.path(), "b"));
    let ea = engine(
        &a,
        dir.path(),
        &std_dir,
        &ka,
        "198.51.100.1/24",
        &[
            "--listen-port",
            "51820",
            "--peer-public-key",
            &kb.public_b64,
            "--allowed-ips",
            "198.51.100.2/32",
        ],
    );
    let _cleanup = RemoveOnDrop(ea.uapi.clone());
    let _eb = engine(
        &b,
        dir.path(),
        &private_dir,
        &kb,
        "198.51.100.2/24",
        &[
            "--peer-public-key",
            &ka.public_b64,
            "--allowed-ips",
            "198.51.100.1/32",
            "--endpoint",
            "192.0.2.1:51820",
            "--persistent-keepalive",
            "25",
        ],
    );
    tcp_check(&a, ip("198.51.100.1"), &b, 64 << 10);

    let out = sh_out(&["wg", "show", &ea.ifname]);
    assert!(out.contains(&format!("interface: {}", ea.ifname)), "{out}");
    assert!(
        out.contains(&format!("public key: {}", ka.public_b64)),
        "{out}"
    );
    assert!(out.contains("listening port: 51820"), "{out}");
    assert!(out.contains(&format!("peer: {}", kb.public_b64)), "{out}");
    assert!(out.contains("endpoint: 192.0.2.2:"), "{out}");
    assert!(out.contains("allowed ips: 198.51.100.2/32"), "{out}");
    assert!(out.contains("latest handshake:"), "{out}");
    assert!(out.contains("transfer:"), "{out}");
    // The machine-readable form too.
    let dump = sh_out(&["wg", "show", &ea.ifname, "dump"]);
    let peer_line = dump.lines().nth(1).expect("peer line");
    let f: Vec<&str> = peer_line.split('\t').collect();
    assert_eq!(f[0], kb.public_b64);
    assert!(
        f[4].parse::<u64>().unwrap() > 0,
        "handshake time in {peer_line}"
    );
    assert!(f[5].parse::<u64>().unwrap() > 0, "rx bytes in {peer_line}");
}

/// Removes a file on drop (sockets in the shared /var/run/wireguard).
struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn handshake_init(secret: [u8; 32], peer_public_b64: &str) -> Vec<u8> {
    let peer: ceres_tunnel::PublicKey = peer_public_b64.parse().unwrap();
    let mut t = Tunn::new(
        x25519::StaticSecret::from(secret),
        x25519::PublicKey::from(peer.0),
        None,
        None,
        rand::random::<u32>() >> 8,
        None,
    );
    let mut buf = [0u8; 256];
    match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

/// Garbage, truncated and replayed datagrams, an unknown peer key and a
/// handshake flood from a third namespace, all while TCP runs: the tunnel
/// keeps working and the drop counters rise.
#[test]
fn bad_input_is_dropped_and_counted() {
    if !require_root("bad_input_is_dropped_and_counted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uapi = dir.path().join("uapi");
    let (a, b, c) = (Netns::new(), Netns::new(), Netns::new());
    veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    veth(&a, "203.0.113.1/24", &c, "203.0.113.2/24");
    let (ka, kb) = (keys(dir.path(), "a"), keys(dir.path(), "b"));
    let ea = engine(
        &a,
        dir.path(),
        &uapi,
        &ka,
        "198.51.100.1/24",
        &[
            "--listen-port",
            "51820",
            "--peer-public-key",
            &kb.public_b64,
            "--allowed-ips",
            "198.51.100.2/32",
        ],
    );
    // Made now, before B's engine makes its own: a genuine initiation from B's
    // key whose timestamp will be older than the session's — a replay.
    let old_init = handshake_init(kb.secret, &ka.public_b64);
    let eb = engine(
        &b,
        dir.path(),
        &uapi,
        &kb,
        "198.51.100.2/24",
        &[
            "--peer-public-key",
            &ka.public_b64,
            "--allowed-ips",
            "198.51.100.1/32",
            "--endpoint",
            "192.0.2.1:51820",
            "--persistent-keepalive",
            "1",
        ],
    );
    let server = echo_server(&a, ip("198.51.100.1"));
    let mut stream = connect(&b, server);
    echo_round(&mut stream, 256 << 10);
    let b_endpoint = stats(&ea)["endpoint"].as_str().unwrap().to_string();

    let target: SocketAddr = "203.0.113.1:51820".parse().unwrap();
    let attacker = c.run(|| UdpSocket::bind("203.0.113.2:0").unwrap());
    let mut rng = rand::rng();
    // Garbage of many sizes, and data messages for sessions that do not exist.
    for len in (0..300).step_by(7) {
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        attacker.send_to(&d, target).unwrap();
        let mut data = vec![0u8; 32 + len];
        rng.fill_bytes(&mut data);
        data[..4].copy_from_slice(&4u32.to_le_bytes());
        attacker.send_to(&data, target).unwrap();
    }
    // Truncated handshake initiation.
    attacker.send_to(&old_init[..100], target).unwrap();
    // Replayed (stale) initiation.
    attacker.send_to(&old_init, target).unwrap();
    // A peer whose key A does not know (but who knows A's public key).
    let mut stranger = [0u8; 32];
    rng.fill_bytes(&mut stranger);
    attacker
        .send_to(&handshake_init(stranger, &ka.public_b64), target)
        .unwrap();
    // An initiation for somebody else's key (bad MAC1).
    let mut other_pub = [0u8; 32];
    rng.fill_bytes(&mut other_pub);
    attacker
        .send_to(&handshake_init(stranger, &b64(&other_pub)), target)
        .unwrap();

    wait_until("unknown key counted", Duration::from_secs(5), || {
        let d = &stats(&ea)["dropped"];
        Ok(d["unknown_key"].as_u64().unwrap() >= 1
            && d["replay"].as_u64().unwrap() >= 1
            && d["bad_mac"].as_u64().unwrap() >= 1)
    })
    .unwrap();
    echo_round(&mut stream, 256 << 10);

    // Handshake flood: valid-looking initiations from unknown keys, far over
    // the rate limit, interleaved with TCP traffic through the tunnel.
    let flood: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let mut k = [0u8; 32];
            rand::rng().fill_bytes(&mut k);
            handshake_init(k, &ka.public_b64)
        })
        .collect();
    for round in 0..5 {
        for _ in 0..5 {
            for p in &flood {
                let _ = attacker.send_to(p, target);
            }
        }
        echo_round(&mut stream, 128 << 10);
        let _ = round;
    }
    // A new connection also works during the flood.
    for p in &flood {
        let _ = attacker.send_to(p, target);
    }
    tcp_check(&a, ip("198.51.100.1"), &b, 64 << 10);

    let s = stats(&ea);
    let d = &s["dropped"];
    assert!(d["garbage"].as_u64().unwrap() >= 40, "{s}");
    assert!(d["bad_session"].as_u64().unwrap() >= 40, "{s}");
    assert!(d["replay"].as_u64().unwrap() >= 1, "{s}");
    assert!(d["unknown_key"].as_u64().unwrap() >= 1, "{s}");
    assert!(d["under_load"].as_u64().unwrap() >= 100, "{s}");
    // The attacker never became the endpoint.
    assert_eq!(s["endpoint"].as_str().unwrap(), b_endpoint, "{s}");
    assert!(stats(&eb)["rx_packets"].as_u64().unwrap() > 0);
}

/// Home (B, configured from a wg-style file, with a pre-shared key on both
/// sides) changes its address: A follows the new source address and the
/// same TCP connection carries on, then new connections work both ways.
#[test]
fn roaming_follows_the_peer() {
    if !require_root("roaming_follows_the_peer") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uapi = dir.path().join("uapi");
    let (a, b) = (Netns::new(), Netns::new());
    let (_va, vb) = veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let (ka, kb) = (keys(dir.path(), "a"), keys(dir.path(), "b"));
    let psk = dir.path().join("psk");
    std::fs::write(
        &psk,
        format!("{}\n", ceres_tunnel::PresharedKey::generate().to_base64()),
    )
    .unwrap();
    let ea = engine(
        &a,
        dir.path(),
        &uapi,
        &ka,
        "198.51.100.1/24",
        &[
            "--listen-port",
            "51820",
            "--peer-public-key",
            &kb.public_b64,
            "--allowed-ips",
            "198.51.100.2/32",
            "--preshared-key-file",
            psk.to_str().unwrap(),
        ],
    );
    // B's peer comes from a wg-style config file (with the same PSK).
    let conf = dir.path().join("b.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nMTU = 1400\n\n[Peer] # the VPS\nPublicKey = {}\nPresharedKeyFile = {}\n\
             Endpoint = 192.0.2.1:51820\nAllowedIPs = 198.51.100.1/32\nPersistentKeepalive = 1\n",
            ka.public_b64,
            psk.display()
        ),
    )
    .unwrap();
    let eb = engine(
        &b,
        dir.path(),
        &uapi,
        &kb,
        "198.51.100.2/24",
        &["--config", conf.to_str().unwrap()],
    );
    let server = echo_server(&a, ip("198.51.100.1"));
    let mut stream = connect(&b, server);
    echo_round(&mut stream, 256 << 10);
    let port = eb.listen_port;
    assert_eq!(
        stats(&ea)["endpoint"].as_str().unwrap(),
        format!("192.0.2.2:{port}")
    );

    // Move B to a new address, as when a home line gets a new IP. (Delete
    // first: deleting a primary address also deletes its secondaries.)
    b.ip(&["addr", "del", "192.0.2.2/24", "dev", &vb]);
    b.ip(&["addr", "add", "192.0.2.3/24", "dev", &vb]);

    echo_round(&mut stream, 256 << 10);
    assert_eq!(
        stats(&ea)["endpoint"].as_str().unwrap(),
        format!("192.0.2.3:{port}")
    );
    tcp_check(&b, ip("198.51.100.2"), &a, 256 << 10);
    tcp_check(&a, ip("198.51.100.1"), &b, 256 << 10);
}

/// The VPS side restarts with the same key (state kept): home notices the
/// dead session by itself (no reply to its data within WireGuard's 15 s
/// keepalive + rekey timeout), handshakes again and traffic resumes, with no
/// action on the home side.
#[test]
fn peer_restart_is_survived() {
    if !require_root("peer_restart_is_survived") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uapi = dir.path().join("uapi");
    let (a, b) = (Netns::new(), Netns::new());
    veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let (ka, kb) = (keys(dir.path(), "a"), keys(dir.path(), "b"));
    let vps_flags = [
        "--listen-port",
        "51820",
        "--peer-public-key",
        &kb.public_b64,
        "--allowed-ips",
        "198.51.100.2/32",
    ];
    let ea = engine(&a, dir.path(), &uapi, &ka, "198.51.100.1/24", &vps_flags);
    let eb = engine(
        &b,
        dir.path(),
        &uapi,
        &kb,
        "198.51.100.2/24",
        &[
            "--peer-public-key",
            &ka.public_b64,
            "--allowed-ips",
            "198.51.100.1/32",
            "--endpoint",
            "192.0.2.1:51820",
            "--persistent-keepalive",
            "25",
        ],
    );
    tcp_check(&a, ip("198.51.100.1"), &b, 64 << 10);
    drop(ea);
    let ea2 = engine(&a, dir.path(), &uapi, &ka, "198.51.100.1/24", &vps_flags);
    let server = echo_server(&a, ip("198.51.100.1"));
    let mut s = connect_within(&b, server, Duration::from_secs(40));
    echo_round(&mut s, 256 << 10);
    let st = stats(&ea2);
    assert!(st["last_handshake"].is_u64(), "{st}");
    assert!(stats(&eb)["rx_packets"].as_u64().unwrap() > 0);
}
