//! The status as `cerectl status --json` prints it: the stable JSON
//! layout (documented in `docs/status-json.md`) and its construction from
//! the VPS's answer.

use base64::Engine;
use ceres_proto::{EgressStatus, Ipv6Egress, RelayPort, TunnelReport};
use serde::{Deserialize, Serialize};

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
    /// What the VPS relay sends to this port: "proxy-v1", "proxy-v2" or null.
    pub relay_proxy: Option<String>,
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
    /// "ok" or "failed: ..." (null: never rotated).
    pub last_outcome: Option<String>,
    /// When the next scheduled rotation is due, RFC 3339.
    pub next: Option<String>,
    /// Rotations completed.
    pub completed: u64,
    /// A rotation in progress and its step.
    pub pending: Option<u64>,
    /// Its step ("prepared", "staged").
    pub pending_step: Option<String>,
}

/// Counters of one relayed (VPS) or forwarded (home) port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortPart {
    /// Listening port: the VPS's public port, or for home's forwarders their
    /// port on the tunnel address (picked by the kernel).
    pub port: u32,
    /// The mail server's port at home.
    pub target_port: u32,
    /// "proxy-v1", "proxy-v2" or null.
    pub proxy: Option<String>,
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
}

impl PortPart {
    pub(super) fn from_proto(p: &RelayPort) -> Self {
        PortPart {
            port: p.port,
            target_port: p.target_port,
            proxy: non_empty(&p.proxy),
            active: p.active,
            total: p.total,
            bytes_in: p.bytes_in,
            bytes_out: p.bytes_out,
            refused: p.refused,
            refused_by: p
                .refused_by
                .iter()
                .map(|c| {
                    let reason = ceres_control::report::relay_refusal(c.reason())
                        .map_or("unknown", ceres_relay::Refusal::as_str);
                    (reason.to_owned(), c.count)
                })
                .collect(),
            unavailable: p.unavailable,
            last_error: non_empty(&p.last_error),
            last_error_at: rfc3339(p.last_error_unix),
        }
    }
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
    /// anyway, such as another table's default-drop forward chain.
    pub error: Option<String>,
    /// VPS: whether home's IPv6 mail leaves from the VPS's public IPv6:
    /// "available", "no_public_ipv6", "tunnel_ipv4_only", "off"; null when
    /// not reported (an older VPS agent, or home's end).
    pub ipv6: Option<String>,
}

impl EgressEnd {
    pub(super) fn from_proto(e: &EgressStatus) -> Self {
        EgressEnd {
            enabled: e.enabled,
            tcp_ports: e.tcp_ports.clone(),
            sources: e.sources.clone(),
            error: non_empty(&e.error),
            ipv6: match e.ipv6() {
                Ipv6Egress::Unspecified => None,
                Ipv6Egress::Available => Some("available".to_owned()),
                Ipv6Egress::NoPublicIpv6 => Some("no_public_ipv6".to_owned()),
                Ipv6Egress::TunnelIpv4Only => Some("tunnel_ipv4_only".to_owned()),
                Ipv6Egress::Off => Some("off".to_owned()),
            },
        }
    }
}

/// WireGuard sessions older than this are dead (WireGuard's Reject-After-Time).
pub const HANDSHAKE_STALE_SECS: u64 = 180;

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
    /// Why it is not running.
    pub error: Option<String>,
}

fn key_b64(k: &[u8]) -> Option<String> {
    (k.len() == 32).then(|| base64::engine::general_purpose::STANDARD.encode(k))
}

impl TunnelEnd {
    pub(super) fn from_report(r: &TunnelReport, now: i64) -> Self {
        let hs = r.last_handshake_unix > 0;
        TunnelEnd {
            running: r.running,
            ifname: r.ifname.clone(),
            address: non_empty(&r.address),
            public_key: key_b64(&r.public_key),
            peer_public_key: key_b64(&r.peer_public_key),
            endpoint: non_empty(&r.endpoint),
            listen_port: (r.listen_port > 0).then_some(r.listen_port),
            last_handshake: if hs {
                rfc3339(r.last_handshake_unix)
            } else {
                None
            },
            last_handshake_age_secs: hs.then(|| (now - r.last_handshake_unix).max(0) as u64),
            rx_bytes: r.rx_bytes,
            tx_bytes: r.tx_bytes,
            rx_packets: r.rx_packets,
            tx_packets: r.tx_packets,
            dropped: r.dropped,
            error: non_empty(&r.error),
        }
    }

    pub(super) fn fresh(&self) -> bool {
        self.last_handshake_age_secs
            .is_some_and(|a| a < HANDSHAKE_STALE_SECS)
    }
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
    pub input_filter: Option<String>,
    /// Why replacing the input filter failed.
    pub input_filter_error: Option<String>,
    /// Postfix's `mail_version` on the home host; null when home found no
    /// `postconf` (another mail server, a container) or is an older agent.
    pub postfix_version: Option<String>,
    /// Whether the home owning the tunnel may use it: `allowed`, `revoked`,
    /// or null (a VPS too old to say).
    pub access: Option<String>,
    /// While `access` is `revoked`: which certificate, and when.
    pub revocation: Option<RevocationPart>,
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

pub(super) fn rfc3339(unix: i64) -> Option<String> {
    if unix <= 0 {
        return None;
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

pub(super) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
