//! Safe by default at the mail server, with the real software: home runs
//! Debian's Postfix, Dovecot (imapd, pop3d, managesieved) and nginx with
//! their **stock** configurations, changed only by
//! `cerectl mailserver-config postfix|dovecot|nginx --apply`. Then, through
//! the VPS:
//! - mail in on 25 over IPv4 and IPv6 is logged with the internet client's
//!   address; submission on 587 with STARTTLS + AUTH works and logs it too;
//! - IMAP on 993 and 143 (STARTTLS) and POP3 on 995 log the client's address
//!   (`rip=`), and a cleartext LOGIN on 143 or USER/PASS on 110 is refused;
//! - nginx logs the client's address on 80;
//! - home's Postfix delivers to an IPv6-only server outside from the VPS's
//!   public IPv6 (never home's own), and the VPS reaches nothing at home
//!   through the tunnel but the forwarders;
//! - a host on the home LAN that sends `PROXY TCP4 127.0.0.1 ...` to home's
//!   LAN address on 25 gets no trust (cannot relay), gets the banner without
//!   a header, and cannot reach the PROXY ports at all;
//! - `--check` passes on the applied configuration and names each unsafe
//!   variant; a second `--apply` changes nothing; a refused edit is rolled
//!   back;
//! - with `CERES_MAIL_STACK=postfix-dovecot`, the home agent's stack probe
//!   finds every relayed PROXY listener answering after a header.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ceres_tests::dovecot::Dovecot;
use ceres_tests::dovecot::login::{LoginOutcome, LoginPath, LoginTarget, imap_login, pop3_login};
use ceres_tests::nginx::{Nginx, http_get};
use ceres_tests::postfix::smtp::{SmtpClient, compose};
use ceres_tests::postfix::{Postfix, PostfixOptions, StockSite};
use ceres_tests::{Ceres, Lab, addr, bin, require_root, run, unique_id, wait_until};

const WAIT: Duration = Duration::from_secs(30);
/// Every default relay but 443: the stock nginx site serves no TLS, and a
/// relay to nothing is what `--check` would (rightly) report.
const RELAYS: &str = "CERES_RELAYS=25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,80/proxy-v2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `cerectl --dir CTL mailserver-config ARGS` run at home: (code, stdout, stderr).
fn mailconfig(ceres: &Ceres<'_>, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = ceres.lab.home.command(bin("cerectl"));
    cmd.arg("--dir")
        .arg(&ceres.ctl_dir)
        .arg("mailserver-config")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn stock_postfix_dovecot_nginx_configured_only_by_apply_are_safe() {
    if !require_root("stock_postfix_dovecot_nginx_configured_only_by_apply_are_safe") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(
        &lab,
        &[RELAYS],
        &[
            "CERES_PROBE_INTERVAL=1s",
            "CERES_MAIL_STACK=postfix-dovecot",
        ],
    )
    .unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let lan = lab.lan().unwrap();

    // The user's mail server: Debian's packages, stock configuration.
    let postfix = Postfix::start_stock(&lab.home, StockSite::default()).unwrap();
    let dovecot = Dovecot::start_stock(&lab.home, &[("alice", "lab-secret-1")]).unwrap();
    let nginx = Nginx::start_stock(&lab.home).unwrap();
    let (pf_dir, pf_queue) = (postfix.config_dir(), postfix.queue_dir());
    let (dv_dir, ng_dir) = (dovecot.config_dir(), nginx.config_dir());

    // Before: --check names what is missing, exit 1.
    let (code, out, err) = mailconfig(
        &ceres,
        &["postfix", "--check", "--config-dir", p(&pf_dir)],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("MISSING master.cf 127.0.0.1:10025/inet"),
        "{out}"
    );

    // A refused edit is rolled back: every file as it was.
    let files = |dir: &Path, names: &[&str]| -> Vec<Option<Vec<u8>>> {
        names
            .iter()
            .map(|n| std::fs::read(dir.join(n)).ok())
            .collect()
    };
    for (target, dir, names) in [
        ("postfix", &pf_dir, &["main.cf", "master.cf"][..]),
        ("dovecot", &dv_dir, &["conf.d/99-ceres.conf"][..]),
        (
            "nginx",
            &ng_dir,
            &["conf.d/ceres.conf", "sites-available/default"][..],
        ),
    ] {
        let before = files(dir, names);
        let (code, out, err) = mailconfig(
            &ceres,
            &[
                target,
                "--apply",
                "--config-dir",
                p(dir),
                "--postfix-queue-dir",
                p(&pf_queue),
            ],
            &[("CERESTEST_MAILCONFIG_BREAK", "1")],
        );
        assert_eq!(code, 1, "{target}: {out}{err}");
        assert!(
            err.contains("nothing changed") && err.contains("refused"),
            "{target}: {err}"
        );
        assert_eq!(files(dir, names), before, "{target}: not rolled back");
    }

    // Apply, then apply again: the second changes nothing.
    for (target, dir) in [
        ("postfix", &pf_dir),
        ("dovecot", &dv_dir),
        ("nginx", &ng_dir),
    ] {
        let args = [
            target,
            "--apply",
            "--config-dir",
            p(dir),
            "--postfix-queue-dir",
            p(&pf_queue),
        ];
        let (code, out, err) = mailconfig(&ceres, &args, &[]);
        assert_eq!(code, 0, "{target}: {out}{err}");
        assert!(out.contains("reloaded"), "{target}: {out}");
        let (code, out, err) = mailconfig(&ceres, &args, &[]);
        assert_eq!(code, 0, "{target}: {err}");
        assert!(
            out.contains("nothing changed"),
            "{target} second apply: {out}"
        );
        let (code, out, err) =
            mailconfig(&ceres, &[target, "--check", "--config-dir", p(dir)], &[]);
        assert_eq!(code, 0, "{target} --check after --apply: {out}{err}");
    }
    // The reloads took: home's probes reach the PROXY ports.
    ceres.wait_mail_server_reachable(Some(10025), WAIT).unwrap();
    ceres.wait_mail_server_reachable(Some(10993), WAIT).unwrap();
    ceres.wait_mail_server_reachable(Some(10080), WAIT).unwrap();

    // Mail in on 25, IPv4 and IPv6: Postfix logs the internet client.
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
        postfix.wait_for_message_id(&id, WAIT).unwrap();
        postfix.wait_log("postfix/ceres-smtp/smtpd", WAIT).unwrap();
        postfix
            .wait_log(&format!("connect from unknown[{from}]"), WAIT)
            .unwrap();
    }

    // Submission on 587: STARTTLS + AUTH (Dovecot's SASL socket), logged with
    // the client's address; without AUTH nothing relays.
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
    let out = run(lab.internet.command("swaks").args([
        "--server",
        addr::VPS,
        "--port",
        "587",
        "--tls",
        "--from",
        "x@example.org",
        "--to",
        "victim@example.net",
        "--timeout",
        "20",
    ]))
    .unwrap();
    assert!(!out.status.success(), "unauthenticated submission relayed");

    // IMAP and POP3 through the VPS: the client's address, and no cleartext
    // password accepted from the internet.
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
    for (port, path, want) in [
        (995, LoginPath::ImplicitTls, LoginOutcome::LoggedIn),
        (110, LoginPath::Plaintext, LoginOutcome::PrivacyRequired),
    ] {
        let a = pop3_login(&target(port), path, "alice", "lab-secret-1").unwrap();
        assert_eq!(a.outcome, want, "POP3 {port} {path:?}:\n{}", a.transcript);
    }
    wait_until("Dovecot's logins through the VPS", WAIT, || {
        let l = dovecot.logins();
        Ok(l.iter()
            .filter(|r| r.rip == ip(addr::CLIENT) && r.tls)
            .count()
            >= 3)
    })
    .unwrap();
    let logins = dovecot.logins();
    assert!(
        logins.iter().all(|r| !r.rip.is_loopback()),
        "a relayed client looked local: {logins:?}"
    );

    // nginx logs the client.
    assert_eq!(
        http_get(&lab.internet, Some(ip(addr::CLIENT)), vps(80), None).unwrap(),
        Some(200)
    );
    wait_until("nginx's access log", WAIT, || {
        Ok(nginx.access_clients().contains(&ip(addr::CLIENT)))
    })
    .unwrap();

    // The LAN: port 25 answers without a header; a forged header is just a
    // bad command and the host gets no trust (cannot relay outside); the
    // PROXY ports are not reachable from the LAN.
    let lan25 = SocketAddr::new(ip(addr::HOME_LAN), 25);
    // (connect reads the banner and requires 220.)
    SmtpClient::connect(&lan, lan25, None, WAIT)
        .unwrap()
        .quit()
        .unwrap();
    let mut c = SmtpClient::connect(&lan, lan25, None, WAIT).unwrap();
    let forged = format!("PROXY TCP4 127.0.0.1 {} 1234 25", addr::HOME_LAN);
    let reply = c.command(&forged).unwrap();
    assert!(
        reply.code >= 500,
        "a PROXY line on port 25 was taken: {}",
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
    for port in [10025u16, 10587, 10143, 10993, 10080] {
        assert!(
            SmtpClient::connect(
                &lan,
                SocketAddr::new(ip(addr::HOME_LAN), port),
                None,
                Duration::from_secs(2)
            )
            .is_err(),
            "PROXY port {port} reachable from the LAN"
        );
    }

    // Outbound over IPv6: --apply bound Postfix to the tunnel's IPv6 (the
    // lab VPS has a public IPv6), so an IPv6-only MX sees the VPS, never home.
    assert!(
        postfix
            .postconf(&["-h", "smtp_bind_address6"])
            .unwrap()
            .trim()
            == "fd77:77:77::2",
        "smtp_bind_address6 not applied"
    );
    let sink6 = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![ip(addr::CLIENT6)],
            "mx.remote6.example",
            &["remote6.example"],
        ),
    )
    .unwrap();
    // The lab has no DNS: what an MX record would say, as a transport map.
    postfix
        .postconf(&[
            "-e",
            &format!(
                "transport_maps = inline:{{ remote6.example=smtp:[{}]:25 }}",
                addr::CLIENT6
            ),
        ])
        .unwrap();
    postfix.reload().unwrap();
    let id = format!("{}.out6@example.com", unique_id());
    postfix
        .sendmail(
            "alice@example.com",
            "bob@remote6.example",
            &compose(
                "alice@example.com",
                "bob@remote6.example",
                "out6",
                &id,
                "Over IPv6.",
            ),
        )
        .unwrap();
    sink6.wait_for_message_id(&id, WAIT).unwrap();
    let seen = sink6.remote_clients_seen();
    assert_eq!(
        seen,
        [ip(addr::VPS6)].into(),
        "the IPv6-only MX must see only the VPS's public IPv6:\n{}",
        sink6.log()
    );

    // From the VPS straight to home's tunnel addresses: Postfix listens on
    // every address, yet nothing but the forwarders is reachable.
    for target in ["10.77.77.2", "fd77:77:77::2"] {
        for port in [25u16, 143, 80] {
            assert!(
                SmtpClient::connect(
                    &lab.vps,
                    SocketAddr::new(ip(target), port),
                    None,
                    Duration::from_secs(2)
                )
                .is_err(),
                "the VPS reached home's {target}:{port} through the tunnel"
            );
        }
    }

    // Unsafe variants are named by --check (Postfix's are in ctl_mailconfig).
    let dovecot_unsafe = dv_dir.join("conf.d/98-unsafe.conf");
    std::fs::write(
        &dovecot_unsafe,
        "service imap-login {\n  inet_listener imaps {\n    haproxy = yes\n  }\n}\n",
    )
    .unwrap();
    let (code, out, _) = mailconfig(
        &ceres,
        &["dovecot", "--check", "--config-dir", p(&dv_dir)],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("UNSAFE  service imap-login inet_listener imaps (port 993) haproxy = yes"),
        "{out}"
    );
    std::fs::remove_file(&dovecot_unsafe).unwrap();
    let site = ng_dir.join("sites-available/default");
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        text.replace(
            "listen 80 default_server;",
            "listen 80 default_server;\n\tlisten 8080 proxy_protocol;",
        ),
    )
    .unwrap();
    let (code, out, _) = mailconfig(
        &ceres,
        &["nginx", "--check", "--config-dir", p(&ng_dir)],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("UNSAFE  listen 8080 proxy_protocol"), "{out}");
    std::fs::write(&site, text).unwrap();

    // And cerectl status is clean: no problem, no warning (every port PROXY).
    // The stack probe (CERES_MAIL_STACK=postfix-dovecot) passes on what
    // --apply set up: every relayed PROXY listener answers after a header
    // (443 is not relayed here, so its absence is no problem).
    let mut j = serde_json::Value::Null;
    wait_until("the stack probe on the applied configuration", WAIT, || {
        j = ceres.status_json()?.1;
        Ok(j["stack"]["ok"] == true)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", j["stack"]));
    assert_eq!(
        j["stack"]["summary"],
        "postfix-dovecot: PROXY listeners reachable, Postfix 10025 answers after a header"
    );
    let (code, j) = ceres.status_json().unwrap();
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["warnings"].as_array().unwrap().len(), 0, "{j}");
}
