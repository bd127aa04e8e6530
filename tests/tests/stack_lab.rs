//! A docker-mailserver layout end to end, configured only from what
//! `cerectl mailserver-config --stack docker-mailserver` prints: its env
//! lines for the VPS and home, and the files `--write DIR` writes
//! (`compose.override.yaml`, `docker-data/dms/config/user-patches.sh`,
//! `docker-data/dms/config/dovecot.cf`). The stack is Debian's Postfix and
//! Dovecot in a "container" namespace behind home, built and published the
//! way Docker would from those files, with DMS's start-up applying the
//! user's files (see `ceres_tests::dms`). Then, through the VPS:
//! - mail in on 25 (IPv4 and IPv6) reaches DMS's PROXY postscreen on 12525
//!   and is logged with the internet client's address; submission on 587
//!   with STARTTLS + AUTH too;
//! - IMAP on 993 and 143 (STARTTLS) logs in with the client's address;
//!   cleartext on 143 is refused;
//! - the container's outbound mail (its Docker network, CERES_EGRESS_FROM)
//!   leaves from the VPS's addresses, IPv4 and IPv6;
//! - `cerectl status` and `ceres-home status` show the stack probe
//!   (CERES_MAIL_STACK=docker-mailserver): every PROXY listener answers
//!   after a header;
//! - a LAN host gets no trust from a forged PROXY line on the stock port
//!   25 and cannot reach the PROXY ports; the VPS cannot reach the
//!   container's published stock ports through the tunnel;
//! - a PROXY port the override no longer publishes, and a container
//!   listener gone behind a published port, are named by `cerectl status`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use ceres_tests::dms::DmsContainer;
use ceres_tests::dovecot::login::{LoginOutcome, LoginPath, LoginTarget, imap_login};
use ceres_tests::postfix::smtp::{SmtpClient, compose};
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Ceres, Lab, addr, bin, require_root, run, sh, unique_id, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const STACK: &str = "docker-mailserver";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The `CERES_*` lines printed under `header` (up to the next other line).
fn env_section(text: &str, header: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("CERES_"))
        .map(str::to_owned)
        .collect()
}

/// `cerectl status --json`, polled until `pred` holds; the last JSON.
fn wait_status(
    ceres: &Ceres<'_>,
    dms: &DmsContainer,
    what: &str,
    pred: impl Fn(i32, &serde_json::Value) -> bool,
) -> (i32, serde_json::Value) {
    let mut last = (0, serde_json::Value::Null);
    let r = wait_until(what, WAIT, || {
        last = ceres.status_json()?;
        Ok(pred(last.0, &last.1))
    });
    if let Err(e) = r {
        panic!(
            "{e:#}\nlast status (exit {}):\n{}\ncontainer Postfix log:\n{}\ncontainer Dovecot log:\n{}",
            last.0,
            serde_json::to_string_pretty(&last.1).unwrap(),
            dms.postfix.log(),
            dms.dovecot.log()
        );
    }
    last
}

/// `ceres-home status --json` at home.
fn home_status(ceres: &Ceres<'_>) -> serde_json::Value {
    let out = run(ceres
        .lab
        .home
        .command(bin("ceres-home"))
        .arg("--config")
        .arg(&ceres.home_config)
        .arg("--state-dir")
        .arg(&ceres.home_state)
        .args(["status", "--json"]))
    .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ceres-home status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn refused(ns: &ceres_tests::Netns, to: SocketAddr) -> bool {
    ceres_tests::postfix::smtp::connect(ns, to, Duration::from_secs(2)).is_err()
}

/// Packets home's tunnel filter dropped in its forward chain.
fn forward_drops(home: &ceres_tests::Netns) -> u64 {
    let out = sh(home
        .command("nft")
        .args(["list", "chain", "inet", "ceres_tunnel", "forward"]))
    .unwrap();
    out.lines()
        .filter(|l| l.contains("drop"))
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn docker_mailserver_layout_configured_only_from_the_printed_recipe() {
    if !require_root("docker_mailserver_layout_configured_only_from_the_printed_recipe") {
        return;
    }
    let lab = Lab::new().unwrap();

    // What the user gets: the env lines and the files, nothing else.
    let out =
        sh(Command::new(bin("cerectl")).args(["mailserver-config", "--stack", STACK])).unwrap();
    let vps_env = env_section(&out, "# VPS, /etc/ceres/ceres.env");
    let mut home_env = env_section(&out, "# home, /etc/ceres/ceres.env");
    assert_eq!(vps_env.len(), 1, "{out}");
    assert!(
        home_env.contains(&format!("CERES_MAIL_STACK={STACK}")),
        "{home_env:?}"
    );
    let project = lab.path("dms");
    sh(Command::new(bin("cerectl"))
        .args(["mailserver-config", "--stack", STACK, "--write"])
        .arg(&project))
    .unwrap();
    home_env.push("CERES_PROBE_INTERVAL=1s".to_owned());
    let vps_lines: Vec<&str> = vps_env.iter().map(String::as_str).collect();
    let home_lines: Vec<&str> = home_env.iter().map(String::as_str).collect();
    let ceres = Ceres::init(&lab, &vps_lines, &home_lines).unwrap();

    // The stack, as Docker and DMS would build it from those files.
    let mut dms = DmsContainer::start(&lab, &project, &[("alice", "lab-secret-1")]).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let lan = lab.lan().unwrap();

    // The stack probe: every PROXY listener waits for a header and answers
    // after one, and the relays are the recipe's. Nothing else is wrong.
    let (code, j) = wait_status(&ceres, &dms, "the stack probe to pass", |_, j| {
        j["stack"]["ok"] == true
            && j["stack"]["listeners"]
                .as_array()
                .is_some_and(|l| l.len() == 8)
    });
    let stack = &j["stack"];
    assert_eq!(
        stack["summary"],
        "docker-mailserver: PROXY listeners reachable, Postfix 12525 answers after a header",
        "{stack}"
    );
    for l in stack["listeners"].as_array().unwrap() {
        assert_eq!(l["state"], "ready", "{l}");
        assert_eq!(l["relayed"], true, "{l}");
    }
    let smtp = &stack["listeners"][0];
    assert_eq!(
        (smtp["port"].as_u64(), smtp["public_port"].as_u64()),
        (Some(12525), Some(25))
    );
    assert!(
        smtp["detail"].as_str().unwrap().starts_with("220"),
        "{smtp}"
    );
    for r in stack["relays"].as_array().unwrap() {
        assert_eq!(r["state"], "matches", "{r}");
    }
    assert_eq!(code, 0, "{j}");
    let (_, text, _) = ceres.ctl(&["status"]).unwrap();
    assert!(
        text.contains(
            "stack       docker-mailserver: PROXY listeners reachable, Postfix 12525 answers after a header"
        ),
        "{text}"
    );
    // And locally, in the status file the agent rewrites now and then.
    let mut local = serde_json::Value::Null;
    wait_until("ceres-home status to show the stack", WAIT, || {
        local = home_status(&ceres);
        Ok(local["agent"]["stack"]["ok"] == true)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {local}"));
    assert_eq!(
        local["agent"]["stack"]["summary"], stack["summary"],
        "{local}"
    );

    // Mail in on 25, IPv4 and IPv6: postscreen's PROXY service (12525, its
    // syslog name from user-patches.sh) and smtpd log the internet client.
    let postfix = &dms.postfix;
    for (from, to) in [(addr::CLIENT, addr::VPS), (addr::CLIENT6, addr::VPS6)] {
        let id = format!("{}.in@lab.example.org", unique_id());
        let mut c = SmtpClient::connect_from(
            &lab.internet,
            ip(from),
            SocketAddr::new(ip(to), 25),
            None,
            WAIT,
        )
        .unwrap();
        let msg = compose("bob@example.org", "alice@example.com", "in", &id, "Hello.");
        let reply = c
            .send_mail(
                "client.example.org",
                "bob@example.org",
                &["alice@example.com"],
                &msg,
            )
            .unwrap();
        assert_eq!(reply.code, 250, "{}", c.transcript());
        c.quit().unwrap();
        let delivered = postfix.wait_for_message_id(&id, WAIT).unwrap();
        let received = delivered.header("Received").unwrap_or_default().to_owned();
        let literal = if from.contains(':') {
            format!("[IPv6:{from}]")
        } else {
            format!("[{from}]")
        };
        assert!(received.contains(&literal), "{received}");
        let line = postfix
            .wait_log(&format!("CONNECT from [{from}]"), WAIT)
            .unwrap();
        assert!(
            line.contains("postfix/smtpd-proxyprotocol/postscreen"),
            "{line}"
        );
        postfix
            .wait_log(&format!("connect from unknown[{from}]"), WAIT)
            .unwrap();
    }

    // Submission on 587 (DMS's submission service, copied by
    // user-patches.sh to 10587): STARTTLS, AUTH through Dovecot's SASL
    // socket, the client's address in the log.
    let id = format!("{}.sub@lab.example.org", unique_id());
    let out = run(lab.internet.command("swaks").args([
        "--server",
        addr::VPS,
        "--port",
        "587",
        "--local-interface",
        addr::CLIENT,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "lab-secret-1",
        "--from",
        "alice@example.com",
        "--to",
        "alice@example.com",
        "--header",
        &format!("Message-Id: <{id}>"),
        "--timeout",
        "20",
    ]))
    .unwrap();
    assert!(
        out.status.success(),
        "swaks: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        postfix.log()
    );
    postfix.wait_for_message_id(&id, WAIT).unwrap();
    let line = postfix.wait_log("sasl_username=alice", WAIT).unwrap();
    assert!(
        line.contains(&format!("client=unknown[{}]", addr::CLIENT)),
        "{line}"
    );

    // IMAP through the VPS: logged in with the client's address, over TLS;
    // no cleartext password from the internet.
    let vps = |port| SocketAddr::new(ip(addr::VPS), port);
    let target = |port| LoginTarget::new(&lab.internet, Some(ip(addr::CLIENT)), vps(port));
    for (port, path, want) in [
        (993, LoginPath::ImplicitTls, LoginOutcome::LoggedIn),
        (143, LoginPath::StartTls, LoginOutcome::LoggedIn),
        (143, LoginPath::Plaintext, LoginOutcome::PrivacyRequired),
    ] {
        let a = imap_login(&target(port), path, "alice", "lab-secret-1").unwrap();
        assert_eq!(a.outcome, want, "IMAP {port} {path:?}:\n{}", a.transcript);
    }
    wait_until("Dovecot's logins through the VPS", WAIT, || {
        Ok(dms
            .dovecot
            .logins()
            .iter()
            .filter(|r| r.rip == ip(addr::CLIENT) && r.tls)
            .count()
            >= 2)
    })
    .unwrap();
    let logins = dms.dovecot.logins();
    assert!(
        logins.iter().all(|r| r.rip == ip(addr::CLIENT)),
        "a relayed client was logged with another address: {logins:?}"
    );

    // Mail out from the container's network leaves from the VPS, IPv4 and
    // IPv6 (home routes CERES_EGRESS_FROM into the tunnel).
    let sink = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![ip(addr::CLIENT), ip(addr::CLIENT6)],
            "mx.remote.example",
            &["remote4.example", "remote6.example"],
        ),
    )
    .unwrap();
    // The lab has no DNS: what MX records would say, as a transport map.
    postfix
        .postconf(&[
            "-e",
            &format!(
                "transport_maps = inline:{{ remote4.example=smtp:[{}]:25, remote6.example=smtp:[{}]:25 }}",
                addr::CLIENT,
                addr::CLIENT6
            ),
        ])
        .unwrap();
    postfix.reload().unwrap();
    let mut ids = Vec::new();
    for domain in ["remote4.example", "remote6.example"] {
        let id = format!("{}.out@example.com", unique_id());
        let to = format!("bob@{domain}");
        postfix
            .sendmail(
                "alice@example.com",
                &to,
                &compose("alice@example.com", &to, "out", &id, "Outbound."),
            )
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        sink.wait_for_message_id(id, WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\ncontainer Postfix:\n{}", postfix.log()));
    }
    assert_eq!(
        sink.remote_clients_seen(),
        BTreeSet::from([ip(addr::VPS), ip(addr::VPS6)]),
        "outside, only the VPS's addresses may be seen:\n{}",
        sink.log()
    );

    // The LAN: the stock 25 (published on every address) answers without a
    // header; a forged PROXY line is a bad command, the host gets no trust.
    let lan25 = SocketAddr::new(ip(addr::HOME_LAN), 25);
    let mut c = SmtpClient::connect(&lan, lan25, None, WAIT).unwrap();
    let forged = format!("PROXY TCP4 203.0.113.99 {} 1234 25", addr::HOME_LAN);
    let reply = c.command(&forged).unwrap();
    assert!(
        reply.code >= 500,
        "a PROXY line on the stock port 25 was taken: {}",
        c.transcript()
    );
    c.expect("EHLO lan.example", 250).unwrap();
    c.expect("MAIL FROM:<spam@example.org>", 250).unwrap();
    let reply = c.command("RCPT TO:<victim@example.net>").unwrap();
    assert!(
        reply.code >= 400 && reply.text().contains("Relay access denied"),
        "a LAN host relayed with a forged header: {}",
        c.transcript()
    );
    postfix
        .wait_log(&format!("connect from unknown[{}]", addr::LAN_HOST), WAIT)
        .unwrap();
    assert!(
        !postfix.log().contains("[203.0.113.99]"),
        "the forged address was taken:\n{}",
        postfix.log()
    );
    // The PROXY ports are published on home's loopback only.
    assert_eq!(dms.compose.published.len(), 8);
    for p in &dms.compose.published {
        assert!(
            refused(&lan, SocketAddr::new(ip(addr::HOME_LAN), p.host_port)),
            "PROXY port {} reachable from the LAN",
            p.host_port
        );
    }
    // Through the tunnel the VPS reaches none of the published stock ports:
    // Docker's DNAT turns them into forwarded packets, which home's tunnel
    // filter drops (its forward chain counts them).
    let before = forward_drops(&lab.home);
    for port in [25u16, 143, 993] {
        assert!(
            refused(&lab.vps, SocketAddr::new(ip("10.77.77.2"), port)),
            "the VPS reached the container's {port} through the tunnel"
        );
    }
    assert!(
        forward_drops(&lab.home) >= before + 3,
        "the tunnel filter's forward chain did not drop the DNATed connections"
    );

    // A PROXY port the override does not publish: named, with the fix.
    dms.unpublish(10587).unwrap();
    let want = "docker-mailserver: 10587 (Postfix submission, relayed from 587) not listening — add it with docker-data/dms/config/user-patches.sh and publish it on 127.0.0.1 in compose.override.yaml (cerectl mailserver-config --stack docker-mailserver)";
    let (code, j) = wait_status(
        &ceres,
        &dms,
        "status to name the unpublished 10587",
        |_, j| {
            j["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p.as_str().unwrap_or("").starts_with(want)))
        },
    );
    assert_eq!(code, 1);
    assert_eq!(j["stack"]["ok"], false);
    let sub = j["stack"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 10587)
        .unwrap();
    assert_eq!(sub["state"], "not_listening", "{sub}");
    let (_, text, _) = ceres.ctl(&["status"]).unwrap();
    assert!(
        text.contains("10587 Postfix  submission   ← 587   NOT LISTENING"),
        "{text}"
    );

    // A container listener gone behind a published port (docker-proxy
    // accepts, the container refuses): closes at once, named too.
    dms.postfix.postconf(&["-MX", "10465/inet"]).unwrap();
    dms.postfix.reload().unwrap();
    let want = "docker-mailserver: 10465 (Postfix submissions, relayed from 465) closes every connection at once";
    let (_, j) = wait_status(&ceres, &dms, "status to name the missing 10465", |_, j| {
        j["problems"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.as_str().unwrap_or("").starts_with(want)))
    });
    let gone = j["stack"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 10465)
        .unwrap();
    assert_eq!(gone["state"], "closes_at_once", "{gone}");
    // ceres-home status names both as well.
    wait_until("ceres-home status to name both", WAIT, || {
        let l = home_status(&ceres);
        let problems = l["problems"].as_array().cloned().unwrap_or_default();
        Ok(problems
            .iter()
            .filter(|p| {
                let p = p.as_str().unwrap_or("");
                p.starts_with("docker-mailserver: 10587")
                    || p.starts_with("docker-mailserver: 10465")
            })
            .count()
            == 2)
    })
    .unwrap();
}
