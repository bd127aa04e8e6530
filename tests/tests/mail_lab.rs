//! Issue 4, end to end with real Postfix: mail in through the VPS relay with
//! the real client address (IPv4 and IPv6), mail out from the VPS address,
//! only the mail ports out, and 421 at once when home is away.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ceres_tests::postfix::smtp::{SmtpClient, compose, connect, connect_from, wait_banner};
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Ceres, Lab, addr, echo_server, require_root, unique_id, wait_until};

const HOME_TUN: &str = "10.77.77.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Delivers one message from the internet client to the VPS's public
/// address, port 25; returns its Message-ID.
fn send_inbound(lab: &Lab, from_ip: &str, to_ip: &str) -> String {
    let id = format!("{}@client.example", unique_id());
    let msg = compose(
        "alice@client.example",
        "postmaster@example.com",
        "hello through CERES",
        &id,
        "one line\n",
    );
    let server = SocketAddr::new(ip(to_ip), 25);
    let mut client = SmtpClient::connect_from(
        &lab.internet,
        ip(from_ip),
        server,
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    let reply = client
        .send_mail(
            "client.example",
            "alice@client.example",
            &["postmaster@example.com"],
            &msg,
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{}", client.transcript());
    client.quit().unwrap();
    id
}

#[test]
fn mail_in_keeps_the_client_ip_mail_out_leaves_from_the_vps_and_home_down_gets_421() {
    if !require_root(
        "mail_in_keeps_the_client_ip_mail_out_leaves_from_the_vps_and_home_down_gets_421",
    ) {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &[], &["CERES_PROBE_INTERVAL=1s"]).unwrap();
    let (_vps, mut home) = ceres.up().unwrap();

    // The real mail server at home: postscreen expects PROXY on 25; it sends
    // outbound mail from the tunnel address (smtp_bind_address), to a fixed
    // internet-side host (no DNS in the lab).
    // Both families: postscreen must understand the TCP6 PROXY header of IPv6 clients.
    let mut opts = PostfixOptions::home(vec![ip("127.0.0.1"), ip("::1")]);
    // Listening on every address, as a stock Postfix does: home's forwarders
    // listen on ports of their own, so nothing clashes with 0.0.0.0:25.
    opts.extra_main_cf.push("inet_interfaces = all".into());
    opts.smtp_bind_address = Some(HOME_TUN.parse().unwrap());
    opts.transport = vec![("remote.example".into(), format!("[{}]:25", addr::CLIENT))];
    let home_mx = Postfix::start(&lab.home, opts).unwrap();
    let remote_mx = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![ip(addr::CLIENT)],
            "mx.remote.example",
            &["remote.example"],
        ),
    )
    .unwrap();

    // Wait until the tunnel carries the relay (home answers through it).
    wait_banner(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS), 25),
        Duration::from_secs(30),
    )
    .unwrap();

    // Inbound over IPv4: delivered, and Postfix saw the internet client.
    let id4 = send_inbound(&lab, addr::CLIENT, addr::VPS);
    let msg = home_mx
        .wait_for_message_id(&id4, Duration::from_secs(30))
        .unwrap();
    assert!(msg.content.contains("hello through CERES"));
    home_mx
        .wait_log(
            &format!("CONNECT from [{}]", addr::CLIENT),
            Duration::from_secs(10),
        )
        .unwrap();
    // Every relayed connection (PROXY destination = the VPS) shows an outside
    // source, never the tunnel or the forwarder's loopback address.
    let log = home_mx.log();
    for line in log
        .lines()
        .filter(|l| l.contains("CONNECT from") && l.contains(&format!("to [{}]", addr::VPS)))
    {
        assert!(
            !line.contains("[10.77.77.") && !line.contains("[127.0.0.1]"),
            "relayed connection without the real client: {line}"
        );
    }

    // Inbound over IPv6: a TCP6 PROXY header, the IPv6 client in the log.
    let id6 = send_inbound(&lab, addr::CLIENT6, addr::VPS6);
    home_mx
        .wait_for_message_id(&id6, Duration::from_secs(30))
        .unwrap();
    home_mx
        .wait_log(
            &format!("CONNECT from [{}]", addr::CLIENT6),
            Duration::from_secs(10),
        )
        .unwrap();

    // Outbound: home's Postfix sends to the internet; the far side sees the VPS address.
    let out_id = format!("{}@example.com", unique_id());
    home_mx
        .sendmail(
            "postmaster@example.com",
            "bob@remote.example",
            &compose(
                "postmaster@example.com",
                "bob@remote.example",
                "out via the VPS",
                &out_id,
                "hi\n",
            ),
        )
        .unwrap();
    remote_mx
        .wait_for_message_id(&out_id, Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nhome log:\n{}\nremote log:\n{}",
                home_mx.log(),
                remote_mx.log()
            )
        });
    let seen = remote_mx.remote_clients_seen();
    assert!(
        seen.contains(&ip(addr::VPS)),
        "remote MX saw {seen:?}, not the VPS"
    );
    assert!(
        !seen.contains(&ip(addr::HOME)),
        "remote MX saw home's own address: {seen:?}"
    );

    // Only the mail ports leave through the VPS: force a tcp/80 attempt into
    // the tunnel (a route for the remote host via the tunnel device) and it
    // must fail, while tcp/25 by the same route still works.
    let _web = echo_server(&lab.internet, addr::CLIENT, 80, lab.dir.path()).unwrap();
    lab.home
        .ip(&[
            "route",
            "add",
            &format!("{}/32", addr::CLIENT),
            "dev",
            &lab.home_tun,
            "src",
            HOME_TUN,
        ])
        .unwrap();
    let to80 = connect_from(
        &lab.home,
        ip(HOME_TUN),
        SocketAddr::new(ip(addr::CLIENT), 80),
        Duration::from_secs(3),
    );
    assert!(to80.is_err(), "tcp/80 through the tunnel was not blocked");
    let to25 = connect_from(
        &lab.home,
        ip(HOME_TUN),
        SocketAddr::new(ip(addr::CLIENT), 25),
        Duration::from_secs(5),
    );
    assert!(
        to25.is_ok(),
        "tcp/25 through the tunnel should pass: {:?}",
        to25.err()
    );
    lab.home
        .ip(&[
            "route",
            "del",
            &format!("{}/32", addr::CLIENT),
            "dev",
            &lab.home_tun,
        ])
        .unwrap();

    // Home's probes see Postfix on the PROXY port of 25 (10025, loopback)
    // expecting a PROXY header, as the relay sends.
    ceres
        .wait_mail_server_reachable(Some(10025), Duration::from_secs(20))
        .unwrap();
    let (code, j) = ceres.status_json().unwrap();
    let p25 = j["mail_server"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 10025)
        .unwrap()
        .clone();
    assert_eq!(p25["expects_proxy"], true, "probe of postscreen: {p25}");
    assert!(
        !j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("PROXY")),
        "{j}"
    );
    let _ = code;

    // Security matrix, data plane:
    // (1) a PROXY header sent from the internet is not trusted: the relay puts
    //     its own first, so Postfix sees the real client and the forged line
    //     as garbage.
    let forged = ceres_tests::postfix::smtp::proxy_v1(
        "192.0.2.99:1234".parse().unwrap(),
        "203.0.113.10:25".parse().unwrap(),
    );
    let stream = connect(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS), 25),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut c = SmtpClient::new(stream, Duration::from_secs(10)).unwrap();
    c.send_raw(&forged).unwrap();
    let _ = c.read_reply();
    drop(c);
    // The connection came from the router's address on the VPS link.
    home_mx
        .wait_log("CONNECT from [203.0.113.1]", Duration::from_secs(10))
        .unwrap();
    assert!(
        !home_mx.log().contains("CONNECT from [192.0.2.99]")
            && !home_mx.log().contains("client=unknown[192.0.2.99]"),
        "a forged PROXY header was trusted:\n{}",
        home_mx.log()
    );
    // (2) the relay is not an open proxy: ports not in CERES_RELAYS are closed.
    assert!(
        connect(
            &lab.internet,
            SocketAddr::new(ip(addr::VPS), 2525),
            Duration::from_secs(3)
        )
        .is_err()
    );
    // (3) nothing from the tunnel reaches the VPS's own services (control port).
    let to_control = connect_from(
        &lab.home,
        ip(HOME_TUN),
        SocketAddr::new(ip("10.77.77.1"), 7443),
        Duration::from_secs(3),
    );
    assert!(
        to_control.is_err(),
        "the VPS control port answered through the tunnel"
    );

    // Status has the relay counters.
    let (_, json) = ceres.status_json().unwrap();
    let p25 = json["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 25)
        .unwrap()
        .clone();
    assert!(
        p25["total"].as_u64().unwrap() >= 2 && p25["bytes_in"].as_u64().unwrap() > 0,
        "{p25}"
    );
    assert_eq!(p25["proxy"], "proxy-v2");
    assert_eq!(json["egress"]["vps"]["enabled"], true, "{json}");
    assert_eq!(json["egress"]["home"]["enabled"], true, "{json}");

    // Home agent stopped: 421 on 25 within 100 ms, 993 closes at once.
    home.terminate(Duration::from_secs(10)).unwrap();
    ceres
        .wait_home_connected(false, Duration::from_secs(20))
        .unwrap();
    let t0 = Instant::now();
    let stream = connect(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS), 25),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut c = SmtpClient::new(stream, Duration::from_secs(5)).unwrap();
    let reply = c.read_reply().unwrap();
    let took = t0.elapsed();
    assert_eq!(reply.code, 421, "{}", c.transcript());
    assert!(
        reply.text().contains("4.4.2") && reply.text().contains("mail.example.com"),
        "{}",
        reply.text()
    );
    eprintln!("421 after {took:?}");
    assert!(took < Duration::from_millis(100), "421 took {took:?}");
    let t0 = Instant::now();
    let mut s = connect(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS), 993),
        Duration::from_secs(5),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let took = t0.elapsed();
    assert_eq!(n, 0, "993 sent data while home is away");
    assert!(
        took < Duration::from_millis(100),
        "993 took {took:?} to close"
    );

    // No key, PSK or token in any log of the run.
    ceres_tests::assert_no_secrets(
        &ceres_tests::lab_secrets(&ceres),
        &[
            ("vps log", _vps.log_text()),
            ("home log", home.log_text()),
            ("home postfix", home_mx.log()),
        ],
    );
}

/// A VPS that also runs Docker: Docker sets the forward chain of `ip filter`
/// to `policy drop`, which drops home's outbound mail after CERES's own table
/// accepted it. The VPS agent says so in `cerectl status`, with the rules
/// that fix it; applying exactly those rules lets mail out again and clears
/// the problem.
#[test]
fn a_default_drop_forward_chain_on_the_vps_is_reported_with_a_fix_that_works() {
    if !require_root("a_default_drop_forward_chain_on_the_vps_is_reported_with_a_fix_that_works") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25/proxy-v2"], &[]).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let _mx = echo_server(&lab.internet, addr::CLIENT, 25, lab.dir.path()).unwrap();
    let out25 = || {
        connect_from(
            &lab.home,
            ip(HOME_TUN),
            SocketAddr::new(ip(addr::CLIENT), 25),
            Duration::from_secs(3),
        )
    };
    wait_until(
        "outbound 25 through the VPS",
        Duration::from_secs(20),
        || Ok(out25().is_ok()),
    )
    .unwrap();

    // What Docker does to the VPS's firewall.
    lab.vps
        .command("nft")
        .args(["add table ip filter"])
        .status()
        .unwrap();
    let added = lab
        .vps
        .command("nft")
        .arg("add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }")
        .status()
        .unwrap();
    assert!(added.success());
    assert!(out25().is_err(), "the drop chain did not drop egress");
    let (code, j) = ceres.status_json().unwrap();
    assert_eq!(code, 1, "{j:#}");
    let advice = j["egress"]["vps"]["error"].as_str().unwrap().to_owned();
    assert!(
        advice.contains("chain FORWARD of table ip filter drops forwarded traffic"),
        "{advice}"
    );
    assert!(
        j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("ip filter")),
        "{j:#}"
    );
    let (_, text, _) = ceres.ctl(&["status"]).unwrap();
    println!("{text}");
    assert!(text.contains("blocked by another firewall table"), "{text}");

    // The advice's nft commands, run as written.
    let fixes: Vec<&str> = advice
        .split('`')
        .filter(|s| s.starts_with("nft insert rule"))
        .collect();
    assert_eq!(fixes.len(), 2, "{advice}");
    for fix in fixes {
        let ok = lab.vps.command("sh").args(["-c", fix]).status().unwrap();
        assert!(ok.success(), "{fix}");
    }
    wait_until("outbound 25 after the fix", Duration::from_secs(10), || {
        Ok(out25().is_ok())
    })
    .unwrap();
    let (code, j) = ceres.status_json().unwrap();
    assert!(j["egress"]["vps"]["error"].is_null(), "{j:#}");
    assert_eq!(code, 0, "{j:#}");
}

/// A home server with a default-drop input firewall (ufw, firewalld, a
/// hand-written nftables ruleset) that does not accept the tunnel: the VPS
/// cannot reach the forwarders, relayed connections get 421. The home agent
/// reports it and `cerectl status` shows the rule that fixes it; that rule,
/// run as printed, makes the relay work again and clears the problem.
#[test]
fn a_home_firewall_dropping_the_tunnel_is_reported_with_a_fix_that_works() {
    if !require_root("a_home_firewall_dropping_the_tunnel_is_reported_with_a_fix_that_works") {
        return;
    }
    let lab = Lab::new().unwrap();
    // The firewall is there from boot, as ufw or firewalld would be, so
    // connection tracking knows the agents' own flows (the control session,
    // WireGuard's UDP) from their first packet. It keeps replies and
    // loopback; for now it accepts everything else too.
    let nft = |rule: &str| {
        let ok = lab.home.command("nft").arg(rule).status().unwrap();
        assert!(ok.success(), "{rule}");
    };
    nft("add table inet homefw");
    nft("add chain inet homefw input { type filter hook input priority filter; policy accept; }");
    nft("add rule inet homefw input ct state established,related accept");
    nft("add rule inet homefw input iif lo accept");
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25"], &[]).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let _mail = echo_server(&lab.home, "127.0.0.1", 25, lab.dir.path()).unwrap();
    let relayed = || ceres_tests::echo_roundtrip(&lab.internet, addr::VPS, 25, "ping\n");
    wait_until("the relay reaching home", Duration::from_secs(20), relayed).unwrap();

    // Now it drops every new connection in.
    nft("add chain inet homefw input { policy drop; }");
    assert!(!relayed().unwrap_or(false), "the firewall did not block");
    let problem = |j: &serde_json::Value| -> Option<String> {
        j["problems"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_str())
            .find(|p| p.contains("relayed connections cannot reach home"))
            .map(str::to_owned)
    };
    let mut advice = String::new();
    wait_until(
        "the firewall in home's report",
        Duration::from_secs(10),
        || {
            let (code, j) = ceres.status_json()?;
            advice = problem(&j).unwrap_or_default();
            Ok(code == 1 && !advice.is_empty())
        },
    )
    .unwrap();
    println!("{advice}");
    assert!(
        advice.contains("chain input of table inet homefw drops incoming connections"),
        "{advice}"
    );

    // The advice's nft command, run as written.
    let fix = advice
        .split('`')
        .find(|s| s.starts_with("nft insert rule"))
        .unwrap();
    assert_eq!(
        fix,
        format!(
            "nft insert rule inet homefw input iifname \"{}\" accept",
            lab.home_tun
        )
    );
    let ok = lab.home.command("sh").args(["-c", fix]).status().unwrap();
    assert!(ok.success(), "{fix}");
    wait_until(
        "the relay reaching home after the fix",
        Duration::from_secs(10),
        relayed,
    )
    .unwrap();
    wait_until(
        "the problem gone from status",
        Duration::from_secs(10),
        || {
            let (code, j) = ceres.status_json()?;
            Ok(code == 0 && problem(&j).is_none())
        },
    )
    .unwrap();
}
