use ceres_proto::{EgressStatus, HomeStatus, Report, StatusResponse, TunnelReport, VpsStatus};

use super::*;

const NOW: i64 = 1_800_000_000;

/// A VPS's answer: home connected or not; with `healthy`, a fresh tunnel and
/// egress at both ends.
fn answer(connected: bool, healthy: bool) -> Status {
    let egress = EgressStatus {
        enabled: true,
        tcp_ports: vec![25, 465, 587],
        ..Default::default()
    };
    Status::from_response(StatusResponse {
        vps: Some(VpsStatus {
            domain: "example.com".into(),
            now_unix: NOW,
            ..Default::default()
        }),
        vps_tunnel: Some(TunnelReport {
            running: true,
            last_handshake_unix: if healthy { NOW - 5 } else { 0 },
            ..Default::default()
        }),
        egress: Some(egress.clone()),
        home: Some(HomeStatus {
            connected,
            since_unix: if connected { NOW - 100 } else { 0 },
            last_report: connected.then(|| Report {
                egress: Some(egress),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn entry(name: &str, priority: u16) -> VpsEntry {
    VpsEntry {
        name: name.into(),
        priority,
        control_address: format!("{name}.example.net:7443"),
        ca_fingerprint: format!("sha256:{name}"),
        dir: std::path::PathBuf::from("/nonexistent"),
        first_slot: false,
    }
}

fn report(name: &str, priority: u16, fetched: Fetched) -> VpsReport {
    VpsReport::new(&entry(name, priority), fetched)
}

fn answered(s: Status) -> Fetched {
    Fetched::Answered(Box::new(s))
}

#[test]
fn two_healthy_vpses_are_ok_and_outbound_goes_through_the_first_by_priority() {
    let f = FleetStatus::new(vec![
        report("vps-b", 20, answered(answer(true, true))),
        report("vps-a", 10, answered(answer(true, true))),
    ]);
    assert!(f.ok, "{f:#?}");
    assert_eq!(f.exit_code(), ExitCode::SUCCESS);
    assert_eq!(f.vpses[0].name, "vps-a", "sorted by priority");
    assert_eq!(f.summary.inbound_through, ["vps-a", "vps-b"]);
    assert_eq!(f.summary.outbound_through.as_deref(), Some("vps-a"));
    assert_eq!(
        f.summary.line,
        "inbound reachable through 2 of 2 VPSes (vps-a, vps-b); outbound through vps-a (first by priority; also ready: vps-b)"
    );
}

/// `answer(true, true)` with home saying what this VPS is to its outbound mail.
fn answer_as(uplink: ceres_proto::EgressUplink) -> Status {
    let mut s = answer(true, true);
    s.egress.home.as_mut().expect("home egress").uplink = crate::status::EgressUplink::of(uplink);
    s
}

#[test]
fn home_choice_of_outbound_wins_over_priority_and_shows_in_json() {
    use ceres_proto::EgressUplink as U;
    // A is back but still in its hold-down: home keeps sending through B.
    let f = FleetStatus::new(vec![
        report("vps-a", 10, answered(answer_as(U::Standby))),
        report("vps-b", 20, answered(answer_as(U::Active))),
    ]);
    assert_eq!(f.summary.outbound_through.as_deref(), Some("vps-b"));
    assert_eq!(f.summary.outbound_ready, ["vps-a", "vps-b"]);
    assert!(
        f.summary
            .line
            .ends_with("; outbound through vps-b (home's choice; also ready: vps-a)"),
        "{}",
        f.summary.line
    );
    let v = serde_json::to_value(&f).unwrap();
    assert_eq!(
        v["vpses"][1]["status"]["egress"]["home"]["uplink"],
        "active"
    );
    assert_eq!(
        v["vpses"][0]["status"]["egress"]["home"]["uplink"],
        "standby"
    );
    // A home with one VPS (or an older one) says nothing: the field is absent.
    let one = serde_json::to_value(answer(true, true)).unwrap();
    assert!(one["egress"]["home"].get("uplink").is_none(), "{one}");
}

#[test]
fn a_vps_without_home_and_a_dead_one_are_named() {
    let f = FleetStatus::new(vec![
        report("vps-a", 10, answered(answer(true, true))),
        report("vps-b", 20, answered(answer(false, false))),
        report(
            "vps-c",
            30,
            Fetched::Failed {
                error: "no answer from vps-c.example.net:7443 within 5 s (--timeout)".into(),
                timed_out: true,
            },
        ),
        report(
            "vps-d",
            40,
            Fetched::Failed {
                error: "cannot reach the CERES control plane at vps-d.example.net:7443: connection refused".into(),
                timed_out: false,
            },
        ),
    ]);
    assert!(!f.ok);
    assert_eq!(f.exit_code(), ExitCode::FAILURE);
    assert_eq!(f.summary.answered, 2);
    assert_eq!(
        f.summary.line,
        "inbound reachable through 1 of 4 VPSes (vps-a); outbound through vps-a"
    );
    let text = f.render(false);
    assert!(!text.contains('\x1b'), "{text}");
    assert!(
        text.contains("=== VPS vps-b (priority 20, vps-b.example.net:7443) ==="),
        "{text}"
    );
    assert!(
        text.contains("NOT CONNECTED") || text.contains("never connected"),
        "{text}"
    );
    assert!(
        text.contains("NO ANSWER: no answer from vps-c.example.net:7443 within 5 s"),
        "{text}"
    );
    assert!(text.contains("UNREACHABLE: cannot reach"), "{text}");
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("=== All VPSes"))
        .collect();
    assert!(
        table[1].contains("vps-a") && table[1].contains("ok") && table[1].contains("outbound yes"),
        "{text}"
    );
    assert!(
        table[2].contains("vps-b")
            && table[2].contains("PROBLEMS (")
            && table[2].contains("inbound no"),
        "{text}"
    );
    assert!(
        table[3].contains("vps-c") && table[3].contains("NO ANSWER"),
        "{text}"
    );
    assert!(
        table[4].contains("vps-d") && table[4].contains("UNREACHABLE"),
        "{text}"
    );
    assert!(text.ends_with(&format!("{}\n", f.summary.line)));
    assert!(f.render(true).contains('\x1b'));

    let v = serde_json::to_value(&f).unwrap();
    assert_eq!(v["schema"], SCHEMA);
    assert_eq!(v["ok"], false);
    assert_eq!(v["vpses"][1]["name"], "vps-b");
    assert_eq!(v["vpses"][1]["answered"], true);
    assert_eq!(v["vpses"][1]["status"]["home"]["connected"], false);
    assert_eq!(v["vpses"][2]["timed_out"], true);
    assert!(v["vpses"][2]["status"].is_null());
    assert_eq!(v["summary"]["inbound_through"][0], "vps-a");
    assert_eq!(v["summary"]["outbound_through"], "vps-a");
}

#[test]
fn nothing_answering_is_exit_3_and_no_outbound() {
    let failed = || Fetched::Failed {
        error: "refused".into(),
        timed_out: false,
    };
    let f = FleetStatus::new(vec![report("a", 10, failed()), report("b", 20, failed())]);
    assert_eq!(f.exit_code(), ExitCode::from(EXIT_UNREACHABLE));
    assert!(f.summary.outbound_through.is_none());
    assert!(
        f.summary
            .line
            .starts_with("inbound reachable through 0 of 2 VPSes; outbound through none"),
        "{}",
        f.summary.line
    );
}

#[test]
fn names_from_a_vps_cannot_drive_the_terminal() {
    let mut r = report(
        "a",
        10,
        Fetched::Failed {
            error: "bad \x1b[2J thing".into(),
            timed_out: false,
        },
    );
    r.name = "evil\x1b]0;x\x07".into();
    let text =
        FleetStatus::new(vec![r, report("b", 20, answered(answer(true, true)))]).render(false);
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[tokio::test]
async fn a_vps_that_never_answers_is_reported_as_such_after_its_time_limit() {
    // A listener that accepts and never speaks: TLS waits forever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = ceres_state::StateDir::open(tmp.path().join("s")).unwrap();
    write_credentials(&dir, &addr.to_string());
    let mut e = entry("silent", 10);
    e.dir = dir.path().to_owned();
    e.control_address = addr.to_string();
    let fetched = fetch(&[e], Duration::from_secs(1)).await;
    let v = &fetched.vpses[0];
    assert!(!v.answered && v.timed_out, "{v:#?}");
    assert!(v.error.as_deref().unwrap().contains("within 1 s"), "{v:#?}");
    drop(silent);
}

/// Admin credentials for a VPS at `address`, from a CA made here.
fn write_credentials(dir: &ceres_state::StateDir, address: &str) {
    let ca = ceres_pki::Ca::generate("example.com", Duration::from_secs(86_400)).unwrap();
    let key = ceres_pki::KeyAndCsr::generate("cerectl@test").unwrap();
    let cert = ca
        .sign_client(
            key.csr_pem(),
            ceres_pki::Role::Admin,
            "cerectl@test",
            Duration::from_secs(86_400),
        )
        .unwrap();
    dir.write("ca.pem", ca.cert_pem().as_bytes()).unwrap();
    dir.write("admin.key", key.key_pem().as_bytes()).unwrap();
    dir.write("admin.pem", cert.as_bytes()).unwrap();
    dir.write(
        "vps.json",
        serde_json::json!({"control_address": address, "ca_fingerprint": ca.fingerprint().to_string()})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
}
