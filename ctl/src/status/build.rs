//! The parts of a status from the VPS's answer: times as RFC 3339, keys as
//! base64, and every fact typed ([`super::facts`]), read the same way from
//! an agent of this release and of the one before.

use std::time::SystemTime;

use base64::Engine;
use ceres_proto::{EgressStatus, RelayPort, Report, RotationStatus, StatusResponse, TunnelReport};

use super::facts::{
    Access, EgressState, EgressUplink, FirewallPart, InputFilter, Ipv6Egress, Proxy, RelayState,
    RotationResult, RotationStep, TunnelState,
};
use super::schema::*;

/// WireGuard sessions older than this are dead (WireGuard's Reject-After-Time).
pub const HANDSHAKE_STALE_SECS: u64 = 180;

/// Every part of the status; the diagnosis is left empty.
pub(super) fn parts(resp: StatusResponse) -> Status {
    let vps = resp.vps.unwrap_or_default();
    let home = resp.home.unwrap_or_default();
    let now = if vps.now_unix > 0 {
        vps.now_unix
    } else {
        ceres_pki::unix_secs(SystemTime::now())
    };
    let report = home.last_report.as_ref();
    let relays: Vec<PortPart> = resp.relays.iter().map(port).collect();
    let forwards: Vec<PortPart> = report
        .map(|r| r.forwards.iter().map(port).collect())
        .unwrap_or_default();
    let vps_end = tunnel_end(&resp.vps_tunnel.unwrap_or_default(), now);
    let home_end = report
        .and_then(|r| r.tunnel.as_ref())
        .map(|t| tunnel_end(t, now));
    let tunnel_up = vps_end.running && vps_end.fresh();
    Status {
        schema: SCHEMA,
        ok: true,
        problems: Vec::new(),
        warnings: Vec::new(),
        diagnosis: Diagnosis::default(),
        home: home_part(&home, report, now),
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
        tunnel: TunnelPart {
            up: tunnel_up,
            vps: vps_end,
            home: home_end,
        },
        egress: EgressPart {
            vps: egress_end(&resp.egress.unwrap_or_default()),
            home: report.and_then(|r| r.egress.as_ref()).map(egress_end),
        },
        rotation: rotation(&resp.rotation.unwrap_or_default(), now),
        mail_server: probes(&resp.relays, report),
        stack: crate::status_stack::part(&resp.relays, report),
        checks: crate::status_checks::checks(&resp.checks),
        alert_channels: crate::status_checks::channels(&resp.alert_channels),
        relays,
        forwards,
    }
}

fn home_part(home: &ceres_proto::HomeStatus, report: Option<&Report>, now: i64) -> HomePart {
    let seen = home.since_unix > 0;
    let access = Access::of(home.access());
    let postfix = report.and_then(|r| r.postfix.as_ref());
    HomePart {
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
        uptime_secs: report.map(|r| r.uptime_secs),
        certificate_not_after: rfc3339(home.certificate_not_after_unix),
        direct_ipv6: report.and_then(|r| match r.direct_ipv6() {
            ceres_proto::DirectIpv6::Unspecified => None,
            ceres_proto::DirectIpv6::None => Some(false),
            ceres_proto::DirectIpv6::DefaultRoute => Some(true),
        }),
        input_filter: report.and_then(|r| InputFilter::of(r.input_filter())),
        input_filter_error: report.and_then(|r| non_empty(&r.input_filter_error)),
        postfix_version: postfix.and_then(|p| non_empty(&p.version)),
        revocation: home
            .revocation
            .as_ref()
            .filter(|_| access == Some(Access::Revoked))
            .map(|r| RevocationPart {
                name: r.name.clone(),
                serial: r.serial.clone(),
                lineage: r.lineage.clone(),
                at: rfc3339(r.revoked_unix),
            }),
        access,
        forward_error: report.and_then(|r| non_empty(&r.forward_error)),
        firewall: report
            .map(|r| {
                r.firewall_findings
                    .iter()
                    .filter_map(FirewallPart::of)
                    .collect()
            })
            .unwrap_or_default(),
        firewall_advice: report.and_then(|r| non_empty(&r.firewall)),
        postfix_proxy_v2_unsupported: postfix
            .map(|p| {
                p.proxy_v2_unsupported
                    .iter()
                    .map(|r| PortPair {
                        public_port: r.public_port,
                        home_port: r.home_port,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn port(p: &RelayPort) -> PortPart {
    PortPart {
        port: p.port,
        target_port: p.target_port,
        proxy: Proxy::of(p),
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
        state: RelayState::of(p.state()),
    }
}

fn egress_end(e: &EgressStatus) -> EgressEnd {
    EgressEnd {
        enabled: e.enabled,
        tcp_ports: e.tcp_ports.clone(),
        sources: e.sources.clone(),
        error: non_empty(&e.error),
        ipv6: Ipv6Egress::of(e.ipv6()),
        state: EgressState::of(e),
        firewall: e
            .firewall_findings
            .iter()
            .filter_map(FirewallPart::of)
            .collect(),
        uplink: EgressUplink::of(e.uplink()),
    }
}

fn tunnel_end(r: &TunnelReport, now: i64) -> TunnelEnd {
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
        state: TunnelState::of(r),
    }
}

impl TunnelEnd {
    /// A handshake within [`HANDSHAKE_STALE_SECS`].
    pub fn fresh(&self) -> bool {
        self.last_handshake_age_secs
            .is_some_and(|a| a < HANDSHAKE_STALE_SECS)
    }
}

fn rotation(r: &RotationStatus, now: i64) -> RotationPart {
    let result = RotationResult::of(r);
    RotationPart {
        keys_since: rfc3339(r.keys_since_unix),
        keys_age_secs: (r.keys_since_unix > 0).then(|| (now - r.keys_since_unix).max(0) as u64),
        last: rfc3339(r.last_unix),
        last_outcome: non_empty(&r.last_outcome),
        next: rfc3339(r.next_unix),
        completed: r.completed,
        pending: (r.pending != 0).then_some(r.pending),
        pending_step: RotationStep::of(r),
        last_result: result,
        last_failure: (result == Some(RotationResult::Failed))
            .then(|| r.effective_failure().to_owned()),
    }
}

/// Home's probes, each with what the relay to its port sends.
fn probes(relays: &[RelayPort], report: Option<&Report>) -> Vec<ProbePart> {
    report
        .map(|r| r.probes.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| ProbePart {
            port: p.port,
            reachable: p.reachable,
            banner: non_empty(&p.banner),
            expects_proxy: p.expects_proxy,
            relay_proxy: relays
                .iter()
                .find(|r| r.target_port == p.port)
                .map_or(Proxy::PLAIN, Proxy::of),
            error: non_empty(&p.error),
        })
        .collect()
}

fn key_b64(k: &[u8]) -> Option<String> {
    (k.len() == 32).then(|| base64::engine::general_purpose::STANDARD.encode(k))
}

/// Unix seconds as RFC 3339; `None` for 0 (never) or out of range.
pub(super) fn rfc3339(unix: i64) -> Option<String> {
    if unix <= 0 {
        return None;
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
