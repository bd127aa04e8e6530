use super::*;
use crate::fleet::MailFleet;
use crate::identity::MailIdentity;

fn identity() -> MailIdentity {
    MailIdentity::builder("example.com")
        .address("203.0.113.10".parse().unwrap())
        .address("2001:db8::10".parse().unwrap())
        .dkim_selector("s1")
        .build()
        .unwrap()
}

#[test]
fn records_match_the_design() {
    let c = Checklist::for_identity(&identity());
    let find = |purpose, rtype: &str| {
        c.records
            .iter()
            .find(|r| r.purpose == purpose && r.rtype == rtype)
            .unwrap()
    };
    assert_eq!(
        find(RecordPurpose::Address, "A").value.as_deref(),
        Some("203.0.113.10")
    );
    assert_eq!(
        find(RecordPurpose::Address, "AAAA").value.as_deref(),
        Some("2001:db8::10")
    );
    let mx = find(RecordPurpose::Mx, "MX");
    assert_eq!((mx.name.as_str(), mx.priority), ("example.com", Some(10)));
    assert_eq!(mx.value.as_deref(), Some("mail.example.com"));
    assert_eq!(
        find(RecordPurpose::Spf, "TXT").value.as_deref(),
        Some("v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 mx -all")
    );
    let dmarc = find(RecordPurpose::Dmarc, "TXT");
    assert_eq!(dmarc.name, "_dmarc.example.com");
    assert_eq!(
        dmarc.value.as_deref(),
        Some("v=DMARC1; p=none; rua=mailto:dmarc@example.com; fo=1")
    );
    let dkim = find(RecordPurpose::Dkim, "TXT");
    assert_eq!(dkim.name, "s1._domainkey.example.com");
    assert!(dkim.value.is_none());
    assert!(
        dkim.note
            .as_deref()
            .unwrap()
            .contains("opendkim-genkey -s s1 -d example.com")
    );
    let ptrs: Vec<_> = c.records.iter().filter(|r| r.rtype == "PTR").collect();
    assert_eq!(ptrs.len(), 2);
    assert_eq!(ptrs[0].name, "10.113.0.203.in-addr.arpa");
    assert_eq!(ptrs[0].set_at, SetAt::VpsProvider);
    assert!(ptrs[1].name.ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"));
}

#[test]
fn text_table_is_aligned_and_complete() {
    let text = Checklist::for_identity(&identity()).render_text();
    assert!(text.starts_with("DNS records for example.com (mail host mail.example.com)"));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("WHERE")).unwrap();
    let value_col = lines[header].find("VALUE").unwrap();
    for l in &lines[header + 1..header + 9] {
        assert!(l.len() > value_col, "{l}");
    }
    assert!(text.contains("DNS zone      MX    example.com"), "{text}");
    assert!(text.contains("VPS provider  PTR   203.0.113.10"), "{text}");
    assert!(text.contains("10 mail.example.com"));
    assert!(text.contains("Notes:"));
}

#[test]
fn zone_snippet_uses_absolute_names_and_comments_ptr() {
    let zone = Checklist::for_identity(&identity()).render_zone();
    let line = |prefix: &str, ty: &str| {
        zone.lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!(" IN {ty}")))
            .unwrap_or_else(|| panic!("no {prefix} {ty} in\n{zone}"))
            .to_owned()
    };
    assert!(line("mail.example.com. ", "A").ends_with("203.0.113.10"));
    assert!(line("example.com. ", "MX").ends_with("10 mail.example.com."));
    assert!(
        line("example.com. ", "TXT")
            .ends_with("\"v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 mx -all\"")
    );
    assert!(
        line("_dmarc.example.com. ", "TXT")
            .contains("\"v=DMARC1; p=none; rua=mailto:dmarc@example.com; fo=1\"")
    );
    // DKIM and PTR are comments only.
    assert!(
        zone.lines()
            .any(|l| l.starts_with("; s1._domainkey.example.com."))
    );
    assert!(
        zone.lines()
            .any(|l| l.starts_with("; 10.113.0.203.in-addr.arpa.")
                && l.ends_with("PTR  mail.example.com."))
    );
    assert!(
        !zone
            .lines()
            .any(|l| !l.starts_with(';') && l.contains("PTR"))
    );
}

/// Every record line, commented or not, carries the TTL asked for (3600 by
/// default, a short one while mail is being set up or moved).
#[test]
fn zone_snippet_ttl() {
    let list = Checklist::for_identity(&identity());
    for (zone, ttl) in [
        (list.render_zone(), DEFAULT_ZONE_TTL),
        (list.render_zone_ttl(300), 300),
    ] {
        let records: Vec<&str> = zone.lines().filter(|l| l.contains(" IN ")).collect();
        assert!(records.len() >= 6, "{zone}");
        for l in records {
            let fields: Vec<&str> = l.trim_start_matches("; ").split_whitespace().collect();
            assert_eq!(fields[1], ttl.to_string(), "{l}");
        }
    }
}

#[test]
fn txt_rdata_splits_and_escapes() {
    assert_eq!(zone_txt_rdata("v=spf1 -all"), "\"v=spf1 -all\"");
    assert_eq!(zone_txt_rdata("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(zone_txt_rdata("tab\there"), "\"tab\\009here\"");
    let long = "x".repeat(600);
    let r = zone_txt_rdata(&long);
    let parts: Vec<&str> = r.split(' ').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].len(), 257);
    assert_eq!(parts[1].len(), 257);
    assert_eq!(parts[2].len(), 92);
    // Escapes do not count towards the 255 data bytes.
    let quotes = "\"".repeat(300);
    let r = zone_txt_rdata(&quotes);
    assert_eq!(r.split("\" \"").count(), 2);
    assert_eq!(zone_name("example.com"), "example.com.");
    assert_eq!(zone_name("example.com."), "example.com.");
}

#[test]
fn json_field_names_are_stable() {
    let v: serde_json::Value =
        serde_json::from_str(&Checklist::for_identity(&identity()).render_json()).unwrap();
    assert_eq!(v["domain"], "example.com");
    assert_eq!(v["mail_host"], "mail.example.com");
    let mx = &v["records"][2];
    assert_eq!(mx["set_at"], "dns_zone");
    assert_eq!(mx["purpose"], "mx");
    assert_eq!(mx["type"], "MX");
    assert_eq!(mx["name"], "example.com");
    assert_eq!(mx["value"], "mail.example.com");
    assert_eq!(mx["priority"], 10);
    let ptr = v["records"].as_array().unwrap().last().unwrap();
    assert_eq!(ptr["set_at"], "vps_provider");
    assert_eq!(ptr["address"], "2001:db8::10");
    let dkim = &v["records"][5];
    assert_eq!(dkim["purpose"], "dkim");
    assert!(dkim["value"].is_null());
}

#[test]
fn without_selector_dkim_row_says_so() {
    let id = MailIdentity::builder("example.org")
        .address("198.51.100.5".parse().unwrap())
        .build()
        .unwrap();
    let c = Checklist::for_identity(&id);
    let dkim = c
        .records
        .iter()
        .find(|r| r.purpose == RecordPurpose::Dkim)
        .unwrap();
    assert_eq!(dkim.name, "<selector>._domainkey.example.org");
    assert!(
        dkim.note
            .as_deref()
            .unwrap()
            .contains("no DKIM selector configured")
    );
    assert!(!c.records.iter().any(|r| r.rtype == "AAAA"));
}

/// Type, name, value, priority, VPS of a record.
type Row<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<u16>,
    Option<&'a str>,
);

fn two_vpses() -> MailFleet {
    let b = MailIdentity::builder("example.com")
        .mail_host("mx2.example.com")
        .address("198.51.100.20".parse().unwrap())
        .dkim_selector("s1")
        .build()
        .unwrap();
    let a = MailIdentity::builder("example.com")
        .mail_host("mx1.example.com")
        .address("203.0.113.10".parse().unwrap())
        .address("2001:db8::10".parse().unwrap())
        .dkim_selector("s1")
        .build()
        .unwrap();
    MailFleet::new(vec![("vps-a".into(), 10, a), ("vps-b".into(), 20, b)]).unwrap()
}

#[test]
fn two_vpses_get_an_mx_each_and_one_spf_with_every_address() {
    let c = Checklist::for_fleet(&two_vpses());
    let rows: Vec<Row<'_>> = c
        .records
        .iter()
        .map(|r| {
            (
                r.rtype,
                r.name.as_str(),
                r.value.as_deref(),
                r.priority,
                r.vps.as_deref(),
            )
        })
        .collect();
    let spf = "v=spf1 ip4:203.0.113.10 ip4:198.51.100.20 ip6:2001:db8::10 mx -all";
    assert_eq!(
        rows[..6],
        [
            (
                "A",
                "mx1.example.com",
                Some("203.0.113.10"),
                None,
                Some("vps-a")
            ),
            (
                "AAAA",
                "mx1.example.com",
                Some("2001:db8::10"),
                None,
                Some("vps-a")
            ),
            (
                "A",
                "mx2.example.com",
                Some("198.51.100.20"),
                None,
                Some("vps-b")
            ),
            (
                "MX",
                "example.com",
                Some("mx1.example.com"),
                Some(10),
                Some("vps-a")
            ),
            (
                "MX",
                "example.com",
                Some("mx2.example.com"),
                Some(20),
                Some("vps-b")
            ),
            ("TXT", "example.com", Some(spf), None, None),
        ]
    );
    let ptrs: Vec<_> = c.records.iter().filter(|r| r.rtype == "PTR").collect();
    assert_eq!(ptrs.len(), 3);
    assert_eq!(ptrs[2].name, "20.100.51.198.in-addr.arpa");
    assert_eq!(ptrs[2].value.as_deref(), Some("mx2.example.com"));
    assert_eq!(ptrs[2].vps.as_deref(), Some("vps-b"));
    assert!(
        ptrs[2]
            .note
            .as_deref()
            .unwrap()
            .contains("VPS vps-b's provider")
    );
    // DMARC and DKIM once, for the domain.
    assert_eq!(c.records.iter().filter(|r| r.rtype == "TXT").count(), 3);

    let text = c.render_text();
    assert!(
        text.starts_with("DNS records for example.com (mail hosts mx1.example.com for vps-a, mx2.example.com for vps-b)"),
        "{text}"
    );
    let header = text.lines().find(|l| l.starts_with("WHERE")).unwrap();
    assert!(header.ends_with("VPS"), "{header}");
    assert!(
        text.lines()
            .any(|l| l.contains("20 mx2.example.com") && l.ends_with("vps-b")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(spf) && l.ends_with("(all)")),
        "{text}"
    );

    let zone = c.render_zone_ttl(300);
    assert!(
        zone.lines().any(|l| l.starts_with("example.com. ")
            && l.ends_with("IN MX   20 mx2.example.com. ; VPS vps-b")),
        "{zone}"
    );
    assert!(
        zone.lines().any(|l| l.starts_with("mx1.example.com. ")
            && l.ends_with("IN A    203.0.113.10 ; VPS vps-a")),
        "{zone}"
    );

    let v: serde_json::Value = serde_json::from_str(&c.render_json()).unwrap();
    assert_eq!(v["mail_host"], "mx1.example.com");
    assert_eq!(v["vpses"][0]["name"], "vps-a");
    assert_eq!(v["vpses"][1]["priority"], 20);
    assert_eq!(v["records"][4]["vps"], "vps-b");
    assert!(v["records"][5].get("vps").is_none());
}

#[test]
fn one_vps_json_and_text_have_no_vps_fields() {
    let c = Checklist::for_identity(&identity());
    let v: serde_json::Value = serde_json::from_str(&c.render_json()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["domain", "mail_host", "records"]);
    for r in v["records"].as_array().unwrap() {
        assert!(r.get("vps").is_none(), "{r:#}");
    }
    let header = c
        .render_text()
        .lines()
        .find(|l| l.starts_with("WHERE"))
        .unwrap()
        .to_owned();
    assert!(header.ends_with("VALUE"), "{header}");
    assert!(!c.render_zone().contains("; VPS"));
}
