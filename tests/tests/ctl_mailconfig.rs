//! `cerectl mailserver-config` against a real VPS agent (on a loopback
//! address of this test's own) and an enrolled cerectl: the lines follow the
//! VPS's CERES_RELAYS; and the Postfix lines are accepted by a real Postfix
//! (`postconf` on a scratch config directory: no warnings, the PROXY settings
//! where they belong). No root needed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use ceres_tests::{LoopVps, bin, run};

/// `cerectl --dir DIR ARGS`: (exit code, stdout, stderr).
fn ctl(dir: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("cerectl"));
    if let Some(d) = dir {
        cmd.arg("--dir").arg(d);
    } else {
        // No credentials anywhere: the offline path must not need them.
        cmd.env("XDG_CONFIG_HOME", "/nonexistent-ceres-test");
    }
    let out = run(cmd.args(args)).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lines between `# ---- ...NAME ----` and the next marker, comments and
/// blanks left out.
fn section(text: &str, name: &str) -> Vec<String> {
    let marker = format!("{name} ----");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("# ----"))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lines_follow_the_vps_relays() {
    let vps = LoopVps::start(&[
        "CERES_RELAYS=25/proxy-v2,587/proxy-v1,465,993/proxy-v2,143,443/proxy-v2",
    ])
    .unwrap();
    let dir = vps.enroll_ctl().unwrap();

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "postfix"]);
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    assert!(out.starts_with("# Postfix for CERES"), "{out}");
    let master = section(&out, "/etc/postfix/master.cf");
    let main = section(&out, "/etc/postfix/main.cf");
    assert!(
        master[0].starts_with("smtp ") && master[0].ends_with("postscreen"),
        "{out}"
    );
    // 587 carries PROXY (v1), 465 does not: one per-service override.
    let sub = master
        .iter()
        .position(|l| l.starts_with("submission "))
        .unwrap();
    assert_eq!(
        master[sub + 2],
        "  -o smtpd_upstream_proxy_protocol=haproxy",
        "{out}"
    );
    let smtps = master
        .iter()
        .position(|l| l.starts_with("submissions "))
        .unwrap();
    assert!(
        !master[smtps..].iter().any(|l| l.contains("upstream_proxy")),
        "{out}"
    );
    assert!(main.contains(&"postscreen_upstream_proxy_protocol = haproxy".to_owned()));
    // The VPS's default home tunnel address.
    assert!(
        main.contains(&"smtp_bind_address = 10.77.77.2".to_owned()),
        "{out}"
    );
    assert!(out.contains("NEVER add the tunnel subnet (10.77.77.0/24) to mynetworks"));

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "dovecot"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("haproxy_trusted_networks = 127.0.0.1 ::1"),
        "{out}"
    );
    assert_eq!(out.matches("haproxy = yes").count(), 1, "{out}");
    assert!(
        out.contains("Port 143 (imap) is relayed without PROXY"),
        "{out}"
    );

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "nginx"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen 443 ssl proxy_protocol;"), "{out}");
    assert!(out.contains("real_ip_header proxy_protocol;"), "{out}");

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "keycloak"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("host = mail.example.com\nport = 587"), "{out}");
    assert!(out.contains("\"from\": \"noreply@example.com\""), "{out}");
    let (code, _, err) = ctl(
        Some(&dir),
        &["mailserver-config", "keycloak", "--port", "2525"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("2525 is not a relayed submission port"),
        "{err}"
    );
}

#[test]
fn offline_flags_need_no_vps_and_bad_input_is_refused() {
    let (code, out, err) = ctl(
        None,
        &[
            "mailserver-config",
            "postfix",
            "--domain",
            "example.org",
            "--home-tunnel-address",
            "10.9.9.2/24",
            "--relays",
            "25",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("smtp_bind_address = 10.9.9.2"), "{out}");
    assert!(out.contains("WITHOUT PROXY"), "{out}");
    assert!(out.contains("(10.9.9.0/24)"), "{out}");
    let (code, _, err) = ctl(
        None,
        &[
            "mailserver-config",
            "postfix",
            "--domain",
            "example.org",
            "--home-tunnel-address",
            "10.9.9.2",
            "--relays",
            "25/proxy-v9",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("proxy-v9"), "{err}");
    // Not enrolled and not enough flags: "could not get it" (3).
    let (code, _, err) = ctl(None, &["mailserver-config", "dovecot"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--home-tunnel-address"), "{err}");
    let (code, _, _) = ctl(None, &["mailserver-config", "exim"]);
    assert_eq!(code, 2);
}

/// The generated Postfix lines, merged into Debian's stock master.cf (our
/// services replace the stock ones of the same name and type), must parse
/// cleanly: postconf warns about any unknown parameter, in main.cf and in
/// master.cf `-o` overrides alike.
#[test]
fn postfix_accepts_the_generated_lines() {
    let proto = Path::new("/etc/postfix/master.cf.proto");
    if !proto.exists() || !Path::new("/usr/sbin/postconf").exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("postfix is not installed and CI=true: refusing to skip");
        }
        eprintln!("SKIP: postfix is not installed");
        return;
    }
    for relays in [
        "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143,995,110,4190,80,443",
        "25,587",
        "25:2525/proxy-v1,465",
    ] {
        let (code, out, err) = ctl(
            None,
            &[
                "mailserver-config",
                "postfix",
                "--domain",
                "example.com",
                "--home-tunnel-address",
                "10.77.77.2/24",
                "--relays",
                relays,
            ],
        );
        assert_eq!(code, 0, "{err}");
        let master = section(&out, "/etc/postfix/master.cf");
        let main = section(&out, "/etc/postfix/main.cf");
        let ours: Vec<(String, String)> = master
            .iter()
            .filter(|l| !l.starts_with(' '))
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap().to_owned(), w.next().unwrap().to_owned())
            })
            .collect();
        // Stock services minus ours, with their continuation lines.
        let mut stock = String::new();
        let mut keep = true;
        for line in std::fs::read_to_string(proto).unwrap().lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if !line.starts_with(char::is_whitespace) {
                let mut w = line.split_whitespace();
                let key = (
                    w.next().unwrap_or("").to_owned(),
                    w.next().unwrap_or("").to_owned(),
                );
                keep = !ours.contains(&key);
            }
            if keep {
                stock.push_str(line);
                stock.push('\n');
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.cf"),
            format!("compatibility_level = 3.6\n{}\n", main.join("\n")),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("master.cf"),
            format!("{}\n{stock}", master.join("\n")),
        )
        .unwrap();
        let conf = dir.path().to_str().unwrap();
        for flag in ["-n", "-M", "-P"] {
            let out = run(Command::new("/usr/sbin/postconf").args(["-c", conf, flag])).unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "postconf {flag} for relays {relays}: {stderr}\n{out:?}"
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            if flag == "-P" && relays.starts_with("25/proxy-v2") {
                assert!(
                    stdout.contains("submission/inet/smtpd_upstream_proxy_protocol = haproxy"),
                    "{stdout}"
                );
                assert!(
                    stdout.contains("submissions/inet/smtpd_tls_wrappermode = yes"),
                    "{stdout}"
                );
            }
            if flag == "-n" {
                assert!(
                    stdout.contains("smtp_bind_address = 10.77.77.2"),
                    "{stdout}"
                );
                assert_eq!(
                    stdout.contains("postscreen_upstream_proxy_protocol = haproxy"),
                    relays.starts_with("25/") || relays.starts_with("25:"),
                    "{relays}: {stdout}"
                );
            }
            if flag == "-M" && relays.starts_with("25:2525") {
                assert!(stdout.contains("2525       inet"), "{stdout}");
            }
        }
    }
}
