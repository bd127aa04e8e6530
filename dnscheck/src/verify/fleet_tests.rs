//! Verification of a mail domain behind two VPSes: every check about one VPS names
//! it, and a record missing for one VPS fails for that one only.

use std::net::IpAddr;

use super::*;
use crate::lookup::FakeLookup;

const A4: &str = "203.0.113.10";
const A6: &str = "2001:db8::10";
const B4: &str = "198.51.100.20";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fleet() -> MailFleet {
    let a = MailIdentity::builder("example.com")
        .mail_host("mx1.example.com")
        .address(ip(A4))
        .address(ip(A6))
        .dkim_selector("s1")
        .build()
        .unwrap();
    let b = MailIdentity::builder("example.com")
        .mail_host("mx2.example.com")
        .address(ip(B4))
        .dkim_selector("s1")
        .build()
        .unwrap();
    // Given out of order: the fleet sorts by priority.
    MailFleet::new(vec![("vps-b".into(), 20, b), ("vps-a".into(), 10, a)]).unwrap()
}

const SPF: &str = "v=spf1 ip4:203.0.113.10 ip4:198.51.100.20 ip6:2001:db8::10 mx -all";

/// The zone as `cerectl dns` prints it for [`fleet`], except what `skip` names
/// (`"mx2"`, `"spf"`), plus `extra` on top.
fn dns(skip: &[&str], extra: impl FnOnce(FakeLookup) -> FakeLookup) -> FakeLookup {
    let mut d = FakeLookup::new()
        .with_a("mx1.example.com", A4.parse().unwrap())
        .with_aaaa("mx1.example.com", A6.parse().unwrap())
        .with_a("mx2.example.com", B4.parse().unwrap())
        .with_txt(
            "_dmarc.example.com",
            "v=DMARC1; p=none; rua=mailto:dmarc@example.com; fo=1",
        )
        .with_txt(
            "s1._domainkey.example.com",
            &format!(
                "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}IDAQAB",
                "x".repeat(342)
            ),
        )
        .with_ptr(ip(A4), "mx1.example.com")
        .with_ptr(ip(A6), "mx1.example.com");
    if !skip.contains(&"mx1") {
        d = d.with_mx("example.com", 10, "mx1.example.com");
    }
    if !skip.contains(&"mx2") {
        d = d.with_mx("example.com", 20, "mx2.example.com");
    }
    if !skip.contains(&"spf") {
        d = d.with_txt("example.com", SPF);
    }
    if !skip.contains(&"ptr-b") {
        d = d.with_ptr(ip(B4), "mx2.example.com");
    }
    extra(d)
}

fn about<'a>(r: &'a Report, kind: CheckKind, vps: Option<&str>) -> Vec<&'a Check> {
    r.checks
        .iter()
        .filter(|c| c.kind == kind && c.vps.as_deref() == vps)
        .collect()
}

#[tokio::test]
async fn the_records_cerectl_prints_for_two_vpses_pass() {
    let r = verify_fleet(&fleet(), &dns(&[], |d| d)).await;
    for c in &r.checks {
        assert_eq!(c.status, Status::Pass, "{c:#?}");
    }
    // A+AAAA per VPS (4), MX per VPS (2), the SPF record and one per
    // address (4), DMARC, DKIM, a PTR per address (3).
    assert_eq!(r.checks.len(), 15, "{r:#?}");
    assert_eq!(r.mail_host, "mx1.example.com");
    assert_eq!(about(&r, CheckKind::Mx, Some("vps-a")).len(), 1);
    assert_eq!(about(&r, CheckKind::Mx, Some("vps-b")).len(), 1);
    assert_eq!(about(&r, CheckKind::Ptr, Some("vps-a")).len(), 2);
    assert_eq!(
        about(&r, CheckKind::Spf, Some("vps-b"))[0].address,
        Some(ip(B4))
    );
    // Domain-wide checks name no VPS.
    assert_eq!(about(&r, CheckKind::Spf, None).len(), 1);
    assert_eq!(about(&r, CheckKind::Dmarc, None).len(), 1);
    assert_eq!(about(&r, CheckKind::Dkim, None).len(), 1);

    let text = r.render_text(false);
    assert!(
        text.contains("DNS check for example.com (mail hosts mx1.example.com for vps-a, mx2.example.com for vps-b)"),
        "{text}"
    );
    assert!(text.contains("example.com (VPS vps-b)"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
    assert_eq!(v["vpses"][1]["name"], "vps-b");
    assert_eq!(v["vpses"][1]["priority"], 20);
    assert_eq!(v["vpses"][1]["mail_host"], "mx2.example.com");
    assert_eq!(v["vpses"][1]["addresses"][0], B4);
    let spf_record = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "spf" && c["address"].is_null())
        .unwrap();
    assert!(spf_record.get("vps").is_none(), "{spf_record:#}");
}

#[tokio::test]
async fn a_missing_mx_fails_for_that_vps_only_and_names_it() {
    let r = verify_fleet(&fleet(), &dns(&["mx2"], |d| d)).await;
    let b = about(&r, CheckKind::Mx, Some("vps-b"));
    assert_eq!(b[0].status, Status::Fail, "{b:#?}");
    assert_eq!(b[0].expected, "20 mx2.example.com");
    // Only the other VPS's MX is there: nothing to remove.
    assert_eq!(
        b[0].fix.as_deref(),
        Some("set MX example.com -> mx2.example.com priority 20 at your DNS host"),
        "{b:#?}"
    );
    assert_eq!(
        about(&r, CheckKind::Mx, Some("vps-a"))[0].status,
        Status::Pass
    );
    // A host that is none of the VPSes in its place: that one is to go.
    let r = verify_fleet(
        &fleet(),
        &dns(&["mx2"], |d| {
            d.with_mx("example.com", 20, "old.example.net")
        }),
    )
    .await;
    let b = about(&r, CheckKind::Mx, Some("vps-b"));
    assert!(
        b[0].fix
            .as_deref()
            .unwrap()
            .ends_with("remove the MX records of hosts that are none of your VPSes unless they relay to mx2.example.com"),
        "{b:#?}"
    );
    assert!(!r.is_ok());
    let text = r.render_text(false);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("MX") && l.contains("(VPS vps-b)")),
        "{text}"
    );
}

#[tokio::test]
async fn an_spf_without_one_vps_fails_for_its_address() {
    let only_a = "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 mx -all";
    // `mx` in the record authorises mx2's address too: take it out, as a real
    // mistake would.
    let dns = dns(&["spf"], |d| {
        d.with_txt("example.com", &only_a.replace(" mx", ""))
    });
    let r = verify_fleet(&fleet(), &dns).await;
    let b = about(&r, CheckKind::Spf, Some("vps-b"));
    assert_eq!(b[0].status, Status::Fail, "{b:#?}");
    assert!(b[0].found.contains(B4), "{b:#?}");
    assert!(
        b[0].fix
            .as_deref()
            .unwrap()
            .contains("add ip4:198.51.100.20"),
        "{b:#?}"
    );
    assert!(
        about(&r, CheckKind::Spf, Some("vps-a"))
            .iter()
            .all(|c| c.status == Status::Pass)
    );
}

#[tokio::test]
async fn vpses_tried_in_the_wrong_order_are_a_warning() {
    let swapped = dns(&["mx1", "mx2"], |d| {
        d.with_mx("example.com", 20, "mx1.example.com").with_mx(
            "example.com",
            10,
            "mx2.example.com",
        )
    });
    let r = verify_fleet(&fleet(), &swapped).await;
    let a = about(&r, CheckKind::Mx, Some("vps-a"));
    assert_eq!(a[0].status, Status::Warn, "{a:#?}");
    assert!(
        a[0].found
            .contains("mx2.example.com (VPS vps-b, priority 10) is tried before it"),
        "{a:#?}"
    );
    assert!(
        a[0].fix
            .as_deref()
            .unwrap()
            .contains("mx1.example.com 10, mx2.example.com 20"),
        "{a:#?}"
    );
    // Equal priorities: random order, also a warning.
    let equal = dns(&["mx2"], |d| {
        d.with_mx("example.com", 10, "mx2.example.com")
    });
    let r = verify_fleet(&fleet(), &equal).await;
    assert_eq!(
        about(&r, CheckKind::Mx, Some("vps-a"))[0].status,
        Status::Warn
    );
    // Other numbers in the same order are fine.
    let renumbered = dns(&["mx1", "mx2"], |d| {
        d.with_mx("example.com", 5, "mx1.example.com")
            .with_mx("example.com", 50, "mx2.example.com")
    });
    let r = verify_fleet(&fleet(), &renumbered).await;
    assert!(r.is_ok() && r.worst() == Status::Pass, "{r:#?}");
    // A host that is no VPS tried first: a warning on both.
    let foreign = dns(&[], |d| d.with_mx("example.com", 5, "backup.example.net"));
    let r = verify_fleet(&fleet(), &foreign).await;
    for vps in ["vps-a", "vps-b"] {
        let c = about(&r, CheckKind::Mx, Some(vps));
        assert_eq!(c[0].status, Status::Warn, "{c:#?}");
        assert!(c[0].found.contains("backup.example.net is tried first"));
    }
}

#[tokio::test]
async fn each_ptr_must_name_its_own_vps() {
    // B's address named after A's host: a PTR that A's forward lookup does
    // not confirm either.
    let dns = dns(&["ptr-b"], |d| d.with_ptr(ip(B4), "mx1.example.com"));
    let r = verify_fleet(&fleet(), &dns).await;
    let b = about(&r, CheckKind::Ptr, Some("vps-b"));
    assert_eq!(b[0].status, Status::Fail, "{b:#?}");
    assert_eq!(
        b[0].expected,
        "mx2.example.com, which resolves back to 198.51.100.20"
    );
    assert!(b[0].fix.as_deref().unwrap().contains("to mx2.example.com"));
    assert!(
        about(&r, CheckKind::Ptr, Some("vps-a"))
            .iter()
            .all(|c| c.status == Status::Pass)
    );
}

#[tokio::test]
async fn one_vps_documents_stay_as_they_were() {
    let id = fleet().members()[0].id.clone();
    let r = verify(&id, &dns(&[], |d| d)).await;
    assert!(r.checks.iter().all(|c| c.vps.is_none()));
    let v: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
    assert!(v.get("vpses").is_none(), "{v:#}");
    for c in v["checks"].as_array().unwrap() {
        assert!(c.get("vps").is_none(), "{c:#}");
    }
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["checks", "domain", "mail_host", "ok", "summary"]);
    assert!(r.render_text(false).contains("(mail host mx1.example.com)"));
}
