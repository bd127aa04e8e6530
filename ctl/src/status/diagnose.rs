//! What is broken, and what costs something, in a status — decided on its
//! typed facts only ([`super::facts`]); what the agents wrote is carried
//! along as detail, never read for a decision.

use super::facts::{Access, EgressState, InputFilter, Ipv6Egress, RelayState, TunnelState};
use super::problem::{End, Problem, Warning};
use super::schema::Status;

/// The problems (in the order `cerectl status` lists them) and warnings.
pub(super) fn diagnose(s: &Status) -> (Vec<Problem>, Vec<Warning>) {
    let mut problems = Vec::new();
    home(s, &mut problems);
    egress(s, &mut problems);
    tunnel(s, &mut problems);
    forwarders(s, &mut problems);
    firewall(s, &mut problems);
    proxy_mismatches(s, &mut problems);
    home_filter(s, &mut problems);
    postfix(s, &mut problems);
    ipv6(s, &mut problems);
    stack(s, &mut problems);
    watchdog(s, &mut problems);
    (problems, warnings(s))
}

fn home(s: &Status, out: &mut Vec<Problem>) {
    let h = &s.home;
    if let Some(r) = h
        .revocation
        .as_ref()
        .filter(|_| h.access == Some(Access::Revoked))
    {
        out.push(Problem::home_revoked(&r.name, &r.serial));
    } else if !h.connected {
        // `since` is set once home has connected at all.
        out.push(if h.since.is_some() {
            Problem::home_not_connected()
        } else {
            Problem::home_never_connected()
        });
    }
}

fn egress(s: &Status, out: &mut Vec<Problem>) {
    // A revoked home's egress is removed on purpose: the revocation is the
    // problem, reported as such.
    let revoked = s.home.access == Some(Access::Revoked);
    for (end, e) in [
        (End::Vps, Some(&s.egress.vps)),
        (End::Home, s.egress.home.as_ref()),
    ] {
        let Some(e) = e else { continue };
        match e.state {
            Some(EgressState::Blocked) => {
                let ifname = &s.tunnel.vps.ifname;
                let fix = e
                    .firewall
                    .iter()
                    .map(|f| f.advice(ifname))
                    .collect::<Vec<_>>()
                    .join("; and ");
                let fix = if fix.is_empty() {
                    "let the tunnel through the other firewall tables (see the agent's log)".into()
                } else {
                    fix
                };
                out.push(Problem::egress_blocked(end, e.error.as_deref(), fix));
            }
            Some(EgressState::Failed) if !revoked => {
                out.push(Problem::egress_failed(end, e.error.as_deref()));
            }
            _ => {}
        }
    }
}

fn tunnel(s: &Status, out: &mut Vec<Problem>) {
    let vps = &s.tunnel.vps;
    match vps.state {
        // Off on purpose (CERES_TUNNEL=off): nothing to say about it.
        Some(TunnelState::Off) => {}
        Some(TunnelState::Running) => {
            if s.home.connected && !s.tunnel.up {
                let home = s.tunnel.home.as_ref();
                let said = home.and_then(|h| h.error.as_deref());
                out.push(match home.and_then(|h| h.state) {
                    Some(TunnelState::Off) => Problem::tunnel_down_at_home(true, said),
                    Some(TunnelState::Waiting | TunnelState::Failed) => {
                        Problem::tunnel_down_at_home(false, said)
                    }
                    Some(TunnelState::Running) | None => {
                        Problem::tunnel_no_handshake(vps.listen_port.unwrap_or(51820))
                    }
                });
            }
        }
        Some(TunnelState::Waiting | TunnelState::Failed) | None => {
            out.push(Problem::tunnel_not_running(vps.error.as_deref()));
        }
    }
}

/// With the tunnel up, home runs a forwarder for each relayed home port;
/// the VPS answers 421 on a port it has none for.
fn forwarders(s: &Status, out: &mut Vec<Problem>) {
    // `uptime_secs` comes with every report: home has reported.
    if !(s.home.connected && s.tunnel.up && s.home.uptime_secs.is_some()) {
        return;
    }
    let mut missing: Vec<u32> = if s.relays.iter().all(|r| r.state.is_some()) {
        // What the relays do (the VPS knows): the ports answering 421.
        s.relays
            .iter()
            .filter(|r| r.state == Some(RelayState::NoForwarder))
            .map(|r| r.target_port)
            .collect()
    } else {
        // An older VPS agent: compare the relays with home's forwarders.
        s.relays
            .iter()
            .map(|r| r.target_port)
            .filter(|p| !s.forwards.iter().any(|f| f.target_port == *p))
            .collect()
    };
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        out.push(Problem::no_forwarder(
            missing,
            s.home.forward_error.as_deref(),
        ));
    }
}

fn firewall(s: &Status, out: &mut Vec<Problem>) {
    let h = &s.home;
    // An older home agent reports the advice alone, a current one the
    // chains too.
    if h.firewall.is_empty() && h.firewall_advice.is_none() {
        return;
    }
    let ifname = s
        .tunnel
        .home
        .as_ref()
        .map_or(s.tunnel.vps.ifname.as_str(), |t| t.ifname.as_str());
    let fix = h
        .firewall
        .iter()
        .map(|f| f.advice(ifname))
        .collect::<Vec<_>>()
        .join("; and ");
    let fix = if fix.is_empty() {
        // Only the older agent's words: they are the advice.
        h.firewall_advice.clone().unwrap_or_default()
    } else {
        fix
    };
    out.push(Problem::firewall_blocks_forwarders(
        fix,
        h.firewall_advice.as_deref(),
    ));
}

/// A PROXY mismatch breaks every relayed connection on the port; a port
/// nobody serves is shown, not counted as broken (the default relay list
/// includes ports many setups leave unused).
fn proxy_mismatches(s: &Status, out: &mut Vec<Problem>) {
    for p in s.mail_server.iter().filter(|p| p.reachable) {
        match p.relay_proxy.sends() {
            // It greets (so it is not waiting for a header) and gets one.
            Some(true) if !p.expects_proxy && p.banner.is_some() => {
                out.push(Problem::proxy_not_expected(p.port));
            }
            Some(false) if p.expects_proxy => out.push(Problem::proxy_expected(p.port)),
            _ => {}
        }
    }
}

fn home_filter(s: &Status, out: &mut Vec<Problem>) {
    if s.home.input_filter == Some(InputFilter::Failed) {
        out.push(Problem::input_filter_failed(
            s.home.input_filter_error.as_deref(),
        ));
    }
}

fn postfix(s: &Status, out: &mut Vec<Problem>) {
    let h = &s.home;
    if !h.postfix_proxy_v2_unsupported.is_empty() {
        let relays: Vec<(u32, u32)> = h
            .postfix_proxy_v2_unsupported
            .iter()
            .map(|r| (r.public_port, r.home_port))
            .collect();
        out.push(Problem::postfix_cannot_read_proxy_v2(
            h.postfix_version.as_deref().unwrap_or("?"),
            &relays,
        ));
    }
}

/// Home's mail goes out through the VPS, but the VPS cannot send IPv6: a
/// dual-stack mail server at home then delivers to IPv6 MX hosts from the
/// home line (no PTR, outside SPF).
fn ipv6(s: &Status, out: &mut Vec<Problem>) {
    let home_routes_mail = s.egress.home.as_ref().is_some_and(|h| h.enabled);
    if s.home.direct_ipv6 == Some(true)
        && home_routes_mail
        && matches!(
            s.egress.vps.ipv6,
            Some(Ipv6Egress::NoPublicIpv6 | Ipv6Egress::TunnelIpv4Only)
        )
    {
        out.push(Problem::ipv6_bypasses_vps());
    }
}

/// Every port relayed without PROXY.
/// The mail stack's listeners and the relays to them, judged on the
/// probe's enums ([`ceres_control::stack_report`] words each finding).
fn stack(s: &Status, out: &mut Vec<Problem>) {
    if let Some(st) = &s.stack {
        out.extend(st.problems.iter().map(|p| Problem::mail_stack(p)));
    }
}

/// The watchdog's checks whose failure nothing else in the status names
/// (the live ones — home, relays, egress, firewall, rotation — have problems
/// of their own above).
fn watchdog(s: &Status, out: &mut Vec<Problem>) {
    out.extend(
        crate::status_checks::failing_own_verdict(&s.checks)
            .map(|c| Problem::watch_check(&c.id, &c.title, &c.detail)),
    );
}

fn warnings(s: &Status) -> Vec<Warning> {
    s.relays
        .iter()
        .filter(|r| r.proxy.sends() == Some(false))
        .map(|r| Warning::plain_relay(r.port, r.target_port))
        .collect()
}
