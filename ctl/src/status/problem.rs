//! What `cerectl status` finds: typed problems (broken: exit 1) and
//! warnings (a cost, not counted), each with the part of the status it is
//! about, what to do, and what an agent said about it (for people only).
//!
//! Each kind is worded once, here; [`super::diagnose`] decides which apply.

use serde::{Deserialize, Serialize};

/// What is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The certificate that owned the tunnel was revoked.
    HomeRevoked,
    /// Home joined once but has no session now.
    HomeNotConnected,
    /// No home ever joined.
    HomeNeverConnected,
    /// The VPS's end of the tunnel is not running (and not off on purpose).
    TunnelNotRunning,
    /// Home runs with the tunnel off while the VPS runs it.
    TunnelOffAtHome,
    /// Home's end of the tunnel is not running (failed or still waiting).
    TunnelNotRunningAtHome,
    /// Both ends run, but no handshake for a while.
    TunnelNoHandshake,
    /// Relayed ports with no forwarder at home: the VPS answers 421.
    NoForwarder,
    /// A firewall at home keeps the VPS from the forwarders.
    FirewallBlocksForwarders,
    /// The relay sends a PROXY header the mail server does not expect.
    ProxyNotExpected,
    /// The mail server waits for a PROXY header the relay does not send.
    ProxyExpected,
    /// Egress is installed but another firewall table drops the mail.
    EgressBlocked,
    /// Egress could not be installed.
    EgressFailed,
    /// Home's input filter could not be updated for the forwarders.
    InputFilterFailed,
    /// Postfix at home is too old for the PROXY v2 headers relayed to it.
    PostfixCannotReadProxyV2,
    /// Home's mail server can deliver over IPv6 around the VPS.
    Ipv6BypassesVps,
    /// A PROXY listener of home's mail stack (`CERES_MAIL_STACK`) is missing
    /// or misbehaves, or the VPS relays a port elsewhere than the stack
    /// listens.
    MailStack,
    /// A watchdog check of the VPS is failing (certificates, a blocklist,
    /// PTR, SPF or MX).
    WatchCheckFailing,
}

/// What works but costs something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A port relayed without PROXY: every client looks local at home.
    PlainRelay,
}

/// One finding of kind `K`: a [`Problem`] or a [`Warning`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue<K> {
    /// What it is.
    pub kind: K,
    /// The part of the status it is about, as a path in the JSON: `home`,
    /// `tunnel.vps`, `tunnel.home`, `relays`, `home.firewall`,
    /// `mail_server`, `egress.vps`, `egress.home`, `home.input_filter`,
    /// `home.postfix_version`, `home.direct_ipv6`.
    pub subject: String,
    /// The ports it concerns (relays' public ports, or home ports for the
    /// mail server and forwarders, as the sentence says); empty when it is
    /// not about ports.
    pub ports: Vec<u32>,
    /// What to do.
    pub fix: String,
    /// What an agent said about it, as it said it: for people, never
    /// decided on.
    pub detail: Option<String>,
    /// The whole sentence, as in `problems` / `warnings`.
    pub text: String,
}

/// Something broken.
pub type Problem = Issue<ProblemKind>;
/// Something that costs.
pub type Warning = Issue<WarningKind>;

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The VPS.
    Vps,
    /// Home.
    Home,
}

impl End {
    fn path(self) -> &'static str {
        match self {
            End::Vps => "vps",
            End::Home => "home",
        }
    }

    fn name(self) -> &'static str {
        match self {
            End::Vps => "VPS",
            End::Home => "home",
        }
    }
}

fn list(ports: &[u32]) -> String {
    ports
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

const JOIN: &str =
    "create a token with `ceres-vps token create --role home` and run `ceres-home join TOKEN`";

impl Problem {
    fn new(
        kind: ProblemKind,
        subject: &str,
        ports: Vec<u32>,
        fix: String,
        detail: Option<String>,
        text: String,
    ) -> Self {
        Issue {
            kind,
            subject: subject.to_owned(),
            ports,
            fix,
            detail,
            text,
        }
    }

    pub(super) fn home_revoked(name: &str, serial: &str) -> Self {
        let fix = format!("{JOIN} on it");
        Self::new(
            ProblemKind::HomeRevoked,
            "home",
            vec![],
            fix.clone(),
            None,
            format!(
                "home revoked: the certificate {name:?} (serial {serial}) was revoked, so its tunnel, egress and sessions are gone; to connect a home again, {fix}"
            ),
        )
    }

    pub(super) fn home_not_connected() -> Self {
        let fix =
            "check that `ceres-home run` is running at home and can reach the VPS control port";
        Self::new(
            ProblemKind::HomeNotConnected,
            "home",
            vec![],
            fix.into(),
            None,
            format!("the home agent is not connected: {fix}"),
        )
    }

    pub(super) fn home_never_connected() -> Self {
        let fix = format!("{JOIN} at home");
        Self::new(
            ProblemKind::HomeNeverConnected,
            "home",
            vec![],
            fix.clone(),
            None,
            format!("the home agent has never connected: {fix}"),
        )
    }

    pub(super) fn egress_blocked(end: End, detail: Option<&str>, fix: String) -> Self {
        Self::new(
            ProblemKind::EgressBlocked,
            &format!("egress.{}", end.path()),
            vec![],
            fix.clone(),
            detail.map(str::to_owned),
            format!(
                "outbound mail through the {}: {}",
                end.name(),
                detail.unwrap_or(&fix)
            ),
        )
    }

    pub(super) fn egress_failed(end: End, detail: Option<&str>) -> Self {
        let fix = format!(
            "see why in the {} agent's log; CERES_EGRESS=off runs without it",
            end.name()
        );
        Self::new(
            ProblemKind::EgressFailed,
            &format!("egress.{}", end.path()),
            vec![],
            fix.clone(),
            detail.map(str::to_owned),
            format!(
                "outbound mail routing is not installed on the {}: {}",
                end.name(),
                detail.unwrap_or(&fix)
            ),
        )
    }

    pub(super) fn tunnel_not_running(detail: Option<&str>) -> Self {
        Self::new(
            ProblemKind::TunnelNotRunning,
            "tunnel.vps",
            vec![],
            "see why in the VPS agent's log (`ceres-vps status` on the VPS)".into(),
            detail.map(str::to_owned),
            format!(
                "the tunnel is not running on the VPS: {}",
                detail.unwrap_or("unknown reason")
            ),
        )
    }

    /// Home's end is off (`off`) or could not start: `detail` is home's reason.
    pub(super) fn tunnel_down_at_home(off: bool, detail: Option<&str>) -> Self {
        let (kind, fix) = if off {
            (
                ProblemKind::TunnelOffAtHome,
                "remove CERES_TUNNEL=off from the home agent's configuration and restart it",
            )
        } else {
            (
                ProblemKind::TunnelNotRunningAtHome,
                "see why in the home agent's log (`ceres-home status` at home)",
            )
        };
        Self::new(
            kind,
            "tunnel.home",
            vec![],
            fix.into(),
            detail.map(str::to_owned),
            format!(
                "the tunnel is down: home cannot run it: {}",
                detail.unwrap_or(fix)
            ),
        )
    }

    pub(super) fn tunnel_no_handshake(udp_port: u32) -> Self {
        let fix = format!("check that UDP {udp_port} is open on the VPS and not blocked at home");
        Self::new(
            ProblemKind::TunnelNoHandshake,
            "tunnel",
            vec![],
            fix.clone(),
            None,
            format!(
                "the tunnel is down (no WireGuard handshake in {} s): {fix}",
                super::HANDSHAKE_STALE_SECS
            ),
        )
    }

    /// `home_ports`: the relays' home ports without a forwarder.
    pub(super) fn no_forwarder(home_ports: Vec<u32>, detail: Option<&str>) -> Self {
        let why = match detail {
            Some(e) => format!("home says: {e}"),
            None => "look for `cannot start the forwarders` in the home agent's log".into(),
        };
        Self::new(
            ProblemKind::NoForwarder,
            "relays",
            home_ports.clone(),
            "look for `cannot start the forwarders` in the home agent's log".into(),
            detail.map(str::to_owned),
            format!(
                "home runs no forwarder for port {}: the VPS answers those with 421; {why}",
                list(&home_ports)
            ),
        )
    }

    /// `fix`: the rules that let the tunnel through; `detail`: home's words.
    pub(super) fn firewall_blocks_forwarders(fix: String, detail: Option<&str>) -> Self {
        Self::new(
            ProblemKind::FirewallBlocksForwarders,
            "home.firewall",
            vec![],
            fix.clone(),
            detail.map(str::to_owned),
            format!(
                "relayed connections cannot reach home: {}",
                detail.unwrap_or(&fix)
            ),
        )
    }

    pub(super) fn proxy_not_expected(home_port: u32) -> Self {
        let fix =
            "configure it (`cerectl mailserver-config postfix|dovecot`) or relay the port plain";
        Self::new(
            ProblemKind::ProxyNotExpected,
            "mail_server",
            vec![home_port],
            fix.into(),
            None,
            format!(
                "the relay sends a PROXY header to port {home_port} but the mail server does not expect one: {fix}"
            ),
        )
    }

    pub(super) fn proxy_expected(home_port: u32) -> Self {
        let fix = "add /proxy-v2 to that port in CERES_RELAYS";
        Self::new(
            ProblemKind::ProxyExpected,
            "mail_server",
            vec![home_port],
            fix.into(),
            None,
            format!(
                "the mail server seems to wait for a PROXY header on port {home_port} but the relay sends none: {fix}"
            ),
        )
    }

    pub(super) fn input_filter_failed(detail: Option<&str>) -> Self {
        Self::new(
            ProblemKind::InputFilterFailed,
            "home.input_filter",
            vec![],
            "see the home agent's log".into(),
            detail.map(str::to_owned),
            format!(
                "home's input filter on the tunnel could not be updated for the forwarders (relayed connections may fail): {}",
                detail.unwrap_or("see the home agent's log")
            ),
        )
    }

    /// `relays`: (public port, home port) of each relay sending PROXY v2.
    pub(super) fn postfix_cannot_read_proxy_v2(version: &str, relays: &[(u32, u32)]) -> Self {
        let ports: Vec<u32> = relays.iter().map(|(public, _)| *public).collect();
        let entries = relays
            .iter()
            .map(|(public, home)| {
                format!(
                    "{public}:{home}/{}",
                    ceres_relay::ProxyMode::V1.option().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let fix = format!(
            "set those entries to {entries} in CERES_RELAYS on the VPS (Postfix's smtpd_upstream_proxy_protocol = haproxy reads v1 too), or upgrade Postfix to 3.5+"
        );
        Self::new(
            ProblemKind::PostfixCannotReadProxyV2,
            "home.postfix_version",
            ports.clone(),
            fix.clone(),
            None,
            format!(
                "Postfix {version} at home cannot read the PROXY v2 headers relayed on port {} \
                 (Postfix reads v2 from 3.5 on): {fix}",
                list(&ports)
            ),
        )
    }

    pub(super) fn ipv6_bypasses_vps() -> Self {
        let fix = "run `cerectl mailserver-config postfix --apply` at home (keeps Postfix's outbound SMTP on IPv4) or give the VPS a public IPv6 address";
        Self::new(
            ProblemKind::Ipv6BypassesVps,
            "home.direct_ipv6",
            vec![],
            fix.into(),
            None,
            format!(
                "home's mail server could send over IPv6 straight from home, outside the VPS's SPF and PTR, \
                 and the VPS offers no IPv6 egress: {fix}"
            ),
        )
    }

    pub(super) fn mail_stack(sentence: &str) -> Self {
        Self::new(
            ProblemKind::MailStack,
            "stack",
            Vec::new(),
            "cerectl mailserver-config --stack NAME prints the stack's files".into(),
            None,
            sentence.to_owned(),
        )
    }

    pub(super) fn watch_check(id: &str, title: &str, detail: &str) -> Self {
        Self::new(
            ProblemKind::WatchCheckFailing,
            "checks",
            Vec::new(),
            "see the check's findings in `cerectl status --json` (checks[])".into(),
            Some(detail.to_owned()),
            format!("{title} ({id} check): {detail}"),
        )
    }
}

impl Warning {
    /// Port `public_port` relayed plain to `home_port`.
    pub(super) fn plain_relay(public_port: u32, home_port: u32) -> Self {
        Issue {
            kind: WarningKind::PlainRelay,
            subject: "relays".into(),
            ports: vec![public_port],
            fix: format!(
                "relay it with PROXY ({public_port}/{} in CERES_RELAYS) and run `cerectl mailserver-config ... --apply`",
                ceres_relay::ProxyMode::V2.option().unwrap_or_default()
            ),
            detail: None,
            text: crate::mailconfig::plain_relay_warning(
                u16::try_from(public_port).unwrap_or_default(),
                u16::try_from(home_port).unwrap_or_default(),
            ),
        }
    }
}
