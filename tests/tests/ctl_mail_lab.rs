//! Issue 6's mail half in the namespace lab, with a real Postfix at home:
//! `cerectl send-test` delivers through the VPS into the home Maildir and
//! shows each SMTP step; `cerectl doctor --skip-dns` passes the inbound
//! banner and the open-relay probe against a correctly set up home, reports
//! a 421 when home is away, and FAILS (exit 1) against a home Postfix that
//! relays for anyone because port 25 is relayed without PROXY.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_tests::postfix::smtp::wait_banner;
use ceres_tests::postfix::{Postfix, PostfixOptions, SubmissionAuth};
use ceres_tests::{Ceres, Lab, addr, require_root};
use serde_json::Value;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Waits until VPS:25 answers with the home server's 220 through the tunnel.
fn wait_relay_ready(lab: &Lab) {
    wait_banner(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS), 25),
        Duration::from_secs(30),
    )
    .unwrap();
}

/// The checks of a doctor JSON report with this kind.
fn kind<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .collect()
}

#[test]
fn send_test_delivers_home_and_doctor_passes_then_sees_home_away() {
    if !require_root("send_test_delivers_home_and_doctor_passes_then_sees_home_away") {
        return;
    }
    let lab = Lab::new().unwrap();
    // Only the ports the home Postfix serves, so every relay has a server.
    let ceres = Ceres::init(
        &lab,
        &["CERES_RELAYS=25/proxy-v2,587/proxy-v2"],
        &["CERES_PROBE_INTERVAL=1s"],
    )
    .unwrap();
    let (_vps, mut home) = ceres.up().unwrap();
    let home_mx = Postfix::start(
        &lab.home,
        PostfixOptions::home(vec![ip("127.0.0.1"), ip("::1")]),
    )
    .unwrap();
    // An SMTP server on the internet side for the outbound-25 probe.
    let remote_mx = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![ip(addr::CLIENT)],
            "mx.remote.example",
            &["remote.example"],
        ),
    )
    .unwrap();
    wait_relay_ready(&lab);

    // send-test, defaults: port 25 on the VPS's first public address.
    let (code, out, err) = ceres
        .ctl(&["send-test", "--to", "postmaster@example.com"])
        .unwrap();
    println!("{out}");
    assert_eq!(code, 0, "{out}\n{err}\nhome log:\n{}", home_mx.log());
    let steps: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        steps,
        [
            "connect", "banner", "EHLO", "MAIL", "RCPT", "DATA", "message", "QUIT"
        ],
        "{out}"
    );
    assert!(out.contains(&format!("{}:25", addr::VPS)), "{out}");
    assert!(out.contains("banner    220 mail.example.com"), "{out}");
    assert!(out.contains("queued as"), "{out}");
    let id = out
        .split("Message-ID <")
        .nth(1)
        .and_then(|r| r.split('>').next())
        .unwrap();
    let msg = home_mx
        .wait_for_message_id(id, Duration::from_secs(30))
        .unwrap();
    assert!(
        msg.content.contains("Subject: CERES test message"),
        "{}",
        msg.content
    );
    assert!(msg.content.contains("cerectl send-test"));

    // --json: one document with the same steps, the outcome and the ids.
    let (code, out, err) = ceres
        .ctl(&["send-test", "--to", "postmaster@example.com", "--json"])
        .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["server"], format!("{}:25", addr::VPS), "{report:#}");
    assert_eq!(report["tls"], "none", "{report:#}");
    assert_eq!(report["to"], "postmaster@example.com", "{report:#}");
    assert_eq!(report["accepted"], true, "{report:#}");
    assert!(report["failed"].is_null(), "{report:#}");
    let json_steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(json_steps, steps, "{report:#}");
    assert!(
        report["steps"][1]["text"]
            .as_str()
            .unwrap()
            .starts_with("220 mail.example.com"),
        "{report:#}"
    );
    let queue_id = report["queue_id"].as_str().unwrap();
    assert!(!queue_id.is_empty(), "{report:#}");
    let msg = home_mx
        .wait_for_message_id(
            report["message_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(msg.content.contains("cerectl send-test"));

    // A refused recipient: exit 1, and the step it stopped at.
    let (code, out, _) = ceres
        .ctl(&["send-test", "--to", "someone@elsewhere.example"])
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at RCPT"), "{out}");
    let (code, out, _) = ceres
        .ctl(&["send-test", "--to", "someone@elsewhere.example", "--json"])
        .unwrap();
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["accepted"], false, "{report:#}");
    assert!(report["queue_id"].is_null(), "{report:#}");
    assert_eq!(report["failed"]["step"], "RCPT", "{report:#}");
    assert!(
        report["failed"]["reason"]
            .as_str()
            .unwrap()
            .contains("Relay access denied"),
        "{report:#}"
    );

    // Doctor also reads home's probes of the mail server: wait for one made
    // after Postfix started (the first ran before it).
    ceres
        .wait_mail_server_reachable(None, Duration::from_secs(20))
        .unwrap();

    // doctor, mail checks only: banner on both addresses, relay refused,
    // outbound 25 to the internet-side server.
    let probe = format!("{}:25", addr::CLIENT);
    let (code, text, err) = ceres
        .ctl(&["doctor", "--skip-dns", "--probe-25", &probe])
        .unwrap();
    println!("{text}");
    assert_eq!(code, 0, "{text}\n{err}");
    assert!(
        text.contains(&format!("PASS   SMTP   {}:25", addr::VPS)),
        "{text}"
    );
    assert!(text.contains("PASS   RELAY"), "{text}");
    assert!(text.contains("Relay access denied"), "{text}");
    assert!(!text.contains("DNS records"), "{text}");
    let (code, out, _) = ceres
        .ctl(&["doctor", "--skip-dns", "--probe-25", &probe, "--json"])
        .unwrap();
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    let inbound = kind(&report, "smtp-inbound");
    assert_eq!(inbound.len(), 2, "{report:#}"); // IPv4 and IPv6
    for c in &inbound {
        assert_eq!(c["status"], "pass", "{c:#}");
        assert!(c["found"].as_str().unwrap().contains("mail.example.com"));
    }
    let relay = kind(&report, "open-relay");
    assert_eq!(relay.len(), 2, "{report:#}");
    assert!(relay.iter().all(|c| c["status"] == "pass"), "{report:#}");
    let outbound = kind(&report, "smtp-outbound");
    assert_eq!(outbound[0]["status"], "pass", "{report:#}");
    assert!(!kind(&report, "proxy").is_empty(), "{report:#}");
    // The probe never sent a message: nothing but the two send-test mails arrived.
    assert_eq!(home_mx.maildir_messages().len(), 2);
    drop(remote_mx);

    // Home away: the VPS answers 421 for it, and doctor says so.
    home.terminate(Duration::from_secs(10)).unwrap();
    ceres
        .wait_home_connected(false, Duration::from_secs(20))
        .unwrap();
    let (code, text, _) = ceres.ctl(&["doctor", "--skip-dns"]).unwrap();
    println!("{text}");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("FAIL   SMTP   {}:25", addr::VPS)) && text.contains("421"),
        "{text}"
    );
    assert!(text.contains("ceres-home run"), "{text}");
}

#[test]
fn doctor_fails_on_an_open_relay_through_the_tunnel() {
    if !require_root("doctor_fails_on_an_open_relay_through_the_tunnel") {
        return;
    }
    let lab = Lab::new().unwrap();
    // 25 relayed WITHOUT PROXY: every sender arrives from the forwarder's
    // 127.0.0.1, which the default mynetworks (127.0.0.0/8) trusts.
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25"], &[]).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let opts = PostfixOptions {
        postscreen_proxy_on_25: false,
        submission: false,
        submission_proxy: false,
        ..PostfixOptions::home(vec![ip("127.0.0.1"), ip("::1")])
    };
    assert!(opts.mynetworks.iter().any(|n| n == "127.0.0.0/8"));
    let home_mx = Postfix::start(&lab.home, opts).unwrap();
    wait_relay_ready(&lab);

    let (code, text, err) = ceres.ctl(&["doctor", "--skip-dns"]).unwrap();
    println!("{text}");
    assert_eq!(code, 1, "{text}\n{err}");
    assert!(text.contains("FAIL   RELAY"), "{text}");
    assert!(text.contains("OPEN RELAY"), "{text}");
    assert!(text.contains("mynetworks"), "{text}");
    let (code, out, _) = ceres.ctl(&["doctor", "--skip-dns", "--json"]).unwrap();
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    let relay = kind(&report, "open-relay");
    assert!(
        !relay.is_empty() && relay.iter().all(|c| c["status"] == "fail"),
        "{report:#}"
    );
    // The banner itself is fine: only the relay fails.
    assert!(
        kind(&report, "smtp-inbound")
            .iter()
            .all(|c| c["status"] == "pass")
    );
    // Nothing was sent: the probe stops after RCPT.
    assert!(home_mx.maildir_messages().is_empty());
    assert_eq!(home_mx.queue_len().unwrap(), 0, "{}", home_mx.log());
}

/// A lab CA and a certificate for `mail.example.com` signed by it: (CA PEM,
/// leaf chain PEM, leaf key PEM).
fn lab_tls() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "CERES lab mail CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["mail.example.com".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// The path applications (Keycloak, onboarding mail) use: submission on 587
/// through the VPS with a PROXY v2 header, STARTTLS, then AUTH, into a real
/// Postfix that only lets authenticated clients send. A wrong password and a
/// send without credentials are both refused, and the password is never
/// printed.
#[test]
fn send_test_submits_with_starttls_and_auth_through_the_vps() {
    if !require_root("send_test_submits_with_starttls_and_auth_through_the_vps") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &["CERES_RELAYS=25/proxy-v2,587/proxy-v2"], &[]).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let (ca_pem, cert_pem, key_pem) = lab_tls();
    let password = "lab-submission-Pa55word";
    let home_mx = Postfix::start(
        &lab.home,
        PostfixOptions {
            submission_auth: Some(SubmissionAuth {
                login: "app@example.com".to_owned(),
                password: password.to_owned(),
                cert_pem,
                key_pem,
            }),
            ..PostfixOptions::home(vec![ip("127.0.0.1"), ip("::1")])
        },
    )
    .unwrap();
    wait_relay_ready(&lab);
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let good = files.path().join("good");
    std::fs::write(&good, format!("{password}\n")).unwrap();
    let bad = files.path().join("bad");
    std::fs::write(&bad, "not-the-password\n").unwrap();

    let send = |extra: &[&str]| {
        let mut args = vec![
            "send-test",
            "--to",
            "postmaster@example.com",
            "--port",
            "587",
            "--ca-file",
            ca_file,
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = ceres.ctl(&args).unwrap();
        println!("{out}{err}");
        assert!(!out.contains(password) && !err.contains(password));
        (code, out)
    };

    let (code, out) = send(&[
        "--user",
        "app@example.com",
        "--password-file",
        good.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\nhome log:\n{}", home_mx.log());
    let steps: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        steps,
        [
            "connect", "banner", "EHLO", "STARTTLS", "TLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA",
            "message", "QUIT"
        ],
        "{out}"
    );
    assert!(out.contains(&format!("{}:587", addr::VPS)), "{out}");
    assert!(out.contains("as app@example.com"), "{out}");
    let id = out
        .split("Message-ID <")
        .nth(1)
        .and_then(|r| r.split('>').next())
        .unwrap();
    home_mx
        .wait_for_message_id(id, Duration::from_secs(30))
        .unwrap();
    // Postfix saw the internet client log in (its address came in the PROXY
    // v2 header through the tunnel), not a tunnel address.
    let client: SocketAddr = out
        .split("(from ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .parse()
        .unwrap();
    let line = home_mx
        .wait_log("sasl_username=app@example.com", Duration::from_secs(10))
        .unwrap();
    assert!(
        line.contains(&format!("client=unknown[{}]", client.ip())),
        "{line}"
    );

    // A wrong password: refused at AUTH, exit 1.
    let (code, out) = send(&[
        "--user",
        "app@example.com",
        "--password-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at AUTH"), "{out}");

    // A server certificate from a CA we were not told to trust: stopped at
    // TLS, before the password is sent.
    let other_ca = files.path().join("other-ca.pem");
    std::fs::write(&other_ca, lab_tls().0).unwrap();
    let (code, out, err) = ceres
        .ctl(&[
            "send-test",
            "--to",
            "postmaster@example.com",
            "--port",
            "587",
            "--ca-file",
            other_ca.to_str().unwrap(),
            "--user",
            "app@example.com",
            "--password-file",
            good.to_str().unwrap(),
        ])
        .unwrap();
    println!("{out}{err}");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at TLS") && out.contains("--ca-file"),
        "{out}"
    );
    assert!(!out.contains("  AUTH"), "{out}");

    // No credentials: TLS, but Postfix lets no anonymous client send.
    let (code, out) = send(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at RCPT"), "{out}");
    assert_eq!(home_mx.maildir_messages().len(), 1);
}
