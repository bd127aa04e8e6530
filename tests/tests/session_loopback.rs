//! The home session as the VPS sees it, on loopback (no root: the tunnel is
//! off): a hung home is dropped within three report intervals, and revoking
//! an old serial after a renewal revokes the renewed certificate too.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use ceres_pki::CertificateInfo;
use ceres_tests::{Daemon, LoopVps, bin, sh, wait_until};

fn cert_serial(path: &std::path::Path) -> String {
    CertificateInfo::from_pem(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .serial
}

/// Joins a home agent (tunnel off) to `vps` and starts it; returns its
/// state dir and the running agent.
fn start_home(vps: &LoopVps) -> (PathBuf, Daemon) {
    let home_state = vps.dir.path().join("home-state");
    let home_config = vps.dir.path().join("home.env");
    std::fs::write(
        &home_config,
        "CERES_TUNNEL=off\nCERES_RECONNECT_MAX=1s\nCERES_METRICS_LISTEN=off\nCERES_NAME=lab-home\n",
    )
    .unwrap();
    let token = vps.token("home", "1h").unwrap();
    sh(Command::new(bin("ceres-home"))
        .arg("--config")
        .arg(&home_config)
        .arg("--state-dir")
        .arg(&home_state)
        .args(["join", &token]))
    .unwrap();
    let mut cmd = Command::new(bin("ceres-home"));
    cmd.arg("--config")
        .arg(&home_config)
        .arg("--state-dir")
        .arg(&home_state)
        .arg("run");
    let mut home = Daemon::spawn("home", cmd, vps.dir.path()).unwrap();
    home.wait_ready(Duration::from_secs(20)).unwrap();
    (home_state, home)
}

fn status(ctl: &std::path::Path) -> serde_json::Value {
    let out = Command::new(bin("cerectl"))
        .arg("--dir")
        .arg(ctl)
        .args(["status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn wait_connected(ctl: &std::path::Path, connected: bool, timeout: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(&format!("home connected={connected}"), timeout, || {
        last = status(ctl);
        Ok(last["home"]["connected"] == connected)
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    last
}

#[test]
fn a_hung_home_is_dropped_within_three_report_intervals_and_recovers() {
    // Report interval 1 s (LoopVps).
    let vps = LoopVps::start(&[]).unwrap();
    let ctl = vps.enroll_ctl().unwrap();
    let (_, home) = start_home(&vps);
    wait_connected(&ctl, true, Duration::from_secs(20));

    // Hung, with its TCP connection open: the kernel still ACKs, nothing
    // reads or reports.
    let stopped = SystemTime::now();
    home.signal(libc::SIGSTOP);
    let json = wait_connected(&ctl, false, Duration::from_secs(15));
    // `since` is when the VPS ended the session (whole seconds).
    let ended = json["home"]["since"].as_str().unwrap().to_owned();
    let ended = time::OffsetDateTime::parse(&ended, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    let stopped = ceres_pki::unix_secs(stopped);
    assert!(
        ended - stopped <= 3,
        "dropped {} s after the home agent hung (three report intervals: 3 s)\n{}",
        ended - stopped,
        vps.daemon.log_text()
    );
    assert!(vps.daemon.log_text().contains("no report in time"));

    home.signal(libc::SIGCONT);
    wait_connected(&ctl, true, Duration::from_secs(30));
}

#[test]
fn revoking_the_old_serial_after_a_renewal_refuses_the_renewed_certificate() {
    // Six-second certificates: renewal due after four.
    let vps = LoopVps::start(&["CERES_CLIENT_CERT_TTL=6s"]).unwrap();
    let ctl = vps.enroll_ctl().unwrap();
    let (home_state, home) = start_home(&vps);
    let first = cert_serial(&home_state.join("home.pem"));
    let mut renewed = first.clone();
    wait_until(
        "the home certificate to renew",
        Duration::from_secs(30),
        || {
            renewed = cert_serial(&home_state.join("home.pem"));
            Ok(renewed != first)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", home.log_text()));
    // The renewed certificate carries the session (a fresh one after renewal).
    wait_until(
        "a session with the renewed certificate",
        Duration::from_secs(20),
        || {
            Ok(status(&ctl)["home"]["connected"] == true
                && vps
                    .daemon
                    .log_text()
                    .contains("renewed a client certificate"))
        },
    )
    .unwrap();

    // The owner revokes the serial they knew (the thief renewed since).
    let out = vps.vps(&["cert", "revoke", &first]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&vps.vps(&["cert", "list"]).unwrap().stdout).into_owned();
    let line = listing
        .lines()
        .find(|l| l.starts_with(&renewed.to_ascii_lowercase()) || l.starts_with(&renewed))
        .unwrap_or_else(|| panic!("{renewed} not listed:\n{listing}"));
    assert!(line.contains("REVOKED"), "{listing}");

    // The live session of the renewed certificate is cut, and its next
    // handshake refused.
    wait_connected(&ctl, false, Duration::from_secs(10));
    wait_until(
        "the renewed certificate to be refused",
        Duration::from_secs(20),
        || {
            let log = vps.daemon.log_text();
            Ok(log.lines().any(|l| {
                l.contains("revoked certificate refused")
                    && l.to_ascii_lowercase()
                        .contains(&renewed.to_ascii_lowercase())
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vps.daemon.log_text()));
    assert_eq!(status(&ctl)["home"]["connected"], false);
}
