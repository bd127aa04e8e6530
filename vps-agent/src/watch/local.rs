//! The checks of the VPS's own live state: home's session and tunnel, the
//! relays, egress, what home reports of its firewall, key rotation, and
//! certificate expiry. Pure functions of what the agent knows (the same
//! messages `cerectl status` gets) and the time, so they are tested without
//! a running agent.

use std::collections::BTreeMap;
use std::time::Duration;

use ceres_proto::{EgressStatus, HomeAccess, HomeStatus, InputFilter, RelayPort, TunnelReport};

use super::check::{Finding, Level, Observation};

/// A handshake older than this means the tunnel carries nothing: WireGuard
/// rekeys every 2 minutes while traffic flows, and home's keepalives keep it
/// flowing (the same limit `cerectl status` and `ceres-vps status` use).
pub const HANDSHAKE_MAX_AGE: Duration =
    Duration::from_secs(ceres_tunnel::uapi_client::HANDSHAKE_STALE_SECS);

/// Home: its control session, and the tunnel's handshakes.
///
/// `joined`: a home owns the tunnel's WireGuard peer (it joined and was not
/// revoked); `tunnel`: the VPS end's report, `None` when the tunnel is off.
pub fn home(
    home: &HomeStatus,
    joined: bool,
    tunnel: Option<&TunnelReport>,
    now_unix: i64,
) -> Observation {
    if home.access == HomeAccess::Revoked as i32 {
        let who = home
            .revocation
            .as_ref()
            .map(|r| format!(" (certificate {:?}, serial {})", r.name, r.serial))
            .unwrap_or_default();
        return Observation::one(
            Level::Failing,
            format!(
                "home was revoked{who}: no tunnel, egress or session until a new home joins \
                 (`ceres-vps token create --role home`, then `ceres-home join TOKEN`)"
            ),
        );
    }
    if !home.connected {
        if home.since_unix == 0 && !joined {
            return Observation::one(
                Level::Warning,
                "no home has joined yet: create a token with `ceres-vps token create --role home` \
                 and run `ceres-home join TOKEN` at home",
            );
        }
        let when = if home.since_unix > 0 {
            format!(
                "since {} ({} ago, last from {})",
                ceres_pki::rfc3339(home.since_unix),
                age(now_unix - home.since_unix),
                home.remote_address
            )
        } else {
            "since the VPS agent started".to_owned()
        };
        return Observation::one(
            Level::Failing,
            format!(
                "the home agent is not connected {when}: senders get 421 on port 25 and queue; \
                 check `ceres-home run` at home and that it reaches the VPS control port"
            ),
        );
    }
    let session = format!(
        "connected since {} from {}",
        ceres_pki::rfc3339(home.since_unix),
        home.remote_address
    );
    let Some(t) = tunnel else {
        return Observation::ok(format!("{session} (tunnel off)"));
    };
    if !t.running {
        return Observation::one(
            Level::Failing,
            format!(
                "{session}, but the tunnel is not running on the VPS: {}",
                if t.error.is_empty() {
                    "see the VPS agent's log"
                } else {
                    &t.error
                }
            ),
        );
    }
    let max = secs(HANDSHAKE_MAX_AGE);
    let handshake_age = (t.last_handshake_unix > 0).then(|| now_unix - t.last_handshake_unix);
    match handshake_age {
        Some(a) if a <= max => Observation::ok(format!(
            "{session}; last WireGuard handshake {} ago",
            age(a)
        )),
        // A fresh session gets the time a handshake needs.
        _ if now_unix - home.since_unix <= max => Observation::ok(format!(
            "{session}; waiting for the first WireGuard handshake"
        )),
        Some(a) => Observation::one(
            Level::Failing,
            format!(
                "{session}, but the last WireGuard handshake was {} ago: the tunnel carries \
                 nothing; check that UDP {} is open on the VPS and not blocked at home",
                age(a),
                t.listen_port
            ),
        ),
        None => Observation::one(
            Level::Failing,
            format!(
                "{session}, but no WireGuard handshake ever: the tunnel carries nothing; check \
                 that UDP {} is open on the VPS and not blocked at home",
                t.listen_port
            ),
        ),
    }
}

/// The relays' counters at the previous run, per port: connections turned
/// away and refused so far, and the time of the last error seen.
#[derive(Debug, Clone, Default)]
pub struct RelayMemory {
    ports: BTreeMap<u32, (u64, u64, i64)>,
}

/// The relays since the previous run: senders turned away (421 on SMTP
/// ports, a close on others) is failing — mail is being deferred; refusals
/// by the connection limits are a warning (they protect the server, but a
/// legitimate sender may be among them). The first run only takes note.
pub fn relays(ports: &[RelayPort], memory: &mut Option<RelayMemory>) -> Observation {
    let now: BTreeMap<u32, (u64, u64, i64)> = ports
        .iter()
        .map(|p| (p.port, (p.unavailable, p.refused, p.last_error_unix)))
        .collect();
    let before = memory.replace(RelayMemory { ports: now.clone() });
    let Some(before) = before else {
        return Observation::ok(format!("{} relayed ports", ports.len()));
    };
    let mut findings = Vec::new();
    for p in ports {
        let (unavailable0, refused0, error0) = before.ports.get(&p.port).copied().unwrap_or((
            p.unavailable,
            p.refused,
            p.last_error_unix,
        ));
        let turned_away = p.unavailable.saturating_sub(unavailable0);
        let refused = p.refused.saturating_sub(refused0);
        if turned_away > 0 {
            let why = if p.last_error_unix > error0 && !p.last_error.is_empty() {
                format!(": {}", p.last_error)
            } else {
                String::new()
            };
            findings.push(Finding::new(
                format!("port {}", p.port),
                Level::Failing,
                format!(
                    "{turned_away} connections turned away (421 on SMTP ports: senders retry \
                     later), home could not be reached{why}"
                ),
            ));
        }
        if refused > 0 {
            findings.push(Finding::new(
                format!("port {}", p.port),
                Level::Warning,
                format!(
                    "{refused} connections refused by the connection limits (CERES_RELAY_MAX_* / \
                     CERES_RELAY_RATE_PER_SOURCE)"
                ),
            ));
        }
    }
    Observation::from_findings(
        format!("{} relayed ports, every connection relayed", ports.len()),
        findings,
    )
}

/// Egress: home's outbound mail leaves through the VPS unless another
/// firewall's default-drop forward chain is in the way.
pub fn egress(e: &EgressStatus, enabled_in_settings: bool) -> Observation {
    if !enabled_in_settings {
        return Observation::ok("off (CERES_EGRESS=off)");
    }
    match (e.enabled, e.error.as_str()) {
        (true, "") => Observation::ok(format!(
            "home's outbound mail leaves from the VPS (tcp {})",
            e.tcp_ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (true, blocked) => Observation::one(
            Level::Failing,
            format!("another firewall blocks home's outbound mail: {blocked}"),
        ),
        (false, why) if why.starts_with("removed") => {
            Observation::one(Level::Warning, why.to_owned())
        }
        (false, why) if why.starts_with("not installed (tunnel off)") => {
            Observation::ok("not installed: the tunnel is off")
        }
        (false, why) => Observation::one(
            Level::Failing,
            format!("outbound mail routing is not installed: {why}"),
        ),
    }
}

/// What home last reported about its firewall and input filter; `None`
/// when it has not reported (never connected): nothing new is known.
pub fn home_firewall(home: &HomeStatus) -> Option<Observation> {
    let report = home.last_report.as_ref()?;
    let mut findings = Vec::new();
    if !report.firewall.is_empty() {
        findings.push(Finding::new(
            "firewall",
            Level::Failing,
            format!(
                "relayed connections cannot reach home's forwarders: {}",
                report.firewall
            ),
        ));
    }
    if report.input_filter == InputFilter::Failed as i32 {
        findings.push(Finding::new(
            "input filter",
            Level::Failing,
            format!(
                "home's input filter on the tunnel could not be updated for its forwarders: {}",
                if report.input_filter_error.is_empty() {
                    "see the home agent's log"
                } else {
                    &report.input_filter_error
                }
            ),
        ));
    }
    let stale = if home.connected {
        ""
    } else {
        " (as last reported; home is not connected)"
    };
    let mut o = Observation::from_findings(
        format!("nothing at home blocks the relayed connections{stale}"),
        findings,
    );
    if o.level > Level::Ok {
        o.detail.push_str(stale);
    }
    Some(o)
}

/// Key rotation: the last one failed, or rotations are far overdue.
/// `status`: `None` when the tunnel is off.
pub fn rotation(
    status: Option<&ceres_proto::RotationStatus>,
    every: Duration,
    now_unix: i64,
) -> Observation {
    let Some(r) = status else {
        return Observation::ok("the tunnel is off: no keys to rotate");
    };
    if let Some(why) = r.last_outcome.strip_prefix("failed") {
        return Observation::one(
            Level::Failing,
            format!(
                "the last key rotation ({}) failed{why}; the current keys stay in use — see the \
                 VPS agent's log, or try `cerectl rotate`",
                ceres_pki::rfc3339(r.last_unix)
            ),
        );
    }
    let keys_age = now_unix - r.keys_since_unix;
    if r.keys_since_unix > 0 && keys_age > 2 * secs(every) {
        return Observation::one(
            Level::Warning,
            format!(
                "the keys are {} old, more than twice CERES_ROTATE_EVERY: rotation waits for home \
                 to be connected",
                age(keys_age)
            ),
        );
    }
    Observation::ok(match r.last_unix {
        0 => "no rotation yet; keys from setup".to_owned(),
        t => format!("last rotation {} ok", ceres_pki::rfc3339(t)),
    })
}

/// What a certificate is for, which decides how early its expiry matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// The CA: it cannot renew itself, so it is told months ahead.
    Ca,
    /// The VPS's server certificate (renews itself at two thirds).
    Server,
    /// The client certificate of the home owning the tunnel (renews itself).
    Home,
    /// Any other client certificate (cerectl's): a warning at most.
    Other,
}

/// One certificate's validity.
#[derive(Debug, Clone)]
pub struct CertExpiry {
    /// Which certificate, for people.
    pub subject: String,
    /// What it is for.
    pub kind: CertKind,
    /// Validity, unix seconds.
    pub not_before_unix: i64,
    /// Validity end, unix seconds.
    pub not_after_unix: i64,
}

/// Certificate expiry. Certificates that renew themselves do so with a third
/// of their life left: under a quarter left means renewal is overdue
/// (warning), under a tenth or expired is failing. The CA cannot renew: a
/// warning 180 days ahead, failing 30 days ahead. Other client certificates
/// (cerectl's) renew when used: a warning while about to expire, nothing once
/// expired (no longer in use).
pub fn certificates(certs: &[CertExpiry], now_unix: i64) -> Observation {
    const DAY: i64 = 86_400;
    let mut findings = Vec::new();
    let mut soonest: Option<&CertExpiry> = None;
    for c in certs {
        let left = c.not_after_unix - now_unix;
        let life = (c.not_after_unix - c.not_before_unix).max(1);
        let level = match c.kind {
            _ if left <= 0 && c.kind == CertKind::Other => continue,
            _ if left <= 0 => Level::Failing,
            CertKind::Ca if left < 30 * DAY => Level::Failing,
            CertKind::Ca if left < 180 * DAY => Level::Warning,
            CertKind::Ca => Level::Ok,
            CertKind::Other if left * 4 < life => Level::Warning,
            CertKind::Other => Level::Ok,
            _ if left * 10 < life => Level::Failing,
            _ if left * 4 < life => Level::Warning,
            _ => Level::Ok,
        };
        if soonest.is_none_or(|s| c.not_after_unix < s.not_after_unix) {
            soonest = Some(c);
        }
        if level == Level::Ok {
            continue;
        }
        let when = if left <= 0 {
            format!("expired {} ago", age(-left))
        } else {
            format!(
                "expires in {} ({})",
                age(left),
                ceres_pki::rfc3339(c.not_after_unix)
            )
        };
        let fix = match c.kind {
            CertKind::Ca => {
                "every certificate stops working with it; CERES cannot renew its CA: plan a new \
                 `ceres-vps init` and join home and cerectl again"
            }
            CertKind::Server => "it should have renewed itself: see the VPS agent's log",
            CertKind::Home => {
                "it should have renewed itself: see the home agent's log; if it expires, join \
                 home again with a new token"
            }
            CertKind::Other => "run that cerectl once (it renews when used), or revoke it",
        };
        findings.push(Finding::new(
            c.subject.clone(),
            level,
            format!("{when}: {fix}"),
        ));
    }
    let ok = match soonest {
        Some(c) => format!(
            "{} certificates valid; the first to expire is {} ({})",
            certs.len(),
            c.subject,
            ceres_pki::rfc3339(c.not_after_unix)
        ),
        None => "no certificates".to_owned(),
    };
    Observation::from_findings(ok, findings)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A short age: "45 s", "12 min", "3 h", "4 d".
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_proto::{HomeRevocation, Report, RotationStatus};

    const NOW: i64 = 1_700_000_000;

    fn connected(since: i64) -> HomeStatus {
        HomeStatus {
            connected: true,
            since_unix: since,
            remote_address: "198.51.100.10:40000".into(),
            access: HomeAccess::Allowed as i32,
            ..Default::default()
        }
    }

    fn tunnel(handshake: i64) -> TunnelReport {
        TunnelReport {
            running: true,
            last_handshake_unix: handshake,
            listen_port: 51820,
            ..Default::default()
        }
    }

    #[test]
    fn home_states() {
        let up = home(&connected(NOW - 600), true, Some(&tunnel(NOW - 30)), NOW);
        assert_eq!(up.level, Level::Ok, "{up:?}");
        let fresh = home(&connected(NOW - 5), true, Some(&tunnel(0)), NOW);
        assert_eq!(fresh.level, Level::Ok, "{fresh:?}");
        let stale = home(&connected(NOW - 600), true, Some(&tunnel(NOW - 400)), NOW);
        assert_eq!(stale.level, Level::Failing);
        assert!(stale.detail.contains("UDP 51820"), "{stale:?}");
        let never = home(&connected(NOW - 600), true, Some(&tunnel(0)), NOW);
        assert!(
            never.detail.contains("no WireGuard handshake ever"),
            "{never:?}"
        );
        let off = home(&connected(NOW - 600), true, None, NOW);
        assert_eq!(off.level, Level::Ok);

        let gone = HomeStatus {
            connected: false,
            since_unix: NOW - 3600,
            remote_address: "198.51.100.10:40000".into(),
            ..Default::default()
        };
        let o = home(&gone, true, Some(&tunnel(NOW - 3700)), NOW);
        assert_eq!(o.level, Level::Failing);
        assert!(
            o.detail.contains("not connected since") && o.detail.contains("60 min ago"),
            "{o:?}"
        );
        // Restarted VPS, home not back yet: still failing (it joined).
        let o = home(&HomeStatus::default(), true, None, NOW);
        assert!(o.detail.contains("since the VPS agent started"), "{o:?}");
        // Never joined: a warning, not an alert.
        assert_eq!(
            home(&HomeStatus::default(), false, None, NOW).level,
            Level::Warning
        );
        let revoked = HomeStatus {
            access: HomeAccess::Revoked as i32,
            revocation: Some(HomeRevocation {
                name: "lab-home".into(),
                serial: "ab12".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = home(&revoked, false, None, NOW);
        assert_eq!(o.level, Level::Failing);
        assert!(o.detail.contains("\"lab-home\""), "{o:?}");
    }

    fn port(port: u32, unavailable: u64, refused: u64) -> RelayPort {
        RelayPort {
            port,
            unavailable,
            refused,
            ..Default::default()
        }
    }

    #[test]
    fn relays_compare_with_the_previous_run() {
        let mut memory = None;
        // Counters from before the watchdog started are not news.
        let o = relays(&[port(25, 7, 3), port(993, 0, 0)], &mut memory);
        assert_eq!(o.level, Level::Ok);
        let o = relays(&[port(25, 7, 3), port(993, 0, 0)], &mut memory);
        assert_eq!(o.level, Level::Ok);
        let mut p25 = port(25, 9, 3);
        p25.last_error = "connect to home: timed out".into();
        p25.last_error_unix = NOW;
        let o = relays(&[p25.clone(), port(993, 0, 1)], &mut memory);
        assert_eq!(o.level, Level::Failing);
        assert!(
            o.detail
                .starts_with("port 25: 2 connections turned away (421"),
            "{o:?}"
        );
        assert!(o.detail.contains("timed out"), "{o:?}");
        assert_eq!(o.findings[1].level, Level::Warning);
        assert_eq!(o.findings[1].subject, "port 993");
        let o = relays(&[p25, port(993, 0, 1)], &mut memory);
        assert_eq!(o.level, Level::Ok, "{o:?}");
    }

    #[test]
    fn egress_states() {
        let ok = EgressStatus {
            enabled: true,
            tcp_ports: vec![25, 465, 587],
            ..Default::default()
        };
        assert_eq!(egress(&ok, true).level, Level::Ok);
        let blocked = EgressStatus {
            error: "table inet docker drops forwarded packets: add ...".into(),
            ..ok.clone()
        };
        let o = egress(&blocked, true);
        assert_eq!(o.level, Level::Failing);
        assert!(o.detail.contains("docker"));
        assert_eq!(egress(&EgressStatus::default(), false).level, Level::Ok);
        let revoked = EgressStatus {
            error: "removed: home was revoked (back when a new home joins)".into(),
            ..Default::default()
        };
        assert_eq!(egress(&revoked, true).level, Level::Warning);
    }

    #[test]
    fn home_firewall_findings() {
        assert!(home_firewall(&HomeStatus::default()).is_none());
        let mut h = connected(NOW - 60);
        h.last_report = Some(Report::default());
        assert_eq!(home_firewall(&h).unwrap().level, Level::Ok);
        h.last_report = Some(Report {
            firewall: "nftables chain inet filter input drops ceres0: add ...".into(),
            ..Default::default()
        });
        let o = home_firewall(&h).unwrap();
        assert_eq!(o.level, Level::Failing);
        assert!(o.detail.contains("inet filter input"), "{o:?}");
        h.connected = false;
        assert!(
            home_firewall(&h)
                .unwrap()
                .detail
                .ends_with("home is not connected)")
        );
    }

    #[test]
    fn rotation_states() {
        let every = Duration::from_secs(7 * 86_400);
        assert_eq!(rotation(None, every, NOW).level, Level::Ok);
        let failed = RotationStatus {
            last_unix: NOW - 60,
            last_outcome: "failed: home gave up: boom".into(),
            keys_since_unix: NOW - 86_400,
            ..Default::default()
        };
        let o = rotation(Some(&failed), every, NOW);
        assert_eq!(o.level, Level::Failing);
        assert!(o.detail.contains("home gave up: boom"), "{o:?}");
        let old = RotationStatus {
            keys_since_unix: NOW - 15 * 86_400,
            ..Default::default()
        };
        assert_eq!(rotation(Some(&old), every, NOW).level, Level::Warning);
    }

    #[test]
    fn certificate_thresholds() {
        let day = 86_400;
        let cert = |kind, left_days: i64, life_days: i64| CertExpiry {
            subject: format!("{kind:?}"),
            kind,
            not_before_unix: NOW + left_days * day - life_days * day,
            not_after_unix: NOW + left_days * day,
        };
        let level = |c: CertExpiry| certificates(&[c], NOW).level;
        assert_eq!(level(cert(CertKind::Server, 40, 90)), Level::Ok);
        assert_eq!(level(cert(CertKind::Server, 20, 90)), Level::Warning);
        assert_eq!(level(cert(CertKind::Server, 8, 90)), Level::Failing);
        assert_eq!(level(cert(CertKind::Home, -1, 30)), Level::Failing);
        assert_eq!(level(cert(CertKind::Ca, 400, 3650)), Level::Ok);
        assert_eq!(level(cert(CertKind::Ca, 100, 3650)), Level::Warning);
        assert_eq!(level(cert(CertKind::Ca, 20, 3650)), Level::Failing);
        assert_eq!(level(cert(CertKind::Other, 5, 30)), Level::Warning);
        assert_eq!(level(cert(CertKind::Other, -5, 30)), Level::Ok);
        let o = certificates(
            &[
                cert(CertKind::Server, 8, 90),
                cert(CertKind::Ca, 3000, 3650),
            ],
            NOW,
        );
        assert!(o.detail.starts_with("Server: expires in 8 d"), "{o:?}");
    }
}
