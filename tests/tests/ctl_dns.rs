//! Issue 6, the DNS half: `cerectl dns` and `cerectl doctor` against a real VPS
//! agent, a real enrolled `cerectl` and a real authoritative DNS server (nsd)
//! serving lab zones on a loopback address of this test's own.
//!
//! No root needed. Every query goes to the lab's nsd (`--resolver` always):
//! no real resolver is ever asked.
//!
//! The VPS's public address is the documentation address 203.0.113.10 while
//! its control plane listens on loopback. It cannot be the loopback address
//! itself: hickory-resolver answers PTR questions under 127.in-addr.arpa
//! locally with "localhost" (RFC 6761) without asking any server, so a PTR
//! check of a 127.x.y.z address could never pass.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ceres_tests::{Daemon, addr, bin, loopback_ip, run, sh};
use serde_json::Value;

/// The VPS's public address as the lab's DNS knows it.
const VPS_IP: &str = addr::VPS;
/// Its reverse zone and the record name inside it.
const REVERSE_ZONE: &str = "113.0.203.in-addr.arpa";
const DOMAIN: &str = "example.com";
const MAIL_HOST: &str = "mail.example.com";
const SELECTOR: &str = "s1";
const READY: Duration = Duration::from_secs(20);

/// Ports on this process's own loopback address, one pair per lab, so tests
/// sharing a process (plain `cargo test`) do not collide either.
static NEXT: AtomicU16 = AtomicU16::new(0);

fn next_ports() -> (u16, u16) {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    (17443 + n, 25353 + n)
}

/// nsd, or None (skip) when it is not installed outside CI.
fn nsd_binary() -> Option<PathBuf> {
    ceres_testkit::Nsd::binary()
}

/// The lab's authoritative server ([`ceres_testkit::Nsd`]) on the loopback
/// address, ready once it answers.
struct Nsd(ceres_testkit::Nsd);

impl Nsd {
    fn start(binary: &Path, port: u16, zones: &[(&str, String)]) -> Result<Self> {
        let addr: SocketAddr = format!("{}:{port}", loopback_ip()).parse()?;
        let zones: Vec<(&str, &str)> = zones.iter().map(|(n, z)| (*n, z.as_str())).collect();
        let mut nsd =
            Self(ceres_testkit::Nsd::spawn(binary, addr, &zones).context("starting nsd")?);
        nsd.wait_ready(zones.first().map(|z| z.0).unwrap_or(DOMAIN))?;
        Ok(nsd)
    }

    fn log(&self) -> String {
        self.0.log()
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Ready when it answers the SOA of its first zone; an early exit fails at once.
    fn wait_ready(&mut self, zone: &str) -> Result<()> {
        let deadline = Instant::now() + READY;
        loop {
            if soa_answered(self.addr(), zone)? {
                return Ok(());
            }
            if let Some(status) = self.0.exited()? {
                bail!("nsd exited ({status}) before answering:\n{}", self.log());
            }
            // nsd keeps running without a zone it could not read: say why at once.
            if self
                .log()
                .lines()
                .any(|l| l.contains(" read with ") && !l.contains(" read with success"))
            {
                bail!("nsd refused a zone:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("nsd did not answer within {READY:?}:\n{}", self.log());
            }
        }
    }

    fn resolver(&self) -> String {
        self.addr().to_string()
    }
}

/// One hand-made DNS question (SOA, class IN) over UDP: true when the server
/// answers NOERROR with at least one answer record. Waits at most 200 ms for
/// the reply, so the caller's loop notices a dead nsd promptly.
fn soa_answered(server: SocketAddr, zone: &str) -> Result<bool> {
    let sock = UdpSocket::bind(SocketAddr::new(server.ip(), 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut q = vec![0xce, 0x5e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(n >= 12
            && buf[..2] == q[..2]
            && buf[3] & 0x0f == 0
            && u16::from_be_bytes([buf[6], buf[7]]) > 0),
        // Not listening yet (ICMP port unreachable) or no answer yet.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// A real `ceres-vps` (tunnel off, so no root) for example.com with public
/// address 203.0.113.10, its control plane on this process's loopback
/// address, and a `cerectl` enrolled with it.
struct Vps {
    dir: tempfile::TempDir,
    daemon: Daemon,
    ctl_dir: PathBuf,
}

impl Vps {
    fn start(control_port: u16) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ceres-ctl-dns-")
            .tempdir()?;
        let control = format!("{}:{control_port}", loopback_ip());
        let config = dir.path().join("vps.env");
        std::fs::write(
            &config,
            format!(
                "CERES_PUBLIC_IP={VPS_IP}\nCERES_DOMAIN={DOMAIN}\nCERES_MAIL_HOST={MAIL_HOST}\n\
                 CERES_CONTROL_LISTEN={control}\nCERES_CONTROL_ADDRESS={control}\nCERES_TUNNEL=off\n\
                 CERES_WATCH_DNS=off\n"
            ),
        )?;
        let vps = |args: &[&str]| {
            let mut cmd = Command::new(bin("ceres-vps"));
            cmd.arg("--config")
                .arg(&config)
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .args(args);
            cmd
        };
        sh(&mut vps(&["init"]))?;
        let mut daemon = Daemon::spawn("vps", vps(&["run"]), dir.path())?;
        daemon.wait_ready(READY)?;
        let token = sh(&mut vps(&[
            "token", "create", "--role", "admin", "--ttl", "1h",
        ]))?;
        let ctl_dir = dir.path().join("ctl");
        sh(Command::new(bin("cerectl"))
            .arg("--dir")
            .arg(&ctl_dir)
            .args(["enroll", token.trim()]))?;
        Ok(Self {
            dir,
            daemon,
            ctl_dir,
        })
    }

    /// `cerectl --dir CTL ARGS` (never from a terminal, no DKIM selector in
    /// the environment): (exit code, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        ctl_in(&self.ctl_dir, args, &[])
    }
}

fn ctl_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("cerectl"));
    cmd.arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("CERES_DKIM_SELECTOR")
        .env_remove("NO_COLOR");
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

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn soa(origin: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60\n\
         @ IN NS ns1.example.com.\n"
    )
}

/// A 2048-bit RSA DKIM key as mail software publishes it: longer than one
/// TXT character-string may be (255 bytes), so split into several.
fn dkim_txt() -> String {
    let record = format!(
        "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}IDAQAB",
        "Q".repeat(342)
    );
    record
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The correct example.com zone: exactly what `cerectl dns --format zone`
/// prints (asked of the real VPS), plus SOA/NS and the DKIM key.
fn correct_zone(vps: &Vps) -> String {
    let (code, snippet, err) = vps.ctl(&["dns", "--format", "zone", "--dkim-selector", SELECTOR]);
    assert_eq!(code, 0, "{err}");
    assert!(
        snippet.contains(&format!("{MAIL_HOST}. ")) && snippet.contains(VPS_IP),
        "{snippet}"
    );
    format!(
        "{}ns1 IN A 192.0.2.53\n{snippet}{SELECTOR}._domainkey IN TXT {}\n",
        soa(DOMAIN),
        dkim_txt()
    )
}

fn reverse_zone(ptr_target: &str) -> (&'static str, String) {
    (
        REVERSE_ZONE,
        format!("{}10 IN PTR {ptr_target}.\n", soa(REVERSE_ZONE)),
    )
}

/// Blocklists: `bl.example` lists the VPS address (RFC 5782 style, with a
/// reason), `clean.example` lists nobody.
fn blocklist_zones() -> Vec<(&'static str, String)> {
    vec![
        (
            "bl.example",
            format!(
                "{}10.113.0.203 IN A 127.0.0.2\n10.113.0.203 IN TXT \"lab blocklist: spam trap hit\"\n",
                soa("bl.example")
            ),
        ),
        ("clean.example", soa("clean.example")),
    ]
}

/// The checks of a `--json` report, asserting the documented fields on each.
fn checks(report: &Value) -> Vec<Value> {
    for key in ["domain", "mail_host", "ok", "summary", "checks"] {
        assert!(report.get(key).is_some(), "no {key:?} in {report:#}");
    }
    for key in ["pass", "warn", "fail", "error"] {
        assert!(report["summary"][key].is_u64(), "summary.{key}: {report:#}");
    }
    let checks = report["checks"].as_array().unwrap().clone();
    for c in &checks {
        for key in [
            "kind", "name", "address", "status", "found", "expected", "fix",
        ] {
            assert!(c.get(key).is_some(), "no {key:?} in {c:#}");
        }
    }
    checks
}

/// The one check of `kind` (and `address`, if given).
fn check<'a>(checks: &'a [Value], kind: &str, address: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = checks
        .iter()
        .filter(|c| c["kind"] == kind && address.is_none_or(|a| c["address"] == a))
        .collect();
    assert_eq!(found.len(), 1, "{kind} {address:?} in {checks:#?}");
    found[0]
}

fn assert_check(c: &Value, status: &str, found: &str) {
    assert_eq!(c["status"], status, "{c:#}");
    let text = c["found"].as_str().unwrap();
    assert!(
        text.contains(found),
        "found {text:?} lacks {found:?}: {c:#}"
    );
    if status != "pass" {
        assert!(
            c["fix"].is_string(),
            "a failing check says what to fix: {c:#}"
        );
    }
}

/// The lines of a plain-text report that carry a verdict.
/// The text with every run of spaces made one: doctor sizes its name column
/// from every check it runs, so assertions on a row's content ignore padding.
fn squashed(text: &str) -> String {
    text.split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn verdict_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| {
            ["PASS ", "WARN ", "FAIL ", "ERROR "]
                .iter()
                .any(|s| l.starts_with(s))
        })
        .collect()
}

#[test]
fn dns_prints_the_checklist_from_the_vps_and_the_zone_snippet_loads_in_nsd() {
    let Some(nsd_bin) = nsd_binary() else { return };
    let (control, dns_port) = next_ports();
    let vps = Vps::start(control).unwrap();

    // Text: the domain, mail host and address come from the VPS over mTLS.
    let (code, text, err) = vps.ctl(&["dns"]);
    assert_eq!(code, 0, "{err}");
    println!("{text}");
    for needle in [
        format!("DNS records for {DOMAIN} (mail host {MAIL_HOST})"),
        format!("A     {MAIL_HOST}"),
        format!("10 {MAIL_HOST}"),
        format!("v=spf1 ip4:{VPS_IP} mx -all"),
        format!("v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}; fo=1"),
        format!("<selector>._domainkey.{DOMAIN}"),
        format!("PTR   {VPS_IP}"),
    ] {
        assert!(text.contains(&needle), "no {needle:?} in:\n{text}");
    }
    assert!(!text.contains('\x1b'), "no colour when piped:\n{text}");

    // The selector from the environment names the DKIM record.
    let (code, text, err) = ctl_in(
        &vps.ctl_dir,
        &["dns"],
        &[("CERES_DKIM_SELECTOR", "Mail2026")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!("mail2026._domainkey.{DOMAIN}")),
        "{text}"
    );

    // JSON with the documented fields.
    let (code, out, err) = vps.ctl(&["dns", "--json", "--dkim-selector", SELECTOR]);
    assert_eq!(code, 0, "{err}");
    let list = json(&out);
    assert_eq!(list["domain"], DOMAIN);
    assert_eq!(list["mail_host"], MAIL_HOST);
    let records = list["records"].as_array().unwrap();
    for r in records {
        for key in [
            "set_at", "purpose", "type", "name", "value", "priority", "address", "note",
        ] {
            assert!(r.get(key).is_some(), "no {key:?} in {r:#}");
        }
    }
    let by = |purpose: &str| -> &Value {
        records
            .iter()
            .find(|r| r["purpose"] == purpose)
            .unwrap_or_else(|| panic!("no {purpose} in {list:#}"))
    };
    assert_eq!(by("address")["type"], "A");
    assert_eq!(by("address")["value"], VPS_IP);
    assert_eq!(by("mx")["priority"], 10);
    assert_eq!(by("mx")["value"], MAIL_HOST);
    assert_eq!(by("spf")["value"], format!("v=spf1 ip4:{VPS_IP} mx -all"));
    assert_eq!(
        by("dkim")["name"],
        format!("{SELECTOR}._domainkey.{DOMAIN}")
    );
    assert!(by("dkim")["value"].is_null());
    assert_eq!(by("ptr")["set_at"], "vps_provider");
    assert_eq!(by("ptr")["name"], format!("10.{REVERSE_ZONE}"));
    assert_eq!(by("ptr")["address"], VPS_IP);

    // `--format zone` is a zone nsd accepts: its own checker, then nsd serving it.
    let zone = correct_zone(&vps);
    let file = vps.dir.path().join("example.com.zone");
    std::fs::write(&file, &zone).unwrap();
    let out = run(Command::new("/usr/sbin/nsd-checkzone")
        .arg(DOMAIN)
        .arg(&file))
    .unwrap();
    assert!(
        out.status.success(),
        "nsd-checkzone refused:\n{zone}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let nsd = Nsd::start(&nsd_bin, dns_port, &[(DOMAIN, zone)]).unwrap();
    assert!(soa_answered(nsd.addr(), DOMAIN).unwrap(), "{}", nsd.log());

    // Offline: no enrolment, no VPS, just flags.
    let empty = vps.dir.path().join("no-credentials");
    let (code, text, err) = ctl_in(
        &empty,
        &[
            "dns",
            "--domain",
            "example.org",
            "--public-ip",
            "198.51.100.7,2001:db8::7",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("AAAA  mail.example.org"), "{text}");
    assert!(text.contains("ip4:198.51.100.7 ip6:2001:db8::7"), "{text}");
}

#[test]
fn dns_check_passes_every_record_of_a_correct_zone() {
    let Some(nsd_bin) = nsd_binary() else { return };
    let (control, dns_port) = next_ports();
    let vps = Vps::start(control).unwrap();
    let nsd = Nsd::start(
        &nsd_bin,
        dns_port,
        &[(DOMAIN, correct_zone(&vps)), reverse_zone(MAIL_HOST)],
    )
    .unwrap();
    let resolver = nsd.resolver();

    let (code, text, err) = vps.ctl(&[
        "dns",
        "--check",
        "--resolver",
        resolver.as_str(),
        "--dkim-selector",
        SELECTOR,
    ]);
    println!("{text}");
    assert_eq!(code, 0, "{text}\n{err}\n{}", nsd.log());
    let lines = verdict_lines(&text);
    // A, AAAA (none, and none published), MX, SPF record, SPF for the
    // address, DMARC, DKIM, PTR.
    assert_eq!(lines.len(), 8, "{text}");
    for l in &lines {
        assert!(l.starts_with("PASS "), "{l}\n{text}");
    }
    assert!(
        text.contains("8 passed, 0 warnings, 0 failed, 0 not checked"),
        "{text}"
    );

    // On a terminal: colour and symbols, unless NO_COLOR is set.
    let on_tty = |no_color: bool| {
        let cmd = format!(
            "{} --dir {} dns --check --resolver {resolver} --dkim-selector {SELECTOR}",
            bin("cerectl").display(),
            vps.ctl_dir.display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &cmd, "/dev/null"]);
        if no_color {
            script.env("NO_COLOR", "1");
        } else {
            script.env_remove("NO_COLOR");
        }
        let out = run(&mut script).unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fancy = on_tty(false);
    assert!(fancy.contains("\x1b[32m✔ PASS"), "{fancy}");
    let plain = on_tty(true);
    assert!(
        !plain.contains('\x1b') && plain.contains("PASS "),
        "{plain}"
    );

    // JSON, with the selector from the environment this time.
    let (code, out, err) = ctl_in(
        &vps.ctl_dir,
        &["dns", "--check", "--json", "--resolver", resolver.as_str()],
        &[("CERES_DKIM_SELECTOR", SELECTOR)],
    );
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["domain"], DOMAIN);
    assert_eq!(report["mail_host"], MAIL_HOST);
    let checks = checks(&report);
    for c in &checks {
        assert_eq!(c["status"], "pass", "{c:#}");
        assert!(c["fix"].is_null(), "{c:#}");
    }
    assert_check(check(&checks, "a", None), "pass", VPS_IP);
    assert_check(check(&checks, "mx", None), "pass", MAIL_HOST);
    assert_check(check(&checks, "spf", Some(VPS_IP)), "pass", "pass");
    assert_check(check(&checks, "dkim", None), "pass", "rsa key");
    assert_check(check(&checks, "ptr", None), "pass", "forward-confirmed");
}

#[test]
fn dns_check_reports_each_wrong_record_with_what_was_found() {
    let Some(nsd_bin) = nsd_binary() else { return };
    let (control, dns_port) = next_ports();
    let vps = Vps::start(control).unwrap();
    // Each record wrong in its own way.
    let broken = format!(
        "{}ns1 IN A 192.0.2.53\n\
         mail IN A 203.0.113.99\n\
         mail IN AAAA 2001:db8::99\n\
         @ IN MX 10 mx.elsewhere.example.\n\
         @ IN TXT \"v=spf1 ip4:198.51.100.1 -all\"\n\
         _dmarc IN TXT \"v=DMARC1; p=maybe\"\n\
         {SELECTOR}._domainkey IN TXT \"v=DKIM1; k=rsa\"\n",
        soa(DOMAIN)
    );
    let nsd = Nsd::start(
        &nsd_bin,
        dns_port,
        &[(DOMAIN, broken), reverse_zone("host.other.example")],
    )
    .unwrap();
    let resolver = nsd.resolver();
    let args = [
        "dns",
        "--check",
        "--resolver",
        resolver.as_str(),
        "--dkim-selector",
        SELECTOR,
    ];

    let (code, text, err) = vps.ctl(&args);
    println!("{text}");
    assert_eq!(code, 1, "{text}\n{err}");
    let lines = verdict_lines(&text);
    for (kind, found) in [
        ("A", "203.0.113.99"),
        ("AAAA", "2001:db8::99"),
        ("MX", "10 mx.elsewhere.example"),
        ("SPF", "fail for 203.0.113.10"),
        ("DMARC", "p=maybe"),
        ("DKIM", "p= tag is missing"),
        ("PTR", "host.other.example"),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with("FAIL ")
                && l.split_whitespace().nth(1) == Some(kind)
                && l.contains(found)),
            "no failing {kind} line mentioning {found:?}:\n{text}"
        );
    }
    assert!(text.contains("expected: "), "{text}");
    assert!(text.contains("fix: "), "{text}");

    let (code, out, err) = vps.ctl(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 1, "{err}");
    let report = json(&out);
    assert_eq!(report["ok"], false);
    let checks = checks(&report);
    assert_check(check(&checks, "a", None), "fail", "203.0.113.99");
    assert_check(check(&checks, "aaaa", None), "fail", "2001:db8::99");
    assert_check(check(&checks, "mx", None), "fail", "mx.elsewhere.example");
    // The SPF record itself is valid; it just does not authorise the VPS.
    let spf_record = checks
        .iter()
        .find(|c| c["kind"] == "spf" && c["address"].is_null())
        .unwrap();
    assert_check(spf_record, "pass", "ip4:198.51.100.1");
    assert_check(
        check(&checks, "spf", Some(VPS_IP)),
        "fail",
        "fail for 203.0.113.10",
    );
    assert_check(check(&checks, "dmarc", None), "fail", "\"maybe\"");
    assert_check(check(&checks, "dkim", None), "fail", "p= tag is missing");
    assert_check(check(&checks, "ptr", None), "fail", "host.other.example");
    assert_eq!(report["summary"]["fail"], 7, "{report:#}");
    assert_eq!(report["summary"]["pass"], 1, "{report:#}");
}

#[test]
fn doctor_reports_a_blocklist_listing_and_a_clean_list() {
    let Some(nsd_bin) = nsd_binary() else { return };
    let (control, dns_port) = next_ports();
    let vps = Vps::start(control).unwrap();
    let mut zones = vec![(DOMAIN, correct_zone(&vps)), reverse_zone(MAIL_HOST)];
    zones.extend(blocklist_zones());
    let nsd = Nsd::start(&nsd_bin, dns_port, &zones).unwrap();
    let resolver = nsd.resolver();
    let doctor = |zones: &str, json: bool| {
        let mut args = vec![
            "doctor",
            // DNS-only lab: no mail ports to probe (203.0.113.10 is not here).
            "--skip-mail",
            "--resolver",
            resolver.as_str(),
            "--dkim-selector",
            SELECTOR,
            "--dnsbl-zones",
            zones,
        ];
        if json {
            args.push("--json");
        }
        vps.ctl(&args)
    };

    let (code, text, err) = doctor("bl.example", false);
    println!("{text}");
    assert_eq!(code, 1, "{text}\n{err}");
    assert!(text.contains("DNS records"), "{text}");
    assert!(text.contains("Blocklists (DNSBL)"), "{text}");
    assert!(
        squashed(&text).contains(&format!(
            "FAIL DNSBL {VPS_IP} in bl.example LISTED (127.0.0.2): lab blocklist: spam trap hit"
        )),
        "{text}"
    );
    assert!(text.contains("request delisting at bl.example"), "{text}");
    // Only the listing fails: the DNS records are right.
    let lines = verdict_lines(&text);
    assert_eq!(
        lines.iter().filter(|l| !l.starts_with("PASS ")).count(),
        1,
        "{text}"
    );

    let (code, out, err) = doctor("bl.example", true);
    assert_eq!(code, 1, "{err}");
    let report = json(&out);
    let checks = checks(&report);
    let listed = check(&checks, "dnsbl", Some(VPS_IP));
    assert_check(listed, "fail", "LISTED (127.0.0.2)");
    assert_eq!(listed["name"], "bl.example");
    assert_eq!(report["summary"]["fail"], 1, "{report:#}");

    let (code, text, err) = doctor("clean.example", false);
    println!("{text}");
    assert_eq!(code, 0, "{text}\n{err}");
    assert!(
        squashed(&text).contains(&format!("PASS DNSBL {VPS_IP} in clean.example not listed")),
        "{text}"
    );
    let (code, out, _) = doctor("clean.example,bl.example", true);
    assert_eq!(code, 1);
    let report = json(&out);
    let dnsbl: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "dnsbl")
        .collect();
    assert_eq!(dnsbl.len(), 2, "{report:#}");
}

#[test]
fn exit_codes_for_an_unreachable_vps_and_bad_usage() {
    let (control, _) = next_ports();
    let mut vps = Vps::start(control).unwrap();
    vps.daemon.terminate(Duration::from_secs(10)).unwrap();

    let (code, _, err) = vps.ctl(&["dns"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--domain and --public-ip"), "{err}");
    let (code, _, err) = vps.ctl(&["doctor", "--resolver", "127.0.0.1:1"]);
    assert_eq!(code, 3, "{err}");

    // Not enrolled at all: also "could not get it" (3), with the hint.
    let (code, _, err) = ctl_in(&vps.dir.path().join("nobody"), &["dns"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("enrol"), "{err}");

    // Flags make the VPS unnecessary.
    let (code, out, err) = vps.ctl(&[
        "dns",
        "--domain",
        DOMAIN,
        "--public-ip",
        VPS_IP,
        "--format",
        "zone",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{MAIL_HOST}.")), "{out}");

    for bad in [
        &["dns", "--check", "--format", "zone"][..],
        &["dns", "--json", "--format", "text"],
        &["dns", "--resolver", "127.0.0.1"],
        &["dns", "--check", "--resolver", "dns.example"],
        &["dns", "--domain", "not a domain", "--public-ip", VPS_IP],
        &["dns", "--public-ip", "203.0.113.x"],
        &["doctor", "--dnsbl-zones", "nodot"],
    ] {
        let (code, _, err) = vps.ctl(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
}
