//! Issue 2, end to end: the real binaries in three network namespaces.
//! init, tokens, join, both agents running, cerectl enrolled from the
//! internet side; home killed -> disconnected and exit 1; home restarted ->
//! connected again; SIGTERM drains both agents.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use ceres_tests::{Ceres, Lab, addr, require_root, wait_until};

#[test]
fn agents_join_report_and_survive_a_killed_home() {
    if !require_root("agents_join_report_and_survive_a_killed_home") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(&lab, &[], &[]).unwrap();
    let mut vps = ceres.start_vps().unwrap();
    ceres.join_home().unwrap();
    let mut home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();

    ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap();
    // Home's session comes first, the tunnel's first handshake just after:
    // the status is all well (exit code 0) once both are, not necessarily
    // in the first report that shows home connected.
    let mut json = serde_json::Value::Null;
    wait_until(
        "status exit code 0 with home connected",
        Duration::from_secs(20),
        || {
            let (code, j) = ceres.status_json()?;
            json = j;
            Ok(code == 0)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(json["schema"], 1);
    assert_eq!(json["home"]["connected"], true);
    assert_eq!(json["vps"]["domain"], "example.com");
    assert_eq!(json["vps"]["mail_host"], "mail.example.com");
    assert_eq!(json["vps"]["public_ips"][0], addr::VPS);
    assert_eq!(json["home"]["hostname"], "lab-home");
    assert_eq!(json["home"]["version"], env!("CARGO_PKG_VERSION"));
    // The VPS sees home's public address: the session really crossed the router.
    let remote = json["home"]["remote_address"].as_str().unwrap();
    assert!(
        remote.starts_with(&format!("{}:", addr::HOME)),
        "remote {remote}"
    );
    assert!(json["home"]["since"].is_string() && json["home"]["last_report"].is_string());

    // Plain-text status, piped: no escape codes, says connected.
    let (code, text, _) = ceres.ctl(&["status"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        text.contains("connected since") && !text.contains('\x1b'),
        "{text}"
    );

    // Prometheus metrics on both agents, on their loopback (not the public address).
    let vps_metrics = scrape(&lab.vps, 9477);
    assert!(
        vps_metrics.contains("ceres_home_connected 1"),
        "{vps_metrics}"
    );
    assert!(
        vps_metrics.contains("ceres_relay_connections_total{port=\"25\"}"),
        "{vps_metrics}"
    );
    assert!(
        vps_metrics.contains("ceres_certificate_expiry_timestamp_seconds{cert=\"server\"}"),
        "{vps_metrics}"
    );
    assert!(
        vps_metrics.contains("ceres_rotations_total 0"),
        "{vps_metrics}"
    );
    ceres_tests::wait_until(
        "home's metrics after a report",
        Duration::from_secs(10),
        // The sample line, not the HELP line (which also reads
        // "ceres_vps_connected 1 while ...").
        || Ok(scrape(&lab.home, 9478).contains("\nceres_vps_connected 1\n")),
    )
    .unwrap();
    let home_metrics = scrape(&lab.home, 9478);
    assert!(
        home_metrics.contains("ceres_certificate_expiry_timestamp_seconds{cert=\"home\"}"),
        "{home_metrics}"
    );
    // Both pages pass the format's own checker: headers, types, labels.
    ceres_testkit::promtool::check_metrics(http_body(&vps_metrics));
    ceres_testkit::promtool::check_metrics(http_body(&home_metrics));
    assert!(
        ceres_tests::postfix::smtp::connect(
            &lab.internet,
            format!("{}:9477", addr::VPS).parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_err(),
        "metrics must not listen on the public address"
    );

    // On a terminal: colour and symbols (run under a pseudo-terminal).
    let out = ceres_tests::sh(lab.internet.command("script").args([
        "-qec",
        &format!(
            "{} --dir {} status",
            ceres_tests::bin("cerectl").display(),
            ceres.ctl_dir.display()
        ),
        "/dev/null",
    ]))
    .unwrap();
    assert!(
        out.contains('\x1b') && out.contains('✔'),
        "no colour on a terminal: {out:?}"
    );

    // kill -9 the home agent: the VPS notices, status says so and exits 1.
    home.kill9().unwrap();
    let json = ceres
        .wait_home_connected(false, Duration::from_secs(20))
        .unwrap();
    let (code, _) = ceres.status_json().unwrap();
    assert_eq!(code, 1, "status must fail while home is away: {json}");
    assert_eq!(json["ok"], false);
    assert!(
        json["problems"][0]
            .as_str()
            .unwrap()
            .contains("not connected")
    );
    let (code, text, _) = ceres.ctl(&["status"]).unwrap();
    assert_eq!(code, 1);
    assert!(text.contains("NOT CONNECTED"), "{text}");

    // Restart it: connected again, with a new session.
    let mut home = ceres.start_home().unwrap();
    let json = ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap();
    assert_eq!(json["ok"], true, "{json:#}");

    // Restart the VPS: home reconnects by itself (capped backoff, 2 s max here).
    vps.terminate(Duration::from_secs(10)).unwrap();
    let mut vps = ceres.start_vps().unwrap();
    ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap();
    let log = home.log_text();
    assert!(
        log.contains("no session with the VPS"),
        "home should have logged the outage:\n{log}"
    );

    // Graceful shutdown on SIGTERM, both ends.
    let status = home.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "ceres-home exit on SIGTERM: {status}\n{}",
        home.log_text()
    );
    let status = vps.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "ceres-vps exit on SIGTERM: {status}\n{}",
        vps.log_text()
    );
}

/// The body of an HTTP response.
fn http_body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map_or(response, |(_, body)| body)
}

/// `GET /metrics` on 127.0.0.1:`port` inside `ns`.
fn scrape(ns: &ceres_tests::Netns, port: u16) -> String {
    ceres_tests::prometheus::scrape(ns, port).unwrap()
}
