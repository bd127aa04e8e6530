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

/// `ceres-vps run` before `init` is a configuration error (78) that names
/// the `init` command to run, with the `--config`/`--state-dir` it was given
/// (before: exit 1, which the unit restarted every 5 s) — whether the config
/// file is missing too or already there. It creates no state directory.
#[test]
fn vps_agent_run_before_init_exits_78_naming_init() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("vps.env");
    let state = tmp.path().join("state");
    let run_vps = || {
        run(Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("run"))
        .unwrap()
    };
    let expected_fix = format!(
        "ceres-vps --config {} --state-dir {} init --public-ip IP --domain DOMAIN",
        config.display(),
        state.display()
    );
    // No config file, no state.
    let out = run_vps();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("configuration error")
            && stderr.contains("not been initialised")
            && stderr.contains(&expected_fix),
        "{stderr}"
    );
    // A config file (written by hand), still no state.
    std::fs::write(
        &config,
        "CERES_PUBLIC_IP=192.0.2.1\nCERES_DOMAIN=example.com\n",
    )
    .unwrap();
    let out = run_vps();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("holds no CA") && stderr.contains(&expected_fix),
        "{stderr}"
    );
    assert!(
        !state.exists(),
        "run created the state directory before init"
    );
}

/// The `ceres` user's uid in these tests: `nobody` stands in for it.
const AGENT_UID: u32 = 65534;

/// `ceres-vps token create` run as root next to an agent that runs as
/// another user (the package's `ceres`) writes a token file that user owns,
/// so the running agent redeems it; before, the file was root's 0600 and the
/// agent answered "unknown token".
#[test]
fn token_created_by_root_is_redeemed_by_an_agent_running_as_the_state_owner() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if !ceres_tests::require_root(
        "token_created_by_root_is_redeemed_by_an_agent_running_as_the_state_owner",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The agent's user must reach its config and state inside the temp dir.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let ip = ceres_tests::loopback_ip();
    let addr = format!("{ip}:7443");
    let config = tmp.path().join("vps.env");
    let state = tmp.path().join("state");
    std::fs::write(
        &config,
        format!(
            "CERES_CONTROL_LISTEN={addr}\nCERES_TUNNEL=off\nCERES_METRICS_LISTEN=off\nCERES_RELAYS=\nCERES_WATCH_DNS=off\n"
        ),
    )
    .unwrap();
    let vps = |args: &[&str]| {
        let mut cmd = Command::new(bin("ceres-vps"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args);
        cmd
    };
    ceres_tests::sh(&mut vps(&[
        "init",
        "--public-ip",
        &ip,
        "--domain",
        "example.com",
    ]))
    .unwrap();
    // What the package's service does: the state belongs to the agent's user.
    ceres_tests::sh(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{AGENT_UID}:{AGENT_UID}"))
            .arg(&state),
    )
    .unwrap();
    let mut run_cmd = vps(&["run"]);
    run_cmd.uid(AGENT_UID).gid(AGENT_UID);
    let _agent = ceres_tests::Daemon::spawn("vps", run_cmd, tmp.path()).unwrap();
    // Its notify socket is root's: wait for the control plane to listen instead.
    ceres_tests::wait_until(
        "the agent's control plane",
        std::time::Duration::from_secs(20),
        || Ok(std::net::TcpStream::connect(&addr).is_ok()),
    )
    .unwrap();

    // As root, the admin creates a token.
    let token = ceres_tests::sh(&mut vps(&["token", "create", "--role", "admin"])).unwrap();
    for entry in std::fs::read_dir(state.join("tokens")).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        assert_eq!(
            meta.uid(),
            AGENT_UID,
            "{} belongs to uid {}",
            entry.path().display(),
            meta.uid()
        );
    }
    assert_eq!(
        std::fs::metadata(state.join("tokens")).unwrap().uid(),
        AGENT_UID
    );
    // The agent, running as its own user, redeems it.
    let ctl_dir = tmp.path().join("ctl");
    let out = run(Command::new(bin("cerectl"))
        .arg("--dir")
        .arg(&ctl_dir)
        .args(["enroll", token.trim()]))
    .unwrap();
    assert!(
        out.status.success(),
        "enrolling with a token root created: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `init --state-dir X --config C` records X in C: later commands given only
/// `--config C` find the state (before, `token create` looked in
/// /var/lib/ceres and said "holds no CA").
#[test]
fn init_records_the_state_dir_in_the_config_it_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("etc/ceres.env");
    let state = tmp.path().join("state");
    let ip = ceres_tests::loopback_ip();
    let out = ceres_tests::sh(
        Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(["init", "--public-ip", &ip, "--domain", "example.com"]),
    )
    .unwrap();
    assert!(
        out.contains(&format!("ceres-vps --config {} run", config.display())),
        "init's next steps must name the config: {out}"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let canonical = std::fs::canonicalize(&state).unwrap();
    assert!(
        text.contains(&format!("CERES_STATE_DIR={}\n", canonical.display())),
        "{text}"
    );
    let out = run(Command::new(bin("ceres-vps"))
        .arg("--config")
        .arg(&config)
        .env_remove("CERES_STATE_DIR")
        .args(["token", "create", "--role", "home"]))
    .unwrap();
    assert!(
        out.status.success(),
        "token create with only --config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert_eq!(
        std::fs::read_dir(state.join("tokens"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .count(),
        1
    );
}

/// `token list` shows unused tokens (id, role, times — never the secret),
/// `token revoke ID` makes one useless: the running agent refuses it.
#[test]
fn token_list_and_revoke() {
    let vps = ceres_tests::LoopVps::start(&[]).unwrap();
    let home = vps.token("home", "1h").unwrap();
    let admin = vps.token("admin", "2h").unwrap();

    let out = vps.vps(&["token", "list", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tokens = json["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{json}");
    let roles: Vec<&str> = tokens.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert!(
        roles.contains(&"home") && roles.contains(&"admin"),
        "{json}"
    );
    for t in tokens {
        assert!(t["created"].is_string() && t["expires"].is_string(), "{t}");
        assert!(t["expires"].as_str() > t["created"].as_str(), "{t}");
    }
    // Neither the printed tokens nor their secrets appear in the listing.
    for tok in [&home, &admin] {
        let decoded = ceres_pki::JoinToken::decode(tok).unwrap();
        let secret = hex_of(decoded.secret.expose());
        assert!(!stdout.contains(&secret) && !stdout.contains(tok.as_str()));
    }

    // The table names the same ids.
    let home_id = tokens.iter().find(|t| t["role"] == "home").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = vps.vps(&["token", "list"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&home_id) && table.contains("admin"),
        "{table}"
    );

    let out = vps.vps(&["token", "revoke", &home_id]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vps.vps(&["token", "list", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tokens"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["tokens"][0]["role"], "admin");
    // An unknown id is an error, not a silent success.
    let out = vps.vps(&["token", "revoke", &home_id]).unwrap();
    assert_eq!(out.status.code(), Some(1));

    // The running agent refuses the revoked token and accepts the other.
    let state = vps.dir.path().join("home-state");
    let out = run(Command::new(bin("ceres-home"))
        .arg("--config")
        .arg(vps.dir.path().join("none.env"))
        .arg("--state-dir")
        .arg(&state)
        .args(["join", &home]))
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not known"),
        "{stderr}"
    );
    let ctl_dir = vps.dir.path().join("ctl");
    ceres_tests::sh(
        Command::new(bin("cerectl"))
            .arg("--dir")
            .arg(&ctl_dir)
            .args(["enroll", &admin]),
    )
    .unwrap();
}

/// `cert list --json`: every issued certificate with the same facts as the
/// table (serial, role, name, lineage, validity, revoked), and a revocation
/// shows in it.
#[test]
fn cert_list_json() {
    let vps = ceres_tests::LoopVps::start(&[]).unwrap();
    let _ctl = vps.enroll_ctl().unwrap();
    let list = || -> serde_json::Value {
        let out = vps.vps(&["cert", "list", "--json"]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let json = list();
    let certs = json["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{json}");
    let c = &certs[0];
    assert_eq!(c["role"], "admin", "{c}");
    assert_eq!(c["revoked"], false, "{c}");
    let serial = c["serial"].as_str().unwrap();
    assert!(
        !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_hexdigit()),
        "{c}"
    );
    // An enrolment is its own lineage.
    assert_eq!(c["lineage"], c["serial"], "{c}");
    assert!(
        c["valid_until"].as_str().unwrap() > c["issued"].as_str().unwrap(),
        "{c}"
    );
    let name = c["name"].as_str().unwrap().to_owned();
    assert!(!name.is_empty(), "{c}");
    // The table shows the same certificate.
    let out = vps.vps(&["cert", "list"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains(serial) && l.contains(&name) && l.ends_with("valid")),
        "{table}"
    );

    let out = vps.vps(&["cert", "revoke", &name]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = list();
    assert_eq!(json["certificates"][0]["revoked"], true, "{json}");
}

/// Behind an ISP that drops outgoing port 25 (the lab's internet router
/// drops TCP to port 25 from the home line, as many residential ISPs do),
/// `doctor`'s inbound probe and `send-test` time out — and say the ISP may
/// be the cause and where to run them instead, not just "timed out" as if
/// the VPS's firewall were wrong. Without the block, the same commands fail
/// for what really happened (nothing listens: refused) with no ISP hint.
#[test]
fn port_25_blocked_by_the_isp_gives_the_hint() {
    if !ceres_tests::require_root("port_25_blocked_by_the_isp_gives_the_hint") {
        return;
    }
    const HINT: &str = "your ISP may block outbound port 25";
    let lab = ceres_tests::Lab::new().unwrap();
    let vps = ceres_tests::addr::VPS;
    // Offline (no enrolment): the checks need only the address and domain.
    let ctl = |args: &[&str]| {
        let out = run(lab
            .home
            .command(bin("cerectl"))
            .arg("--dir")
            .arg(lab.path("ctl"))
            .args(args))
        .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let doctor = [
        "doctor",
        "--skip-dns",
        "--domain",
        "example.com",
        "--public-ip",
        vps,
        "--smtp-timeout",
        "2",
    ];
    let send_test = [
        "send-test",
        "--server",
        vps,
        "--domain",
        "example.com",
        "--to",
        "postmaster@example.com",
        "--timeout",
        "2",
    ];

    // No block: nothing listens on the VPS's 25, refused at once, no hint.
    for args in [&doctor[..], &send_test[..]] {
        let (code, text) = ctl(args);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("refused"), "{text}");
        assert!(!text.contains(HINT), "{text}");
    }

    // The ISP's router drops the home line's outgoing port 25.
    ceres_tests::sh(lab.internet.command("nft").arg(format!(
        "add table inet isp\n\
         add chain inet isp forward {{ type filter hook forward priority 0; }}\n\
         add rule inet isp forward ip saddr {}/24 tcp dport 25 drop",
        ceres_tests::addr::HOME
    )))
    .unwrap();
    let (code, text) = ctl(&doctor);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("FAIL   SMTP   {vps}:25")) && text.contains(HINT),
        "{text}"
    );
    assert!(
        text.contains("run it from the VPS or another server"),
        "{text}"
    );
    let (code, text) = ctl(&send_test);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAILED at connect") && text.contains(HINT),
        "{text}"
    );
    // Submission is the way out from such a line: send-test names it.
    assert!(text.contains("--port 587 --user USER"), "{text}");
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
