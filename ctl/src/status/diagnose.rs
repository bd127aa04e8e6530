//! What is broken, and what costs something, in a status.

use ceres_proto::{RelayPort, Report};

use super::schema::{ProbePart, non_empty};

/// Home's probes joined with the VPS relays, and a problem line for each
/// PROXY mismatch (a mismatch breaks every relayed connection on the port;
/// a port nobody serves is shown, not counted as broken: the default relay
/// list includes ports many setups leave unused).
pub(super) fn mail_server_part(
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

/// The problem of a Postfix older than 3.5 behind PROXY v2 relays, with
/// both fixes; `None` when home found none.
pub(super) fn postfix_proxy_v2_problem(p: &ceres_proto::PostfixReport) -> Option<String> {
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
