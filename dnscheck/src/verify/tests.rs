use std::net::IpAddr;

use super::*;
use crate::lookup::FakeLookup;

const V4: &str = "203.0.113.10";
const V6: &str = "2001:db8::10";
/// A syntactically valid stand-in for a 2048-bit RSA public key.
fn dkim_key() -> String {
    format!(
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}IDAQAB",
        "x".repeat(342)
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn identity() -> MailIdentity {
    MailIdentity::builder("example.com")
        .address(ip(V4))
        .address(ip(V6))
        .dkim_selector("s1")
        .build()
        .unwrap()
}

fn good_dns() -> FakeLookup {
    FakeLookup::new()
        .with_a("mail.example.com", V4.parse().unwrap())
        .with_aaaa("mail.example.com", V6.parse().unwrap())
        .with_mx("example.com", 10, "mail.example.com")
        .with_txt(
            "example.com",
            "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 mx -all",
        )
        .with_txt(
            "_dmarc.example.com",
            "v=DMARC1; p=none; rua=mailto:dmarc@example.com; fo=1",
        )
        .with_txt(
            "s1._domainkey.example.com",
            &format!("v=DKIM1; k=rsa; p={}", dkim_key()),
        )
        .with_ptr(ip(V4), "mail.example.com")
        .with_ptr(ip(V6), "mail.example.com")
}

fn find(r: &Report, kind: CheckKind, address: Option<&str>) -> Check {
    r.checks
        .iter()
        .find(|c| c.kind == kind && c.address == address.map(ip))
        .cloned()
        .unwrap_or_else(|| panic!("no {kind:?} check for {address:?} in {r:#?}"))
}

#[tokio::test]
async fn correct_zone_passes_everything() {
    let r = verify(&identity(), &good_dns()).await;
    for c in &r.checks {
        assert_eq!(c.status, Status::Pass, "{c:#?}");
        assert!(c.fix.is_none());
    }
    // A, AAAA, MX, SPF record, SPF x2 addresses, DMARC, DKIM, PTR x2.
    assert_eq!(r.checks.len(), 10);
    assert!(r.is_ok());
    assert!(find(&r, CheckKind::Mx, None).found.contains("priority 10"));
    assert!(find(&r, CheckKind::Dmarc, None).found.contains("p=none"));
    assert!(
        find(&r, CheckKind::Ptr, Some(V4))
            .found
            .contains("forward-confirmed")
    );
}

#[tokio::test]
async fn wrong_and_missing_addresses() {
    let dns = FakeLookup::new()
        .with_a("mail.example.com", "203.0.113.99".parse().unwrap())
        .with_a("mail.example.com", V4.parse().unwrap())
        .with_mx("example.com", 10, "mail.example.com");
    let r = verify(&identity(), &dns).await;
    let a = find(&r, CheckKind::A, None);
    assert_eq!(a.status, Status::Fail);
    assert!(
        a.fix.as_deref().unwrap().contains("remove 203.0.113.99"),
        "{a:?}"
    );
    let aaaa = find(&r, CheckKind::Aaaa, None);
    assert_eq!(aaaa.status, Status::Fail);
    assert!(aaaa.found.contains("no AAAA record"), "{aaaa:?}");
    assert_eq!(aaaa.expected, V6);
    assert!(!r.is_ok());
}

#[tokio::test]
async fn timeouts_are_not_reported_as_missing() {
    let dns = good_dns()
        .with_timeout("mail.example.com", "A")
        .with_servfail("_dmarc.example.com", "TXT");
    let r = verify(&identity(), &dns).await;
    let a = find(&r, CheckKind::A, None);
    assert_eq!(a.status, Status::Error);
    assert!(a.found.contains("timed out"), "{a:?}");
    assert!(!a.found.contains("nothing"));
    let d = find(&r, CheckKind::Dmarc, None);
    assert_eq!(d.status, Status::Error);
    assert!(d.found.contains("SERVFAIL"));
    // The PTR forward check of the IPv4 address needed that A lookup too.
    assert_eq!(find(&r, CheckKind::Ptr, Some(V4)).status, Status::Error);
    assert!(!r.is_ok());
}

#[tokio::test]
async fn nxdomain_and_nodata_read_differently() {
    let dns = FakeLookup::new().with_txt("example.com", "v=spf1 -all");
    let r = verify(&identity(), &dns).await;
    let a = find(&r, CheckKind::A, None);
    assert!(a.found.contains("does not exist (NXDOMAIN)"), "{a:?}");
    let mx = find(&r, CheckKind::Mx, None);
    assert!(mx.found.contains("example.com has no MX record"), "{mx:?}");
}

#[tokio::test]
async fn mx_elsewhere_and_lower_priority() {
    let dns = good_dns_with(
        |d| d.with_mx("example.com", 10, "mx.elsewhere.example"),
        "example.com",
        "MX",
    );
    let r = verify(&identity(), &dns).await;
    let mx = find(&r, CheckKind::Mx, None);
    assert_eq!(mx.status, Status::Fail);
    assert_eq!(mx.found, "10 mx.elsewhere.example");

    let dns = good_dns().with_mx("example.com", 5, "backup.example.net");
    let mx = find(&verify(&identity(), &dns).await, CheckKind::Mx, None);
    assert_eq!(mx.status, Status::Warn, "{mx:?}");
    assert!(mx.found.contains("backup.example.net is tried first"));
}

/// good_dns() but with the records of one (name, type) replaced.
fn good_dns_with(f: impl FnOnce(FakeLookup) -> FakeLookup, _name: &str, rtype: &str) -> FakeLookup {
    let base = FakeLookup::new()
        .with_a("mail.example.com", V4.parse().unwrap())
        .with_aaaa("mail.example.com", V6.parse().unwrap())
        .with_ptr(ip(V4), "mail.example.com")
        .with_ptr(ip(V6), "mail.example.com");
    let base = if rtype == "MX" {
        base
    } else {
        base.with_mx("example.com", 10, "mail.example.com")
    };
    let base = if rtype == "SPF" {
        base
    } else {
        base.with_txt(
            "example.com",
            "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 mx -all",
        )
    };
    let base = if rtype == "DMARC" {
        base
    } else {
        base.with_txt(
            "_dmarc.example.com",
            "v=DMARC1; p=none; rua=mailto:dmarc@example.com",
        )
    };
    let base = if rtype == "DKIM" {
        base
    } else {
        base.with_txt(
            "s1._domainkey.example.com",
            &format!("v=DKIM1; p={}", dkim_key()),
        )
    };
    f(base)
}

#[tokio::test]
async fn spf_problems() {
    // Not authorising.
    let dns = good_dns_with(
        |d| d.with_txt("example.com", "v=spf1 ip4:198.51.100.1 ~all"),
        "",
        "SPF",
    );
    let r = verify(&identity(), &dns).await;
    assert_eq!(find(&r, CheckKind::Spf, None).status, Status::Pass);
    let v4 = find(&r, CheckKind::Spf, Some(V4));
    assert_eq!(v4.status, Status::Fail);
    assert!(v4.found.starts_with("softfail for 203.0.113.10"), "{v4:?}");
    assert!(v4.fix.as_deref().unwrap().contains("add ip4:203.0.113.10"));
    assert!(
        find(&r, CheckKind::Spf, Some(V6))
            .fix
            .as_deref()
            .unwrap()
            .contains("ip6:2001:db8::10")
    );

    // +all.
    let dns = good_dns_with(|d| d.with_txt("example.com", "v=spf1 +all"), "", "SPF");
    let r = verify(&identity(), &dns).await;
    let rec = find(&r, CheckKind::Spf, None);
    assert_eq!(rec.status, Status::Fail);
    assert!(rec.found.contains("+all authorises every host"));
    assert_eq!(find(&r, CheckKind::Spf, Some(V4)).status, Status::Warn);

    // ?all warns.
    let dns = good_dns_with(
        |d| {
            d.with_txt(
                "example.com",
                "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 ?all",
            )
        },
        "",
        "SPF",
    );
    let r = verify(&identity(), &dns).await;
    assert_eq!(find(&r, CheckKind::Spf, None).status, Status::Warn);
    assert_eq!(find(&r, CheckKind::Spf, Some(V4)).status, Status::Pass);

    // Two records.
    let dns = good_dns_with(
        |d| {
            d.with_txt("example.com", "v=spf1 ip4:203.0.113.10 -all")
                .with_txt("example.com", "v=spf1 mx -all")
        },
        "",
        "SPF",
    );
    let r = verify(&identity(), &dns).await;
    let rec = find(&r, CheckKind::Spf, None);
    assert_eq!(rec.status, Status::Fail);
    assert!(rec.found.contains("2 SPF records"));
    assert!(
        find(&r, CheckKind::Spf, Some(V4))
            .found
            .starts_with("permerror")
    );

    // Missing.
    let dns = good_dns_with(|d| d, "", "SPF");
    let r = verify(&identity(), &dns).await;
    let rec = find(&r, CheckKind::Spf, None);
    assert_eq!(rec.status, Status::Fail);
    assert!(
        rec.fix
            .as_deref()
            .unwrap()
            .contains("v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 mx -all")
    );

    // Syntax error.
    let dns = good_dns_with(
        |d| {
            d.with_txt(
                "example.com",
                "v=spf1 ip4:203.0.113.10 includ:x.example -all",
            )
        },
        "",
        "SPF",
    );
    let rec = find(&verify(&identity(), &dns).await, CheckKind::Spf, None);
    assert_eq!(rec.status, Status::Fail);
    assert!(
        rec.found.contains("unknown mechanism \"includ:x.example\""),
        "{rec:?}"
    );
}

#[tokio::test]
async fn dmarc_problems() {
    let r = verify(&identity(), &good_dns_with(|d| d, "", "DMARC")).await;
    let c = find(&r, CheckKind::Dmarc, None);
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.found.contains("_dmarc.example.com does not exist"),
        "{c:?}"
    );

    let dns = good_dns_with(
        |d| d.with_txt("_dmarc.example.com", "v=DMARC1; p=maybe"),
        "",
        "DMARC",
    );
    let c = find(&verify(&identity(), &dns).await, CheckKind::Dmarc, None);
    assert_eq!(c.status, Status::Fail);
    assert!(c.found.contains("invalid value \"maybe\" for p="), "{c:?}");

    let dns = good_dns_with(
        |d| {
            d.with_txt(
                "_dmarc.example.com",
                "v=DMARC1; p=none; rua=mailto:a@example.com",
            )
            .with_txt(
                "_dmarc.example.com",
                "v=DMARC1; p=reject; rua=mailto:a@example.com",
            )
        },
        "",
        "DMARC",
    );
    let c = find(&verify(&identity(), &dns).await, CheckKind::Dmarc, None);
    assert_eq!(c.status, Status::Fail);
    assert!(c.found.starts_with("2 DMARC records"));

    let dns = good_dns_with(
        |d| d.with_txt("_dmarc.example.com", "v=DMARC1; p=reject"),
        "",
        "DMARC",
    );
    let c = find(&verify(&identity(), &dns).await, CheckKind::Dmarc, None);
    assert_eq!(c.status, Status::Warn);
    assert!(c.found.contains("p=reject"));
}

#[tokio::test]
async fn dkim_problems() {
    let dns = good_dns_with(
        |d| d.with_txt("s1._domainkey.example.com", "v=DKIM1; k=rsa"),
        "",
        "DKIM",
    );
    let c = find(&verify(&identity(), &dns).await, CheckKind::Dkim, None);
    assert_eq!(c.status, Status::Fail);
    assert!(c.found.contains("p= tag is missing"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("rspamadm dkim_keygen -s s1 -d example.com")
    );

    let c = find(
        &verify(&identity(), &good_dns_with(|d| d, "", "DKIM")).await,
        CheckKind::Dkim,
        None,
    );
    assert_eq!(c.status, Status::Fail);
    assert!(c.found.contains("NXDOMAIN"));

    let no_selector = MailIdentity::builder("example.com")
        .address(ip(V4))
        .build()
        .unwrap();
    let c = find(
        &verify(&no_selector, &good_dns()).await,
        CheckKind::Dkim,
        None,
    );
    assert_eq!(c.status, Status::Warn);
}

#[tokio::test]
async fn ptr_problems() {
    let dns = FakeLookup::new()
        .with_a("mail.example.com", V4.parse().unwrap())
        .with_ptr(ip(V6), "mail.example.com");
    let r = verify(&identity(), &dns).await;
    let v4 = find(&r, CheckKind::Ptr, Some(V4));
    assert_eq!(v4.status, Status::Fail);
    assert!(v4.found.contains("NXDOMAIN"), "{v4:?}");
    assert!(v4.fix.as_deref().unwrap().contains("VPS provider"));
    let v6 = find(&r, CheckKind::Ptr, Some(V6));
    assert_eq!(v6.status, Status::Fail);
    assert!(v6.found.contains("not forward-confirmed"), "{v6:?}");
    assert!(v6.fix.as_deref().unwrap().contains("AAAA mail.example.com"));

    let dns = good_dns_with(|d| d, "", "").with_ptr(ip(V4), "host.other.example");
    let v4 = find(&verify(&identity(), &dns).await, CheckKind::Ptr, Some(V4));
    assert_eq!(v4.status, Status::Warn, "{v4:?}");
}

#[tokio::test]
async fn renderings() {
    let dns = good_dns_with(
        |d| d.with_mx("example.com", 10, "mx.elsewhere.example"),
        "",
        "MX",
    );
    let r = verify(&identity(), &dns).await;
    let text = r.render_text(false);
    assert!(text.contains("FAIL   MX"), "{text}");
    assert!(text.contains("expected: 10 mail.example.com"));
    assert!(text.contains("fix: set MX example.com -> mail.example.com priority 10"));
    assert!(
        text.contains("9 passed, 0 warnings, 1 failed, 0 not checked"),
        "{text}"
    );
    assert!(!text.contains('\x1b'));
    assert!(r.render_text(true).contains("\x1b[31m"));

    let v: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["summary"]["fail"], 1);
    let mx = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "mx")
        .unwrap();
    assert_eq!(mx["status"], "fail");
    assert_eq!(mx["name"], "example.com");
    assert_eq!(mx["found"], "10 mx.elsewhere.example");
    assert_eq!(mx["expected"], "10 mail.example.com");
    assert!(mx["address"].is_null());
    assert!(mx["fix"].is_string());
}

#[test]
fn futures_are_send() {
    // cerectl and the agents may spawn these on a multi-threaded runtime.
    fn assert_send<T: Send>(_: &T) {}
    let id = identity();
    let dns = good_dns();
    assert_send(&verify(&id, &dns));
    assert_send(&verify_fleet(&MailFleet::from(id.clone()), &dns));
    assert_send(&crate::dnsbl_check(ip(V4), &["bl.example"], &dns));
    let real = crate::HickoryLookup::with_server("127.0.0.1:53").unwrap();
    assert_send(&verify(&id, &real));
}
