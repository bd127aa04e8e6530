//! `ceres-vps status`: what this host knows without the control plane —
//! whether the agent runs, home's session (since when), the tunnel as its
//! UAPI socket shows it, the relays and their ports, egress and what other
//! firewall tables do to it, the watchdog's checks. The running agent writes
//! its part into the state directory ([`ceres_daemon::status_file`]); the
//! tunnel is read live.

mod checks;

use std::time::SystemTime;

use ceres_daemon::status_file::{self, Agent, AgentState, human_secs as ago};
use ceres_daemon::terminal::escape_controls;
use ceres_pki::unix_secs;
use ceres_tunnel::uapi_client::{self, TunnelPart};
use serde::{Deserialize, Serialize};

pub use checks::{CheckPart, CheckState, FindingPart};

/// Version of the JSON layout of `status --json`.
pub const SCHEMA: u32 = 1;
/// Exit code when this host cannot tell (the state cannot be read).
pub use status_file::EXIT_UNKNOWN;

/// Home's session as the VPS sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HomePart {
    /// A home session is up now.
    pub connected: bool,
    /// Since when it is up, or down (Unix seconds; 0: never connected).
    pub since_unix: i64,
    /// Home's name.
    pub hostname: Option<String>,
    /// Where home's session comes from.
    pub remote_address: Option<String>,
    /// When home last reported (Unix seconds).
    pub last_report_unix: i64,
}

impl HomePart {
    /// From the hub's status.
    pub fn from_proto(h: &ceres_proto::HomeStatus) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        HomePart {
            connected: h.connected,
            since_unix: h.since_unix,
            hostname: some(&h.hostname),
            remote_address: some(&h.remote_address),
            last_report_unix: h.last_report_unix,
        }
    }
}

/// One relayed port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayPart {
    /// Public port.
    pub port: u32,
    /// The mail server's port at home.
    pub home_port: u32,
    /// PROXY header sent: "proxy-v1", "proxy-v2" or none.
    pub proxy: Option<String>,
    /// Connections open now.
    pub active: u64,
    /// Connections accepted since start.
    pub total: u64,
    /// Connections turned away while home was away.
    pub unavailable: u64,
}

impl RelayPart {
    /// From the relays' report.
    pub fn from_proto(p: &ceres_proto::RelayPort) -> Self {
        RelayPart {
            port: p.port,
            home_port: p.target_port,
            proxy: (!p.proxy.is_empty()).then(|| p.proxy.clone()),
            active: p.active,
            total: p.total,
            unavailable: p.unavailable,
        }
    }
}

/// Outbound mail for home leaving from this VPS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EgressPart {
    /// The masquerade rules are installed.
    pub enabled: bool,
    /// TCP ports allowed out.
    pub ports: Vec<u32>,
    /// Why not installed, or what blocks it (other firewall tables).
    pub error: Option<String>,
    /// The routing's state, which the problems are decided on (absent in a
    /// file from an older agent: then read from `enabled` and `error` by the
    /// protocol's one compatibility rule, `ceres_proto::compat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EgressFileState>,
}

/// `egress.state` in the VPS's status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressFileState {
    /// Installed, and nothing found in its way.
    Installed,
    /// Installed, but another firewall table drops the mail (`error` says
    /// which and the fix).
    Blocked,
    /// Off by configuration (CERES_EGRESS=off).
    Disabled,
    /// The tunnel is off (CERES_TUNNEL=off).
    TunnelOff,
    /// Removed for a revoked home.
    Revoked,
    /// Installing it failed (`error` says why).
    Failed,
    /// Not installed yet (no home tunnel address).
    Pending,
}

impl EgressFileState {
    fn of(p: ceres_proto::EgressState) -> Option<Self> {
        use ceres_proto::EgressState as P;
        Some(match p {
            P::Installed => Self::Installed,
            P::Blocked => Self::Blocked,
            P::Disabled => Self::Disabled,
            P::TunnelOff => Self::TunnelOff,
            P::Revoked => Self::Revoked,
            P::Failed => Self::Failed,
            P::Pending => Self::Pending,
            P::Unspecified => return None,
        })
    }
}

impl EgressPart {
    /// From the relays' egress status.
    pub fn from_proto(e: &ceres_proto::EgressStatus) -> Self {
        EgressPart {
            enabled: e.enabled,
            ports: e.tcp_ports.clone(),
            error: (!e.error.is_empty()).then(|| e.error.clone()),
            state: EgressFileState::of(e.effective_state()),
        }
    }

    /// Its state; for a file from an older agent, what `enabled` and
    /// `error` meant (the protocol's compatibility rule, not a second one).
    fn effective_state(&self) -> Option<EgressFileState> {
        self.state.or_else(|| {
            let legacy = ceres_proto::EgressStatus {
                enabled: self.enabled,
                error: self.error.clone().unwrap_or_default(),
                ..Default::default()
            };
            EgressFileState::of(legacy.effective_state())
        })
    }
}

/// What the running agent writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentPart {
    /// Agent version.
    pub version: String,
    /// When the agent started (Unix seconds).
    pub started_at_unix: i64,
    /// The control plane's address, as given to joining hosts.
    pub control_address: String,
    /// Home's session.
    pub home: HomePart,
    /// The relays.
    pub relays: Vec<RelayPart>,
    /// Egress.
    pub egress: EgressPart,
    /// The watchdog's checks, in the order `cerectl status` shows them
    /// (none in a file from an agent before the watchdog was shown here).
    #[serde(default, deserialize_with = "checks::known_checks")]
    pub checks: Vec<CheckPart>,
}

/// `ceres-vps status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalStatus {
    /// JSON layout version.
    pub schema: u32,
    /// Nothing below is broken (exit 0 exactly then).
    pub ok: bool,
    /// One line per broken thing.
    pub problems: Vec<String>,
    /// Whether the agent runs.
    pub agent_state: AgentState,
    /// Process id of the agent that wrote the status.
    pub pid: Option<u32>,
    /// When the agent last wrote its status (Unix seconds).
    pub written_at_unix: Option<i64>,
    /// What the agent last wrote (also after a crash: its last word).
    pub agent: Option<AgentPart>,
    /// The tunnel, read live (absent when it is turned off).
    pub tunnel: Option<TunnelPart>,
}

/// Builds the status from what the file said and the tunnel answered.
pub fn assemble(
    file: Agent<AgentPart>,
    tunnel: Option<TunnelPart>,
    now: SystemTime,
) -> LocalStatus {
    let (agent_state, env) = file.split();
    let now_unix = unix_secs(now);
    let mut problems: Vec<String> = agent_state
        .problem(
            "ceres-vps",
            env.as_ref().map(|e| (e.pid, e.written_at_unix)),
            now_unix,
        )
        .into_iter()
        .collect();
    if let (AgentState::Running, Some(e)) = (agent_state, &env) {
        let a = &e.agent;
        if !a.home.connected {
            problems.push(if a.home.since_unix == 0 {
                "home has not connected since the agent started: is `ceres-home run` running at home, and can it reach the control port?".to_owned()
            } else {
                format!(
                    "home's session is down for {} s: check the home agent (`ceres-home status` there)",
                    (now_unix - a.home.since_unix).max(0)
                )
            });
        }
        if matches!(
            a.egress.effective_state(),
            Some(EgressFileState::Blocked | EgressFileState::Failed)
        ) {
            let err = a.egress.error.as_deref().unwrap_or("failed");
            problems.push(format!("egress: {err}"));
        }
        if let Some(t) = &tunnel {
            if a.home.connected && !t.up {
                problems.push(match &t.error {
                    Some(e) => format!("tunnel {}: {e}", t.ifname),
                    None => format!(
                        "tunnel {}: no WireGuard handshake in {} s: check that this VPS's WireGuard UDP port is open",
                        t.ifname,
                        uapi_client::HANDSHAKE_STALE_SECS
                    ),
                });
            }
        }
        // The watchdog's failing checks that nothing above judges.
        problems.extend(a.checks.iter().filter_map(CheckPart::problem));
    }
    LocalStatus {
        schema: SCHEMA,
        ok: problems.is_empty(),
        problems,
        agent_state,
        pid: env.as_ref().map(|e| e.pid),
        written_at_unix: env.as_ref().map(|e| e.written_at_unix),
        agent: env.map(|e| e.agent),
        tunnel,
    }
}

/// The text form.
pub fn render(s: &LocalStatus, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let now = unix_secs(now);
    let mut o = String::new();
    let agent = s.agent_state.describe(s.pid);
    let _ = writeln!(o, "agent    {agent}");
    if let Some(a) = &s.agent {
        let _ = writeln!(
            o,
            "         {} · up {} · control plane {}",
            a.version,
            ago(now - a.started_at_unix),
            a.control_address
        );
        let h = &a.home;
        match (h.connected, h.since_unix) {
            (true, since) => {
                let _ = writeln!(
                    o,
                    "home     connected for {} · {} from {}",
                    ago(now - since),
                    escape_controls(h.hostname.as_deref().unwrap_or("?")),
                    h.remote_address.as_deref().unwrap_or("?")
                );
            }
            (false, 0) => {
                let _ = writeln!(o, "home     NOT CONNECTED (not since the agent started)");
            }
            (false, since) => {
                let _ = writeln!(o, "home     DISCONNECTED for {}", ago(now - since));
            }
        }
    }
    match &s.tunnel {
        None => {
            let _ = writeln!(o, "tunnel   off (CERES_TUNNEL=off)");
        }
        Some(t) => match &t.error {
            Some(e) => {
                let _ = writeln!(o, "tunnel   {} DOWN: {e}", t.ifname);
            }
            None => {
                let _ = writeln!(
                    o,
                    "tunnel   {} {} · last handshake {} · home endpoint {} · rx {} tx {}",
                    t.ifname,
                    if t.up { "up" } else { "DOWN" },
                    t.last_handshake_age_secs
                        .map_or("never".into(), |a| format!("{} ago", ago(a as i64))),
                    t.endpoint.as_deref().unwrap_or("-"),
                    t.rx_bytes,
                    t.tx_bytes
                );
            }
        },
    }
    if let Some(a) = &s.agent {
        for r in &a.relays {
            let _ = writeln!(
                o,
                "relay    :{} -> home :{}{} · {} open, {} total, {} turned away",
                r.port,
                r.home_port,
                r.proxy
                    .as_deref()
                    .map_or(String::new(), |p| format!(" ({p})")),
                r.active,
                r.total,
                r.unavailable
            );
        }
        let e = &a.egress;
        let _ = writeln!(
            o,
            "egress   {}{}",
            if e.enabled {
                format!("tcp {:?} for home", e.ports)
            } else {
                "off".into()
            },
            e.error
                .as_deref()
                .map_or(String::new(), |x| format!(": {x}"))
        );
        for c in &a.checks {
            let _ = writeln!(o, "{}", c.line(now));
        }
    }
    status_file::write_problems(&mut o, &s.problems);
    o
}

/// Runs `ceres-vps status`: prints, and returns the exit code (0 ok,
/// 1 something is broken, 3 this host cannot tell).
pub fn command(
    state_dir: &std::path::Path,
    tunnel: Option<(&std::path::Path, &str)>,
    json: bool,
) -> std::process::ExitCode {
    let file = match status_file::read::<AgentPart>(state_dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ceres-vps: cannot tell: {e}");
            return std::process::ExitCode::from(EXIT_UNKNOWN);
        }
    };
    let now = SystemTime::now();
    let tunnel = tunnel.map(|(dir, ifname)| uapi_client::read_tunnel(dir, ifname, now));
    let s = assemble(file, tunnel, now);
    status_file::print_status("ceres-vps", &s, s.ok, json, || render(&s, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_daemon::status_file::Envelope;
    use std::time::Duration;

    fn at(s: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64)
    }

    fn running(home: HomePart) -> Agent<AgentPart> {
        Agent::Running(Envelope {
            pid: 7,
            written_at_unix: 1000,
            agent: AgentPart {
                home,
                egress: EgressPart {
                    enabled: true,
                    ports: vec![25],
                    error: None,
                    state: Some(EgressFileState::Installed),
                },
                ..Default::default()
            },
        })
    }

    /// A running agent's file with home connected.
    fn connected() -> Envelope<AgentPart> {
        let Agent::Running(env) = running(HomePart {
            connected: true,
            since_unix: 900,
            ..Default::default()
        }) else {
            unreachable!()
        };
        env
    }

    #[test]
    fn home_connected_is_ok_and_home_away_is_a_problem() {
        let s = assemble(
            running(HomePart {
                connected: true,
                since_unix: 900,
                ..Default::default()
            }),
            None,
            at(1000),
        );
        assert!(s.ok, "{:?}", s.problems);
        let s = assemble(
            running(HomePart {
                connected: false,
                since_unix: 940,
                ..Default::default()
            }),
            None,
            at(1000),
        );
        assert!(!s.ok);
        assert!(s.problems[0].contains("down for 60 s"), "{:?}", s.problems);
        assert!(render(&s, at(1000)).contains("home     DISCONNECTED for 60 s"));
    }

    #[test]
    fn a_blocking_firewall_table_is_a_problem() {
        let mut env = connected();
        env.agent.egress.error = Some("table ip filter drops forwarded traffic".into());
        env.agent.egress.state = Some(EgressFileState::Blocked);
        let s = assemble(Agent::Running(env), None, at(1000));
        assert_eq!(
            s.problems,
            ["egress: table ip filter drops forwarded traffic"]
        );
    }

    #[test]
    fn egress_problems_come_from_the_state_not_the_words() {
        let with = |enabled, error: Option<&str>, state| {
            let mut env = connected();
            env.agent.egress = EgressPart {
                enabled,
                ports: vec![25],
                error: error.map(str::to_owned),
                state,
            };
            assemble(Agent::Running(env), None, at(1000)).problems
        };
        use EgressFileState as S;
        // Typed: the state decides, whatever the words.
        assert_eq!(
            with(false, Some("nft: permission denied"), Some(S::Failed)),
            ["egress: nft: permission denied"]
        );
        for quiet in [
            S::Disabled,
            S::TunnelOff,
            S::Revoked,
            S::Pending,
            S::Installed,
        ] {
            assert!(
                with(false, Some("failed-looking words"), Some(quiet)).is_empty(),
                "{quiet:?}"
            );
        }
        // A file from an older agent: the protocol's compatibility rule.
        assert!(with(false, Some("disabled (CERES_EGRESS=off)"), None).is_empty());
        assert!(with(false, Some("removed: home revoked"), None).is_empty());
        assert_eq!(
            with(false, Some("nft: permission denied"), None),
            ["egress: nft: permission denied"]
        );
        assert_eq!(
            with(true, Some("table ip filter drops forwarded traffic"), None),
            ["egress: table ip filter drops forwarded traffic"]
        );
    }

    fn check(id: crate::watch::CheckId, state: CheckState, detail: &str) -> CheckPart {
        CheckPart {
            id,
            state,
            since_unix: 400,
            detail: detail.into(),
            findings: Vec::new(),
            notified: false,
        }
    }

    #[test]
    fn the_checks_are_shown_and_failing_ones_are_problems() {
        use crate::watch::CheckId;
        let mut env = connected();
        env.agent.checks = vec![
            check(
                CheckId::Home,
                CheckState::Ok,
                "session up, handshake 5 s ago",
            ),
            // Failing, but the local status judges home's session itself
            // (connected here): shown only.
            check(CheckId::Home, CheckState::Failing, "no handshake for 200 s"),
            // Nothing else here judges the relays: a problem.
            check(
                CheckId::Relays,
                CheckState::Failing,
                "25: 3 senders turned away",
            ),
            check(
                CheckId::Dnsbl,
                CheckState::Failing,
                "203.0.113.10 on bl.example: listed",
            ),
            check(
                CheckId::Spf,
                CheckState::Warning,
                "SPF: could not be checked",
            ),
        ];
        let s = assemble(Agent::Running(env), None, at(1000));
        assert_eq!(
            s.problems,
            [
                "Mail relays (relays check): 25: 3 senders turned away",
                "DNS blocklists (dnsbl check): 203.0.113.10 on bl.example: listed"
            ]
        );
        assert!(!s.ok);
        let text = render(&s, at(1000));
        for line in [
            "check    home          FAILING for 10 min · no handshake for 200 s",
            "check    relays        FAILING for 10 min · 25: 3 senders turned away",
            "check    dnsbl         FAILING for 10 min · 203.0.113.10 on bl.example: listed",
            "check    spf           warning for 10 min · SPF: could not be checked",
            "  - DNS blocklists (dnsbl check): 203.0.113.10 on bl.example: listed",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["agent"]["checks"][3]["id"], "dnsbl");
        assert_eq!(json["agent"]["checks"][3]["state"], "failing");
        assert_eq!(json["agent"]["checks"][3]["since_unix"], 400);
    }

    #[test]
    fn a_status_file_from_an_agent_without_checks_still_reads() {
        // As an agent of the release before wrote it.
        let dir = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "pid": std::process::id(),
            "written_at_unix": unix_secs(SystemTime::now()),
            "agent": {
                "version": "0.9.0",
                "started_at_unix": 1,
                "control_address": "203.0.113.10:7443",
                "home": {"connected": true, "since_unix": 5, "hostname": "mailbox",
                         "remote_address": null, "last_report_unix": 6},
                "relays": [],
                "egress": {"enabled": true, "ports": [25], "error": null}
            }
        });
        std::fs::write(
            status_file::path_in(dir.path()),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let file = status_file::read::<AgentPart>(dir.path()).unwrap();
        let s = assemble(file, None, SystemTime::now());
        assert_eq!(s.agent_state, AgentState::Running);
        assert!(s.ok, "{:?}", s.problems);
        let a = s.agent.as_ref().unwrap();
        assert!(a.checks.is_empty());
        assert_eq!(a.version, "0.9.0");
        assert!(!render(&s, SystemTime::now()).contains("check "));
    }
}
