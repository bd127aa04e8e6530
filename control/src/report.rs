//! Turning the tunnel engine's counters into the protocol's report, the one
//! shape both agents send and `cerectl` shows.

use ceres_proto::{TunnelReport, TunnelState};
use ceres_tunnel::TunnelStats;

/// A report of a running tunnel with address `address`.
pub fn tunnel_report(stats: &TunnelStats, address: &str) -> TunnelReport {
    let d = &stats.dropped;
    TunnelReport {
        running: true,
        ifname: stats.ifname.clone(),
        public_key: stats.public_key.as_bytes().to_vec(),
        peer_public_key: stats
            .peer_public_key
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default(),
        endpoint: stats.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        last_handshake_unix: stats.last_handshake.map(ceres_pki::unix_secs).unwrap_or(0),
        rx_bytes: stats.rx_bytes,
        tx_bytes: stats.tx_bytes,
        rx_packets: stats.rx_packets,
        tx_packets: stats.tx_packets,
        dropped: d.garbage
            + d.bad_mac
            + d.unknown_key
            + d.bad_session
            + d.replay
            + d.under_load
            + d.not_allowed_source
            + d.other,
        listen_port: stats.listen_port as u32,
        address: address.to_owned(),
        error: String::new(),
        state: TunnelState::Running.into(),
    }
}

/// A report for a tunnel that is not running: `state` for readers to decide
/// on, `error` saying why for people (and for older readers: see
/// [`ceres_proto::compat`]).
pub fn tunnel_down(ifname: &str, state: TunnelState, error: &str) -> TunnelReport {
    TunnelReport {
        running: false,
        ifname: ifname.to_owned(),
        error: error.to_owned(),
        state: state.into(),
        ..Default::default()
    }
}

/// Relay or forwarder counters in the protocol's shape; `state` is left
/// UNSPECIFIED for the caller, who knows it.
pub fn relay_ports(
    snapshots: &[ceres_relay::PortSnapshot],
    specs: &[ceres_relay::RelaySpec],
) -> Vec<ceres_proto::RelayPort> {
    snapshots
        .iter()
        .map(|s| {
            // A VPS relay is known by its public port; a home forwarder (on a
            // port of its own) by the home port it forwards to.
            let mode = specs
                .iter()
                .find(|r| r.public_port == s.port && r.home_port == s.target_port)
                .or_else(|| specs.iter().find(|r| r.home_port == s.target_port))
                .map(|r| r.proxy);
            ceres_proto::RelayPort {
                port: s.port as u32,
                target_port: s.target_port as u32,
                proxy: mode
                    .and_then(ceres_relay::ProxyMode::option)
                    .unwrap_or_default()
                    .to_owned(),
                proxy_mode: mode.map_or(ceres_proto::ProxyMode::Unspecified, proxy_mode) as i32,
                state: ceres_proto::RelayState::Unspecified as i32,
                active: s.active,
                total: s.total,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
                refused: s.refused,
                unavailable: s.unavailable,
                last_error: s
                    .last_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
                last_error_unix: s
                    .last_error
                    .as_ref()
                    .map(|e| e.at_unix_secs as i64)
                    .unwrap_or(0),
                refused_by: s
                    .refused_by
                    .iter()
                    .map(|(reason, count)| ceres_proto::RefusalCount {
                        reason: refusal_reason(*reason) as i32,
                        count: *count,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The protocol's name for a relay's refusal reason.
pub fn refusal_reason(r: ceres_relay::Refusal) -> ceres_proto::RefusalReason {
    use ceres_proto::RefusalReason as P;
    use ceres_relay::Refusal as R;
    match r {
        R::PortFull => P::PortFull,
        R::ReservedForKnown => P::ReservedForKnown,
        R::Source => P::Source,
        R::V4Net24 => P::V4Net24,
        R::V6Net56 => P::V6Net56,
        R::V6Net48 => P::V6Net48,
        R::Rate => P::Rate,
        R::Untrusted => P::Untrusted,
    }
}

/// The relay's name for a protocol refusal reason (`None`: unknown, from a
/// newer peer).
pub fn relay_refusal(r: ceres_proto::RefusalReason) -> Option<ceres_relay::Refusal> {
    ceres_relay::Refusal::ALL
        .into_iter()
        .find(|x| refusal_reason(*x) == r)
}

/// The protocol's name for a relay's PROXY mode.
pub fn proxy_mode(m: ceres_relay::ProxyMode) -> ceres_proto::ProxyMode {
    use ceres_proto::ProxyMode as P;
    use ceres_relay::ProxyMode as R;
    match m {
        R::None => P::None,
        R::V1 => P::V1,
        R::V2 => P::V2,
    }
}

/// The relay's PROXY mode for a protocol one (`None`: UNSPECIFIED or
/// unknown, from an older or newer peer).
pub fn relay_proxy_mode(m: ceres_proto::ProxyMode) -> Option<ceres_relay::ProxyMode> {
    ceres_relay::ProxyMode::ALL
        .into_iter()
        .find(|x| proxy_mode(*x) == m)
}

/// A relayed port's PROXY mode: `proxy_mode`, or from an older agent its
/// `proxy` name. `None` for one this build does not know.
pub fn port_proxy_mode(p: &ceres_proto::RelayPort) -> Option<ceres_relay::ProxyMode> {
    match ceres_proto::ProxyMode::try_from(p.proxy_mode).unwrap_or_default() {
        ceres_proto::ProxyMode::Unspecified => ceres_relay::ProxyMode::from_option(&p.proxy),
        typed => relay_proxy_mode(typed),
    }
}

/// A firewall chain in the tunnel's way, in the protocol's shape.
pub fn firewall_finding(d: &ceres_relay::egress::DropChain) -> ceres_proto::FirewallFinding {
    use ceres_proto::FirewallFindingKind as K;
    use ceres_relay::egress::Hook;
    ceres_proto::FirewallFinding {
        kind: match d.hook {
            Hook::Forward => K::ForwardDrop,
            Hook::Input => K::InputDrop,
        } as i32,
        family: d.family.clone(),
        table: d.table.clone(),
        chain: d.chain.clone(),
    }
}

/// The chain a protocol finding names (`None`: a kind this build does not
/// know).
pub fn drop_chain(f: &ceres_proto::FirewallFinding) -> Option<ceres_relay::egress::DropChain> {
    use ceres_proto::FirewallFindingKind as K;
    use ceres_relay::egress::Hook;
    let hook = match K::try_from(f.kind).unwrap_or_default() {
        K::ForwardDrop => Hook::Forward,
        K::InputDrop => Hook::Input,
        K::Unspecified => return None,
    };
    Some(ceres_relay::egress::DropChain {
        family: f.family.clone(),
        table: f.table.clone(),
        chain: f.chain.clone(),
        hook,
    })
}

/// The tunnel part of an agent's Prometheus page, the same at both ends;
/// `peer` names the other end in the help texts ("home", "the VPS").
pub fn tunnel_metrics(out: &mut String, t: &TunnelReport, now_unix: i64, peer: &str) {
    use ceres_daemon::metrics::{header, line};
    let age = (t.last_handshake_unix > 0).then(|| (now_unix - t.last_handshake_unix).max(0) as f64);
    header(
        out,
        "ceres_tunnel_up",
        "gauge",
        "1 when a WireGuard handshake completed in the last 180 s",
    );
    let up = t.running && age.is_some_and(|a| a < 180.0);
    line(out, "ceres_tunnel_up", &[], if up { 1.0 } else { 0.0 });
    if let Some(age) = age {
        header(
            out,
            "ceres_tunnel_last_handshake_age_seconds",
            "gauge",
            "seconds since the last WireGuard handshake",
        );
        line(out, "ceres_tunnel_last_handshake_age_seconds", &[], age);
    }
    let rx_help = format!("bytes received from {peer} through the tunnel");
    let tx_help = format!("bytes sent to {peer} through the tunnel");
    for (name, help, v) in [
        ("ceres_tunnel_rx_bytes_total", rx_help.as_str(), t.rx_bytes),
        ("ceres_tunnel_tx_bytes_total", tx_help.as_str(), t.tx_bytes),
    ] {
        header(out, name, "counter", help);
        line(out, name, &[], v as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_modes_convert_both_ways_and_old_names_are_read() {
        for mode in ceres_relay::ProxyMode::ALL {
            assert_eq!(relay_proxy_mode(proxy_mode(mode)), Some(mode));
            let old = ceres_proto::RelayPort {
                proxy: mode.option().unwrap_or_default().into(),
                ..Default::default()
            };
            assert_eq!(port_proxy_mode(&old), Some(mode), "{old:?}");
        }
        assert_eq!(relay_proxy_mode(ceres_proto::ProxyMode::Unspecified), None);
        let typed = ceres_proto::RelayPort {
            proxy: "anything".into(),
            proxy_mode: ceres_proto::ProxyMode::V1.into(),
            ..Default::default()
        };
        assert_eq!(port_proxy_mode(&typed), Some(ceres_relay::ProxyMode::V1));
    }

    #[test]
    fn firewall_findings_convert_both_ways() {
        use ceres_relay::egress::{DropChain, Hook};
        for hook in [Hook::Input, Hook::Forward] {
            let d = DropChain {
                family: "inet".into(),
                table: "filter".into(),
                chain: "input".into(),
                hook,
            };
            assert_eq!(drop_chain(&firewall_finding(&d)), Some(d));
        }
        assert_eq!(drop_chain(&ceres_proto::FirewallFinding::default()), None);
    }
}
