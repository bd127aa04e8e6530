//! Issue 14: `ceres-vps status` and `ceres-home status` say what each host
//! knows without the control plane — checked with both agents up, and at
//! home with the VPS's control port blocked.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ceres_tests::{Ceres, Lab, bin, echo_server, require_root, run, wait_until};

/// `AGENT --config C --state-dir S status --json` in `ns`: (exit code, JSON).
fn local_status(cmd: Command, config: &Path, state: &Path) -> (i32, serde_json::Value) {
    let mut cmd = cmd;
    cmd.arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["status", "--json"]);
    let out = run(&mut cmd).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn local_status_shows_session_and_tunnel_and_survives_a_blocked_control_port() {
    if !require_root("local_status_shows_session_and_tunnel_and_survives_a_blocked_control_port") {
        return;
    }
    let lab = Lab::new().unwrap();
    let ceres = Ceres::init(
        &lab,
        &["CERES_RELAYS=25", "CERES_WATCH_INTERVAL=1s"],
        &["CERES_PROBE_INTERVAL=1s"],
    )
    .unwrap();
    let _mail = echo_server(&lab.home, "127.0.0.1", 25, lab.dir.path()).unwrap();
    let (_vps, _home) = ceres.up().unwrap();
    let home_status = || {
        local_status(
            lab.home.command(bin("ceres-home")),
            &ceres.home_config,
            &ceres.home_state,
        )
    };
    let vps_status = || {
        local_status(
            lab.vps.command(bin("ceres-vps")),
            &ceres.vps_config,
            &ceres.vps_state,
        )
    };

    // Both up: each end sees the session and a tunnel handshake.
    let mut last = (0, serde_json::Value::Null);
    wait_until("home's local status ok", Duration::from_secs(20), || {
        last = home_status();
        Ok(last.0 == 0)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", last.1));
    let (_, h) = &last;
    println!("home: {h:#}");
    assert_eq!(h["agent_state"], "running");
    assert_eq!(h["agent"]["session"]["connected"], true);
    assert_eq!(h["tunnel"]["up"], true, "{h:#}");
    assert!(h["tunnel"]["last_handshake_age_secs"].is_u64());
    assert_eq!(h["agent"]["forwarders"][0]["mail_port"], 25);
    wait_until("the VPS's local status ok", Duration::from_secs(20), || {
        last = vps_status();
        Ok(last.0 == 0)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", last.1));
    let (_, v) = &last;
    println!("vps: {v:#}");
    assert_eq!(v["agent"]["home"]["connected"], true);
    assert_eq!(v["tunnel"]["up"], true);
    assert_eq!(v["agent"]["relays"][0]["port"], 25);

    // The watchdog's checks, as the agent wrote them (the DNS checks are
    // off in the lab): each with its state and since when, home's ok once
    // it has run with home connected.
    let check = |v: &serde_json::Value, id: &str| {
        v["agent"]["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id).cloned())
            .unwrap_or_default()
    };
    wait_until(
        "the home check ok in the VPS's local status",
        Duration::from_secs(20),
        || {
            last = vps_status();
            Ok(check(&last.1, "home")["state"] == "ok")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:#}", last.1));
    let (code, v) = &last;
    assert_eq!(*code, 0, "{v:#}");
    let ids: Vec<&str> = v["agent"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "home",
            "relays",
            "egress",
            "home_firewall",
            "rotation",
            "certificates"
        ],
        "{v:#}"
    );
    let home_check = check(v, "home");
    assert!(home_check["since_unix"].as_i64().unwrap() > 0, "{v:#}");
    assert!(home_check["detail"].is_string(), "{v:#}");
    assert_eq!(check(v, "certificates")["state"], "ok", "{v:#}");
    let out = run(lab
        .vps
        .command(bin("ceres-vps"))
        .arg("--config")
        .arg(&ceres.vps_config)
        .arg("--state-dir")
        .arg(&ceres.vps_state)
        .arg("status"))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("check    home          ok for "), "{text}");
    assert!(text.contains("check    certificates  ok for "), "{text}");

    // The control port dropped at the VPS (established sessions too): home's
    // status still answers, says the session is down and why; the tunnel,
    // which is UDP, stays up.
    let nft = |rule: &str| {
        let ok = lab.vps.command("nft").arg(rule).status().unwrap();
        assert!(ok.success(), "{rule}");
    };
    nft("add table inet block");
    nft("add chain inet block input { type filter hook input priority -10; policy accept; }");
    nft("add rule inet block input tcp dport 7443 drop");
    wait_until(
        "home's session down in its local status",
        Duration::from_secs(30),
        || {
            last = home_status();
            Ok(last.0 == 1 && last.1["agent"]["session"]["connected"] == false)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:#}", last.1));
    let (_, h) = &last;
    println!("home, control port blocked: {h:#}");
    let why = h["agent"]["session"]["last_error"].as_str().unwrap();
    assert!(!why.is_empty());
    let problems = h["problems"].to_string();
    assert!(
        problems.contains("no session with the VPS at"),
        "{problems}"
    );
    assert_eq!(h["tunnel"]["up"], true, "{h:#}");

    // The text form says the same.
    let out = run(lab
        .home
        .command(bin("ceres-home"))
        .arg("--config")
        .arg(&ceres.home_config)
        .arg("--state-dir")
        .arg(&ceres.home_state)
        .arg("status"))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("session     DOWN for"), "{text}");
}

/// Without a running agent, status says so and exits 1; without a state it
/// can read, it cannot tell (3).
#[test]
fn local_status_of_a_stopped_agent_is_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("home.env");
    std::fs::write(&config, "CERES_TUNNEL=off\n").unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let (code, j) = local_status(Command::new(bin("ceres-home")), &config, &state);
    assert_eq!(code, 1, "{j:#}");
    assert_eq!(j["agent_state"], "not_running");
}
