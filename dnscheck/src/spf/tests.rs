use std::net::IpAddr;

use super::*;
use crate::lookup::FakeLookup;

const VPS: &str = "203.0.113.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn eval(dns: &FakeLookup, addr: &str, domain: &str) -> SpfOutcome {
    check_host(dns, ip(addr), domain, &format!("postmaster@{domain}")).await
}

#[tokio::test]
async fn ip4_ip6_and_all_qualifiers() {
    let dns = FakeLookup::new()
        .with_txt(
            "example.com",
            "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::10 ~all",
        )
        .with_txt("example.com", "some-verification=abc");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
    assert!(o.reason.contains("ip4:203.0.113.0/24"), "{}", o.reason);
    assert_eq!(
        eval(&dns, "2001:db8::10", "example.com").await.result,
        SpfResult::Pass
    );
    assert_eq!(
        eval(&dns, "2001:db8::11", "example.com").await.result,
        SpfResult::SoftFail
    );
    assert_eq!(
        eval(&dns, "198.51.100.1", "example.com").await.result,
        SpfResult::SoftFail
    );
    assert_eq!(o.dns_lookups, 0);
}

#[tokio::test]
async fn a_and_mx_with_cidr() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 a mx/24 -all")
        .with_a("example.com", "192.0.2.1".parse().unwrap())
        .with_mx("example.com", 10, "mail.example.com")
        .with_a("mail.example.com", "203.0.113.99".parse().unwrap());
    assert_eq!(
        eval(&dns, "192.0.2.1", "example.com").await.result,
        SpfResult::Pass
    );
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
    assert!(o.reason.contains("MX 10 mail.example.com"), "{}", o.reason);
    assert_eq!(o.dns_lookups, 2);
    let o = eval(&dns, "198.51.100.1", "example.com").await;
    assert_eq!(o.result, SpfResult::Fail);
    assert!(o.reason.contains("-all"));
}

#[tokio::test]
async fn include_chain_and_results() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 include:_spf.example.com -all")
        .with_txt("_spf.example.com", "v=spf1 include:_v4.example.com ?all")
        .with_txt("_v4.example.com", "v=spf1 ip4:203.0.113.10 -all");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
    assert!(o.reason.contains("_v4.example.com"), "{}", o.reason);
    assert_eq!(o.dns_lookups, 2);
    // ?all inside an include is "no match", so the outer -all decides.
    assert_eq!(
        eval(&dns, "198.51.100.1", "example.com").await.result,
        SpfResult::Fail
    );
}

#[tokio::test]
async fn include_of_domain_without_spf_is_permerror() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 include:nospf.example.net -all")
        .with_a("nospf.example.net", "192.0.2.1".parse().unwrap());
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(o.reason.contains("no SPF record"), "{}", o.reason);
}

#[tokio::test]
async fn redirect_is_used_only_without_match() {
    let dns = FakeLookup::new()
        .with_txt(
            "example.com",
            "v=spf1 ip4:192.0.2.1 redirect=_spf.example.net",
        )
        .with_txt("_spf.example.net", "v=spf1 ip4:203.0.113.10 -all");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
    assert!(o.reason.contains("redirect=_spf.example.net"));
    assert_eq!(eval(&dns, "192.0.2.1", "example.com").await.dns_lookups, 0);
    assert_eq!(
        eval(&dns, "198.51.100.1", "example.com").await.result,
        SpfResult::Fail
    );

    let broken = FakeLookup::new().with_txt("example.com", "v=spf1 redirect=gone.example.net");
    let o = eval(&broken, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(
        o.reason.contains("redirect=gone.example.net"),
        "{}",
        o.reason
    );
}

#[tokio::test]
async fn no_record_none_and_default_neutral() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "google-site-verification=x")
        .with_txt("example.net", "v=spf1 ip4:192.0.2.1");
    assert_eq!(eval(&dns, VPS, "example.com").await.result, SpfResult::None);
    assert_eq!(eval(&dns, VPS, "example.org").await.result, SpfResult::None);
    let o = eval(&dns, VPS, "example.net").await;
    assert_eq!(o.result, SpfResult::Neutral);
    assert!(o.reason.contains("default neutral"));
}

#[tokio::test]
async fn two_spf_records_are_permerror() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 ip4:203.0.113.10 -all")
        .with_txt("example.com", "v=spf1 mx -all");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(o.reason.contains("2 SPF records"), "{}", o.reason);
}

#[tokio::test]
async fn eleven_lookups_are_permerror() {
    let mut dns = FakeLookup::new();
    let mut top = String::from("v=spf1");
    for i in 1..=11 {
        let name = format!("s{i}.example.com");
        top.push_str(&format!(" include:{name}"));
        dns = dns.with_txt(&name, "v=spf1 ip4:192.0.2.1 -all");
    }
    top.push_str(" ip4:203.0.113.10 -all");
    let dns = dns.with_txt("example.com", &top);
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError, "{o:?}");
    assert!(o.reason.contains("too many DNS lookups"), "{}", o.reason);
    assert_eq!(o.dns_lookups, 11);

    // Exactly ten is still fine.
    let mut dns = FakeLookup::new();
    let mut top = String::from("v=spf1");
    for i in 1..=10 {
        let name = format!("s{i}.example.com");
        top.push_str(&format!(" include:{name}"));
        dns = dns.with_txt(&name, "v=spf1 ip4:192.0.2.1 -all");
    }
    top.push_str(" ip4:203.0.113.10 -all");
    let dns = dns.with_txt("example.com", &top);
    assert_eq!(eval(&dns, VPS, "example.com").await.result, SpfResult::Pass);
}

#[tokio::test]
async fn nested_lookups_count_towards_the_limit() {
    // Each level costs one include plus an "a" inside: 2 per level.
    let mut dns = FakeLookup::new();
    for i in 0..6 {
        let me = format!("l{i}.example.com");
        let next = format!("l{}.example.com", i + 1);
        dns = dns
            .with_txt(&me, &format!("v=spf1 a include:{next} -all"))
            .with_a(&me, "192.0.2.1".parse().unwrap());
    }
    let dns = dns.with_txt("l6.example.com", "v=spf1 ip4:203.0.113.10 -all");
    let o = eval(&dns, VPS, "l0.example.com").await;
    assert_eq!(o.result, SpfResult::PermError, "{o:?}");
    assert!(o.reason.contains("too many DNS lookups"));
}

#[tokio::test]
async fn void_lookups_limit() {
    let dns = FakeLookup::new().with_txt(
        "example.com",
        "v=spf1 a:n1.example.net a:n2.example.net a:n3.example.net ip4:203.0.113.10 -all",
    );
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError, "{o:?}");
    assert!(o.reason.contains("void lookups"), "{}", o.reason);
    assert_eq!(o.void_lookups, 3);

    let two = FakeLookup::new().with_txt(
        "example.com",
        "v=spf1 a:n1.example.net a:n2.example.net ip4:203.0.113.10 -all",
    );
    assert_eq!(eval(&two, VPS, "example.com").await.result, SpfResult::Pass);
}

#[tokio::test]
async fn include_loop_is_permerror() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 include:loop.example.net -all")
        .with_txt("loop.example.net", "v=spf1 include:example.com -all");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(o.reason.contains("loop"), "{}", o.reason);
}

#[tokio::test]
async fn dns_failures_are_temperror_not_missing() {
    let dns = FakeLookup::new().with_timeout("example.com", "TXT");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::TempError);
    assert!(o.reason.contains("timed out"), "{}", o.reason);

    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 mx -all")
        .with_servfail("example.com", "MX");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::TempError);
    assert!(o.reason.contains("SERVFAIL"), "{}", o.reason);
}

#[tokio::test]
async fn syntax_errors_are_named() {
    let dns =
        FakeLookup::new().with_txt("example.com", "v=spf1 ip4:203.0.113.10 ipv4:192.0.2.1 -all");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(
        o.reason.contains("unknown mechanism \"ipv4:192.0.2.1\""),
        "{}",
        o.reason
    );
}

#[tokio::test]
async fn exists_and_macros() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 exists:%{ir}.%{v}._spf.%{d} -all")
        .with_a(
            "10.113.0.203.in-addr._spf.example.com",
            "127.0.0.2".parse().unwrap(),
        );
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
    assert_eq!(
        eval(&dns, "203.0.113.11", "example.com").await.result,
        SpfResult::Fail
    );

    let bad = FakeLookup::new().with_txt("example.com", "v=spf1 exists:%{z}.example.com -all");
    let o = eval(&bad, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(
        o.reason.contains("unknown macro letter 'z'"),
        "{}",
        o.reason
    );
}

#[tokio::test]
async fn plus_all_passes_everything() {
    let dns = FakeLookup::new().with_txt("example.com", "v=spf1 +all");
    let o = eval(&dns, "198.51.100.77", "example.com").await;
    assert_eq!(o.result, SpfResult::Pass);
    assert!(o.reason.contains("+all"));
}

#[tokio::test]
async fn too_many_mx_names_is_permerror() {
    let mut dns = FakeLookup::new().with_txt("example.com", "v=spf1 mx -all");
    for i in 0..11 {
        dns = dns.with_mx("example.com", i, &format!("mx{i}.example.com"));
    }
    assert_eq!(
        eval(&dns, VPS, "example.com").await.result,
        SpfResult::PermError
    );
}

#[tokio::test]
async fn ptr_mechanism() {
    let dns = FakeLookup::new()
        .with_txt("example.com", "v=spf1 ptr -all")
        .with_ptr(ip(VPS), "mail.example.com")
        .with_a("mail.example.com", "203.0.113.10".parse().unwrap());
    assert_eq!(eval(&dns, VPS, "example.com").await.result, SpfResult::Pass);
}

#[tokio::test]
async fn macro_expanding_to_an_invalid_domain_is_permerror_for_include() {
    // %{l} of "postmaster" has no dot, so "include:%{l}" names a single label.
    let dns = FakeLookup::new().with_txt("example.com", "v=spf1 include:%{l} -all");
    let o = eval(&dns, VPS, "example.com").await;
    assert_eq!(o.result, SpfResult::PermError, "{o:?}");
    assert!(o.reason.contains("not a valid domain name"), "{}", o.reason);
}
