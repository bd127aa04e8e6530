//! Issue 5, end to end: WireGuard keys and the PSK rotate make-before-break
//! — on demand (`cerectl rotate`) and on schedule — without resetting a TCP
//! connection through the tunnel, and either agent killed at any step of a
//! rotation converges to one working key pair after restart.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ceres_tests::postfix::smtp::connect;
use ceres_tests::{Ceres, Daemon, Lab, echo_roundtrip, echo_server, require_root, wait_until};

const HOME_TUN: &str = "10.77.77.2";
const VPS_TUN: &str = "10.77.77.1";

/// The relayed port with an echo server behind it at home.
const ECHO_PORT: u16 = 7001;

/// A lab whose tunnel carries test traffic: each end's input filter admits,
/// from the tunnel, only the VPS to home's forwarders, so the traffic is
/// the VPS dialling the forwarder of the echo port.
fn lab_with(vps_lines: &[&str]) -> (Lab, Vec<String>) {
    let lab = Lab::new().unwrap();
    let mut lines = vec![
        "CERES_EGRESS=off".to_owned(),
        format!("CERES_RELAYS={ECHO_PORT}"),
    ];
    lines.extend(vps_lines.iter().map(|s| s.to_string()));
    (lab, lines)
}

/// The echo server at home, behind the forwarder.
fn echo_at_home(lab: &Lab) -> Daemon {
    echo_server(&lab.home, "127.0.0.1", ECHO_PORT, lab.dir.path()).unwrap()
}

/// Home's forwarder port for the echo port, as home last reported it (it
/// changes when the home agent restarts).
fn forwarder(ceres: &Ceres<'_>) -> anyhow::Result<u16> {
    let ports = ceres.forwarder_ports(1, Duration::from_secs(5))?;
    ports
        .get(&ECHO_PORT)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no forwarder for {ECHO_PORT}"))
}

/// A round trip from the VPS through the tunnel to home's echo server,
/// after a datagram from home into the tunnel: a restarted VPS learns
/// home's endpoint only from home's packets, which test traffic from home
/// used to provide (the VPS's input filter drops the datagram itself).
fn through_tunnel(lab: &Lab, ceres: &Ceres<'_>, payload: &str) -> anyhow::Result<bool> {
    ceres_tests::postfix::smtp::in_netns(&lab.home, || {
        let s = std::net::UdpSocket::bind((HOME_TUN, 0))?;
        s.send_to(b"nudge", (VPS_TUN, 9))
    })??;
    echo_roundtrip(&lab.vps, HOME_TUN, forwarder(ceres)?, payload)
}

/// Both ends agree on each other's current keys.
fn keys_agree(ceres: &Ceres<'_>) -> anyhow::Result<bool> {
    let (_, j) = ceres.status_json()?;
    let t = &j["tunnel"];
    Ok(t["home"].is_object()
        && t["vps"]["peer_public_key"] == t["home"]["public_key"]
        && t["home"]["peer_public_key"] == t["vps"]["public_key"]
        && j["rotation"]["pending"].is_null())
}

#[test]
fn ten_forced_rotations_keep_a_tcp_stream_intact() {
    if !require_root("ten_forced_rotations_keep_a_tcp_stream_intact") {
        return;
    }
    let (lab, lines) = lab_with(&[]);
    let vps_lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let ceres = Ceres::init(&lab, &vps_lines, &["CERES_EGRESS=off"]).unwrap();
    let vps = ceres.start_vps().unwrap();
    ceres.join_home().unwrap();
    let home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();
    let _echo = echo_at_home(&lab);
    wait_until("tunnel up", Duration::from_secs(30), || {
        through_tunnel(&lab, &ceres, "up\n")
    })
    .unwrap();
    let (_, before) = ceres.status_json().unwrap();

    // One TCP connection through the tunnel, a numbered line every 20 ms,
    // each echoed back: any reset or corruption fails, and the longest wait
    // for an echo is the rotation gap.
    let stream = connect(
        &lab.vps,
        SocketAddr::new(HOME_TUN.parse().unwrap(), forwarder(&ceres).unwrap()),
        Duration::from_secs(5),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let pinger = std::thread::spawn(move || -> (u64, Duration) {
        let mut s = stream;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        while !stop2.load(Ordering::Relaxed) {
            let line = format!("{n:016} {}\n", "x".repeat(1000));
            let t0 = Instant::now();
            s.write_all(line.as_bytes())
                .expect("write through the tunnel failed (reset?)");
            let mut back = vec![0u8; line.len()];
            s.read_exact(&mut back)
                .expect("echo through the tunnel failed (reset?)");
            assert_eq!(back, line.as_bytes(), "data corrupted through the tunnel");
            worst = worst.max(t0.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (n, worst)
    });

    for i in 1..=10 {
        let (code, out, err) = ceres.ctl(&["rotate"]).unwrap();
        assert_eq!(code, 0, "rotation {i}: {out}{err}");
    }
    stop.store(true, Ordering::Relaxed);
    let (lines_echoed, worst) = pinger
        .join()
        .expect("the TCP stream broke during rotations");
    eprintln!(
        "10 rotations: {lines_echoed} lines echoed, largest gap {worst:?} (probe every 20 ms)"
    );

    // Home reports every second: wait until its report shows the new keys.
    wait_until(
        "home's report of the rotated keys",
        Duration::from_secs(10),
        || keys_agree(&ceres),
    )
    .unwrap();
    let (_, after) = ceres.status_json().unwrap();
    assert_eq!(after["rotation"]["completed"], 10, "{}", after["rotation"]);
    assert_eq!(after["rotation"]["last_outcome"], "ok");
    assert_ne!(
        after["tunnel"]["vps"]["public_key"],
        before["tunnel"]["vps"]["public_key"]
    );
    assert_ne!(
        after["tunnel"]["home"]["public_key"],
        before["tunnel"]["home"]["public_key"]
    );
    // Ten rotations' worth of keys, PSKs and the tokens: none in any log.
    let (_, text) = (0, serde_json::to_string(&after).unwrap());
    ceres_tests::assert_no_secrets(
        &ceres_tests::lab_secrets(&ceres),
        &[
            ("vps log", vps.log_text()),
            ("home log", home.log_text()),
            ("status", text),
        ],
    );
    // New keys are on disk: a VPS restart keeps the rotated ones.
    let key_file = std::fs::read_to_string(ceres.vps_state.join("wg.key")).unwrap();
    assert!(
        !serde_json::to_string(&after)
            .unwrap()
            .contains(key_file.trim()),
        "private key in status"
    );
}

#[test]
fn scheduled_rotation_happens_by_itself_repeatedly() {
    if !require_root("scheduled_rotation_happens_by_itself_repeatedly") {
        return;
    }
    let (lab, lines) = lab_with(&["CERES_ROTATE_EVERY=3s"]);
    let vps_lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let ceres = Ceres::init(&lab, &vps_lines, &["CERES_EGRESS=off"]).unwrap();
    let _vps = ceres.start_vps().unwrap();
    ceres.join_home().unwrap();
    let _home = ceres.start_home().unwrap();
    ceres.enroll_ctl().unwrap();
    wait_until("two scheduled rotations", Duration::from_secs(40), || {
        let (_, j) = ceres.status_json()?;
        Ok(j["rotation"]["completed"].as_u64().unwrap_or(0) >= 2)
    })
    .unwrap();
    let _echo = echo_at_home(&lab);
    wait_until(
        "tunnel works on the rotated keys",
        Duration::from_secs(20),
        || through_tunnel(&lab, &ceres, "after\n"),
    )
    .unwrap();
}

/// Kills one agent at `step` of a rotation, restarts it, and checks the pair
/// converges: keys agree, the tunnel carries traffic, a new rotation works.
fn crash_at(step: &str) {
    let (lab, lines) = lab_with(&[]);
    let vps_lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let ceres = Ceres::init(&lab, &vps_lines, &["CERES_EGRESS=off"]).unwrap();
    let crash_env = [("CERESTEST_CRASH_AT", step)];
    let on_vps = step.starts_with("vps-");
    let mut vps: Daemon = if on_vps {
        ceres.start_vps_env(&crash_env)
    } else {
        ceres.start_vps()
    }
    .unwrap();
    ceres.join_home().unwrap();
    let mut home: Daemon = if on_vps {
        ceres.start_home()
    } else {
        ceres.start_home_env(&crash_env)
    }
    .unwrap();
    ceres.enroll_ctl().unwrap();
    let _echo = echo_at_home(&lab);
    wait_until("tunnel up", Duration::from_secs(30), || {
        through_tunnel(&lab, &ceres, "up\n")
    })
    .unwrap();
    ceres
        .wait_home_connected(true, Duration::from_secs(20))
        .unwrap();

    // Start a rotation; the agent under test dies at `step`.
    let mut rotate = lab.internet.command(ceres_tests::bin("cerectl"));
    rotate.arg("--dir").arg(&ceres.ctl_dir).arg("rotate");
    let mut rotate = rotate
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let victim = if on_vps { &mut vps } else { &mut home };
    wait_until(
        &format!("the agent to die at {step}"),
        Duration::from_secs(30),
        || Ok(victim.try_wait()?.is_some()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", victim.log_text()));
    assert!(
        victim
            .log_text()
            .contains(&format!("CERESTEST_CRASH_AT={step}")),
        "died elsewhere:\n{}",
        victim.log_text()
    );
    let _ = rotate.kill();
    let _ = rotate.wait();

    // Restart it (no crash this time): the pair converges on one key pair.
    let restarted = if on_vps {
        ceres.start_vps().unwrap()
    } else {
        ceres.start_home().unwrap()
    };
    let other: &Daemon = if on_vps { &home } else { &vps };
    let logs = || {
        format!(
            "restarted:\n{}\nother:\n{}",
            restarted.log_text(),
            other.log_text()
        )
    };
    ceres
        .wait_home_connected(true, Duration::from_secs(30))
        .unwrap();
    wait_until(
        &format!("keys agree after a crash at {step}"),
        Duration::from_secs(60),
        || keys_agree(&ceres),
    )
    .unwrap_or_else(|e| {
        let st = ceres
            .status_json()
            .map(|j| (j.1["tunnel"].clone(), j.1["rotation"].clone()));
        panic!("{e}\nstatus: {st:?}\n{}", logs())
    });
    wait_until("tunnel works both ways", Duration::from_secs(30), || {
        through_tunnel(&lab, &ceres, "a\n")
    })
    .unwrap();
    // And the next rotation goes through.
    let (code, out, err) = ceres.ctl(&["rotate"]).unwrap();
    assert_eq!(code, 0, "rotation after recovery from {step}: {out}{err}");
    wait_until(
        "keys agree after the next rotation",
        Duration::from_secs(10),
        || keys_agree(&ceres),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(through_tunnel(&lab, &ceres, "c\n").unwrap());
}

macro_rules! crash_tests {
    ($($name:ident => $step:literal),* $(,)?) => {$(
        #[test]
        fn $name() {
            if !require_root(stringify!($name)) {
                return;
            }
            crash_at($step);
        }
    )*};
}

crash_tests! {
    vps_killed_after_prepare => "vps-prepared",
    vps_killed_after_staging => "vps-staged",
    vps_killed_after_commit => "vps-committed",
    vps_killed_at_promotion => "vps-promoted",
    home_killed_after_making_its_key => "home-keyed",
    home_killed_after_commit => "home-committed",
    home_killed_at_promotion => "home-promoted",
}
