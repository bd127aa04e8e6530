//! Issue 17, end to end: the VPS agent's watchdog and its notifications in
//! the namespace lab, with a webhook receiver (a small HTTP server in this
//! test, listening in the internet namespace), a real Postfix there taking
//! alert mail, and the lab's nsd as the VPS's resolver (MX of the alert
//! domain, the mail domain's records, two blocklists).
//!
//! - home killed: one "failing" after the alert delay, one "resolved" when
//!   home is back, nothing in between; the alert mail reaches Postfix from
//!   the VPS address; `cerectl alerts test` goes through both channels;
//! - the VPS address on a lab blocklist: the notification names the list
//!   and the code; a 127.255.255.254 answer is "query refused by the list";
//!   the SPF record changed to drop the VPS address: a notification at the
//!   next check; the delisting: "resolved";
//! - a flapping home: at most the budget of notifications.
//!
//! Intervals and delays are short, set by environment.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ceres_testkit::Nsd;
use ceres_tests::postfix::smtp::in_netns;
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Ceres, Daemon, Lab, Netns, addr, require_root, wait_until};
use serde_json::Value;

/// The webhook receiver, nsd and Postfix all live on the outside client's
/// address in the internet namespace.
const OUTSIDE: &str = addr::CLIENT;
const HOOK_PORT: u16 = 8080;
const ALERT_DOMAIN: &str = "alerts.example.net";
const ALERT_TO: &str = "ops@alerts.example.net";

/// nsd, or None (skip) when it is not installed outside CI.
fn nsd_binary() -> Option<PathBuf> {
    Nsd::binary()
}

/// A webhook receiver: answers every POST with 200 and keeps the JSON bodies.
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    ns: String,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = in_netns(ns, || TcpListener::bind(addr)).unwrap().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = conn
                    && let Some(body) = serve_one(stream)
                {
                    g.lock().unwrap().push(body);
                }
            }
        });
        Self {
            got,
            stop,
            ns: ns.name.clone(),
            addr,
            thread: Some(thread),
        }
    }

    /// Every notification so far, test notifications left out.
    fn notifications(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] != "test")
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a notification about `check` of kind `event`.
    fn wait_for(&self, check: &str, event: &str, timeout: Duration) -> Value {
        let mut found = None;
        wait_until(
            &format!("a {event} notification for {check}"),
            timeout,
            || {
                found = self
                    .all()
                    .into_iter()
                    .find(|v| v["check"] == check && v["event"] == event);
                Ok(found.is_some())
            },
        )
        .unwrap_or_else(|e| panic!("{e}; received so far: {:#?}", self.all()));
        found.unwrap()
    }

    /// (check, event) of every notification, in order.
    fn summary(&self) -> Vec<(String, String)> {
        self.notifications()
            .iter()
            .map(|v| {
                (
                    v["check"].as_str().unwrap_or("?").to_owned(),
                    v["event"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept (from inside the namespace, if it still exists).
        let addr = self.addr;
        let _ = ceres_tests::postfix::smtp::in_netns_named(&self.ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one POST, answers 200, returns its JSON body.
fn serve_one(stream: TcpStream) -> Option<Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut len = 0usize;
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    let mut out = stream;
    let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert!(first.starts_with("POST /hook "), "{first}");
    serde_json::from_slice(&body).ok()
}

fn soa(origin: &str, serial: u32) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 1\n@ IN SOA ns.example.com. hostmaster.example.com. ({serial} 60 60 600 1)\n\
         @ IN NS ns.example.com.\n"
    )
}

/// The mail domain, as it should be; `spf` is its SPF record.
fn mail_zone(serial: u32, spf: &str) -> String {
    format!(
        "{}@ IN MX 10 mail.example.com.\nmail IN A {}\nmail IN AAAA {}\n@ IN TXT \"{spf}\"\n",
        soa("example.com", serial),
        addr::VPS,
        addr::VPS6
    )
}

const GOOD_SPF: &str = "v=spf1 ip4:203.0.113.10 ip6:2001:db8:1::10 -all";

fn reverse_zones() -> Vec<(&'static str, String)> {
    vec![
        (
            "113.0.203.in-addr.arpa",
            format!(
                "{}10 IN PTR mail.example.com.\n",
                soa("113.0.203.in-addr.arpa", 1)
            ),
        ),
        (
            "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
            format!(
                "{}0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN PTR mail.example.com.\n",
                soa("1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", 1)
            ),
        ),
    ]
}

/// The lab blocklist: the VPS address listed (or not), and the RFC 5782
/// test entry always.
fn blocklist(serial: u32, vps_listed: bool) -> String {
    let mut z = soa("bl.lab.example", serial);
    z.push_str("2.0.0.127 IN A 127.0.0.2\n");
    if vps_listed {
        z.push_str("10.113.0.203 IN A 127.0.0.2\n10.113.0.203 IN TXT \"spam trap hit\"\n");
    }
    z
}

/// A blocklist that refuses this resolver, as Spamhaus does public ones.
fn refusing_list() -> String {
    format!(
        "{}10.113.0.203 IN A 127.255.255.254\n",
        soa("refuse.lab.example", 1)
    )
}

/// The alert recipients' domain: its MX is the Postfix outside.
fn alert_zone() -> String {
    format!(
        "{}@ IN MX 10 mx.{ALERT_DOMAIN}.\nmx IN A {OUTSIDE}\n",
        soa(ALERT_DOMAIN, 1)
    )
}

/// Starts nsd in the internet namespace and waits until it answers for
/// the first zone.
fn start_nsd(binary: &std::path::Path, lab: &Lab, zones: &[(&str, String)]) -> Nsd {
    let addr: SocketAddr = format!("{OUTSIDE}:53").parse().unwrap();
    let zones_ref: Vec<(&str, &str)> = zones.iter().map(|(n, t)| (*n, t.as_str())).collect();
    // Spawned from a thread in the namespace: nsd lives there.
    let mut nsd = in_netns(&lab.internet, || Nsd::spawn(binary, addr, &zones_ref))
        .unwrap()
        .unwrap();
    let first = zones[0].0;
    let ready = wait_until("nsd to answer", Duration::from_secs(20), || {
        if let Some(status) = nsd.exited()? {
            anyhow::bail!("nsd exited ({status}):\n{}", nsd.log());
        }
        in_netns(&lab.internet, || soa_answered(addr, first))?
    });
    if let Err(e) = ready {
        panic!("{e}\n{}", nsd.log());
    }
    nsd
}

/// One SOA query for `zone`: true when `server` answered it (NOERROR with
/// an answer).
fn soa_answered(server: SocketAddr, zone: &str) -> anyhow::Result<bool> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut q = vec![0x4c, 0x17, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.split('.') {
        q.push(u8::try_from(label.len())?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) if n >= 12 => Ok(buf[0..2] == [0x4c, 0x17] && buf[3] & 0x0f == 0 && buf[7] > 0),
        Ok(_) => Ok(false),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The watchdog's checks in `cerectl status --json`, by id.
fn check(ceres: &Ceres<'_>, id: &str) -> Value {
    let (_, json) = ceres.status_json().unwrap();
    json["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

fn wait_check(ceres: &Ceres<'_>, id: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("check {id} {state}"), timeout, || {
        last = check(ceres, id);
        Ok(last["state"] == state)
    })
    .unwrap_or_else(|e| panic!("{e}: {last:#}"));
    last
}

fn hook_url() -> String {
    format!("http://{OUTSIDE}:{HOOK_PORT}/hook")
}

/// Starts home and waits until the VPS sees it.
fn start_home(ceres: &Ceres<'_>) -> Daemon {
    let home = ceres.start_home().unwrap();
    ceres
        .wait_home_connected(true, Duration::from_secs(30))
        .unwrap();
    home
}

#[test]
fn home_killed_one_failing_one_resolved_and_the_alert_mail_comes_from_the_vps() {
    if !require_root("watch_lab::home_killed") {
        return;
    }
    let Some(nsd_bin) = nsd_binary() else { return };
    let lab = Lab::new().unwrap();
    let _nsd = start_nsd(&nsd_bin, &lab, &[(ALERT_DOMAIN, alert_zone())]);
    let hook = Receiver::start(
        &lab.internet,
        format!("{OUTSIDE}:{HOOK_PORT}").parse().unwrap(),
    );
    let sink = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![OUTSIDE.parse().unwrap()],
            &format!("mx.{ALERT_DOMAIN}"),
            &[ALERT_DOMAIN],
        ),
    )
    .unwrap();
    let ceres = Ceres::init(&lab, &[], &[]).unwrap();
    let delay = 4;
    let delay_env = format!("{delay}s");
    let url = hook_url();
    let resolver = format!("{OUTSIDE}:53");
    let _vps = ceres
        .start_vps_env(&[
            ("CERES_WATCH_INTERVAL", "1s"),
            ("CERES_ALERT_DELAY", &delay_env),
            ("CERES_ALERT_WEBHOOK", &url),
            ("CERES_ALERT_EMAIL", ALERT_TO),
            ("CERES_WATCH_RESOLVER", &resolver),
        ])
        .unwrap();
    ceres.join_home().unwrap();
    ceres.enroll_ctl().unwrap();
    let mut home = start_home(&ceres);
    wait_check(&ceres, "home", "ok", Duration::from_secs(30));

    // `cerectl alerts test`: one through each channel, and what happened.
    let (code, out, err) = ceres.ctl(&["alerts", "test"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "SENT   webhook http://{OUTSIDE}:{HOOK_PORT}/… (json): "
        )) && out.contains("answered 200 OK"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "SENT   email {ALERT_TO}: {ALERT_TO}: mx.{ALERT_DOMAIN} [{OUTSIDE}] accepted it: 250"
        )),
        "{out}"
    );
    let test = hook.wait_for("test", "test", Duration::from_secs(10));
    assert_eq!(test["mail_host"], "mail.example.com");
    sink.wait_for_message(
        |m| m.header("Subject") == Some("[mail.example.com] TEST: a test of this alert channel"),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(hook.notifications().is_empty(), "{:#?}", hook.all());

    // Home gone: one "failing", after the delay.
    home.kill9().unwrap();
    let failing = hook.wait_for("home", "failing", Duration::from_secs(60));
    assert_eq!(failing["state"], "failing");
    assert!(
        failing["detail"]
            .as_str()
            .unwrap()
            .starts_with("the home agent is not connected since"),
        "{failing:#}"
    );
    let held =
        failing["at_unix"].as_i64().unwrap() - failing["failing_since_unix"].as_i64().unwrap();
    assert!(
        held >= delay,
        "sent {held} s into the failure, before the {delay} s delay: {failing:#}"
    );
    let c = check(&ceres, "home");
    assert_eq!(
        (c["state"].as_str(), c["notified"].as_bool()),
        (Some("failing"), Some(true)),
        "{c:#}"
    );
    // The same by mail, from the VPS address, straight to the MX outside.
    let mail = sink
        .wait_for_message(
            |m| m.header("Subject") == Some("[mail.example.com] FAILING: Home agent and tunnel"),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        mail.header("From"),
        Some("CERES alerts <ceres-alerts@example.com>"),
        "{}",
        mail.content
    );
    assert_eq!(
        mail.header("Return-Path"),
        Some("<ceres-alerts@example.com>")
    );
    assert!(
        mail.content.contains(&format!("[{}])", addr::VPS)),
        "not received from the VPS address:\n{}",
        mail.content
    );
    assert!(
        mail.content
            .contains("the home agent is not connected since"),
        "{}",
        mail.content
    );
    assert_eq!(
        sink.remote_clients_seen(),
        [addr::VPS.parse().unwrap()].into_iter().collect(),
        "{}",
        sink.log()
    );

    // Home back: one "resolved".
    let _home = start_home(&ceres);
    let resolved = hook.wait_for("home", "resolved", Duration::from_secs(60));
    assert_eq!(resolved["state"], "ok", "{resolved:#}");
    sink.wait_for_message(
        |m| m.header("Subject") == Some("[mail.example.com] RESOLVED: Home agent and tunnel"),
        Duration::from_secs(60),
    )
    .unwrap();
    // Nothing else, before, between or (so far) after.
    assert_eq!(
        hook.summary(),
        [
            ("home".to_owned(), "failing".to_owned()),
            ("home".to_owned(), "resolved".to_owned())
        ],
        "{:#?}",
        hook.all()
    );
    let c = check(&ceres, "home");
    assert_eq!(
        (c["state"].as_str(), c["notified"].as_bool()),
        (Some("ok"), Some(false)),
        "{c:#}"
    );
    // Status counts the three mails (test, failing, resolved).
    let mut text = String::new();
    wait_until("status to count the mails", Duration::from_secs(10), || {
        text = ceres.ctl(&["status"])?.1;
        Ok(text.contains(&format!("alerts → email {ALERT_TO} · sent 3 · failed 0")))
    })
    .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert!(
        text.contains("watchdog (the VPS checks these itself)"),
        "{text}"
    );
}

#[test]
fn a_blocklist_listing_a_refusal_and_an_spf_change_are_told() {
    if !require_root("watch_lab::dns") {
        return;
    }
    let Some(nsd_bin) = nsd_binary() else { return };
    let lab = Lab::new().unwrap();
    let mut zones = vec![("example.com", mail_zone(1, GOOD_SPF))];
    zones.extend(reverse_zones());
    zones.push(("bl.lab.example", blocklist(1, true)));
    zones.push(("refuse.lab.example", refusing_list()));
    let nsd = start_nsd(&nsd_bin, &lab, &zones);
    let hook = Receiver::start(
        &lab.internet,
        format!("{OUTSIDE}:{HOOK_PORT}").parse().unwrap(),
    );
    let ceres = Ceres::init(&lab, &[], &[]).unwrap();
    let url = hook_url();
    let resolver = format!("{OUTSIDE}:53");
    let interval = "2s";
    let _vps = ceres
        .start_vps_env(&[
            ("CERES_WATCH_DNS", "on"),
            ("CERES_WATCH_DNS_INTERVAL", interval),
            ("CERES_WATCH_DNSBL_INTERVAL", interval),
            (
                "CERES_WATCH_DNSBL_ZONES",
                "bl.lab.example,refuse.lab.example",
            ),
            ("CERES_WATCH_RESOLVER", &resolver),
            ("CERES_ALERT_WEBHOOK", &url),
        ])
        .unwrap();
    ceres.enroll_ctl().unwrap();

    // Listed: the notification names the list and the code; the refusing
    // list is "query refused by the list", not a listing.
    let listed = hook.wait_for("dnsbl", "failing", Duration::from_secs(30));
    let findings = listed["findings"].as_array().unwrap();
    let on = |zone: &str| {
        findings
            .iter()
            .find(|f| f["subject"] == format!("{} on {zone}", addr::VPS))
            .unwrap_or_else(|| panic!("no finding for {zone}: {listed:#}"))
    };
    assert_eq!(on("bl.lab.example")["state"], "failing");
    assert_eq!(
        on("bl.lab.example")["text"],
        "listed (127.0.0.2): spam trap hit"
    );
    assert_eq!(on("refuse.lab.example")["state"], "warning");
    let refused = on("refuse.lab.example")["text"].as_str().unwrap();
    assert!(
        refused.starts_with("query refused by the list (127.255.255.254: "),
        "{refused}"
    );
    let text = listed["message"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "{} on bl.lab.example: listed (127.0.0.2)",
            addr::VPS
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} on refuse.lab.example: query refused by the list",
            addr::VPS
        )),
        "{text}"
    );
    assert!(!text.contains("refuse.lab.example: listed"), "{text}");
    // `cerectl status`: the check, its findings, and a problem.
    let c = wait_check(&ceres, "dnsbl", "failing", Duration::from_secs(10));
    assert_eq!(c["findings"].as_array().unwrap().len(), 3, "{c:#}");
    let (code, json) = ceres.status_json().unwrap();
    assert_eq!(code, 1);
    assert!(
        json["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with("DNS blocklists (dnsbl check): ")),
        "{json:#}"
    );
    // The correct records pass: nothing told about them.
    for id in ["spf", "ptr", "mx"] {
        wait_check(&ceres, id, "ok", Duration::from_secs(30));
    }

    // SPF no longer authorises the VPS's IPv4 address: told at the next run.
    nsd.replace_zone(0, &mail_zone(2, "v=spf1 ip6:2001:db8:1::10 -all"))
        .unwrap();
    let spf = hook.wait_for("spf", "failing", Duration::from_secs(30));
    let f = &spf["findings"][0];
    assert_eq!(f["subject"], format!("SPF {}", addr::VPS), "{spf:#}");
    assert_eq!(f["state"], "failing");
    assert!(
        f["text"]
            .as_str()
            .unwrap()
            .contains(&format!("add ip4:{} to the SPF record", addr::VPS)),
        "{spf:#}"
    );

    // Delisted: resolved; what remains is the refusal, a warning.
    nsd.replace_zone(3, &blocklist(2, false)).unwrap();
    let resolved = hook.wait_for("dnsbl", "resolved", Duration::from_secs(30));
    assert_eq!(resolved["state"], "warning", "{resolved:#}");
    assert!(
        resolved["message"]
            .as_str()
            .unwrap()
            .contains("Now warning: ")
            && resolved["detail"]
                .as_str()
                .unwrap()
                .contains("query refused by the list"),
        "{resolved:#}"
    );
    assert_eq!(
        hook.summary(),
        [
            ("dnsbl".to_owned(), "failing".to_owned()),
            ("spf".to_owned(), "failing".to_owned()),
            ("dnsbl".to_owned(), "resolved".to_owned()),
        ],
        "{:#?}",
        hook.all()
    );
    drop(nsd);
}

#[test]
fn a_flapping_home_sends_no_more_than_the_budget() {
    if !require_root("watch_lab::flapping") {
        return;
    }
    let lab = Lab::new().unwrap();
    let hook = Receiver::start(
        &lab.internet,
        format!("{OUTSIDE}:{HOOK_PORT}").parse().unwrap(),
    );
    let ceres = Ceres::init(&lab, &[], &[]).unwrap();
    let url = hook_url();
    // Each down and up phase (10 s) outlasts the hold-down (3 s), so only
    // the budget stands between a flapping home and 12 messages.
    let max_per_hour = 2;
    let budget = max_per_hour.to_string();
    let _vps = ceres
        .start_vps_env(&[
            ("CERES_WATCH_INTERVAL", "1s"),
            ("CERES_ALERT_DELAY", "3s"),
            ("CERES_ALERT_MAX_PER_HOUR", &budget),
            ("CERES_ALERT_WEBHOOK", &url),
        ])
        .unwrap();
    ceres.join_home().unwrap();
    ceres.enroll_ctl().unwrap();
    let mut home = start_home(&ceres);
    wait_check(&ceres, "home", "ok", Duration::from_secs(30));
    // Down 10 s, up 10 s, for two minutes.
    for _ in 0..6 {
        home.kill9().unwrap();
        ceres
            .wait_home_connected(false, Duration::from_secs(20))
            .unwrap();
        std::thread::sleep(Duration::from_secs(10));
        home = start_home(&ceres);
        std::thread::sleep(Duration::from_secs(10));
    }
    // Home stays up now: the last word must be "resolved".
    wait_until(
        "the last notification to be resolved",
        Duration::from_secs(30),
        || Ok(hook.summary().last().is_some_and(|(_, e)| e == "resolved")),
    )
    .unwrap_or_else(|e| panic!("{e}: {:#?}", hook.all()));
    let sent = hook.summary();
    let failing = sent.iter().filter(|(_, e)| e == "failing").count();
    // The design's bound: per check and hour at most CERES_ALERT_MAX_PER_HOUR
    // "failing", each followed by at most one "resolved".
    // Six failures that each outlasted the delay: the budget, not the
    // hold-down, is what kept it to two.
    eprintln!("notifications while flapping: {sent:?}");
    assert!(
        failing == max_per_hour && sent.len() <= 2 * max_per_hour,
        "{sent:?}"
    );
    for (i, (check, event)) in sent.iter().enumerate() {
        assert_eq!(check, "home", "{sent:?}");
        let expected = if i % 2 == 0 { "failing" } else { "resolved" };
        assert_eq!(event, expected, "not alternating: {sent:?}");
    }
    let c = check(&ceres, "home");
    assert_eq!(c["state"], "ok", "{c:#}");
    drop(home);
}
