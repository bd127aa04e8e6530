//! `ceres-home status`: what this host knows without the VPS — whether the
//! agent runs, its session to the VPS (since when, the last error), the
//! tunnel as its UAPI socket shows it, the forwarders, egress and firewall
//! findings. The running agent writes its part into the state directory
//! ([`ceres_daemon::status_file`]); the tunnel is read live.

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ceres_control::stack_report::StackStatus;
use ceres_daemon::status_file::{self, Agent, AgentState};
use ceres_pki::unix_secs;
use ceres_tunnel::uapi_client::{self, TunnelPart};
use serde::{Deserialize, Serialize};

use crate::mail::HomeMail;

/// Version of the JSON layout of `status --json`.
pub const SCHEMA: u32 = 1;
/// Exit code when this host cannot tell (the state cannot be read).
pub use status_file::EXIT_UNKNOWN;

/// The session to the VPS as the agent last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionPart {
    /// The session is up now.
    pub connected: bool,
    /// Since when it is up, or down (Unix seconds).
    pub since_unix: i64,
    /// The VPS control address it dials.
    pub vps: String,
    /// Why the last attempt failed or the last session ended.
    pub last_error: Option<String>,
}

/// The session state shared between the session loop and the status writer.
pub type SharedSession = Arc<Mutex<SessionPart>>;

/// The state before the first attempt.
pub fn session_connecting(s: &SharedSession, vps: &str) {
    *s.locked() = SessionPart {
        connected: false,
        since_unix: unix_secs(SystemTime::now()),
        vps: vps.to_owned(),
        last_error: None,
    };
}

/// Marks the session up.
pub fn session_up(s: &SharedSession, vps: &str) {
    let mut s = s.locked();
    *s = SessionPart {
        connected: true,
        since_unix: unix_secs(SystemTime::now()),
        vps: vps.to_owned(),
        last_error: None,
    };
}

/// Marks the session down with why; `since` moves only when it was up.
pub fn session_down(s: &SharedSession, vps: &str, error: String) {
    let mut s = s.locked();
    if s.connected || s.since_unix == 0 {
        s.since_unix = unix_secs(SystemTime::now());
    }
    s.connected = false;
    s.vps = vps.to_owned();
    s.last_error = Some(error);
}

/// One forwarder: tunnel port -> mail server port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwarderPart {
    /// The mail server's port.
    pub mail_port: u32,
    /// The forwarder's port on the tunnel address.
    pub forwarder_port: u32,
    /// PROXY header the VPS sends: "proxy-v1", "proxy-v2" or none.
    pub proxy: Option<String>,
    /// Connections open now.
    pub active: u64,
    /// Connections forwarded since start.
    pub total: u64,
}

/// Outbound mail routing into the tunnel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EgressPart {
    /// Installed.
    pub enabled: bool,
    /// TCP ports routed.
    pub ports: Vec<u32>,
    /// Sources routed.
    pub sources: Vec<String>,
    /// Why not, if not.
    pub error: Option<String>,
    /// Installed, or why not (absent in a file from an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EgressFileState>,
    /// With several VPSes: whether outbound mail leaves through this uplink
    /// now (absent with one VPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkRole>,
}

/// `egress.state` in the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressFileState {
    /// The routing is installed.
    Installed,
    /// Off by configuration (CERES_EGRESS=off).
    Disabled,
    /// The tunnel is off (CERES_TUNNEL=off).
    TunnelOff,
    /// Installing it failed (`error` says why).
    Failed,
    /// Waiting for the tunnel.
    Pending,
}

impl EgressFileState {
    fn of(p: ceres_proto::EgressState) -> Option<Self> {
        use ceres_proto::EgressState as P;
        match p {
            P::Installed | P::Blocked => Some(Self::Installed),
            P::Disabled => Some(Self::Disabled),
            P::TunnelOff => Some(Self::TunnelOff),
            P::Failed | P::Revoked => Some(Self::Failed),
            P::Pending => Some(Self::Pending),
            P::Unspecified => None,
        }
    }
}

/// `egress.uplink` in the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkRole {
    /// New outbound connections leave through this uplink.
    Active,
    /// It answers; another uplink is preferred now.
    Standby,
    /// It does not answer the probe.
    Down,
}

impl UplinkRole {
    fn of(p: ceres_proto::EgressUplink) -> Option<Self> {
        use ceres_proto::EgressUplink as P;
        match p {
            P::Active => Some(Self::Active),
            P::Standby => Some(Self::Standby),
            P::Down => Some(Self::Down),
            P::Unspecified => None,
        }
    }
}

/// `input_filter_state` in the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterFileState {
    /// Installed and current.
    Installed,
    /// The tunnel is off.
    Off,
    /// Replacing it failed; the previous rules stay.
    Failed,
}

/// One probe of the mail server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbePart {
    /// Mail server port.
    pub port: u32,
    /// Something answered.
    pub reachable: bool,
    /// First line it sent.
    pub banner: Option<String>,
    /// Seems to expect a PROXY header.
    pub expects_proxy: bool,
    /// What failed.
    pub error: Option<String>,
}

/// What the running agent writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentPart {
    /// Agent version.
    pub version: String,
    /// This host's name.
    pub name: String,
    /// When the agent started (Unix seconds).
    pub started_at_unix: i64,
    /// The session to the VPS.
    pub session: SessionPart,
    /// The forwarders.
    pub forwarders: Vec<ForwarderPart>,
    /// Why forwarding is not set up, if it is not.
    pub forward_error: Option<String>,
    /// Host-firewall findings that block the tunnel or the forwarders.
    pub firewall: Option<String>,
    /// Outbound mail routing.
    pub egress: EgressPart,
    /// The input filter on the tunnel: "installed", "off" or "failed: ...".
    pub input_filter: String,
    /// `input_filter` typed (absent in a file from an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_filter_state: Option<FilterFileState>,
    /// The mail server probes.
    pub probes: Vec<ProbePart>,
    /// The stack's PROXY listeners (`CERES_MAIL_STACK`), when one is named.
    pub stack: Option<StackStatus>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The writer's snapshot source.
pub struct Snapshot {
    base: AgentPart,
    session: SharedSession,
    mail: Arc<HomeMail>,
    probes: Arc<Mutex<Vec<ceres_proto::MailProbe>>>,
    stack: crate::session::StackProbes,
    /// Last firewall finding and when it was computed: `nft` is not run on
    /// every write.
    firewall: Mutex<(Option<String>, Option<std::time::Instant>)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// How often the firewall is looked at again for the status file.
const FIREWALL_EVERY: Duration = Duration::from_secs(10);

impl Snapshot {
    /// A snapshot source.
    pub fn new(
        base: AgentPart,
        session: SharedSession,
        mail: Arc<HomeMail>,
        probes: Arc<Mutex<Vec<ceres_proto::MailProbe>>>,
        stack: crate::session::StackProbes,
    ) -> Self {
        Self {
            base,
            session,
            mail,
            probes,
            stack,
            firewall: Mutex::new((None, None)),
        }
    }

    /// The agent's part now.
    pub async fn take(&self) -> AgentPart {
        let (forwards, forward_error, egress) = self.mail.report().await;
        let stack_probe = self.stack.locked().clone();
        let stack = match stack_probe {
            Some(probe) => {
                // Before the first session no relays are known: all count.
                let mut relays = self.mail.specs().await;
                if relays.is_empty() {
                    if let Some((stack, _)) = ceres_control::stack_report::from_proto(&probe) {
                        relays = stack.facts().relay_specs();
                    }
                }
                ceres_control::stack_report::stack_status(&probe, &relays)
            }
            None => None,
        };
        let due = self
            .firewall
            .locked()
            .1
            .is_none_or(|t| t.elapsed() >= FIREWALL_EVERY);
        if due {
            let f = non_empty(self.mail.firewall_advice().await);
            *self.firewall.locked() = (f, Some(std::time::Instant::now()));
        }
        let firewall = self.firewall.locked().0.clone();
        let (filter, filter_error) = self.mail.filter_status();
        let (input_filter, input_filter_state) = match filter {
            ceres_proto::InputFilter::Installed => {
                ("installed".to_owned(), FilterFileState::Installed)
            }
            ceres_proto::InputFilter::Off => ("off".to_owned(), FilterFileState::Off),
            _ => (format!("failed: {filter_error}"), FilterFileState::Failed),
        };
        let egress_state = EgressFileState::of(egress.state());
        let uplink = UplinkRole::of(egress.uplink());
        AgentPart {
            session: self.session.locked().clone(),
            forwarders: forwards
                .iter()
                .map(|f| ForwarderPart {
                    mail_port: f.target_port,
                    forwarder_port: f.port,
                    proxy: non_empty(f.proxy.clone()),
                    active: f.active,
                    total: f.total,
                })
                .collect(),
            forward_error: non_empty(forward_error),
            firewall,
            egress: EgressPart {
                enabled: egress.enabled,
                ports: egress.tcp_ports,
                sources: egress.sources,
                error: non_empty(egress.error),
                state: egress_state,
                uplink,
            },
            input_filter,
            input_filter_state: Some(input_filter_state),
            probes: self
                .probes
                .locked()
                .iter()
                .map(|p| ProbePart {
                    port: p.port,
                    reachable: p.reachable,
                    banner: non_empty(p.banner.clone()),
                    expects_proxy: p.expects_proxy,
                    error: non_empty(p.error.clone()),
                })
                .collect(),
            stack,
            ..self.base.clone()
        }
    }
}

/// `ceres-home status --json`.
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
    let mut problems = Vec::new();
    let now_unix = unix_secs(now);
    problems.extend(agent_state.problem(
        "ceres-home",
        env.as_ref().map(|e| (e.pid, e.written_at_unix)),
        now_unix,
    ));
    if let (AgentState::Running, Some(e)) = (agent_state, &env) {
        let a = &e.agent;
        if !a.session.connected {
            let why = a
                .session
                .last_error
                .as_deref()
                .unwrap_or("still connecting");
            problems.push(format!(
                "no session with the VPS at {} for {} s: {why}",
                a.session.vps,
                (now_unix - a.session.since_unix).max(0)
            ));
        }
        if let Some(f) = &a.forward_error {
            problems.push(format!("forwarders: {f}"));
        }
        if let Some(f) = &a.firewall {
            problems.push(format!("firewall: {f}"));
        }
        // Decided on the typed states. A file from an older agent has none
        // (until the upgraded agent rewrites it, within seconds): then only a
        // routing that is on and reports an error counts.
        let egress_failed = match a.egress.state {
            Some(state) => state == EgressFileState::Failed,
            None => a.egress.enabled && a.egress.error.is_some(),
        };
        if egress_failed {
            let err = a.egress.error.as_deref().unwrap_or("failed");
            problems.push(format!("egress: {err}"));
        }
        if a.input_filter_state == Some(FilterFileState::Failed) {
            problems.push(format!("tunnel input filter {}", a.input_filter));
        }
        if let Some(stack) = &a.stack {
            problems.extend(stack.problems.iter().cloned());
        }
        for p in a.probes.iter().filter(|p| !p.reachable) {
            problems.push(format!(
                "the mail server does not answer on port {}: {}",
                p.port,
                p.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    if let Some(t) = &tunnel {
        if agent_state == AgentState::Running && !t.up {
            problems.push(match &t.error {
                Some(e) => format!("tunnel {}: {e}", t.ifname),
                None => format!(
                    "tunnel {}: no WireGuard handshake in {} s: check that the VPS's UDP port is reachable from here",
                    t.ifname,
                    uapi_client::HANDSHAKE_STALE_SECS
                ),
            });
        }
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

use ceres_daemon::status_file::human_secs as ago;

/// The text form.
pub fn render(s: &LocalStatus, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let now = unix_secs(now);
    let mut o = String::new();
    let agent = s.agent_state.describe(s.pid);
    let _ = writeln!(o, "agent       {agent}");
    if let Some(a) = &s.agent {
        let _ = writeln!(
            o,
            "            {} {} · up {}",
            a.name,
            a.version,
            ago(now - a.started_at_unix)
        );
        let ss = &a.session;
        if ss.connected {
            let _ = writeln!(
                o,
                "session     connected to {} for {}",
                ss.vps,
                ago(now - ss.since_unix)
            );
        } else {
            let _ = writeln!(
                o,
                "session     DOWN for {} · VPS {} · {}",
                ago(now - ss.since_unix),
                ss.vps,
                ss.last_error.as_deref().unwrap_or("still connecting")
            );
        }
    }
    if let Some(t) = &s.tunnel {
        match (&t.error, t.up) {
            (Some(e), _) => {
                let _ = writeln!(o, "tunnel      {} DOWN: {e}", t.ifname);
            }
            (None, up) => {
                let _ = writeln!(
                    o,
                    "tunnel      {} {} · last handshake {} · endpoint {} · rx {} tx {}",
                    t.ifname,
                    if up { "up" } else { "DOWN" },
                    t.last_handshake_age_secs
                        .map_or("never".into(), |a| format!("{} ago", ago(a as i64))),
                    t.endpoint.as_deref().unwrap_or("-"),
                    t.rx_bytes,
                    t.tx_bytes
                );
            }
        }
    } else {
        let _ = writeln!(o, "tunnel      off (CERES_TUNNEL=off)");
    }
    if let Some(a) = &s.agent {
        if a.forwarders.is_empty() {
            let _ = writeln!(o, "forwarders  none yet");
        }
        for f in &a.forwarders {
            let _ = writeln!(
                o,
                "forwarder   tunnel :{} -> mail server :{}{} · {} open, {} total",
                f.forwarder_port,
                f.mail_port,
                f.proxy
                    .as_deref()
                    .map_or(String::new(), |p| format!(" ({p})")),
                f.active,
                f.total
            );
        }
        let e = &a.egress;
        if e.enabled {
            let _ = writeln!(
                o,
                "egress      tcp {:?} from {} via the tunnel{}",
                e.ports,
                e.sources.join(", "),
                match e.uplink {
                    Some(UplinkRole::Active) => " · outbound mail leaves through this VPS now",
                    Some(UplinkRole::Standby) => " · standby (another VPS carries outbound mail)",
                    Some(UplinkRole::Down) => " · this uplink does not answer: not used",
                    None => "",
                }
            );
        } else {
            let _ = writeln!(
                o,
                "egress      off{}",
                e.error
                    .as_deref()
                    .map_or(String::new(), |x| format!(": {x}"))
            );
        }
        let _ = writeln!(o, "filter      {}", a.input_filter);
        for p in &a.probes {
            let _ = writeln!(
                o,
                "mail server :{} {}{}",
                p.port,
                if p.reachable { "answers" } else { "NO ANSWER" },
                p.banner
                    .as_deref()
                    .map_or(String::new(), |b| format!(" · {b}"))
            );
        }
        if let Some(stack) = &a.stack {
            let _ = writeln!(o, "stack       {}", stack.summary);
            for line in ceres_control::stack_report::listener_lines(stack) {
                let _ = writeln!(o, "            {line}");
            }
        }
        if let Some(f) = &a.firewall {
            let _ = writeln!(o, "firewall    {f}");
        }
    }
    status_file::write_problems(&mut o, &s.problems);
    o
}

/// Runs `ceres-home status`: prints, and returns the exit code (0 ok,
/// 1 something is broken, 3 this host cannot tell).
pub fn command(
    state_dir: &std::path::Path,
    tunnel: Option<(&std::path::Path, &str)>,
    json: bool,
) -> std::process::ExitCode {
    let file = match status_file::read::<AgentPart>(state_dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ceres-home: cannot tell: {e}");
            return std::process::ExitCode::from(EXIT_UNKNOWN);
        }
    };
    let now = SystemTime::now();
    let tunnel = tunnel.map(|(dir, ifname)| uapi_client::read_tunnel(dir, ifname, now));
    let s = assemble(file, tunnel, now);
    status_file::print_status("ceres-home", &s, s.ok, json, || render(&s, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_daemon::status_file::Envelope;

    fn at(s: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64)
    }

    fn running(session: SessionPart) -> Agent<AgentPart> {
        Agent::Running(Envelope {
            pid: 7,
            written_at_unix: 1000,
            agent: AgentPart {
                session,
                input_filter: "installed".into(),
                egress: EgressPart {
                    enabled: true,
                    ..Default::default()
                },
                ..Default::default()
            },
        })
    }

    fn tunnel_up() -> TunnelPart {
        TunnelPart {
            ifname: "ceres0".into(),
            up: true,
            last_handshake_age_secs: Some(3),
            endpoint: Some("192.0.2.1:51820".into()),
            rx_bytes: 1,
            tx_bytes: 2,
            error: None,
        }
    }

    #[test]
    fn connected_with_a_live_tunnel_is_ok() {
        let s = assemble(
            running(SessionPart {
                connected: true,
                since_unix: 900,
                vps: "192.0.2.1:7443".into(),
                last_error: None,
            }),
            Some(tunnel_up()),
            at(1001),
        );
        assert!(s.ok, "{:?}", s.problems);
        assert!(render(&s, at(1001)).contains("session     connected to 192.0.2.1:7443"));
    }

    #[test]
    fn session_down_says_why_and_since_when() {
        let s = assemble(
            running(SessionPart {
                connected: false,
                since_unix: 940,
                vps: "192.0.2.1:7443".into(),
                last_error: Some("connection timed out".into()),
            }),
            Some(tunnel_up()),
            at(1000),
        );
        assert!(!s.ok);
        assert_eq!(
            s.problems,
            ["no session with the VPS at 192.0.2.1:7443 for 60 s: connection timed out"]
        );
        let text = render(&s, at(1000));
        assert!(
            text.contains("session     DOWN for 60 s · VPS 192.0.2.1:7443 · connection timed out"),
            "{text}"
        );
    }

    #[test]
    fn not_running_and_crashed_are_problems() {
        let s = assemble(Agent::NotRunning, None, at(1000));
        assert_eq!(s.agent_state, AgentState::NotRunning);
        assert!(!s.ok);
        let Agent::Running(env) = running(SessionPart::default()) else {
            unreachable!()
        };
        let s = assemble(Agent::Dead(env), None, at(1060));
        assert_eq!(s.agent_state, AgentState::Crashed);
        assert!(s.problems[0].contains("60 s ago"), "{:?}", s.problems);
    }

    #[test]
    fn the_stack_probe_is_shown_and_its_problems_count() {
        use ceres_control::stack_report::{ListenerResult, stack_status, to_proto};
        use ceres_relay::stack::MailStack;
        use ceres_relay::stack::advice::ListenerState;
        let stack = MailStack::DockerMailserver;
        let results: Vec<ListenerResult> = stack
            .facts()
            .listeners()
            .map(|l| ListenerResult {
                listener: l,
                state: if l.port == 10587 {
                    ListenerState::NotListening
                } else {
                    ListenerState::Ready
                },
                detail: String::new(),
            })
            .collect();
        let status = stack_status(&to_proto(stack, &results), &stack.facts().relay_specs());
        let mut file = running(SessionPart {
            connected: true,
            since_unix: 900,
            vps: "192.0.2.1:7443".into(),
            last_error: None,
        });
        if let Agent::Running(env) = &mut file {
            env.agent.stack = status;
        }
        let s = assemble(file, Some(tunnel_up()), at(1001));
        assert!(!s.ok);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(
            s.problems[0].starts_with(
                "docker-mailserver: 10587 (Postfix submission, relayed from 587) not listening"
            ),
            "{:?}",
            s.problems
        );
        let text = render(&s, at(1001));
        assert!(
            text.contains(
                "stack       docker-mailserver: 1 of 8 relayed PROXY listeners not ready"
            ),
            "{text}"
        );
        assert!(
            text.contains("10587 Postfix  submission   ← 587   NOT LISTENING"),
            "{text}"
        );
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(
            j["agent"]["stack"]["listeners"][2]["state"],
            "not_listening"
        );
        let back: LocalStatus = serde_json::from_value(j).unwrap();
        assert_eq!(back.agent.unwrap().stack.unwrap().problems.len(), 1);
    }

    #[test]
    fn json_round_trips() {
        let s = assemble(running(SessionPart::default()), Some(tunnel_up()), at(1000));
        let j = serde_json::to_string(&s).unwrap();
        let back: LocalStatus = serde_json::from_str(&j).unwrap();
        assert_eq!(back.agent_state, AgentState::Running);
    }

    fn with_egress(egress: EgressPart, filter: Option<FilterFileState>) -> Agent<AgentPart> {
        let Agent::Running(mut env) = running(SessionPart {
            connected: true,
            since_unix: 900,
            vps: "192.0.2.1:7443".into(),
            last_error: None,
        }) else {
            unreachable!()
        };
        env.agent.egress = egress;
        env.agent.input_filter_state = filter;
        Agent::Running(env)
    }

    #[test]
    fn egress_and_filter_problems_come_from_the_typed_states_not_the_words() {
        let fresh = |e, f| assemble(with_egress(e, f), Some(tunnel_up()), at(1001));
        // Failed, whatever the words say.
        let s = fresh(
            EgressPart {
                enabled: true,
                error: Some("ip rule add: File exists".into()),
                state: Some(EgressFileState::Failed),
                ..Default::default()
            },
            Some(FilterFileState::Installed),
        );
        assert_eq!(s.problems, ["egress: ip rule add: File exists"]);
        // Off by configuration is no problem, even worded like a failure.
        let s = fresh(
            EgressPart {
                enabled: false,
                error: Some("failed-looking words".into()),
                state: Some(EgressFileState::Disabled),
                ..Default::default()
            },
            Some(FilterFileState::Installed),
        );
        assert!(s.ok, "{:?}", s.problems);
        // The filter: typed Failed counts, the text alone does not.
        let s = fresh(
            EgressPart {
                enabled: true,
                state: Some(EgressFileState::Installed),
                ..Default::default()
            },
            Some(FilterFileState::Failed),
        );
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(s.problems[0].starts_with("tunnel input filter"));
        let s = fresh(
            EgressPart {
                enabled: true,
                state: Some(EgressFileState::Installed),
                ..Default::default()
            },
            Some(FilterFileState::Off),
        );
        assert!(s.ok, "{:?}", s.problems);
    }

    #[test]
    fn a_file_from_an_older_agent_without_the_typed_states_still_reads() {
        // What an agent before the typed states wrote: no `state`, no
        // `uplink`, no `input_filter_state`.
        let Agent::Running(env) = with_egress(
            EgressPart {
                enabled: false,
                error: Some("disabled (CERES_EGRESS=off)".into()),
                state: Some(EgressFileState::Disabled),
                uplink: Some(UplinkRole::Standby),
                ..Default::default()
            },
            Some(FilterFileState::Installed),
        ) else {
            unreachable!()
        };
        let mut old = serde_json::to_value(&env.agent).unwrap();
        old.as_object_mut().unwrap().remove("input_filter_state");
        let egress = old["egress"].as_object_mut().unwrap();
        assert!(egress.remove("state").is_some() && egress.remove("uplink").is_some());
        let part: AgentPart = serde_json::from_value(old).unwrap();
        assert_eq!(part.egress.state, None);
        assert_eq!(part.input_filter_state, None);
        let Agent::Running(mut env) = running(SessionPart::default()) else {
            unreachable!()
        };
        env.agent = part.clone();
        let s = assemble(Agent::Running(env), Some(tunnel_up()), at(1001));
        assert!(
            s.ok,
            "an off egress in an old file is no problem: {:?}",
            s.problems
        );
        // An old file with the routing on and an error: a problem.
        let Agent::Running(mut env) = running(SessionPart::default()) else {
            unreachable!()
        };
        env.agent = part;
        env.agent.session.connected = true;
        env.agent.egress.enabled = true;
        env.agent.egress.error = Some("nft: permission denied".into());
        let s = assemble(Agent::Running(env), Some(tunnel_up()), at(1001));
        assert_eq!(s.problems, ["egress: nft: permission denied"]);
    }

    #[test]
    fn the_uplink_role_is_shown_with_the_egress() {
        for (role, words) in [
            (
                UplinkRole::Active,
                "outbound mail leaves through this VPS now",
            ),
            (
                UplinkRole::Standby,
                "standby (another VPS carries outbound mail)",
            ),
            (UplinkRole::Down, "this uplink does not answer: not used"),
        ] {
            let s = assemble(
                with_egress(
                    EgressPart {
                        enabled: true,
                        ports: vec![25],
                        sources: vec!["10.77.77.2".into()],
                        state: Some(EgressFileState::Installed),
                        uplink: Some(role),
                        ..Default::default()
                    },
                    Some(FilterFileState::Installed),
                ),
                Some(tunnel_up()),
                at(1001),
            );
            let text = render(&s, at(1001));
            assert!(text.contains(words), "{role:?}: {text}");
            let j = serde_json::to_value(&s).unwrap();
            assert_eq!(
                j["agent"]["egress"]["uplink"],
                serde_json::to_value(role).unwrap()
            );
        }
    }
}

/// One uplink in `ceres-home status` with several VPSes.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkStatus {
    /// The uplink's name (the VPS's name in the store).
    pub name: String,
    /// Its state directory (where its status file is).
    pub dir: String,
    /// Its status, as `status --json` shows a single VPS.
    pub status: LocalStatus,
}

/// `ceres-home status` with several uplinks: one section each; exit 0 only
/// when every uplink is fine, 3 when one cannot be told, 1 otherwise. The
/// JSON keeps the single-VPS keys (from the first uplink) and adds
/// `uplinks`, an array of [`UplinkStatus`]; `ok` and `problems` cover all.
pub fn command_uplinks(
    uplinks: &[(String, std::path::PathBuf, Option<String>)],
    uapi_dir: Option<&std::path::Path>,
    json: bool,
) -> std::process::ExitCode {
    let now = SystemTime::now();
    let mut all = Vec::new();
    for (name, dir, ifname) in uplinks {
        let file = match status_file::read::<AgentPart>(dir) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("ceres-home: cannot tell (uplink {name}): {e}");
                return std::process::ExitCode::from(EXIT_UNKNOWN);
            }
        };
        let tunnel = match (uapi_dir, ifname) {
            (Some(u), Some(i)) => Some(uapi_client::read_tunnel(u, i, now)),
            _ => None,
        };
        all.push(UplinkStatus {
            name: name.clone(),
            dir: dir.display().to_string(),
            status: assemble(file, tunnel, now),
        });
    }
    let ok = all.iter().all(|u| u.status.ok);
    if json {
        let mut top = match all.first().map(|u| serde_json::to_value(&u.status)) {
            Some(Ok(serde_json::Value::Object(m))) => m,
            _ => serde_json::Map::new(),
        };
        let problems: Vec<String> = all
            .iter()
            .flat_map(|u| {
                u.status
                    .problems
                    .iter()
                    .map(move |p| format!("{}: {p}", u.name))
            })
            .collect();
        top.insert("ok".into(), ok.into());
        top.insert("problems".into(), serde_json::json!(problems));
        top.insert("uplinks".into(), serde_json::json!(all));
        match serde_json::to_string_pretty(&top) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("ceres-home: {e}");
                return std::process::ExitCode::from(EXIT_UNKNOWN);
            }
        }
    } else {
        for u in &all {
            println!("== uplink {} ({}) ==", u.name, u.dir);
            print!("{}", render(&u.status, now));
        }
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
