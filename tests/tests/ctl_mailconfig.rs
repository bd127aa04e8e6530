//! `cerectl mailserver-config` against a real VPS agent (on a loopback
//! address of this test's own) and an enrolled cerectl: the lines follow the
//! VPS's CERES_RELAYS. And `--apply` / `--check` on a scratch copy of Debian's
//! stock Postfix configuration: applied cleanly (postconf without a warning,
//! `postfix check`), idempotent, rolled back when the result is refused, and
//! every unsafe variant named by `--check`. The running-software proof is in
//! mailserver_lab.rs.

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
        "CERES_RELAYS=25/proxy-v2,587/proxy-v1,465:2465,993/proxy-v2,143/proxy-v2,443/proxy-v2",
    ])
    .unwrap();
    let dir = vps.enroll_ctl().unwrap();

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "postfix"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("# Postfix for CERES"), "{out}");
    let master = section(&out, "/etc/postfix/master.cf");
    let main = section(&out, "/etc/postfix/main.cf");
    let services: Vec<&str> = master
        .iter()
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    // PROXY relays land on their loopback PROXY ports; plain 465 on its own
    // port (2465), also on loopback and trusting no one.
    assert_eq!(
        services,
        ["127.0.0.1:10025", "127.0.0.1:10587", "127.0.0.1:2465"],
        "{out}"
    );
    assert_eq!(
        master
            .iter()
            .filter(|l| l.contains("smtpd_upstream_proxy_protocol=haproxy"))
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        master.iter().filter(|l| *l == "  -o mynetworks=").count(),
        3,
        "{out}"
    );
    // Nothing global; the VPS's default home tunnel address; IPv4 only out.
    assert!(!main.iter().any(|l| l.contains("proxy")), "{out}");
    assert!(
        main.contains(&"smtp_bind_address = 10.77.77.2".to_owned()),
        "{out}"
    );
    assert!(out.contains("-o inet_protocols=ipv4"), "{out}");

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "dovecot"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("haproxy_trusted_networks = 127.0.0.1 ::1"),
        "{out}"
    );
    assert_eq!(out.matches("haproxy = yes").count(), 2, "{out}");
    assert!(
        out.contains("inet_listener imap_ceres {\n    address = 127.0.0.1\n    port = 10143"),
        "{out}"
    );

    let (code, out, err) = ctl(Some(&dir), &["mailserver-config", "nginx"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("listen 127.0.0.1:10443 ssl proxy_protocol;"),
        "{out}"
    );
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

const OFFLINE: [&str; 4] = [
    "--domain",
    "example.org",
    "--home-tunnel-address",
    "10.9.9.2/24",
];

#[test]
fn offline_flags_need_no_vps_and_bad_input_is_refused() {
    let mut args = vec!["mailserver-config", "postfix"];
    args.extend(OFFLINE);
    let (code, out, err) = ctl(None, &[&args[..], &["--relays", "25/proxy-v2"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("smtp_bind_address = 10.9.9.2"), "{out}");
    assert!(out.contains("(10.9.9.0/24)"), "{out}");
    // Plain 25 onto the ordinary service: refused, with why and the fix.
    let (code, out, err) = ctl(None, &[&args[..], &["--relays", "25"]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("open relay") && err.contains("25/proxy-v2"),
        "{err}"
    );
    // With IPv6 egress: bound, not restricted.
    let (code, out, err) = ctl(
        None,
        &[&args[..], &["--home-tunnel-address6", "fd77:77:77::2"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("smtp_bind_address6 = fd77:77:77::2"), "{out}");
    assert!(!out.contains("inet_protocols=ipv4"), "{out}");
    let (code, _, err) = ctl(None, &[&args[..], &["--relays", "25/proxy-v9"]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("proxy-v9"), "{err}");
    // Not enrolled and not enough flags: "could not get it" (3).
    let (code, _, err) = ctl(None, &["mailserver-config", "dovecot"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--home-tunnel-address"), "{err}");
    let (code, _, _) = ctl(None, &["mailserver-config", "exim"]);
    assert_eq!(code, 2);
}

/// A scratch Postfix configuration: Debian's stock main.cf (as its postinst
/// writes it for "Internet Site") and master.cf, with the queue and data
/// directories in the scratch dir so `postfix check` touches nothing else.
fn scratch_postfix() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let share = Path::new("/usr/share/postfix");
    let mut main = std::fs::read_to_string(share.join("main.cf.debian")).unwrap();
    main.push_str(&std::fs::read_to_string(share.join("main.cf.tls")).unwrap());
    main.push_str(
        "myhostname = mail.example.com\nmydestination = $myhostname, localhost\nrelayhost =\n\
         mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128\ninet_interfaces = all\ninet_protocols = all\n",
    );
    let d = dir.path();
    std::fs::create_dir(d.join("queue")).unwrap();
    std::fs::create_dir(d.join("data")).unwrap();
    main.push_str(&format!(
        "queue_directory = {}\ndata_directory = {}\n",
        d.join("queue").display(),
        d.join("data").display()
    ));
    std::fs::write(d.join("main.cf"), main).unwrap();
    std::fs::copy(share.join("master.cf.dist"), d.join("master.cf")).unwrap();
    dir
}

fn postconf(dir: &Path, args: &[&str]) -> String {
    let out = run(Command::new("postconf").arg("-c").arg(dir).args(args)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "postconf {args:?}: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn postfix_apply_check_idempotence_and_rollback_on_stock_debian() {
    if !ceres_tests::require_root("postfix_apply_check_idempotence_and_rollback_on_stock_debian") {
        return;
    }
    let scratch = scratch_postfix();
    let d = scratch.path();
    let cd = d.to_str().unwrap();
    let pf = |extra: &[&str]| {
        let mut a = vec!["mailserver-config", "postfix", "--config-dir", cd];
        a.extend(OFFLINE);
        a.extend(extra);
        ctl(None, &a)
    };
    // Stock: unsafe/missing for CERES, named.
    let (code, out, _) = pf(&["--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISSING master.cf 127.0.0.1:10025/inet"),
        "{out}"
    );
    assert!(out.contains("MISSING main.cf smtp_bind_address"), "{out}");
    assert!(
        out.contains("UNSAFE  main.cf inet_protocols = all"),
        "{out}"
    );

    // A broken result is rolled back, byte for byte.
    let before = (
        std::fs::read(d.join("main.cf")).unwrap(),
        std::fs::read(d.join("master.cf")).unwrap(),
    );
    let mut cmd = Command::new(bin("cerectl"));
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-ceres-test")
        .env("CERESTEST_MAILCONFIG_BREAK", "1")
        .args([
            "mailserver-config",
            "postfix",
            "--apply",
            "--config-dir",
            cd,
        ])
        .args(OFFLINE);
    let out = run(&mut cmd).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Postfix refused") && err.contains("restored"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("main.cf")).unwrap(), before.0);
    assert_eq!(std::fs::read(d.join("master.cf")).unwrap(), before.1);

    // Apply: clean for postconf, check passes, second apply changes nothing.
    let (code, out, err) = pf(&["--apply"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("postfix: ") && out.contains("backup of the files before"),
        "{out}"
    );
    assert!(out.contains("Postfix is not running"), "{out}");
    let p = postconf(d, &["-P"]);
    assert!(
        p.contains("127.0.0.1:10025/inet/smtpd_upstream_proxy_protocol = haproxy"),
        "{p}"
    );
    assert!(
        p.contains("127.0.0.1:10587/inet/smtpd_sasl_auth_enable = yes"),
        "{p}"
    );
    assert!(p.contains("smtp/unix/inet_protocols = ipv4"), "{p}");
    assert!(!postconf(d, &["-n"]).contains("upstream_proxy"));
    postconf(d, &["-M"]);
    let (code, out, _) = pf(&["--check"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = pf(&["--check", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let master_after = std::fs::read(d.join("master.cf")).unwrap();
    let (code, out, err) = pf(&["--apply"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(std::fs::read(d.join("master.cf")).unwrap(), master_after);

    // Each unsafe variant is named by --check, and --apply repairs it.
    let variants: [(&[&str], &str); 4] = [
        (
            &["-e", "postscreen_upstream_proxy_protocol=haproxy"],
            "main.cf postscreen_upstream_proxy_protocol",
        ),
        (
            &["-P", "smtp/inet/smtpd_upstream_proxy_protocol=haproxy"],
            "master.cf smtp/inet -o smtpd_upstream_proxy_protocol",
        ),
        (
            &["-PX", "smtp/unix/inet_protocols"],
            "main.cf inet_protocols = all",
        ),
        (
            &["-PX", "127.0.0.1:10025/inet/mynetworks"],
            "master.cf 127.0.0.1:10025/inet mynetworks",
        ),
    ];
    for (edit, named) in variants {
        postconf(d, edit);
        let (code, out, _) = pf(&["--check"]);
        assert_eq!(code, 1, "{edit:?}: {out}");
        assert!(out.contains(&format!("UNSAFE  {named}")), "{edit:?}: {out}");
        let (code, out, err) = pf(&["--apply"]);
        assert_eq!(code, 0, "{err}");
        assert!(!out.contains("nothing changed"), "{out}");
        let (code, out, _) = pf(&["--check"]);
        assert_eq!(code, 0, "after repairing {edit:?}: {out}");
    }
    // Plain 25 onto the ordinary service, trusted by mynetworks.
    let (code, out, _) = pf(&["--check", "--relays", "25"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("UNSAFE  port 25 relayed without PROXY"),
        "{out}"
    );
    let (code, _, err) = pf(&["--apply", "--relays", "25"]);
    assert_eq!(code, 1);
    assert!(err.contains("open relay"), "{err}");
}

/// `--stack iredmail`'s Postfix script on a running Postfix laid out as
/// iRedMail leaves Debian's (postscreen on 25 with `smtpd pass` behind it,
/// `mynetworks` trusting loopback, submission and 465 services): the PROXY
/// copy on 127.0.0.1:12525 reads the header, logs the client it names, and
/// relays for nobody — not even for a header claiming 127.0.0.1, which the
/// stock `smtpd pass` would trust. The control at the end hands 12525's
/// clients to that stock service instead and shows the same header relaying:
/// the check can fail.
#[test]
fn iredmail_postscreen_copy_logs_the_header_client_and_trusts_no_one() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use ceres_tests::postfix::smtp::{SmtpClient, proxy_v1};
    use ceres_tests::postfix::{Postfix, StockSite};
    use ceres_tests::{Netns, unique_id};

    if !ceres_tests::require_root(
        "iredmail_postscreen_copy_logs_the_header_client_and_trusts_no_one",
    ) {
        return;
    }
    const IO: Duration = Duration::from_secs(15);
    let relayed = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let ns = Netns::new(format!("ceres-{}-irm", unique_id())).unwrap();
    let pf = Postfix::start_stock(&ns, StockSite::default()).unwrap();
    let conf = pf.config_dir();

    // iRedMail's postfix_config_postscreen on Debian's master.cf.dist, and
    // the submission and 465 services of its samples/postfix/master.cf.
    let master: String = std::fs::read_to_string(conf.join("master.cf"))
        .unwrap()
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let on = [
                ["#smtp", "inet", "postscreen"],
                ["#smtpd", "pass", "smtpd"],
                ["#dnsblog", "unix", "dnsblog"],
                ["#tlsproxy", "unix", "tlsproxy"],
            ];
            if cols.len() == 8 && cols[..2] == ["smtp", "inet"] && cols[7] == "smtpd" {
                format!("#{l}\n")
            } else if cols.len() == 8 && on.iter().any(|o| cols[..2] == o[..2] && cols[7] == o[2]) {
                format!("{}\n", &l[1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let iredmail = "submission inet n - n - - smtpd\n  -o syslog_name=postfix/submission\n  \
                    -o smtpd_sasl_auth_enable=yes\n  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n\
                    465 inet n - n - - smtpd\n  -o syslog_name=postfix/smtps\n  -o smtpd_tls_wrappermode=yes\n  \
                    -o smtpd_sasl_auth_enable=yes\n";
    std::fs::write(conf.join("master.cf"), master + iredmail).unwrap();
    // A lab instance has no chroot (see StockSite); postscreen's pregreet
    // wait at its minimum keeps the test short.
    pf.postconf(&["-F", "-e", "*/*/chroot=n"]).unwrap();
    pf.postconf(&["-e", "postscreen_greet_wait=1s"]).unwrap();
    let services = pf.postconf(&["-M", "smtp/inet", "smtpd/pass"]).unwrap();
    assert_eq!(services.lines().count(), 2, "{services}");
    assert!(services.contains("postscreen"), "{services}");
    assert!(
        pf.postconf(&["-h", "mynetworks"])
            .unwrap()
            .starts_with("127.0.0.0/8"),
        "loopback is trusted, as on iRedMail"
    );

    // The recipe's files from the real binary, the script run as the user would.
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, err) = ctl(
        None,
        &[
            "mailserver-config",
            "--stack",
            "iredmail",
            "--write",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("etc/postfix/ceres-proxy.sh"), "{stdout}");
    let script = run(Command::new("bash")
        .arg(out.path().join("etc/postfix/ceres-proxy.sh"))
        .env("MAIL_CONFIG", &conf))
    .unwrap();
    assert!(
        script.status.success(),
        "{}",
        String::from_utf8_lossy(&script.stderr)
    );
    pf.reload().unwrap();

    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 12525);
    // A reload returns before master has opened the new listeners.
    ceres_tests::wait_until(
        "Postfix listening on 127.0.0.1:12525",
        Duration::from_secs(20),
        || Ok(ceres_tests::postfix::smtp::connect(&ns, addr, Duration::from_secs(2)).is_ok()),
    )
    .unwrap();
    let session = |claim: IpAddr| {
        let header = proxy_v1(SocketAddr::new(claim, 40025), addr);
        let mut c = SmtpClient::connect(&ns, addr, Some(&header), IO).unwrap();
        c.expect("EHLO client.example.org", 250).unwrap();
        c.expect("MAIL FROM:<sender@example.org>", 250).unwrap();
        let foreign = c.command("RCPT TO:<someone@example.net>").unwrap();
        let local = c.command("RCPT TO:<alice@example.com>").unwrap();
        let transcript = c.transcript().to_owned();
        c.quit().unwrap();
        (foreign.code, local.code, transcript)
    };

    // A relayed client: mail for the site is taken, relaying refused, and
    // the log names the client from the header.
    let (foreign, local, t) = session(relayed);
    assert!(foreign == 454 || foreign == 554, "relay not refused:\n{t}");
    assert_eq!(local, 250, "{t}");
    let log = pf.log();
    assert!(pf.clients_seen().contains(&relayed), "log:\n{log}");
    assert!(
        log.contains("postfix/smtpd-proxyprotocol/smtpd["),
        "the session ran in ceres-smtpd:\n{log}"
    );

    // A header claiming loopback (a relay gone bad): still no relaying.
    let (foreign, _, t) = session(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(
        foreign == 454 || foreign == 554,
        "a claimed 127.0.0.1 relays:\n{t}"
    );

    // Control: handed to the stock `smtpd pass` (iRedMail's mynetworks), the
    // same header relays — which is what ceres-smtpd is there to prevent.
    pf.postconf(&["-P", "127.0.0.1:12525/inet/smtpd_service_name=smtpd"])
        .unwrap();
    pf.reload().unwrap();
    let (foreign, _, t) = session(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        foreign, 250,
        "control: the stock pass service trusts loopback\n{t}"
    );
}

/// `--stack` with the flags for a user's own installation: bad values and
/// flags that do not fit the stack are refused with what to give instead;
/// good ones change the output.
#[test]
fn stack_flags_are_checked_and_change_the_recipe() {
    let refused = [
        (
            &["--stack", "mailcow", "--docker-subnet4", "172.22.1.5/24"][..],
            2,
            "172.22.1.5/24 has host bits set: the network is 172.22.1.0/24",
        ),
        (
            &["--stack", "mailu", "--docker-subnet6", "fe80::/64"][..],
            2,
            "link-local",
        ),
        (
            &["--stack", "mailcow", "--docker-subnet4", "172.22.0.0/16"][..],
            1,
            "mailcow's network is always a /24",
        ),
        (
            &["--stack", "iredmail", "--docker-subnet4", "10.1.0.0/24"][..],
            1,
            "--docker-subnet4 is for stacks that run in Docker",
        ),
        (
            &["--stack", "stalwart", "--home-tunnel-address", "10.77.77.2"][..],
            1,
            "--home-tunnel-address is for iredmail",
        ),
        (
            &["--docker-subnet4", "10.0.0.0/24", "postfix"][..],
            2,
            "cannot be used with",
        ),
    ];
    for (args, want_code, want) in refused {
        let mut a = vec!["mailserver-config"];
        a.extend(args);
        let (code, out, err) = ctl(None, &a);
        assert_eq!(code, want_code, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed a recipe: {out}");
    }

    let (code, out, err) = ctl(
        None,
        &[
            "mailserver-config",
            "--stack",
            "mailcow",
            "--docker-subnet4",
            "172.30.1.0/24",
            "--docker-subnet6",
            "off",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CERES_EGRESS_FROM=172.30.1.0/24\n"), "{out}");
    assert!(
        out.contains("haproxy_trusted_networks = 172.30.1.1/32"),
        "{out}"
    );
    assert!(!out.contains("172.22.1.1"), "{out}");

    let (code, out, err) = ctl(
        None,
        &[
            "mailserver-config",
            "--stack",
            "iredmail",
            "--home-tunnel-address",
            "10.77.77.9/24",
            "--home-tunnel-address6",
            "fd00:77::9",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("smtp/unix/smtp_bind_address=10.77.77.9 "),
        "{out}"
    );
    assert!(
        out.contains("smtp/unix/smtp_bind_address6=fd00:77::9 "),
        "{out}"
    );
    assert!(!out.contains("inet_protocols=ipv4"), "{out}");
}
