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
                proxy_mode: mode.map_or(
                    ceres_proto::ProxyMode::Unspecified,
                    ceres_control::wire::proxy_mode,
                ) as i32,
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
                        reason: ceres_control::refusal::refusal_reason(*reason) as i32,
                        count: *count,
                    })
                    .collect(),
            }
        })
        .collect()
}
