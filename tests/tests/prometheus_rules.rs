//! The Prometheus alert rules shipped in deploy/prometheus: `promtool check
//! rules` accepts them, `promtool test rules` runs their unit tests, and every
//! metric they name is one a running VPS agent exposes (a rule on a metric
//! that was renamed would never fire, silently).
//!
//! No root needed. promtool is Debian's `prometheus` package; without it the
//! tests skip, except under `CI=true`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ceres_tests::{Daemon, bin, loopback_ip, run, sh, wait_until};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// promtool's path, or None (skip) outside CI when it is not installed.
fn promtool() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is not installed (apt-get install -y prometheus) and CI=true: refusing to skip"
        );
        eprintln!("SKIP: promtool is not installed (apt-get install -y prometheus)");
    }
    found
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let dir = rules_dir();
    let out =
        run(Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "rules", "ceres-alerts.yml"]))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    let out = run(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "ceres-alerts.test.yml",
    ]))
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every `ceres_*` name in the rules file.
fn metric_names_in_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(rules_dir().join("ceres-alerts.yml"))
        .expect("deploy/prometheus/ceres-alerts.yml is readable");
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("ceres_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Only names in expressions (comments name the config file too).
        let line = text[..text.len() - rest.len() + at]
            .rsplit('\n')
            .next()
            .unwrap_or("");
        if line.trim_start().starts_with("expr:") {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    Ok(page)
}

#[test]
fn every_metric_the_rules_use_is_one_the_vps_agent_exposes() {
    let names = metric_names_in_rules();
    assert!(
        names.contains("ceres_check_state") && names.len() >= 4,
        "{names:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let ip = loopback_ip();
    let metrics = format!("{ip}:19477");
    let config = dir.path().join("vps.env");
    std::fs::write(
        &config,
        format!(
            "CERES_CONTROL_LISTEN={ip}:17443\nCERES_TUNNEL=off\nCERES_METRICS_LISTEN={metrics}\n\
             CERES_WATCH_DNS=off\nCERES_ALERT_EMAIL=ops@example.net\n"
        ),
    )
    .unwrap();
    let vps = |args: &[&str]| {
        let mut cmd = Command::new(bin("ceres-vps"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args);
        cmd
    };
    sh(&mut vps(&[
        "init",
        "--public-ip",
        &ip,
        "--domain",
        "example.com",
    ]))
    .unwrap();
    let mut daemon = Daemon::spawn("vps", vps(&["run"]), dir.path()).unwrap();
    daemon.wait_ready(Duration::from_secs(20)).unwrap();
    let mut page = String::new();
    // The checks run at start: wait for the first state to be there.
    wait_until(
        "the watchdog's first states in the metrics",
        Duration::from_secs(20),
        || {
            page = scrape(&metrics)?;
            Ok(page.contains("ceres_check_state{check=\"home\"}"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{page}\n{}", daemon.log_text()));
    let exposed: BTreeSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &names {
        assert!(
            exposed.contains(name.as_str()),
            "the rules use {name}, which the agent does not expose:\n{page}"
        );
    }
    // The never-joined home is a warning; the e-mail channel is counted.
    assert!(
        page.contains("ceres_check_state{check=\"home\"} 1\n"),
        "{page}"
    );
    assert!(
        page.contains(
            "ceres_alert_notifications_total{channel=\"email\",target=\"ops@example.net\",outcome=\"sent\"} 0\n"
        ),
        "{page}"
    );
}
