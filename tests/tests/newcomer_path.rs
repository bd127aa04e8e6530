//! Issue 14, the newcomer's path: the traps a first-time user fell into,
//! each checked on the real binaries.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

use ceres_tests::{bin, run};

/// An unjoined home agent is a configuration error (78): the systemd unit's
/// `RestartPreventExitStatus=78` then stops it with the message instead of
/// restarting it every 5 s.
#[test]
fn unjoined_home_agent_exits_78_naming_join() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("home.env");
    std::fs::write(&config, "").unwrap();
    let out = run(Command::new(bin("ceres-home"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("run"))
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("configuration error") && stderr.contains("ceres-home join TOKEN"),
        "{stderr}"
    );
}
