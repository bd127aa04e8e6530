//! `cerectl status`: the report, its stable JSON form, and its rendering.
//!
//! The JSON schema is documented in `docs/status-json.md`; fields are only
//! ever added, and `schema` changes if one ever has to change meaning.

use std::time::{Duration, SystemTime};

use base64::Engine;
use ceres_proto::{
    DirectIpv6, EgressStatus, InputFilter, Ipv6Egress, RelayPort, Report, StatusResponse,
    TunnelReport,
};
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

/// Home's probes joined with the VPS relays, and a problem line for each
/// PROXY mismatch (a mismatch breaks every relayed connection on the port;
/// a port nobody serves is shown, not counted as broken: the default relay
/// list includes ports many setups leave unused).
fn mail_server_part(
    relays: &[RelayPort],
    report: Option<&Report>,
) -> (Vec<ProbePart>, Vec<String>) {
    let mut problems = Vec::new();
    let parts = report
        .map(|r| r.probes.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let relay_proxy = relays
                .iter()
                .find(|r| r.target_port == p.port)
                .and_then(|r| non_empty(&r.proxy));
            let sends = relay_proxy.is_some();
            if p.reachable && sends && !p.expects_proxy && !p.banner.is_empty() {
                problems.push(format!(
                    "the relay sends a PROXY header to port {} but the mail server does not expect one: configure it (`cerectl mailserver-config postfix|dovecot`) or relay the port plain",
                    p.port
                ));
            } else if p.reachable && !sends && p.expects_proxy {
                problems.push(format!(
                    "the mail server seems to wait for a PROXY header on port {} but the relay sends none: add /proxy-v2 to that port in CERES_RELAYS",
                    p.port
                ));
            }
            ProbePart {
                port: p.port,
                reachable: p.reachable,
                banner: non_empty(&p.banner),
                expects_proxy: p.expects_proxy,
                relay_proxy,
                error: non_empty(&p.error),
            }
        })
        .collect();
    (parts, problems)
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
    fn from_proto(p: &RelayPort) -> Self {
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
                    let reason = ceres_control::refusal::relay_refusal(c.reason())
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
    fn from_proto(e: &EgressStatus) -> Self {
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
    fn from_report(r: &TunnelReport, now: i64) -> Self {
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

    fn fresh(&self) -> bool {
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

fn rfc3339(unix: i64) -> Option<String> {
    if unix <= 0 {
        return None;
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The problem of a Postfix older than 3.5 behind PROXY v2 relays, with
/// both fixes; `None` when home found none.
fn postfix_proxy_v2_problem(p: &ceres_proto::PostfixReport) -> Option<String> {
    if p.proxy_v2_unsupported.is_empty() {
        return None;
    }
    let ports = p
        .proxy_v2_unsupported
        .iter()
        .map(|r| r.public_port.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let entries = p
        .proxy_v2_unsupported
        .iter()
        .map(|r| format!("{}:{}/proxy-v1", r.public_port, r.home_port))
        .collect::<Vec<_>>()
        .join(",");
    Some(format!(
        "Postfix {} at home cannot read the PROXY v2 headers relayed on port {ports}          (Postfix reads v2 from 3.5 on): set those entries to {entries} in CERES_RELAYS          on the VPS (Postfix's smtpd_upstream_proxy_protocol = haproxy reads v1 too),          or upgrade Postfix to 3.5+",
        p.version
    ))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Status {
    /// Builds the status from the VPS's answer.
    pub fn from_response(resp: StatusResponse) -> Self {
        let vps = resp.vps.unwrap_or_default();
        let home = resp.home.unwrap_or_default();
        let now = if vps.now_unix > 0 {
            vps.now_unix
        } else {
            ceres_pki::unix_secs(SystemTime::now())
        };
        let seen = home.since_unix > 0;
        let mut problems = Vec::new();
        let access = ceres_proto::HomeAccess::try_from(home.access).ok();
        let revocation = home
            .revocation
            .as_ref()
            .filter(|_| access == Some(ceres_proto::HomeAccess::Revoked))
            .map(|r| RevocationPart {
                name: r.name.clone(),
                serial: r.serial.clone(),
                lineage: r.lineage.clone(),
                at: rfc3339(r.revoked_unix),
            });
        if let Some(r) = &revocation {
            problems.push(format!(
                "home revoked: the certificate {:?} (serial {}) was revoked, so its tunnel, egress and sessions are gone; to connect a home again, create a token with `ceres-vps token create --role home` and run `ceres-home join TOKEN` on it",
                r.name, r.serial
            ));
        } else if !home.connected {
            problems.push(if seen {
                "the home agent is not connected: check that `ceres-home run` is running at home and can reach the VPS control port".to_owned()
            } else {
                "the home agent has never connected: create a token with `ceres-vps token create --role home` and run `ceres-home join TOKEN` at home".to_owned()
            });
        }
        let rot = resp.rotation.clone().unwrap_or_default();
        let rotation = RotationPart {
            keys_since: rfc3339(rot.keys_since_unix),
            keys_age_secs: (rot.keys_since_unix > 0)
                .then(|| (now - rot.keys_since_unix).max(0) as u64),
            last: rfc3339(rot.last_unix),
            last_outcome: non_empty(&rot.last_outcome),
            next: rfc3339(rot.next_unix),
            completed: rot.completed,
            pending: (rot.pending != 0).then_some(rot.pending),
            pending_step: non_empty(&rot.pending_step),
        };
        let report = home.last_report.clone();
        let relays: Vec<PortPart> = resp.relays.iter().map(PortPart::from_proto).collect();
        let forwards: Vec<PortPart> = report
            .as_ref()
            .map(|r| r.forwards.iter().map(PortPart::from_proto).collect())
            .unwrap_or_default();
        let egress = EgressPart {
            vps: EgressEnd::from_proto(&resp.egress.clone().unwrap_or_default()),
            home: report
                .as_ref()
                .and_then(|r| r.egress.as_ref())
                .map(EgressEnd::from_proto),
        };
        // A revoked home's egress is removed on purpose: the revocation is the
        // problem, reported as such (decided on the typed access, not the text).
        let revoked = access == Some(ceres_proto::HomeAccess::Revoked);
        for (end, e) in [("VPS", Some(&egress.vps)), ("home", egress.home.as_ref())] {
            if let Some(err) = e.and_then(|e| e.error.as_deref()) {
                if e.is_some_and(|e| e.enabled) {
                    problems.push(format!("outbound mail through the {end}: {err}"));
                } else if !revoked
                    && !err.starts_with("disabled")
                    && !err.starts_with("not installed (tunnel off)")
                {
                    problems.push(format!(
                        "outbound mail routing is not installed on the {end}: {err}"
                    ));
                }
            }
        }
        let vps_end = TunnelEnd::from_report(&resp.vps_tunnel.unwrap_or_default(), now);
        let home_end = report
            .as_ref()
            .and_then(|r| r.tunnel.as_ref())
            .map(|t| TunnelEnd::from_report(t, now));
        let tunnel_disabled = !vps_end.running
            && vps_end
                .error
                .as_deref()
                .is_some_and(|e| e.contains("CERES_TUNNEL=off"));
        let tunnel_up = vps_end.running && vps_end.fresh();
        if !tunnel_disabled {
            if !vps_end.running {
                problems.push(format!(
                    "the tunnel is not running on the VPS: {}",
                    vps_end.error.as_deref().unwrap_or("unknown reason")
                ));
            } else if home.connected && !tunnel_up {
                let home_err = home_end.as_ref().and_then(|h| h.error.clone());
                problems.push(match home_err {
                    Some(e) => format!("the tunnel is down: home cannot run it: {e}"),
                    None => format!(
                        "the tunnel is down (no WireGuard handshake in {HANDSHAKE_STALE_SECS} s): check that UDP {} is open on the VPS and not blocked at home",
                        vps_end.listen_port.unwrap_or(51820)
                    ),
                });
            }
        }
        // With the tunnel up, home runs a forwarder for each relayed home port;
        // the VPS answers 421 on a port home reports none for.
        if home.connected && tunnel_up && report.is_some() {
            let mut missing: Vec<u32> = relays
                .iter()
                .map(|r| r.target_port)
                .filter(|p| !forwards.iter().any(|f| f.target_port == *p))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                let list = missing
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let why = report
                    .as_ref()
                    .map(|r| r.forward_error.as_str())
                    .filter(|e| !e.is_empty())
                    .map_or_else(
                        || {
                            "look for `cannot start the forwarders` in the home agent's log"
                                .to_owned()
                        },
                        |e| format!("home says: {e}"),
                    );
                problems.push(format!(
                    "home runs no forwarder for port {list}: the VPS answers those with 421; {why}"
                ));
            }
        }
        if let Some(fw) = report
            .as_ref()
            .map(|r| r.firewall.as_str())
            .filter(|f| !f.is_empty())
        {
            problems.push(format!("relayed connections cannot reach home: {fw}"));
        }
        let (mail_server, probe_problems) = mail_server_part(&resp.relays, report.as_ref());
        problems.extend(probe_problems);
        let (stack, stack_problems) = crate::status_stack::part(&resp.relays, report.as_ref());
        problems.extend(stack_problems);
        let direct_ipv6 = report.as_ref().and_then(|r| match r.direct_ipv6() {
            DirectIpv6::Unspecified => None,
            DirectIpv6::None => Some(false),
            DirectIpv6::DefaultRoute => Some(true),
        });
        let input_filter = report.as_ref().and_then(|r| match r.input_filter() {
            InputFilter::Unspecified => None,
            InputFilter::Installed => Some("installed".to_owned()),
            InputFilter::Off => Some("off".to_owned()),
            InputFilter::Failed => Some("failed".to_owned()),
        });
        let input_filter_error = report
            .as_ref()
            .and_then(|r| non_empty(&r.input_filter_error));
        if input_filter.as_deref() == Some("failed") {
            problems.push(format!(
                "home's input filter on the tunnel could not be updated for the forwarders (relayed connections may fail): {}",
                input_filter_error.as_deref().unwrap_or("see the home agent's log")
            ));
        }
        let postfix = report.as_ref().and_then(|r| r.postfix.as_ref());
        if let Some(problem) = postfix.and_then(postfix_proxy_v2_problem) {
            problems.push(problem);
        }
        // Home's mail goes out through the VPS, but the VPS cannot send IPv6:
        // a dual-stack mail server at home then delivers to IPv6 MX hosts
        // from the home line (no PTR, outside SPF).
        let home_routes_mail = egress.home.as_ref().is_some_and(|h| h.enabled);
        if direct_ipv6 == Some(true)
            && home_routes_mail
            && matches!(
                egress.vps.ipv6.as_deref(),
                Some("no_public_ipv6" | "tunnel_ipv4_only")
            )
        {
            problems.push(
                "home's mail server could send over IPv6 straight from home, outside the VPS's SPF and PTR, \
                 and the VPS offers no IPv6 egress: run `cerectl mailserver-config postfix --apply` at home \
                 (keeps Postfix's outbound SMTP on IPv4) or give the VPS a public IPv6 address"
                    .to_owned(),
            );
        }
        let home_part = HomePart {
            connected: home.connected,
            since: rfc3339(home.since_unix),
            last_report: if seen {
                rfc3339(home.last_report_unix)
            } else {
                None
            },
            last_report_age_secs: (seen && home.last_report_unix > 0)
                .then(|| (now - home.last_report_unix).max(0) as u64),
            version: non_empty(&home.agent_version),
            hostname: non_empty(&home.hostname),
            protocol: seen.then_some(home.protocol_version),
            remote_address: non_empty(&home.remote_address),
            uptime_secs: report.as_ref().map(|r| r.uptime_secs),
            certificate_not_after: rfc3339(home.certificate_not_after_unix),
            access: match access {
                Some(ceres_proto::HomeAccess::Allowed) => Some("allowed".into()),
                Some(ceres_proto::HomeAccess::Revoked) => Some("revoked".into()),
                _ => None,
            },
            revocation,
            direct_ipv6,
            input_filter,
            input_filter_error,
            postfix_version: postfix.and_then(|p| non_empty(&p.version)),
        };
        let warnings = resp
            .relays
            .iter()
            .filter(|r| r.proxy.is_empty())
            .map(|r| {
                crate::mailconfig::plain_relay_warning(
                    u16::try_from(r.port).unwrap_or_default(),
                    u16::try_from(r.target_port).unwrap_or_default(),
                )
            })
            .collect();
        let checks = crate::status_checks::checks(&resp.checks);
        problems.extend(crate::status_checks::problems(&checks));
        Status {
            checks,
            alert_channels: crate::status_checks::channels(&resp.alert_channels),
            schema: SCHEMA,
            ok: problems.is_empty(),
            problems,
            warnings,
            vps: VpsPart {
                version: vps.agent_version,
                protocol: vps.protocol_version,
                started_at: rfc3339(vps.started_at_unix).unwrap_or_default(),
                uptime_secs: vps.uptime_secs,
                public_ips: vps.public_ips,
                domain: vps.domain,
                mail_host: vps.mail_host,
                control_address: vps.control_address,
                server_certificate_not_after: rfc3339(vps.server_certificate_not_after_unix),
                tunnel_vps_address: non_empty(&vps.tunnel_vps_address),
                tunnel_home_address: non_empty(&vps.tunnel_home_address),
                tunnel_vps_address6: non_empty(&vps.tunnel_vps_address6),
                tunnel_home_address6: non_empty(&vps.tunnel_home_address6),
            },
            home: home_part,
            tunnel: TunnelPart {
                up: tunnel_up,
                vps: vps_end,
                home: home_end,
            },
            relays,
            forwards,
            egress,
            rotation,
            mail_server,
            stack,
        }
    }

    /// Human rendering; `fancy` adds colour and symbols (for a terminal).
    ///
    /// Every string is shown with control characters escaped: most come
    /// from home (its name, errors, the mail server's banner), and an
    /// escape sequence in one must not drive the admin's terminal.
    pub fn render(&self, fancy: bool) -> String {
        match self.for_terminal() {
            Some(clean) => clean.render_raw(fancy),
            // Cannot happen (the round trip is of our own types); if it
            // did, plain text escaped as a whole is still safe.
            None => escape_controls(&self.render_raw(false)),
        }
    }

    /// A copy with [`escape_controls`] applied to every string in it.
    fn for_terminal(&self) -> Option<Status> {
        fn walk(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => *s = escape_controls(s),
                serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
                serde_json::Value::Object(o) => o.values_mut().for_each(walk),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(self).ok()?;
        walk(&mut v);
        serde_json::from_value(v).ok()
    }

    fn render_raw(&self, fancy: bool) -> String {
        let paint = |ok: bool, text: &str| -> String {
            match (fancy, ok) {
                (false, _) => text.to_owned(),
                (true, true) => format!("\x1b[32m{text}\x1b[0m"),
                (true, false) => format!("\x1b[31;1m{text}\x1b[0m"),
            }
        };
        let mark = |ok: bool| -> String {
            match (fancy, ok) {
                (true, true) => paint(true, "✔"),
                (true, false) => paint(false, "✘"),
                (false, true) => "OK  ".into(),
                (false, false) => "FAIL".into(),
            }
        };
        let v = &self.vps;
        let h = &self.home;
        let mut out = String::new();
        out.push_str(&format!(
            "CERES mail gateway for {} (mail host {})\n\n",
            v.domain, v.mail_host
        ));
        out.push_str(&format!(
            "{} VPS agent   {} · up {} · public {} · control {}\n",
            mark(true),
            v.version,
            human(Duration::from_secs(v.uptime_secs)),
            v.public_ips.join(", "),
            v.control_address
        ));
        let home_line = if let Some(r) = &h.revocation {
            format!(
                "{} home agent  {} · certificate {:?} (serial {}) revoked {}",
                mark(false),
                paint(false, "REVOKED"),
                r.name,
                r.serial,
                r.at.as_deref().unwrap_or("?")
            )
        } else if h.connected {
            format!(
                "{} home agent  {} · connected since {} · from {} · last report {} ago",
                mark(true),
                h.version.as_deref().unwrap_or("?"),
                h.since.as_deref().unwrap_or("?"),
                h.remote_address.as_deref().unwrap_or("?"),
                h.last_report_age_secs
                    .map(|s| human(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into()),
            )
        } else if let Some(since) = &h.since {
            format!(
                "{} home agent  {} since {}",
                mark(false),
                paint(false, "NOT CONNECTED"),
                since
            )
        } else {
            format!(
                "{} home agent  {}",
                mark(false),
                paint(false, "NEVER CONNECTED")
            )
        };
        out.push_str(&home_line);
        out.push('\n');
        if let Some(host) = &h.hostname {
            out.push_str(&format!("              host {host}"));
            if let Some(c) = &h.certificate_not_after {
                out.push_str(&format!(" · certificate valid until {c}"));
            }
            out.push('\n');
        }
        let t = &self.tunnel;
        let tline = if t.up {
            format!(
                "{} tunnel      up · last handshake {} ago · home endpoint {} · rx {} tx {}",
                mark(true),
                t.vps
                    .last_handshake_age_secs
                    .map(|s| human(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into()),
                t.vps.endpoint.as_deref().unwrap_or("?"),
                bytes(t.vps.rx_bytes),
                bytes(t.vps.tx_bytes),
            )
        } else if !t.vps.running {
            format!(
                "{} tunnel      {}",
                mark(false),
                paint(false, t.vps.error.as_deref().unwrap_or("not running"))
            )
        } else {
            format!(
                "{} tunnel      {}",
                mark(false),
                paint(false, "DOWN (no recent handshake)")
            )
        };
        out.push_str(&tline);
        out.push('\n');
        if t.vps.running {
            out.push_str(&format!(
                "              {} {} · key {} · dropped {}\n",
                t.vps.ifname,
                t.vps.address.as_deref().unwrap_or("?"),
                short_key(t.vps.public_key.as_deref()),
                t.vps.dropped
            ));
            if let Some(h) = &t.home {
                out.push_str(&format!(
                    "              home {} {} · key {}{}\n",
                    h.ifname,
                    h.address.as_deref().unwrap_or("?"),
                    short_key(h.public_key.as_deref()),
                    h.error
                        .as_deref()
                        .map(|e| format!(" · {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if !self.relays.is_empty() {
            out.push_str(&format!(
                "{} relays      {} ports\n",
                mark(true),
                self.relays.len()
            ));
            // "via": the port of home's forwarder on its tunnel address, as
            // home reported it ("-": none, so the relay answers 421).
            out.push_str("              port → home  via    proxy      active   total      in     out  refused  421/closed\n");
            for r in &self.relays {
                let via = self
                    .forwards
                    .iter()
                    .find(|f| f.target_port == r.target_port)
                    .map_or_else(|| "-".to_owned(), |f| f.port.to_string());
                out.push_str(&format!(
                    "              {:<5}→ {:<5} {:<6} {:<9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>11}{}\n",
                    r.port,
                    r.target_port,
                    via,
                    r.proxy.as_deref().unwrap_or("-"),
                    r.active,
                    r.total,
                    bytes(r.bytes_in),
                    bytes(r.bytes_out),
                    r.refused,
                    r.unavailable,
                    r.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                ));
                if !r.refused_by.is_empty() {
                    let why: Vec<String> = r
                        .refused_by
                        .iter()
                        .map(|(reason, n)| format!("{reason} {n}"))
                        .collect();
                    out.push_str(&format!(
                        "                     refused by: {}\n",
                        why.join(", ")
                    ));
                }
            }
        }
        let e = &self.egress;
        // Before home's first report only the VPS end is known.
        // An installed end with an error: something else (another firewall
        // table) is in the way.
        let blocked = [Some(&e.vps), e.home.as_ref()]
            .into_iter()
            .flatten()
            .any(|end| end.enabled && end.error.is_some());
        let egress_ok = e.vps.enabled && e.home.as_ref().is_none_or(|h| h.enabled) && !blocked;
        let ports = e
            .vps
            .tcp_ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if e.vps.enabled || e.home.as_ref().is_some_and(|h| h.enabled) {
            out.push_str(&format!(
                "{} egress      outbound mail leaves from the VPS on tcp {ports}{}\n",
                mark(egress_ok),
                e.home
                    .as_ref()
                    .map(|h| format!(" · home sources {}", h.sources.join(", ")))
                    .unwrap_or_default()
            ));
            if blocked {
                out.push_str(
                    "              blocked by another firewall table: see the problems below
",
                );
            }
            let v6 = match e.vps.ipv6.as_deref() {
                Some("available") => Some("IPv6 leaves from the VPS's public IPv6"),
                Some("no_public_ipv6") => Some("no IPv6: the VPS has no public IPv6"),
                Some("tunnel_ipv4_only") => Some("no IPv6: the tunnel is IPv4 only"),
                _ => None,
            };
            if let Some(v6) = v6 {
                out.push_str(&format!("              {v6}\n"));
            }
        }
        if let Some(state) = &h.input_filter {
            let (ok, text) = match state.as_str() {
                "installed" => (true, "from the tunnel only the VPS to the forwarders"),
                "off" => (true, "off (the tunnel is off)"),
                _ => (false, "NOT CURRENT: see the problems below"),
            };
            out.push_str(&format!(
                "{} home filter {}\n",
                mark(ok),
                if ok {
                    text.to_owned()
                } else {
                    paint(false, text)
                }
            ));
        }
        if self.tunnel.vps.running {
            let r = &self.rotation;
            out.push_str(&format!(
                "{} keys        age {} · rotations {} · last {} ({}) · next {}{}\n",
                mark(
                    !r.last_outcome
                        .as_deref()
                        .is_some_and(|o| o.starts_with("failed"))
                ),
                r.keys_age_secs
                    .map(|s| human(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into()),
                r.completed,
                r.last.as_deref().unwrap_or("never"),
                r.last_outcome.as_deref().unwrap_or("-"),
                r.next.as_deref().unwrap_or("?"),
                r.pending
                    .map(|p| format!(" · rotation {p} in progress"))
                    .unwrap_or_default(),
            ));
        }
        if !self.mail_server.is_empty() {
            out.push_str("  mail server (home's probes)\n");
            for p in &self.mail_server {
                let state = match (p.reachable, p.expects_proxy) {
                    (false, _) => "not reachable".to_owned(),
                    (true, true) => "expects PROXY".to_owned(),
                    (true, false) => p.banner.clone().unwrap_or_else(|| "reachable".into()),
                };
                out.push_str(&format!(
                    "              {:<5} relay sends {:<8} · {}{}\n",
                    p.port,
                    p.relay_proxy.as_deref().unwrap_or("none"),
                    state,
                    p.error
                        .as_deref()
                        .map(|e| format!(" · {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(s) = &self.stack {
            out.push_str(&crate::status_stack::render(s, &mark(s.ok), paint));
        }
        out.push_str(&crate::status_checks::render(
            &self.checks,
            &self.alert_channels,
            fancy,
        ));
        if !self.warnings.is_empty() {
            out.push('\n');
            for w in &self.warnings {
                out.push_str(&format!("{} {w}\n", paint(false, "warning:")));
            }
        }
        if !self.problems.is_empty() {
            out.push('\n');
            for p in &self.problems {
                out.push_str(&format!("{} {p}\n", paint(false, "problem:")));
            }
        }
        out
    }
}

/// `s` with control characters (C0, DEL, C1) and the bidirectional
/// overrides shown as `\u{..}` escapes, so text from another host cannot
/// move the cursor, recolour, retitle or reorder the terminal. Newlines too:
/// a report cannot forge lines of the status.
pub fn escape_controls(s: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(|c| c.is_control() || bidi(c)) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() || bidi(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn short_key(k: Option<&str>) -> String {
    k.map(|k| format!("{}…", &k[..k.len().min(10)]))
        .unwrap_or_else(|| "?".into())
}

/// `1.5 MiB`, `320 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3d 4h`, `5m 2s`, `12s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_proto::{HomeStatus, VpsStatus};

    fn resp(connected: bool, since: i64) -> StatusResponse {
        StatusResponse {
            vps: Some(VpsStatus {
                domain: "example.com".into(),
                now_unix: 1_800_000_000,
                ..Default::default()
            }),
            vps_tunnel: Some(TunnelReport {
                error: "disabled (CERES_TUNNEL=off)".into(),
                ..Default::default()
            }),
            relays: Vec::new(),
            egress: None,
            rotation: None,
            home: Some(HomeStatus {
                connected,
                since_unix: since,
                last_report_unix: 1_799_999_990,
                hostname: "mail".into(),
                agent_version: "0.1.0".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn strings_from_home_are_escaped_in_text_but_kept_in_json() {
        let mut r = resp(true, 1_799_999_000);
        let evil = "mail\x1b]0;pwned\x07\x1b[2J\u{202e}\u{9b}31m";
        if let Some(h) = r.home.as_mut() {
            h.hostname = evil.into();
            h.last_report = Some(Report {
                forward_error: "boom\x1b[1A".into(),
                ..Default::default()
            });
        }
        let s = Status::from_response(r);
        for fancy in [false, true] {
            let text = s.render(fancy);
            let ours = if fancy {
                text.replace("\x1b[32m", "")
                    .replace("\x1b[31;1m", "")
                    .replace("\x1b[0m", "")
            } else {
                text.clone()
            };
            assert!(
                !ours
                    .chars()
                    .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
                "control characters from home reached the terminal: {text:?}"
            );
            assert!(text.contains("mail\\u{1b}]0;pwned\\u{7}"), "{text}");
        }
        // JSON keeps the value (serde escapes it for JSON).
        assert_eq!(s.home.hostname.as_deref(), Some(evil));
    }

    #[test]
    fn a_revoked_home_is_shown_and_is_a_problem() {
        let mut r = resp(false, 1_799_999_000);
        if let Some(h) = r.home.as_mut() {
            h.access = ceres_proto::HomeAccess::Revoked as i32;
            h.revocation = Some(ceres_proto::HomeRevocation {
                name: "mailbox".into(),
                serial: "0a1b".into(),
                lineage: "0a1b".into(),
                revoked_unix: 1_799_999_500,
            });
        }
        let s = Status::from_response(r);
        assert!(!s.ok);
        assert_eq!(s.home.access.as_deref(), Some("revoked"));
        assert!(
            s.problems[0].starts_with("home revoked"),
            "{:?}",
            s.problems
        );
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(s.render(false).contains("REVOKED"));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["home"]["revocation"]["serial"], "0a1b");
    }

    #[test]
    fn connected_home_is_ok() {
        let s = Status::from_response(resp(true, 1_799_999_000));
        assert!(s.ok && s.problems.is_empty());
        assert_eq!(s.home.last_report_age_secs, Some(10));
        assert!(s.render(false).contains("connected since"));
    }

    #[test]
    fn disconnected_home_is_a_problem_with_advice() {
        let s = Status::from_response(resp(false, 1_799_999_000));
        assert!(!s.ok);
        assert!(s.problems[0].contains("ceres-home run"));
        assert!(s.render(false).contains("NOT CONNECTED"));
    }

    #[test]
    fn never_connected_home_says_how_to_join() {
        let s = Status::from_response(resp(false, 0));
        assert!(s.problems[0].contains("ceres-home join"));
        assert!(s.home.since.is_none() && s.home.last_report.is_none());
    }

    #[test]
    fn stale_tunnel_with_home_connected_is_a_problem() {
        let mut r = resp(true, 5);
        r.vps_tunnel = Some(TunnelReport {
            running: true,
            ifname: "ceres0".into(),
            last_handshake_unix: 1_800_000_000 - 600,
            listen_port: 51820,
            ..Default::default()
        });
        let s = Status::from_response(r);
        assert!(!s.ok && !s.tunnel.up);
        assert!(s.problems[0].contains("UDP 51820"), "{:?}", s.problems);
    }

    #[test]
    fn a_relayed_port_without_home_forwarder_is_a_problem() {
        let mut r = resp(true, 5);
        r.vps_tunnel = Some(TunnelReport {
            running: true,
            last_handshake_unix: 1_800_000_000 - 5,
            ..Default::default()
        });
        let relay = |port| RelayPort {
            port,
            target_port: port,
            ..Default::default()
        };
        r.relays = vec![relay(25), relay(587), relay(2525)];
        r.relays[2].target_port = 25; // 2525 -> home's 25: same forwarder
        let forward = |port, target_port| RelayPort {
            port,
            target_port,
            ..Default::default()
        };
        r.home.as_mut().unwrap().last_report = Some(Report {
            forwards: vec![forward(40001, 25)],
            ..Default::default()
        });
        let s = Status::from_response(r.clone());
        assert!(!s.ok);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(
            s.problems[0].contains("no forwarder for port 587:")
                && s.problems[0].contains("home agent's log"),
            "{:?}",
            s.problems
        );
        // With home's reason.
        r.home.as_mut().unwrap().last_report = Some(Report {
            forwards: vec![],
            forward_error: "too many open files".into(),
            ..Default::default()
        });
        let s = Status::from_response(r.clone());
        assert!(
            s.problems[0].contains("port 25, 587:")
                && s.problems[0].contains("home says: too many open files"),
            "{:?}",
            s.problems
        );
        r.home.as_mut().unwrap().last_report = Some(Report {
            forwards: vec![forward(40001, 25), forward(40002, 587)],
            ..Default::default()
        });
        let s = Status::from_response(r);
        assert!(s.ok, "{:?}", s.problems);
    }

    #[test]
    fn fresh_handshake_means_up() {
        let mut r = resp(true, 5);
        r.vps_tunnel = Some(TunnelReport {
            running: true,
            last_handshake_unix: 1_800_000_000 - 5,
            public_key: vec![7; 32],
            ..Default::default()
        });
        let s = Status::from_response(r);
        assert!(s.ok && s.tunnel.up, "{:?}", s.problems);
        assert_eq!(s.tunnel.vps.last_handshake_age_secs, Some(5));
        assert!(s.render(false).contains("tunnel      up"));
    }

    #[test]
    fn plain_rendering_has_no_escape_codes_and_fancy_has() {
        let s = Status::from_response(resp(false, 5));
        assert!(!s.render(false).contains('\x1b'));
        assert!(s.render(true).contains('\x1b'));
    }

    #[test]
    fn probes_show_and_a_proxy_mismatch_is_a_problem() {
        let mut r = resp(true, 5);
        r.relays = vec![
            RelayPort {
                port: 25,
                target_port: 25,
                proxy: "proxy-v2".into(),
                ..Default::default()
            },
            RelayPort {
                port: 110,
                target_port: 110,
                ..Default::default()
            },
        ];
        let probe = |port, reachable, banner: &str, expects_proxy| ceres_proto::MailProbe {
            port,
            reachable,
            banner: banner.into(),
            expects_proxy,
            error: String::new(),
        };
        r.home.as_mut().unwrap().last_report = Some(Report {
            probes: vec![probe(25, true, "", true), probe(110, false, "", false)],
            // Home's forwarder for 25 listens on 41025; none for 110.
            forwards: vec![RelayPort {
                port: 41025,
                target_port: 25,
                ..Default::default()
            }],
            ..Default::default()
        });
        let s = Status::from_response(r.clone());
        assert!(s.ok, "{:?}", s.problems);
        // 110 is relayed plain: said plainly, not counted as broken.
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].starts_with("port 110 is relayed without PROXY")
                && s.warnings[0].contains("cleartext passwords"),
            "{:?}",
            s.warnings
        );
        assert!(
            s.render(false)
                .contains("warning: port 110 is relayed without PROXY")
        );
        assert_eq!(s.mail_server.len(), 2);
        assert_eq!(s.mail_server[0].relay_proxy.as_deref(), Some("proxy-v2"));
        let text = s.render(false);
        assert!(text.contains("25   → 25    41025  proxy-v2"), "{text}");
        assert!(text.contains("110  → 110   -      -"), "{text}");
        assert!(
            text.contains("25    relay sends proxy-v2 · expects PROXY"),
            "{text}"
        );
        assert!(
            text.contains("110   relay sends none     · not reachable"),
            "{text}"
        );
        r.home.as_mut().unwrap().last_report = Some(Report {
            probes: vec![probe(25, true, "220 mail.example.com ESMTP", false)],
            ..Default::default()
        });
        let s = Status::from_response(r);
        assert!(!s.ok);
        assert!(
            s.problems[0].contains("does not expect"),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn json_has_the_documented_top_level_fields() {
        let v = serde_json::to_value(Status::from_response(resp(true, 5))).unwrap();
        for k in [
            "schema", "ok", "problems", "warnings", "vps", "home", "tunnel", "relays", "forwards",
            "egress",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert_eq!(v["schema"], 1);
        assert_eq!(v["home"]["connected"], true);
    }

    /// Home with a global IPv6 route, routing its mail through the VPS, and
    /// the VPS's IPv6 egress as given.
    fn dual_stack_home(vps_ipv6: Ipv6Egress, direct: DirectIpv6) -> StatusResponse {
        let mut r = resp(true, 1_799_999_000);
        let egress = |ipv6: Ipv6Egress| EgressStatus {
            enabled: true,
            tcp_ports: vec![25],
            ipv6: ipv6.into(),
            ..Default::default()
        };
        r.egress = Some(egress(vps_ipv6));
        if let Some(h) = r.home.as_mut() {
            h.last_report = Some(Report {
                egress: Some(egress(Ipv6Egress::Unspecified)),
                direct_ipv6: direct.into(),
                input_filter: InputFilter::Installed.into(),
                ..Default::default()
            });
        }
        if let Some(v) = r.vps.as_mut() {
            v.tunnel_home_address6 = "fd77:77:77::2/64".into();
        }
        r
    }

    fn ipv6_leak(s: &Status) -> bool {
        s.problems.iter().any(|p| {
            p.contains("IPv6 straight from home") && p.contains("mailserver-config postfix --apply")
        })
    }

    #[test]
    fn home_with_ipv6_and_a_vps_without_ipv6_egress_is_a_problem() {
        let s = Status::from_response(dual_stack_home(
            Ipv6Egress::NoPublicIpv6,
            DirectIpv6::DefaultRoute,
        ));
        assert!(ipv6_leak(&s), "{:?}", s.problems);
        assert!(!s.ok);
        assert!(
            s.render(false)
                .contains("no IPv6: the VPS has no public IPv6")
        );
        let s = Status::from_response(dual_stack_home(
            Ipv6Egress::TunnelIpv4Only,
            DirectIpv6::DefaultRoute,
        ));
        assert!(ipv6_leak(&s), "{:?}", s.problems);
        // IPv6 egress at the VPS, or no IPv6 at home, or facts not reported
        // (older agents): no problem.
        for (vps, home) in [
            (Ipv6Egress::Available, DirectIpv6::DefaultRoute),
            (Ipv6Egress::NoPublicIpv6, DirectIpv6::None),
            (Ipv6Egress::NoPublicIpv6, DirectIpv6::Unspecified),
            (Ipv6Egress::Unspecified, DirectIpv6::DefaultRoute),
        ] {
            let s = Status::from_response(dual_stack_home(vps, home));
            assert!(!ipv6_leak(&s), "{vps:?} {home:?}: {:?}", s.problems);
        }
    }

    #[test]
    fn tunnel_ipv6_addresses_and_the_home_filter_are_in_the_json() {
        let s = Status::from_response(dual_stack_home(
            Ipv6Egress::Available,
            DirectIpv6::DefaultRoute,
        ));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["vps"]["tunnel_home_address6"], "fd77:77:77::2/64");
        assert_eq!(v["vps"]["tunnel_vps_address6"], serde_json::Value::Null);
        assert_eq!(v["egress"]["vps"]["ipv6"], "available");
        assert_eq!(v["home"]["direct_ipv6"], true);
        assert_eq!(v["home"]["input_filter"], "installed");
        assert!(
            s.render(false)
                .contains("home filter from the tunnel only the VPS")
        );
    }

    #[test]
    fn an_old_postfix_behind_proxy_v2_is_a_problem_with_the_fix() {
        let mut r = dual_stack_home(Ipv6Egress::Available, DirectIpv6::None);
        if let Some(rep) = r.home.as_mut().and_then(|h| h.last_report.as_mut()) {
            rep.postfix = Some(ceres_proto::PostfixReport {
                version: "3.4.14".into(),
                proxy_v2_unsupported: vec![
                    ceres_proto::ProxyV2Relay {
                        public_port: 25,
                        home_port: 10025,
                    },
                    ceres_proto::ProxyV2Relay {
                        public_port: 587,
                        home_port: 10587,
                    },
                ],
            });
        }
        let s = Status::from_response(r.clone());
        assert!(!s.ok);
        let problem = s
            .problems
            .iter()
            .find(|p| p.contains("Postfix 3.4.14"))
            .unwrap_or_else(|| panic!("{:?}", s.problems));
        assert!(problem.contains("port 25, 587"), "{problem}");
        assert!(
            problem.contains("25:10025/proxy-v1,587:10587/proxy-v1"),
            "{problem}"
        );
        assert!(problem.contains("CERES_RELAYS"), "{problem}");
        assert!(problem.contains("upgrade Postfix to 3.5+"), "{problem}");
        assert_eq!(
            serde_json::to_value(&s).unwrap()["home"]["postfix_version"],
            "3.4.14"
        );
        // A Postfix that reads v2: the version, no problem.
        if let Some(rep) = r.home.as_mut().and_then(|h| h.last_report.as_mut()) {
            rep.postfix = Some(ceres_proto::PostfixReport {
                version: "3.7.11".into(),
                proxy_v2_unsupported: vec![],
            });
        }
        let s = Status::from_response(r);
        assert!(s.ok, "{:?}", s.problems);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["home"]["postfix_version"],
            "3.7.11"
        );
    }

    #[test]
    fn a_home_filter_that_could_not_be_updated_is_a_problem() {
        let mut r = dual_stack_home(Ipv6Egress::Available, DirectIpv6::None);
        if let Some(rep) = r.home.as_mut().and_then(|h| h.last_report.as_mut()) {
            rep.input_filter = InputFilter::Failed.into();
            rep.input_filter_error = "nft: no such table".into();
        }
        let s = Status::from_response(r);
        assert!(
            s.problems
                .iter()
                .any(|p| p.contains("input filter") && p.contains("nft: no such table")),
            "{:?}",
            s.problems
        );
    }
}
