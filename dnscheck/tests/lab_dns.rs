//! Live checks against a real authoritative DNS server in the lab: nsd on a unique
//! loopback address serves a correct mail domain, domains where each record is wrong in
//! its own way, reverse zones and DNSBL zones. Nothing outside loopback is queried.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ceres_dnscheck::{
    Check, CheckKind, Checklist, DnsblStatus, HickoryLookup, Lookup, MailIdentity, Report, Status,
    dnsbl_check, reverse_name, verify, zone_txt_rdata,
};

/// Any fixed port works: every lab gets its own 127.x.y.z address.
const PORT: u16 = 15353;
const READY_DEADLINE: Duration = Duration::from_secs(20);

static LABS: AtomicU32 = AtomicU32::new(0);

/// A 2048-bit-sized RSA SubjectPublicKeyInfo stand-in: long enough that its TXT record
/// needs two character-strings.
fn dkim_record() -> String {
    format!(
        "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}IDAQAB",
        "Q".repeat(342)
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The lab's authoritative server ([`ceres_testkit::Nsd`]) on a loopback
/// address of its own, ready once it answers.
struct Nsd(ceres_testkit::Nsd);

impl Nsd {
    /// A loopback address nobody else uses: from our pid and a per-process counter.
    fn unique_addr() -> SocketAddr {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        // pid_max is at most 2^22: its top 6 bits and a 2-bit counter make the second
        // octet, the low 16 bits the last two.
        assert!(n < 4, "at most 4 labs per test process");
        let pid = std::process::id();
        let a = ((pid >> 16) & 63) * 4 + n;
        let addr = Ipv4Addr::new(127, a as u8, (pid >> 8) as u8, pid as u8);
        SocketAddr::new(IpAddr::V4(addr), PORT)
    }

    async fn start(binary: &Path, zones: &[(String, String)]) -> Result<Self> {
        let zones: Vec<(&str, &str)> = zones
            .iter()
            .map(|(n, z)| (n.as_str(), z.as_str()))
            .collect();
        let nsd =
            ceres_testkit::Nsd::spawn(binary, Self::unique_addr(), &zones).context("spawn nsd")?;
        let mut nsd = Self(nsd);
        nsd.wait_ready().await?;
        Ok(nsd)
    }

    fn log(&self) -> String {
        self.0.log()
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Ready when it answers a question from its zones; fails fast if nsd exits.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            // A fresh resolver per attempt, so no failure is cached.
            let lookup = HickoryLookup::with_server_addr(self.addr())?;
            let last = match lookup.a("ns1.example.com").await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.0.exited()? {
                bail!("nsd exited with {status} before answering:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "nsd did not answer within {READY_DEADLINE:?} (last: {last}):\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lookup(&self) -> HickoryLookup {
        // Exercise the same `IP:PORT` parsing `cerectl --resolver` uses.
        HickoryLookup::with_server(&self.addr().to_string()).expect("resolver for the lab")
    }
}

/// Starts the lab, or returns None (test skipped) when nsd is not installed and we
/// are not in CI.
async fn lab() -> Option<Nsd> {
    let bin = ceres_testkit::Nsd::binary()?;
    Some(Nsd::start(&bin, &zones()).await.expect("start nsd"))
}

fn header(origin: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60\n@ IN NS ns1.example.com.\n"
    )
}

fn id(domain: &str, v4: &str, v6: Option<&str>) -> MailIdentity {
    let mut b = MailIdentity::builder(domain)
        .address(ip(v4))
        .dkim_selector("s1");
    if let Some(v6) = v6 {
        b = b.address(ip(v6));
    }
    b.build().expect("valid identity")
}

fn correct() -> MailIdentity {
    id("example.com", "203.0.113.10", Some("2001:db8::10"))
}

/// Records a correct domain needs besides A/MX (DKIM, plus SOA/NS).
fn good_extras(domain: &str) -> String {
    format!(
        "s1._domainkey.{domain}. IN TXT {}\n",
        zone_txt_rdata(&dkim_record())
    )
}

fn zones() -> Vec<(String, String)> {
    let mut z = Vec::new();

    // (a) The correct domain: exactly the snippet `cerectl dns --format zone` prints,
    // plus the DKIM key from "the mail software" and the SOA/NS every zone needs.
    let example = Checklist::for_identity(&correct()).render_zone();
    z.push((
        "example.com".into(),
        format!(
            "{}ns1 IN A 192.0.2.53\n{example}{}",
            header("example.com"),
            good_extras("example.com")
        ),
    ));

    // A correct domain whose SPF authorises via include and redirect chains. Its apex
    // also carries a pile of verification TXT records, as real domains do: the TXT
    // answer (about 1.6 KB) exceeds the EDNS UDP size, so it only arrives through
    // hickory's TCP fallback after a truncated UDP answer.
    let mut pile = String::new();
    for i in 0..6 {
        pile.push_str(&format!(
            "@ IN TXT \"site-verification-{i}={}\"\n",
            "v".repeat(230)
        ));
    }
    z.push((
        "include.example".into(),
        format!(
            "{}mail IN A 203.0.113.11\n@ IN MX 10 mail\n\
             @ IN TXT \"v=spf1 include:_a._spf.include.example redirect=_b._spf.include.example\"\n\
             _a._spf IN TXT \"v=spf1 ip4:198.51.100.0/24 ?all\"\n\
             _b._spf IN TXT \"v=spf1 a:mail.include.example -all\"\n\
             _dmarc IN TXT \"v=DMARC1; p=quarantine; rua=mailto:dmarc@include.example\"\n{}{pile}",
            header("include.example"),
            good_extras("include.example")
        ),
    ));

    // (b) Every record wrong in its own way.
    z.push((
        "broken.example".into(),
        format!(
            "{}mail IN A 203.0.113.99\n@ IN MX 10 mx.elsewhere.example.\n\
             @ IN TXT \"v=spf1 ip4:198.51.100.1 -all\"\n\
             _dmarc IN TXT \"v=DMARC1; p=maybe\"\n\
             s1._domainkey IN TXT \"v=DKIM1; k=rsa\"\n",
            header("broken.example")
        ),
    ));
    z.push((
        "plusall.example".into(),
        format!(
            "{}mail IN A 203.0.113.30\n@ IN MX 10 mail\n@ IN TXT \"v=spf1 +all\"\n{}",
            header("plusall.example"),
            good_extras("plusall.example")
        ),
    ));
    z.push((
        "twospf.example".into(),
        format!(
            "{}mail IN A 203.0.113.40\n@ IN MX 10 mail\n\
             @ IN TXT \"v=spf1 ip4:203.0.113.40 -all\"\n@ IN TXT \"v=spf1 mx -all\"\n\
             _dmarc IN TXT \"p=none; v=DMARC1\"\n",
            header("twospf.example")
        ),
    ));
    let mut many = header("many.example");
    let mut spf = String::from("v=spf1");
    for i in 1..=11 {
        spf.push_str(&format!(" include:s{i}.many.example"));
    }
    spf.push_str(" ip4:203.0.113.50 -all");
    // Longer than 255 bytes: published as two character-strings.
    assert!(spf.len() > 255);
    many.push_str(&format!(
        "mail IN A 203.0.113.50\n@ IN MX 10 mail\n@ IN TXT {}\n",
        zone_txt_rdata(&spf)
    ));
    for i in 1..=11 {
        many.push_str(&format!("s{i} IN TXT \"v=spf1 ip4:192.0.2.{i} -all\"\n"));
    }
    many.push_str("_dmarc IN TXT \"v=DMARC1; p=none; rua=mailto:d@many.example\"\n_dmarc IN TXT \"v=DMARC1; p=reject; rua=mailto:d@many.example\"\n");
    z.push(("many.example".into(), many));
    z.push((
        "void.example".into(),
        format!(
            "{}mail IN A 203.0.113.60\n@ IN MX 10 mail\n\
             @ IN TXT \"v=spf1 a:n1.void.example a:n2.void.example a:n3.void.example ip4:203.0.113.60 -all\"\n",
            header("void.example")
        ),
    ));

    // Reverse zones for the VPS addresses.
    let ptr = |addr: &str, name: &str| format!("{}. IN PTR {name}.\n", reverse_name(ip(addr)));
    z.push((
        "113.0.203.in-addr.arpa".into(),
        format!(
            "{}{}{}{}{}",
            header("113.0.203.in-addr.arpa"),
            ptr("203.0.113.10", "mail.example.com"),
            ptr("203.0.113.11", "mail.include.example"),
            // 203.0.113.20 (broken.example) deliberately has no PTR.
            ptr("203.0.113.30", "host.other.example"),
            ptr("203.0.113.40", "mail.twospf.example"),
        ),
    ));
    z.push((
        "8.b.d.0.1.0.0.2.ip6.arpa".into(),
        format!(
            "{}{}{}",
            header("8.b.d.0.1.0.0.2.ip6.arpa"),
            ptr("2001:db8::10", "mail.example.com"),
            // Names the mail host, which has no AAAA: not forward-confirmed.
            ptr("2001:db8::20", "mail.broken.example"),
        ),
    ));

    // DNSBL zones: one lists 203.0.113.10, one is clean, one refuses like Spamhaus does
    // for public resolvers.
    z.push((
        "bl.example".into(),
        format!(
            "{}10.113.0.203 IN A 127.0.0.2\n10.113.0.203 IN TXT \"listed in the lab blocklist: spam trap hit\"\n2.0.0.127 IN A 127.0.0.2\n",
            header("bl.example")
        ),
    ));
    z.push(("clean.example".into(), header("clean.example")));
    z.push((
        "refuse.example".into(),
        format!("{}* IN A 127.255.255.254\n", header("refuse.example")),
    ));
    z
}

fn checks(r: &Report, kind: CheckKind) -> Vec<&Check> {
    r.checks.iter().filter(|c| c.kind == kind).collect()
}

fn one(r: &Report, kind: CheckKind, address: Option<&str>) -> Check {
    r.checks
        .iter()
        .find(|c| c.kind == kind && c.address == address.map(ip))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no {kind:?} check for {address:?}:\n{}",
                r.render_text(false)
            )
        })
}

fn assert_status(c: &Check, status: Status, found_contains: &str) {
    assert_eq!(c.status, status, "{c:#?}");
    assert!(
        c.found.contains(found_contains),
        "found {:?} does not mention {found_contains:?}",
        c.found
    );
    if status != Status::Pass {
        assert!(c.fix.is_some(), "{c:#?}");
    }
}

#[tokio::test]
async fn correct_zones_pass_every_check() {
    let Some(nsd) = lab().await else { return };
    let dns = nsd.lookup();

    let report = verify(&correct(), &dns).await;
    println!("{}", report.render_text(false));
    for c in &report.checks {
        assert_eq!(c.status, Status::Pass, "{c:#?}\n{}", nsd.log());
    }
    assert_eq!(report.checks.len(), 10);
    assert!(report.is_ok());
    assert!(
        one(&report, CheckKind::Mx, None)
            .found
            .contains("priority 10")
    );
    assert!(
        one(&report, CheckKind::Dkim, None)
            .found
            .contains("rsa key")
    );
    assert!(
        one(&report, CheckKind::Ptr, Some("2001:db8::10"))
            .found
            .contains("forward-confirmed")
    );

    let inc = id("include.example", "203.0.113.11", None);
    let report = verify(&inc, &dns).await;
    println!("{}", report.render_text(false));
    for c in &report.checks {
        assert_eq!(c.status, Status::Pass, "{c:#?}");
    }
    let spf = one(&report, CheckKind::Spf, Some("203.0.113.11"));
    assert!(
        spf.found.contains("via redirect=_b._spf.include.example"),
        "{spf:?}"
    );
    assert!(spf.found.contains("(3 of 10 DNS lookups)"), "{spf:?}");
    assert!(
        one(&report, CheckKind::Dmarc, None)
            .found
            .contains("p=quarantine")
    );
}

#[tokio::test]
async fn each_wrong_record_fails_with_what_was_found() {
    let Some(nsd) = lab().await else { return };
    let dns = nsd.lookup();

    let broken = id("broken.example", "203.0.113.20", Some("2001:db8::20"));
    let r = verify(&broken, &dns).await;
    println!("{}", r.render_text(false));
    assert_status(&one(&r, CheckKind::A, None), Status::Fail, "203.0.113.99");
    assert_status(
        &one(&r, CheckKind::Aaaa, None),
        Status::Fail,
        "no AAAA record",
    );
    assert_status(
        &one(&r, CheckKind::Mx, None),
        Status::Fail,
        "10 mx.elsewhere.example",
    );
    // The record itself is valid SPF; it just does not authorise the VPS.
    assert_status(
        &one(&r, CheckKind::Spf, None),
        Status::Pass,
        "ip4:198.51.100.1",
    );
    assert_status(
        &one(&r, CheckKind::Spf, Some("203.0.113.20")),
        Status::Fail,
        "fail for 203.0.113.20: matched -all",
    );
    assert_status(
        &one(&r, CheckKind::Spf, Some("2001:db8::20")),
        Status::Fail,
        "fail for 2001:db8::20",
    );
    assert_status(
        &one(&r, CheckKind::Dmarc, None),
        Status::Fail,
        "invalid value \"maybe\" for p=",
    );
    assert_status(
        &one(&r, CheckKind::Dkim, None),
        Status::Fail,
        "p= tag is missing",
    );
    assert_status(
        &one(&r, CheckKind::Ptr, Some("203.0.113.20")),
        Status::Fail,
        "NXDOMAIN",
    );
    assert_status(
        &one(&r, CheckKind::Ptr, Some("2001:db8::20")),
        Status::Fail,
        "not forward-confirmed",
    );
    assert!(!r.is_ok());
    let s = r.summary();
    assert_eq!(
        (s.pass, s.fail, s.error),
        (1, 9, 0),
        "{}",
        r.render_text(false)
    );

    let plus = id("plusall.example", "203.0.113.30", None);
    let r = verify(&plus, &dns).await;
    println!("{}", r.render_text(false));
    assert_status(&one(&r, CheckKind::A, None), Status::Pass, "203.0.113.30");
    assert_status(
        &one(&r, CheckKind::Mx, None),
        Status::Pass,
        "10 mail.plusall.example",
    );
    assert_status(
        &one(&r, CheckKind::Spf, None),
        Status::Fail,
        "+all authorises every host",
    );
    assert_status(
        &one(&r, CheckKind::Spf, Some("203.0.113.30")),
        Status::Warn,
        "matched +all",
    );
    assert_status(
        &one(&r, CheckKind::Dmarc, None),
        Status::Fail,
        "_dmarc.plusall.example does not exist (NXDOMAIN)",
    );
    assert_status(&one(&r, CheckKind::Dkim, None), Status::Pass, "rsa key");
    assert_status(
        &one(&r, CheckKind::Ptr, Some("203.0.113.30")),
        Status::Fail,
        "host.other.example",
    );

    let two = id("twospf.example", "203.0.113.40", None);
    let r = verify(&two, &dns).await;
    println!("{}", r.render_text(false));
    assert_status(
        &one(&r, CheckKind::Spf, None),
        Status::Fail,
        "2 SPF records",
    );
    assert_status(
        &one(&r, CheckKind::Spf, Some("203.0.113.40")),
        Status::Fail,
        "permerror",
    );
    assert_status(
        &one(&r, CheckKind::Dmarc, None),
        Status::Fail,
        "must start with \"v=DMARC1\"",
    );
    // twospf.example has no s1._domainkey name at all.
    assert_status(
        &one(&r, CheckKind::Dkim, None),
        Status::Fail,
        "does not exist (NXDOMAIN)",
    );
    assert_status(
        &one(&r, CheckKind::Ptr, Some("203.0.113.40")),
        Status::Pass,
        "forward-confirmed",
    );

    let many = id("many.example", "203.0.113.50", None);
    let r = verify(&many, &dns).await;
    println!("{}", r.render_text(false));
    assert_status(
        &one(&r, CheckKind::Spf, Some("203.0.113.50")),
        Status::Fail,
        "too many DNS lookups",
    );
    assert_status(
        &one(&r, CheckKind::Dmarc, None),
        Status::Fail,
        "2 DMARC records",
    );

    let void = id("void.example", "203.0.113.60", None);
    let r = verify(&void, &dns).await;
    assert_status(
        &one(&r, CheckKind::Spf, Some("203.0.113.60")),
        Status::Fail,
        "too many void lookups",
    );
    assert_eq!(checks(&r, CheckKind::Spf).len(), 2);
}

#[tokio::test]
async fn dnsbl_zones_in_the_lab() {
    let Some(nsd) = lab().await else { return };
    let dns = nsd.lookup();
    let zones = ["bl.example", "clean.example", "refuse.example"];
    let results = dnsbl_check(ip("203.0.113.10"), &zones, &dns).await;
    println!("{}", ceres_dnscheck::render_dnsbl_text(&results));
    assert_eq!(
        results[0].status,
        DnsblStatus::Listed {
            codes: vec!["127.0.0.2".parse().unwrap()],
            reason: Some("listed in the lab blocklist: spam trap hit".into()),
        }
    );
    assert_eq!(results[0].to_check().status, Status::Fail);
    assert_eq!(results[1].status, DnsblStatus::NotListed);
    assert_eq!(results[1].to_check().status, Status::Pass);
    assert!(
        matches!(results[2].status, DnsblStatus::Refused { .. }),
        "{:?}",
        results[2]
    );

    // The RFC 5782 test entry 127.0.0.2 is listed; another address is not.
    let r = dnsbl_check(ip("127.0.0.2"), &["bl.example"], &dns).await;
    assert!(
        matches!(r[0].status, DnsblStatus::Listed { reason: None, .. }),
        "{:?}",
        r[0]
    );
    let r = dnsbl_check(ip("203.0.113.11"), &["bl.example"], &dns).await;
    assert_eq!(r[0].status, DnsblStatus::NotListed);
}

#[tokio::test]
async fn refused_and_silent_servers_are_not_reported_missing() {
    let Some(nsd) = lab().await else { return };

    // nsd refuses names outside its zones: REFUSED is a server answer, not "missing".
    let outside = id("example.org", "203.0.113.70", None);
    let r = verify(&outside, &nsd.lookup()).await;
    println!("{}", r.render_text(false));
    let a = one(&r, CheckKind::A, None);
    assert_eq!(a.status, Status::Error, "{a:#?}");
    assert!(a.found.contains("REFUSED"), "{a:#?}");
    assert!(!a.found.starts_with("nothing"));

    // A server that never answers: a timeout, again not "missing".
    let silent = UdpSocket::bind(SocketAddr::new(nsd.addr().ip(), PORT + 1)).unwrap();
    let lookup = HickoryLookup::with_server_addr(silent.local_addr().unwrap()).unwrap();
    let err = lookup.a("mail.example.com").await.unwrap_err();
    assert!(!err.is_negative(), "{err:?}");
    println!("silent server: {err}");
    let r = verify(&correct(), &lookup).await;
    assert!(
        r.checks.iter().all(|c| c.status == Status::Error),
        "{}",
        r.render_text(false)
    );
    assert!(!r.is_ok());
}
