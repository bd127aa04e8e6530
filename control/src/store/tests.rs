#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use ceres_pki::{Ca, KeyAndCsr};

use super::*;

/// Credentials as enrolment returns them, from a CA of their own.
fn creds(address: &str) -> Credentials {
    creds_of(
        &Ca::generate("example.com", Duration::from_secs(86_400)).unwrap(),
        address,
        Role::Admin,
    )
}

fn creds_of(ca: &Ca, address: &str, role: Role) -> Credentials {
    let key = KeyAndCsr::generate("cerectl@test").unwrap();
    let cert = ca
        .sign_client(
            key.csr_pem(),
            role,
            "cerectl@test",
            Duration::from_secs(3600),
        )
        .unwrap();
    Credentials {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: cert,
        key_pem: key.key_pem(),
        control_address: address.to_owned(),
    }
}

fn fingerprint(c: &Credentials) -> String {
    ceres_pki::CertificateInfo::from_pem(&c.ca_pem)
        .unwrap()
        .fingerprint
        .to_string()
}

fn store() -> (tempfile::TempDir, VpsStore) {
    let tmp = tempfile::tempdir().unwrap();
    let root = StateDir::open(tmp.path().join("ceres")).unwrap();
    (tmp, VpsStore::new(root, Role::Admin))
}

/// Enrols `c` the way `cerectl enroll` does: check, then add.
fn enrol(s: &VpsStore, name: &str, c: &Credentials) -> VpsEntry {
    let replaces = s.check_new(name, &fingerprint(c), false).unwrap();
    let priority = s.next_priority().unwrap();
    s.add(name, priority, c, replaces.as_ref()).unwrap()
}

#[test]
fn the_first_vps_keeps_the_single_vps_layout_and_the_next_ones_get_a_directory() {
    let (_tmp, s) = store();
    assert!(s.list().unwrap().is_empty());
    assert_eq!(s.select(None).unwrap(), Selection::Nothing);
    assert_eq!(s.next_priority().unwrap(), FIRST_PRIORITY);

    let a = enrol(&s, "vps-a", &creds("203.0.113.10:7443"));
    assert!(a.first_slot);
    assert_eq!(a.dir, s.root().path());
    assert_eq!(a.priority, 10);
    assert!(s.root().exists("admin.pem") && s.root().exists("entry.json"));

    let b = enrol(&s, "vps-b", &creds("198.51.100.20:7443"));
    assert!(!b.first_slot);
    assert_eq!(b.dir, s.root().join("vps").join("vps-b"));
    assert_eq!(b.priority, 20);
    let c = enrol(&s, "c", &creds("192.0.2.30:7443"));
    assert_eq!(c.priority, 30);

    let all = s.list().unwrap();
    let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["vps-a", "vps-b", "c"], "by priority, not by name");
    assert!(matches!(s.select(None).unwrap(), Selection::Several(v) if v.len() == 3));
    assert_eq!(s.select(Some("vps-b")).unwrap(), Selection::One(b.clone()));
    // Each loads as the credentials of its own VPS.
    let loaded = Credentials::load(&b.state_dir().unwrap(), Role::Admin, "hint").unwrap();
    assert_eq!(loaded.control_address, "198.51.100.20:7443");
    // Nothing half-done is left behind.
    let more: Vec<String> = std::fs::read_dir(s.root().join("vps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(more.len(), 2, "{more:?}");
}

#[test]
fn a_duplicate_name_or_the_same_vps_twice_is_refused_before_anything_is_spent() {
    let (_tmp, s) = store();
    let a = creds("203.0.113.10:7443");
    enrol(&s, "vps-a", &a);
    let other = creds("198.51.100.20:7443");

    let dup = s
        .check_new("vps-a", &fingerprint(&other), false)
        .unwrap_err();
    assert!(
        matches!(&dup, StoreError::DuplicateName { name, address } if name == "vps-a" && address == "203.0.113.10:7443"),
        "{dup:?}"
    );
    assert!(dup.to_string().contains("nothing was changed"));
    // Asked to replace: the entry to replace.
    let old = s.check_new("vps-a", &fingerprint(&other), true).unwrap();
    assert_eq!(old.unwrap().name, "vps-a");

    // The same CA under a second name would count one VPS twice: refused even
    // when replacing.
    for replace in [false, true] {
        let same = s.check_new("again", &fingerprint(&a), replace).unwrap_err();
        assert!(
            matches!(&same, StoreError::SameVps { name, .. } if name == "vps-a"),
            "{same:?}"
        );
    }
    assert!(matches!(
        s.check_new("../evil", &fingerprint(&other), false),
        Err(StoreError::BadName { .. })
    ));
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn replacing_keeps_the_place_and_renews_the_credentials() {
    let (_tmp, s) = store();
    let ca = Ca::generate("example.com", Duration::from_secs(86_400)).unwrap();
    enrol(&s, "vps-a", &creds("203.0.113.10:7443"));
    enrol(
        &s,
        "vps-b",
        &creds_of(&ca, "198.51.100.20:7443", Role::Admin),
    );
    let renewed = creds_of(&ca, "198.51.100.21:7443", Role::Admin);
    let old = s.check_new("vps-b", &fingerprint(&renewed), true).unwrap();
    let e = s.add("vps-b", 20, &renewed, old.as_ref()).unwrap();
    assert_eq!(e.control_address, "198.51.100.21:7443");
    assert!(!e.first_slot);
    assert_eq!(s.list().unwrap().len(), 2);
}

#[test]
fn a_directory_from_before_several_vpses_reads_as_one_named_after_its_address() {
    let (_tmp, s) = store();
    // What the single-VPS cerectl wrote: no entry file.
    creds("203.0.113.10:7443")
        .save(s.root(), Role::Admin)
        .unwrap();
    let all = s.list().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "203.0.113.10");
    assert_eq!(all[0].priority, FIRST_PRIORITY);
    assert!(all[0].first_slot);
    assert_eq!(
        s.select(None).unwrap(),
        Selection::One(all[0].clone()),
        "one VPS needs no name"
    );
    // A second one goes beside it, after it.
    let b = enrol(&s, "vps-b", &creds("198.51.100.20:7443"));
    assert_eq!(b.priority, 20);
    assert!(
        !s.root().exists("entry.json"),
        "the old entry is left as it was"
    );
    assert_eq!(s.get("203.0.113.10").unwrap().priority, 10);
}

#[test]
fn removing_and_reordering() {
    let (_tmp, s) = store();
    enrol(&s, "vps-a", &creds("203.0.113.10:7443"));
    enrol(&s, "vps-b", &creds("198.51.100.20:7443"));

    let e = s.set_priority("vps-b", 5).unwrap();
    assert_eq!(e.priority, 5);
    assert_eq!(s.list().unwrap()[0].name, "vps-b");

    let unknown = s.remove("vps-c").unwrap_err();
    assert!(
        matches!(&unknown, StoreError::Unknown { known, .. } if known == "vps-b, vps-a"),
        "{unknown:?}"
    );
    let gone = s.remove("vps-b").unwrap();
    assert_eq!(gone.control_address, "198.51.100.20:7443");
    assert!(!s.root().join("vps").join("vps-b").exists());
    assert_eq!(std::fs::read_dir(s.root().join("vps")).unwrap().count(), 0);

    s.remove("vps-a").unwrap();
    for f in ["admin.pem", "admin.key", "ca.pem", "vps.json", "entry.json"] {
        assert!(!s.root().exists(f), "{f} left behind");
    }
    assert!(s.list().unwrap().is_empty());
    // The top is free again for the next one.
    assert!(enrol(&s, "vps-d", &creds("192.0.2.40:7443")).first_slot);
}

#[test]
fn home_credentials_for_another_vps_in_the_same_directory_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = StateDir::open(tmp.path().join("ceres")).unwrap();
    let home = creds_of(
        &Ca::generate("example.com", Duration::from_secs(86_400)).unwrap(),
        "203.0.113.10:7443",
        Role::Home,
    );
    home.save(&root, Role::Home).unwrap();
    let s = VpsStore::new(root.clone(), Role::Admin);
    let e = enrol(&s, "vps-b", &creds("198.51.100.20:7443"));
    assert!(!e.first_slot, "ca.pem and vps.json belong to the home VPS");
    let still = Credentials::load(&root, Role::Home, "hint").unwrap();
    assert_eq!(still.control_address, "203.0.113.10:7443");
    assert_eq!(still.ca_pem, home.ca_pem);
    s.remove("vps-b").unwrap();
    assert!(Credentials::exists(&root, Role::Home));
}

#[test]
fn names() {
    assert_eq!(default_name("203.0.113.10:7443"), "203.0.113.10");
    assert_eq!(default_name("VPS1.Example.NET:7443"), "vps1.example.net");
    assert_eq!(default_name("[2001:db8::1]:7443"), "2001-db8--1");
    assert_eq!(default_name(":7443"), "vps");
    for ok in ["vps-a", "a", "203.0.113.10", "Frankfurt_2"] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}
