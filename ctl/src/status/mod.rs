//! `cerectl status`: the report, its stable JSON form, and its rendering.
//!
//! The JSON schema is documented in `docs/status-json.md`; fields are only
//! ever added, and `schema` changes if one ever has to change meaning.
//!
//! [`schema`] is the layout, [`diagnose`] what is broken, [`render`] the
//! text; this file puts them together.

mod diagnose;
mod render;
mod schema;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use ceres_proto::{DirectIpv6, InputFilter, StatusResponse};

pub use render::{bytes, escape_controls, human};
pub use schema::*;

use diagnose::{mail_server_part, postfix_proxy_v2_problem};
use schema::{non_empty, rfc3339};

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
        Status {
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
        }
    }
}
