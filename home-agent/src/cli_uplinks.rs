//! `ceres-home leave`, `uplinks` and `priority`: the uplinks (VPSes) of this
//! home in the state directory (issue 16).

use std::time::SystemTime;

use ceres_control::VpsEntry;
use ceres_daemon::status_file;
use ceres_state::StateDir;
use clap::Args;
use serde::Serialize;

use crate::local_status::AgentPart;
use crate::settings::HomeSettings;
use crate::uplinks;

/// `leave` arguments.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The uplink to remove (as `ceres-home uplinks` names it).
    name: String,
}

/// `uplinks` arguments.
#[derive(Debug, Args)]
pub struct UplinksArgs {
    /// Machine-readable output: an array, one object per uplink.
    #[arg(long)]
    json: bool,
}

/// `priority` arguments.
#[derive(Debug, Args)]
pub struct PriorityArgs {
    /// The uplink.
    name: String,
    /// Its new priority (lower is preferred for outbound mail; also the MX
    /// priority `cerectl dns` suggests).
    priority: u16,
}

/// `ceres-home leave NAME`.
pub fn leave(dir: &StateDir, args: &LeaveArgs) -> anyhow::Result<()> {
    let store = uplinks::store(dir);
    let gone = store.remove(&args.name)?;
    if gone.first_slot {
        // A later join into the top directory must not start the old tunnel.
        uplinks::remove_runtime_files(dir)?;
    }
    println!(
        "left uplink {} (VPS at {}): its credentials and tunnel files are removed",
        gone.name, gone.control_address
    );
    let rest = store.list()?;
    if rest.is_empty() {
        println!("No uplink is left: join a VPS again with `ceres-home join TOKEN`.");
    } else {
        println!(
            "A running agent stops its tunnel and relays within seconds by itself; {} keep running.",
            ceres_control::store::names(&rest)
        );
    }
    println!(
        "On that VPS, revoke this host's certificate (`ceres-vps revoke ...` there, \
         or `cerectl` against it) so the key cannot be used again."
    );
    Ok(())
}

/// `ceres-home priority NAME N`.
pub fn priority(dir: &StateDir, args: &PriorityArgs) -> anyhow::Result<()> {
    let e = uplinks::store(dir).set_priority(&args.name, args.priority)?;
    println!(
        "uplink {} now has priority {} (a running agent picks it up within seconds)",
        e.name, e.priority
    );
    Ok(())
}

/// One line of `ceres-home uplinks`.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkRow {
    /// Its name.
    pub name: String,
    /// Its priority (lower is preferred).
    pub priority: u16,
    /// Its VPS's control address.
    pub control_address: String,
    /// Its CA's fingerprint.
    pub ca_fingerprint: String,
    /// Its directory.
    pub dir: String,
    /// Its tunnel interface (or why it has none).
    pub ifname: String,
    /// Whether its runtime runs, from its status file (`running`,
    /// `not_running`, `crashed`, `hung`; absent: the file cannot be read).
    pub agent: Option<status_file::AgentState>,
    /// Its session to the VPS is up.
    pub connected: Option<bool>,
    /// Its tunnel has a fresh handshake (read live).
    pub tunnel_up: Option<bool>,
    /// Its egress as the agent wrote it.
    pub egress_enabled: Option<bool>,
}

fn row(e: &VpsEntry, slot: Option<u16>, settings: &HomeSettings) -> UplinkRow {
    let ifname = match slot.map(|s| uplinks::ifname_for(&settings.tunnel_ifname, s)) {
        Some(Ok(n)) => n,
        Some(Err(e)) => e,
        None => "(no slot yet)".into(),
    };
    let file = status_file::read::<AgentPart>(&e.dir).ok();
    let (agent, part) = match file {
        None => (None, None),
        Some(f) => {
            let (state, env) = f.split();
            (Some(state), env.map(|e| e.agent))
        }
    };
    let tunnel_up = settings.tunnel.then(|| {
        ceres_tunnel::uapi_client::read_tunnel(&settings.wg_uapi_dir, &ifname, SystemTime::now()).up
    });
    UplinkRow {
        name: e.name.clone(),
        priority: e.priority,
        control_address: e.control_address.clone(),
        ca_fingerprint: e.ca_fingerprint.clone(),
        dir: e.dir.display().to_string(),
        ifname,
        agent,
        connected: part.as_ref().map(|p| p.session.connected),
        tunnel_up,
        egress_enabled: part.as_ref().map(|p| p.egress.enabled),
    }
}

/// `ceres-home uplinks [--json]`.
pub fn list(dir: &StateDir, settings: &HomeSettings, args: &UplinksArgs) -> anyhow::Result<()> {
    let entries = uplinks::store(dir).list()?;
    let slots = uplinks::assign_slots(&entries)?;
    let rows: Vec<UplinkRow> = entries
        .iter()
        .map(|e| row(e, slots.get(&e.name).copied(), settings))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no uplink: join a VPS with `ceres-home join TOKEN`");
        return Ok(());
    }
    let yn = |b: Option<bool>, y: &str, n: &str| match b {
        Some(true) => y.to_string(),
        Some(false) => n.to_string(),
        None => "-".to_string(),
    };
    println!(
        "{:<20} {:>8}  {:<24} {:<10} {:<9} {:<12} {:<8} EGRESS",
        "NAME", "PRIORITY", "CONTROL", "INTERFACE", "AGENT", "SESSION", "TUNNEL"
    );
    for r in &rows {
        println!(
            "{:<20} {:>8}  {:<24} {:<10} {:<9} {:<12} {:<8} {}",
            r.name,
            r.priority,
            r.control_address,
            r.ifname,
            r.agent
                .and_then(|a| serde_json::to_value(a).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into()),
            yn(r.connected, "connected", "down"),
            yn(r.tunnel_up, "up", "down"),
            yn(r.egress_enabled, "installed", "not"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_control::Credentials;

    /// A home's credentials for a fresh CA at `address`, as `join` stores them.
    fn creds(address: &str) -> Credentials {
        let ca =
            ceres_pki::Ca::generate("example.com", std::time::Duration::from_secs(86_400)).unwrap();
        let key = ceres_pki::KeyAndCsr::generate("home@test").unwrap();
        let cert = ca
            .sign_client(
                key.csr_pem(),
                ceres_pki::Role::Home,
                "home@test",
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        Credentials::from_parts(
            ca.cert_pem().to_owned(),
            cert,
            key.key_pem(),
            address.into(),
        )
    }

    #[test]
    fn join_adds_and_leave_removes_in_a_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        let store = uplinks::store(&dir);
        let a = creds("192.0.2.1:7443");
        let b = creds("192.0.2.2:7443");
        let fp = |c: &Credentials| {
            ceres_pki::CertificateInfo::from_pem(&c.ca_pem)
                .unwrap()
                .fingerprint
                .to_string()
        };
        assert!(store.check_new("a", &fp(&a), false).unwrap().is_none());
        let ea = store
            .add("a", store.next_priority().unwrap(), &a, None)
            .unwrap();
        assert!(ea.first_slot && ea.priority == 10);
        dir.write("tunnel.params", b"x").unwrap();
        assert!(store.check_new("b", &fp(&b), false).unwrap().is_none());
        let eb = store
            .add("b", store.next_priority().unwrap(), &b, None)
            .unwrap();
        assert!(!eb.first_slot && eb.priority == 20);
        // Same VPS under another name: refused with what to do.
        let err = join_advice_text(store.check_new("c", &fp(&b), false).unwrap_err());
        assert!(err.contains("--force") && err.contains("\"b\""), "{err}");
        leave(&dir, &LeaveArgs { name: "a".into() }).unwrap();
        assert!(
            !dir.join("tunnel.params").exists(),
            "runtime files go with the first slot"
        );
        let left: Vec<String> = store.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(left, vec!["b".to_string()]);
        let err = leave(&dir, &LeaveArgs { name: "zz".into() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("enrolled: b"), "{err}");
    }

    fn join_advice_text(e: ceres_control::StoreError) -> String {
        crate::cli::join_advice(e, &[]).to_string()
    }
}
