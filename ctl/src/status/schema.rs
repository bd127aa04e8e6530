//! The status as `cerectl status --json` prints it: the stable JSON layout,
//! documented in `docs/status-json.md`. Fields are only ever added.

use serde::{Deserialize, Serialize};

use super::facts::{
    Access, EgressState, EgressUplink, FirewallPart, InputFilter, Ipv6Egress, Proxy, RelayState,
    RotationResult, RotationStep, TunnelState,
};
use super::problem::{Problem, Warning};

/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

/// The whole status, as printed with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// JSON layout version.
    pub schema: u32,
    /// True when nothing below is broken (the exit code is 0 exactly then).
    pub ok: bool,
    /// One line per broken thing, with what to do.
    pub problems: Vec<String>,
    /// Choices that work but cost something (a port relayed without PROXY:
    /// every client there looks local at home); not counted as broken.
    pub warnings: Vec<String>,
    /// The same problems and warnings, typed: what scripts should read.
    pub diagnosis: Diagnosis,
    /// The VPS agent.
    pub vps: VpsPart,
    /// The home agent as the VPS sees it.
    pub home: HomePart,
    /// The WireGuard tunnel, both ends.
    pub tunnel: TunnelPart,
    /// The VPS's relayed ports.
    pub relays: Vec<PortPart>,
    /// Home's forwarders (tunnel port -> mail server), from its last report.
    pub forwards: Vec<PortPart>,
    /// Outbound mail routing, both ends.
    pub egress: EgressPart,
    /// WireGuard key rotation.
    pub rotation: RotationPart,
    /// The home mail server per forwarded port, as the home agent probes it
    /// (empty before home reports probes).
    pub mail_server: Vec<ProbePart>,
    /// Home's mail stack and its PROXY listeners (`CERES_MAIL_STACK`); null
    /// when home names no stack.
    pub stack: Option<ceres_control::stack_report::StackStatus>,
    /// The VPS watchdog's checks (empty from a VPS without one).
    #[serde(default)]
    pub checks: Vec<crate::status_checks::CheckPart>,
    /// Where the watchdog's notifications go.
    #[serde(default)]
    pub alert_channels: Vec<crate::status_checks::AlertChannelPart>,
}

/// Problems and warnings, typed; each `text` is the line in `problems` or
/// `warnings`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Diagnosis {
    /// What is broken, in the order of `problems`.
    pub problems: Vec<Problem>,
    /// What costs something, in the order of `warnings`.
    pub warnings: Vec<Warning>,
}

/// One probe of the home mail server by the home agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbePart {
    /// The mail server port (the relay's home port).
    pub port: u32,
    /// Something accepted the connection.
    pub reachable: bool,
    /// First line it sent (or "TLS handshake" for implicit-TLS ports).
    pub banner: Option<String>,
    /// It seems to wait for a PROXY header.
    pub expects_proxy: bool,
    /// What the VPS relay sends to this port: "proxy-v1", "proxy-v2" or
    /// null (plain, or no relay for it).
    pub relay_proxy: Proxy,
    /// What went wrong or does not match.
    pub error: Option<String>,
}

/// Key rotation state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationPart {
    /// When the current keys were made, RFC 3339.
    pub keys_since: Option<String>,
    /// Age of the current keys, seconds.
    pub keys_age_secs: Option<u64>,
    /// Last rotation (completed or failed), RFC 3339.
    pub last: Option<String>,
    /// "ok" or "failed: ..." (null: never rotated), as the VPS words it:
    /// decide on `last_result`.
    pub last_outcome: Option<String>,
    /// When the next scheduled rotation is due, RFC 3339.
    pub next: Option<String>,
    /// Rotations completed.
    pub completed: u64,
    /// A rotation in progress and its step.
    pub pending: Option<u64>,
    /// Its step.
    pub pending_step: Option<RotationStep>,
    /// How the last rotation ended (null: a VPS agent this cerectl cannot
    /// read).
    pub last_result: Option<RotationResult>,
    /// Why it failed, when it did.
    pub last_failure: Option<String>,
}

/// Counters of one relayed (VPS) or forwarded (home) port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortPart {
    /// Listening port: the VPS's public port, or for home's forwarders their
    /// port on the tunnel address (picked by the kernel).
    pub port: u32,
    /// The mail server's port at home.
    pub target_port: u32,
    /// "proxy-v1", "proxy-v2" or null (plain).
    pub proxy: Proxy,
    /// Open connections.
    pub active: u64,
    /// Connections since start.
    pub total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Refused by connection limits.
    pub refused: u64,
    /// The same by reason: `port_full`, `reserved_for_known`, `source`,
    /// `v4_net24`, `v6_net56`, `v6_net48`, `rate`, `untrusted` (only reasons
    /// with refusals; `unknown` for a reason this cerectl does not know).
    pub refused_by: std::collections::BTreeMap<String, u64>,
    /// Turned away while home was unreachable.
    pub unavailable: u64,
    /// Last error and when.
    pub last_error: Option<String>,
    /// When the last error happened, RFC 3339.
    pub last_error_at: Option<String>,
    /// Whether new connections are relayed now (null: an older agent).
    pub state: Option<RelayState>,
}

/// Outbound mail routing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EgressPart {
    /// NAT on the VPS.
    pub vps: EgressEnd,
    /// Policy routing at home (null before home reported).
    pub home: Option<EgressEnd>,
}

/// One end's egress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EgressEnd {
    /// Installed.
    pub enabled: bool,
    /// Destination TCP ports allowed/routed.
    pub tcp_ports: Vec<u32>,
    /// Home: sources routed into the tunnel.
    pub sources: Vec<String>,
    /// Why it is not installed, or (when installed) what stops outbound mail
    /// anyway, such as another table's default-drop forward chain. For
    /// people: decide on `state`.
    pub error: Option<String>,
    /// VPS: whether home's IPv6 mail leaves from the VPS's public IPv6:
    /// "available", "no_public_ipv6", "tunnel_ipv4_only", "off"; null when
    /// not reported (an older VPS agent, or home's end).
    pub ipv6: Option<Ipv6Egress>,
    /// Installed, blocked, or why not.
    pub state: Option<EgressState>,
    /// VPS, when `blocked`: the firewall chains in the way.
    pub firewall: Vec<FirewallPart>,
    /// Home with several VPSes: whether outbound mail leaves through this
    /// VPS now ("active", "standby", "down"); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<EgressUplink>,
}

/// The tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelPart {
    /// A handshake completed within the last 180 s on the VPS end.
    pub up: bool,
    /// The VPS end.
    pub vps: TunnelEnd,
    /// Home's end, from its last report (null before home ever reported).
    pub home: Option<TunnelEnd>,
}

/// One end of the tunnel. Public keys only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelEnd {
    /// The engine is running.
    pub running: bool,
    /// Interface name.
    pub ifname: String,
    /// Tunnel address with prefix.
    pub address: Option<String>,
    /// This end's WireGuard public key (base64, as `wg` shows it).
    pub public_key: Option<String>,
    /// The peer's public key.
    pub peer_public_key: Option<String>,
    /// Where this end sends (for the VPS: home's public address and port).
    pub endpoint: Option<String>,
    /// Local UDP port.
    pub listen_port: Option<u32>,
    /// Last completed handshake, RFC 3339.
    pub last_handshake: Option<String>,
    /// Seconds since it.
    pub last_handshake_age_secs: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Datagrams dropped (garbage, replays, unknown keys, ...).
    pub dropped: u64,
    /// Why it is not running, for people: decide on `state`.
    pub error: Option<String>,
    /// Running, off, or why not.
    pub state: Option<TunnelState>,
}

/// The VPS agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpsPart {
    /// Agent version.
    pub version: String,
    /// Protocol version it speaks.
    pub protocol: u32,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Public addresses.
    pub public_ips: Vec<String>,
    /// Mail domain.
    pub domain: String,
    /// Mail host name.
    pub mail_host: String,
    /// Control-plane address.
    pub control_address: String,
    /// Expiry of the VPS's TLS certificate, RFC 3339.
    pub server_certificate_not_after: Option<String>,
    /// The VPS's IPv4 tunnel address with prefix.
    pub tunnel_vps_address: Option<String>,
    /// Home's IPv4 tunnel address with prefix (Postfix `smtp_bind_address`).
    pub tunnel_home_address: Option<String>,
    /// The VPS's IPv6 tunnel address with prefix; null when the tunnel is IPv4 only.
    pub tunnel_vps_address6: Option<String>,
    /// Home's IPv6 tunnel address with prefix (Postfix `smtp_bind_address6`);
    /// null when the tunnel is IPv4 only.
    pub tunnel_home_address6: Option<String>,
}

/// The home agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HomePart {
    /// Whether its session to the VPS is up.
    pub connected: bool,
    /// When the current session started (connected) or the last one ended (not connected); null if never.
    pub since: Option<String>,
    /// When the last report arrived.
    pub last_report: Option<String>,
    /// Seconds since the last report.
    pub last_report_age_secs: Option<u64>,
    /// Home agent version (of the current or last session).
    pub version: Option<String>,
    /// Home host name.
    pub hostname: Option<String>,
    /// Protocol version of the session.
    pub protocol: Option<u32>,
    /// Address the session came from (home's public address as the VPS sees it).
    pub remote_address: Option<String>,
    /// Home agent uptime, from its last report.
    pub uptime_secs: Option<u64>,
    /// Expiry of home's client certificate, RFC 3339.
    pub certificate_not_after: Option<String>,
    /// Home has an IPv6 default route and a global address: its mail server
    /// could deliver over IPv6 straight from home. Null: not reported.
    pub direct_ipv6: Option<bool>,
    /// Home's input filter on the tunnel: "installed", "off" (tunnel off),
    /// "failed"; null: not reported (an older home agent).
    pub input_filter: Option<InputFilter>,
    /// Why replacing the input filter failed.
    pub input_filter_error: Option<String>,
    /// Postfix's `mail_version` on the home host; null when home found no
    /// `postconf` (another mail server, a container) or is an older agent.
    pub postfix_version: Option<String>,
    /// Whether the home owning the tunnel may use it: `allowed`, `revoked`,
    /// or null (a VPS too old to say).
    pub access: Option<Access>,
    /// While `access` is `revoked`: which certificate, and when.
    pub revocation: Option<RevocationPart>,
    /// Why home's forwarders could not start, as home says it.
    pub forward_error: Option<String>,
    /// Firewall chains at home that keep the VPS from the forwarders.
    pub firewall: Vec<FirewallPart>,
    /// What home says about them, with the rules that fix it (an older home
    /// agent says only this).
    pub firewall_advice: Option<String>,
    /// Relays sending PROXY v2 to a Postfix older than 3.5 (which cannot
    /// read it), from home's report.
    pub postfix_proxy_v2_unsupported: Vec<PortPair>,
}

/// A relay by its ports: the public one on the VPS, the one at home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPair {
    /// The VPS's public port (the entry in `CERES_RELAYS`).
    pub public_port: u32,
    /// The port at home.
    pub home_port: u32,
}

/// The revocation that cut home off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationPart {
    /// Name given at enrolment.
    pub name: String,
    /// The revoked serial.
    pub serial: String,
    /// First serial of its lineage (renewals share it).
    pub lineage: String,
    /// When the VPS acted on it, RFC 3339.
    pub at: Option<String>,
}
