//! Issue 16, the cerectl side: `cerectl` enrolled with two real VPS agents
//! (namespaces `vps` and `vps-b`, one home joined to the first) shows both in
//! one `status` with a summary, names the one that is down (refused, then
//! silent past its time limit) while still printing the other, and
//! `dns --check` against the lab's nsd passes for records covering both and
//! fails naming the VPS whose MX and SPF entry are taken out.
//!
//! The home agent joins one VPS: the second has no home, and its problems
//! are expected and named.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use ceres_tests::extra_vps::ExtraVps;
use ceres_tests::{Ceres, Lab, addr, require_root, wait_until};
use serde_json::Value;

const VPS_B: &str = "203.0.113.20";
/// The lab's authoritative DNS server, on the internet router.
const RESOLVER: &str = "192.0.2.53";
const SELECTOR: &str = "s1";

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

#[test]
fn cerectl_with_two_vpses_shows_both_names_the_dead_one_and_checks_dns_for_both() {
    if !require_root("cerectl_with_two_vpses_shows_both_names_the_dead_one_and_checks_dns_for_both")
    {
        return;
    }
    let Some(nsd_bin) = ceres_testkit::Nsd::binary() else {
        return;
    };
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &["CERES_MAIL_HOST=mx1.example.com"], &[]).unwrap();
    // VPS A with home joined, and cerectl enrolled with it first (default
    // name: the host in its token, 203.0.113.10).
    let (_vps_a, _home) = ceres.up().unwrap();
    let b = ExtraVps::init(&lab, "vps-b", VPS_B, &["CERES_MAIL_HOST=mx2.example.com"]).unwrap();
    let mut vps_b = b.start(&lab).unwrap();
    let ctl = |args: &[&str]| ceres.ctl(args).unwrap();

    // --- enrolment of the second VPS -------------------------------------
    // Under a name that is taken: refused before the token is spent.
    let token = b.token("admin").unwrap();
    let (code, _, err) = ctl(&["enroll", &token, "--vps", addr::VPS]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "a VPS named \"{}\" is already enrolled",
            addr::VPS
        )) && err.contains("the token was not used"),
        "{err}"
    );
    // The same token, under a free name: it was not spent.
    let (code, out, err) = ctl(&["enroll", &token, "--vps", "vps-b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("VPS          vps-b (priority 20)"), "{out}");
    assert!(out.contains("enrolled with 2 VPSes"), "{out}");
    // The same VPS again under another name would count it twice.
    let again = b.token("admin").unwrap();
    let (code, _, err) = ctl(&["enroll", &again, "--vps", "b-again"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already enrolled as \"vps-b\""), "{err}");

    let (code, out, err) = ctl(&["vps", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list = json(&out);
    let vpses = list["vpses"].as_array().unwrap();
    assert_eq!(vpses.len(), 2, "{list:#}");
    assert_eq!(vpses[0]["name"], addr::VPS);
    assert_eq!(vpses[0]["priority"], 10);
    assert_eq!(vpses[0]["control_address"], format!("{}:7443", addr::VPS));
    assert_eq!(vpses[1]["name"], "vps-b");
    assert_eq!(vpses[1]["priority"], 20);
    assert!(vpses[1]["certificate_not_after"].is_string(), "{list:#}");
    // The first VPS is where a single VPS always was; the second beside it.
    assert!(ceres.ctl_dir.join("admin.pem").exists());
    assert!(ceres.ctl_dir.join("vps/vps-b/admin.pem").exists());

    // --- status of both ----------------------------------------------------
    let mut last = Value::Null;
    wait_until(
        // Home's first report (with its egress) follows its session by a moment.
        "VPS A ok, in and out, in the status of both",
        Duration::from_secs(30),
        || {
            let (_, out, _) = ceres.ctl(&["status", "--json"])?;
            last = serde_json::from_str(&out)?;
            let a = &last["vpses"][0];
            Ok(a["ok"] == true && a["inbound"] == true && a["outbound"] == true)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; last status: {last:#}"));
    let (code, out, err) = ctl(&["status", "--json"]);
    assert_eq!(code, 1, "B has no home, so not all is well: {out}\n{err}");
    let all = json(&out);
    assert_eq!(all["schema"], 1);
    assert_eq!(all["ok"], false);
    assert_eq!(all["vpses"][0]["name"], addr::VPS);
    assert_eq!(all["vpses"][0]["inbound"], true, "{all:#}");
    assert_eq!(all["vpses"][0]["outbound"], true, "{all:#}");
    assert_eq!(
        all["vpses"][0]["status"]["vps"]["mail_host"],
        "mx1.example.com"
    );
    assert_eq!(all["vpses"][1]["name"], "vps-b");
    assert_eq!(all["vpses"][1]["answered"], true);
    assert_eq!(all["vpses"][1]["status"]["home"]["connected"], false);
    assert_eq!(
        all["vpses"][1]["status"]["vps"]["mail_host"],
        "mx2.example.com"
    );
    assert_eq!(
        all["summary"]["inbound_through"],
        serde_json::json!([addr::VPS])
    );
    assert_eq!(all["summary"]["outbound_through"], addr::VPS);
    let summary = format!(
        "inbound reachable through 1 of 2 VPSes ({vps}); outbound through {vps}",
        vps = addr::VPS
    );
    assert_eq!(all["summary"]["line"], summary.as_str());

    let (code, text, _) = ctl(&["status"]);
    assert_eq!(code, 1, "{text}");
    println!("{text}");
    let a_title = format!(
        "=== VPS {} (priority 10, {}:7443) ===",
        addr::VPS,
        addr::VPS
    );
    let b_title = format!("=== VPS vps-b (priority 20, {VPS_B}:7443) ===");
    let (a_part, b_part) = sections(&text, &a_title, &b_title);
    assert!(a_part.contains("connected since"), "{text}");
    assert!(
        b_part.contains("never connected"),
        "B's problem is named: {text}"
    );
    assert!(text.trim_end().ends_with(&summary), "{text}");

    // One VPS named: exactly the one-VPS document, as before there were several.
    let (code, out, err) = ctl(&["--vps", addr::VPS, "status", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let one = json(&out);
    assert!(one.get("vpses").is_none(), "{one:#}");
    assert_eq!(one["home"]["connected"], true);
    // A command about one VPS asks which.
    let (code, _, err) = ctl(&["rotate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--vps NAME") && err.contains("vps-b"), "{err}");

    // --- DNS for both --------------------------------------------------------
    let (code, text, err) = ctl(&["dns"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "mail hosts mx1.example.com for 203.0.113.10, mx2.example.com for vps-b",
        "10 mx1.example.com",
        "20 mx2.example.com",
        "v=spf1 ip4:203.0.113.10 ip4:203.0.113.20 ip6:2001:db8:1::10 mx -all",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let (code, snippet, err) = ctl(&["dns", "--format", "zone", "--dkim-selector", SELECTOR]);
    assert_eq!(code, 0, "{err}");
    let good = zones(&snippet);
    lab.internet
        .ip(&["addr", "add", &format!("{RESOLVER}/32"), "dev", "lo"])
        .unwrap();
    let resolver = format!("{RESOLVER}:53");
    let check = [
        "dns",
        "--check",
        "--resolver",
        &resolver,
        "--dkim-selector",
        SELECTOR,
    ];
    let nsd = serve(&lab, &nsd_bin, &good, &ceres);
    let (code, text, err) = ctl(&check);
    println!("{text}");
    assert_eq!(code, 0, "{text}\n{err}\n{}", nsd.log());
    // A/AAAA of each VPS's host (4), an MX each (2), the SPF record and one
    // per address (4), DMARC, DKIM, a PTR per address (3).
    let verdicts: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["PASS ", "WARN ", "FAIL ", "ERROR "]
                .iter()
                .any(|s| l.starts_with(s))
        })
        .collect();
    assert_eq!(verdicts.len(), 15, "{text}");
    assert!(verdicts.iter().all(|l| l.starts_with("PASS ")), "{text}");
    drop(nsd);

    // B's MX gone and its address out of the SPF record (whose `mx` no
    // longer covers it either): fails, naming B, and only B.
    let mut broken = good.clone();
    let zone = broken.get_mut("example.com").unwrap();
    *zone = zone
        .lines()
        .filter(|l| !l.contains("MX   20 mx2.example.com."))
        .map(|l| l.replace(" ip4:203.0.113.20", ""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_ne!(broken, good);
    let nsd = serve(&lab, &nsd_bin, &broken, &ceres);
    let (code, text, err) = ctl(&check);
    println!("{text}");
    assert_eq!(code, 1, "{text}\n{err}\n{}", nsd.log());
    let failing: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(failing.len(), 2, "{text}");
    assert!(
        failing
            .iter()
            .any(|l| l.contains(" MX ") && l.contains("(VPS vps-b)")),
        "{text}"
    );
    assert!(
        failing.iter().any(|l| l.contains(" SPF ")
            && l.contains("(VPS vps-b)")
            && l.contains("fail for 203.0.113.20")),
        "{text}"
    );
    assert!(
        text.contains("fix: set MX example.com -> mx2.example.com priority 20"),
        "{text}"
    );
    let (code, out, _) = ctl(&[&check[..], &["--json"]].concat());
    assert_eq!(code, 1);
    let report = json(&out);
    for c in report["checks"].as_array().unwrap() {
        let expect_fail = c["vps"] == "vps-b" && (c["kind"] == "mx" || c["kind"] == "spf");
        assert_eq!(c["status"] == "fail", expect_fail, "{c:#}");
    }
    assert_eq!(report["vpses"][1]["mail_host"], "mx2.example.com");
    drop(nsd);

    // --- B down ----------------------------------------------------------
    vps_b.kill9().unwrap();
    let (code, text, _) = ctl(&["status"]);
    println!("{text}");
    assert_eq!(code, 1, "{text}");
    let (a_part, b_part) = sections(&text, &a_title, &b_title);
    assert!(a_part.contains("connected since"), "A still shows: {text}");
    assert!(b_part.starts_with("UNREACHABLE: "), "{text}");
    assert!(
        text.contains(&format!(
            "inbound reachable through 1 of 2 VPSes ({}); outbound through {}",
            addr::VPS,
            addr::VPS
        )),
        "{text}"
    );
    // Silent instead of refusing (SYNs dropped): B is given its time limit,
    // reported as not answering, and A's status still prints.
    nft_in(&b.ns, &["add", "table", "inet", "lab_drop"]);
    nft_in(
        &b.ns,
        &[
            "add",
            "chain",
            "inet",
            "lab_drop",
            "input",
            "{ type filter hook input priority -10 ; }",
        ],
    );
    nft_in(
        &b.ns,
        &[
            "add", "rule", "inet", "lab_drop", "input", "tcp", "dport", "7443", "drop",
        ],
    );
    let (code, out, err) = ctl(&["status", "--json", "--timeout", "2"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = json(&out);
    let b_report = &all["vpses"][1];
    assert_eq!(b_report["answered"], false, "{all:#}");
    assert_eq!(b_report["timed_out"], true, "{all:#}");
    assert!(
        b_report["error"]
            .as_str()
            .unwrap()
            .contains(&format!("no answer from {VPS_B}:7443 within 2 s")),
        "{all:#}"
    );
    assert_eq!(all["vpses"][0]["answered"], true);
    assert_eq!(all["vpses"][0]["ok"], true, "{all:#}");
    let (_, text, _) = ctl(&["status", "--timeout", "2"]);
    let (a_part, b_part) = sections(&text, &a_title, &b_title);
    assert!(a_part.contains("connected since"), "{text}");
    assert!(b_part.starts_with("NO ANSWER: "), "{text}");

    // --- removing one ------------------------------------------------------
    let (code, out, err) = ctl(&["vps", "remove", "vps-b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cert revoke"), "{out}");
    assert!(!ceres.ctl_dir.join("vps/vps-b").exists());
    let (code, out, _) = ctl(&["status", "--json"]);
    assert_eq!(code, 0, "one VPS again, and it is fine: {out}");
    assert!(json(&out).get("vpses").is_none(), "{out}");
}

/// The text between `first` and `second`, and after `second` up to the next
/// heading: the two VPSes' sections of a status.
fn sections<'a>(text: &'a str, first: &str, second: &str) -> (&'a str, &'a str) {
    let a = text
        .find(first)
        .unwrap_or_else(|| panic!("no {first:?} in:\n{text}"));
    let b = text
        .find(second)
        .unwrap_or_else(|| panic!("no {second:?} in:\n{text}"));
    assert!(a < b, "VPSes in priority order:\n{text}");
    let rest = &text[b + second.len()..];
    let end = rest.find("\n=== ").unwrap_or(rest.len());
    (&text[a + first.len()..b], rest[..end].trim_start())
}

fn nft_in(ns: &ceres_tests::Netns, args: &[&str]) {
    ceres_tests::sh(ns.command("nft").args(args)).unwrap();
}

/// The zones for nsd from `cerectl dns --format zone`: the domain (with SOA,
/// NS and the DKIM key), and each reverse zone its PTR comments name.
fn zones(snippet: &str) -> BTreeMap<String, String> {
    let header = |zone: &str| {
        format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60\n\
             @ IN NS ns1.example.com.\n"
        )
    };
    let dkim = format!(
        "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}IDAQAB",
        "Q".repeat(342)
    );
    let dkim: Vec<String> = dkim
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    let mut zones = BTreeMap::new();
    zones.insert(
        "example.com".to_owned(),
        format!(
            "{}ns1 IN A 192.0.2.53\n{snippet}{SELECTOR}._domainkey IN TXT {}\n",
            header("example.com"),
            dkim.join(" ")
        ),
    );
    for line in snippet.lines() {
        let Some(rr) = line.strip_prefix("; ") else {
            continue;
        };
        if !rr.contains(" IN PTR ") {
            continue;
        }
        // `; NAME TTL IN PTR HOST. ; VPS x`: the record without the comment.
        let rr = rr.split(" ; ").next().unwrap();
        let name = rr.split_whitespace().next().unwrap();
        let zone = name
            .trim_end_matches('.')
            .split_once('.')
            .unwrap()
            .1
            .to_owned();
        zones
            .entry(zone.clone())
            .or_insert_with(|| header(&zone))
            .push_str(&format!("{rr}\n"));
    }
    // The domain, the IPv4 reverse zone (both VPSes), A's IPv6 one.
    assert_eq!(zones.len(), 3, "{zones:#?}");
    zones
}

/// nsd on the lab's resolver address serving `zones`, answering once
/// `cerectl dns --check` gets an answer for every question (no "not checked").
fn serve(
    lab: &Lab,
    nsd_bin: &std::path::Path,
    zones: &BTreeMap<String, String>,
    ceres: &Ceres<'_>,
) -> ceres_testkit::Nsd {
    let list: Vec<(&str, &str)> = zones
        .iter()
        .map(|(n, z)| (n.as_str(), z.as_str()))
        .collect();
    let nsd = ceres_testkit::Nsd::spawn_in(
        Some(&lab.internet.name),
        nsd_bin,
        format!("{RESOLVER}:53").parse().unwrap(),
        &list,
    )
    .unwrap();
    let resolver = format!("{RESOLVER}:53");
    let mut last = String::new();
    wait_until("nsd answering every check", Duration::from_secs(30), || {
        let (_, out, _) = ceres.ctl(&["dns", "--check", "--json", "--resolver", &resolver])?;
        last = out.clone();
        let v: Value = serde_json::from_str(&out)?;
        Ok(v["summary"]["error"] == 0)
    })
    .unwrap_or_else(|e| panic!("{e:#}\nlast: {last}\nnsd: {}", nsd.log()));
    nsd
}
