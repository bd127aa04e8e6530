//! The typed facts of a status — what `cerectl` decides on — with their
//! names in the JSON, each read from its protocol enum (through
//! [`ceres_proto::compat`] for an agent one release older).
//!
//! A fact an agent does not report, or reports with a value this cerectl
//! does not know (a newer agent), is `None` here and `null` in the JSON.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One end's tunnel engine (`tunnel.*.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// The engine runs.
    Running,
    /// Off by configuration (`CERES_TUNNEL=off`).
    Off,
    /// Home: no tunnel parameters from the VPS yet.
    Waiting,
    /// It could not start (`error` says why).
    Failed,
}

impl TunnelState {
    /// From a tunnel report, old or new.
    pub fn of(r: &ceres_proto::TunnelReport) -> Option<Self> {
        use ceres_proto::TunnelState as P;
        match r.effective_state() {
            P::Running => Some(Self::Running),
            P::Off => Some(Self::Off),
            P::Waiting => Some(Self::Waiting),
            P::Failed => Some(Self::Failed),
            P::Unspecified => None,
        }
    }
}

/// One end's outbound mail routing (`egress.*.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressState {
    /// Installed, nothing found in its way.
    Installed,
    /// Installed, but another firewall table drops the traffic.
    Blocked,
    /// Off by configuration (`CERES_EGRESS=off`).
    Disabled,
    /// Not installed: the tunnel is off.
    TunnelOff,
    /// VPS: removed for a revoked home.
    Revoked,
    /// Installing it failed (`error` says why).
    Failed,
    /// Home: not installed yet (waiting for the tunnel).
    Pending,
}

impl EgressState {
    /// From an egress report, old or new.
    pub fn of(e: &ceres_proto::EgressStatus) -> Option<Self> {
        use ceres_proto::EgressState as P;
        match e.effective_state() {
            P::Installed => Some(Self::Installed),
            P::Blocked => Some(Self::Blocked),
            P::Disabled => Some(Self::Disabled),
            P::TunnelOff => Some(Self::TunnelOff),
            P::Revoked => Some(Self::Revoked),
            P::Failed => Some(Self::Failed),
            P::Pending => Some(Self::Pending),
            P::Unspecified => None,
        }
    }
}

/// Whether home's IPv6 mail leaves through the VPS (`egress.vps.ipv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ipv6Egress {
    /// From the VPS's public IPv6.
    Available,
    /// The VPS has no public IPv6.
    NoPublicIpv6,
    /// The tunnel carries no IPv6.
    TunnelIpv4Only,
    /// Egress or the tunnel is off.
    Off,
}

impl Ipv6Egress {
    /// From the protocol's enum (`None`: not reported).
    pub fn of(p: ceres_proto::Ipv6Egress) -> Option<Self> {
        use ceres_proto::Ipv6Egress as P;
        match p {
            P::Available => Some(Self::Available),
            P::NoPublicIpv6 => Some(Self::NoPublicIpv6),
            P::TunnelIpv4Only => Some(Self::TunnelIpv4Only),
            P::Off => Some(Self::Off),
            P::Unspecified => None,
        }
    }
}

/// A home with several VPSes: whether its outbound mail leaves through
/// this VPS now (`egress.home.uplink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressUplink {
    /// New outbound connections leave through this VPS.
    Active,
    /// Its tunnel answers; another VPS is preferred now.
    Standby,
    /// Its tunnel does not answer home's probe.
    Down,
}

impl EgressUplink {
    /// From the protocol's enum (`None`: one VPS, or an older home agent).
    pub fn of(p: ceres_proto::EgressUplink) -> Option<Self> {
        use ceres_proto::EgressUplink as P;
        match p {
            P::Active => Some(Self::Active),
            P::Standby => Some(Self::Standby),
            P::Down => Some(Self::Down),
            P::Unspecified => None,
        }
    }
}

/// What a relayed port does with a new connection now (`relays[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// Relayed to home's forwarder (home: the forwarder listens).
    Relaying,
    /// Home is connected but has no forwarder for the port: 421 or close.
    NoForwarder,
    /// Home is not connected: 421 or close.
    HomeDown,
}

impl RelayState {
    /// From the protocol's enum (`None`: an older agent).
    pub fn of(p: ceres_proto::RelayState) -> Option<Self> {
        use ceres_proto::RelayState as P;
        match p {
            P::Relaying => Some(Self::Relaying),
            P::NoForwarder => Some(Self::NoForwarder),
            P::HomeDown => Some(Self::HomeDown),
            P::Unspecified => None,
        }
    }
}

/// A relayed port's PROXY mode. In the JSON, the mode's one name
/// ([`ceres_relay::ProxyMode::option`]: `"proxy-v1"`, `"proxy-v2"`), `null`
/// for plain, `"unknown"` for a mode this cerectl does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy(pub Option<ceres_relay::ProxyMode>);

impl Proxy {
    /// Plain TCP (also: no relay for the port).
    pub const PLAIN: Proxy = Proxy(Some(ceres_relay::ProxyMode::None));

    /// A relayed port's mode, old or new.
    pub fn of(p: &ceres_proto::RelayPort) -> Self {
        Proxy(ceres_control::wire::port_proxy_mode(p))
    }

    /// Whether a PROXY header is sent (`None`: a mode not known here).
    pub fn sends(self) -> Option<bool> {
        self.0.map(|m| m != ceres_relay::ProxyMode::None)
    }

    /// The name shown: the mode's option, `None` for plain.
    pub fn name(self) -> Option<&'static str> {
        match self.0 {
            Some(m) => m.option(),
            None => Some("unknown"),
        }
    }
}

impl Serialize for Proxy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = Option::<String>::deserialize(d)?;
        Ok(Proxy(ceres_relay::ProxyMode::from_option(
            name.as_deref().unwrap_or(""),
        )))
    }
}

/// What a firewall chain in the tunnel's way breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirewallKind {
    /// VPS: drops home's outbound mail after CERES accepted it.
    ForwardDrop,
    /// Home: keeps the VPS from the forwarders.
    InputDrop,
}

/// A chain of another firewall table in the tunnel's way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallPart {
    /// What it breaks.
    pub kind: FirewallKind,
    /// nftables family, table and chain.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
}

impl FirewallPart {
    /// From the protocol (`None`: a kind this cerectl does not know).
    pub fn of(f: &ceres_proto::FirewallFinding) -> Option<Self> {
        let d = ceres_control::wire::drop_chain(f)?;
        Some(FirewallPart {
            kind: match d.hook {
                ceres_relay::egress::Hook::Forward => FirewallKind::ForwardDrop,
                ceres_relay::egress::Hook::Input => FirewallKind::InputDrop,
            },
            family: d.family,
            table: d.table,
            chain: d.chain,
        })
    }

    /// What it breaks and the rules that fix it, for the tunnel interface
    /// `tunnel_if` (the words the agents use: [`ceres_relay::egress::DropChain`]).
    pub fn advice(&self, tunnel_if: &str) -> String {
        ceres_relay::egress::DropChain {
            family: self.family.clone(),
            table: self.table.clone(),
            chain: self.chain.clone(),
            hook: match self.kind {
                FirewallKind::ForwardDrop => ceres_relay::egress::Hook::Forward,
                FirewallKind::InputDrop => ceres_relay::egress::Hook::Input,
            },
        }
        .advice(tunnel_if)
    }
}

/// How the last key rotation ended (`rotation.last_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationResult {
    /// None yet: the keys are from setup.
    Never,
    /// New keys at both ends.
    Ok,
    /// Abandoned; the keys before it stay.
    Failed,
}

impl RotationResult {
    /// From a rotation status, old or new.
    pub fn of(r: &ceres_proto::RotationStatus) -> Option<Self> {
        use ceres_proto::RotationOutcome as P;
        match r.effective_result() {
            P::Never => Some(Self::Never),
            P::Ok => Some(Self::Ok),
            P::Failed => Some(Self::Failed),
            P::Unspecified => None,
        }
    }
}

/// The step of a rotation in progress (`rotation.pending_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationStep {
    /// Waiting for home's new key.
    Prepared,
    /// New keys staged at the VPS; waiting for home to finish.
    Staged,
}

impl RotationStep {
    /// From a rotation status, old or new (`None`: no rotation under way).
    pub fn of(r: &ceres_proto::RotationStatus) -> Option<Self> {
        use ceres_proto::RotationStep as P;
        match r.effective_step() {
            P::Prepared => Some(Self::Prepared),
            P::Staged => Some(Self::Staged),
            P::Unspecified => None,
        }
    }
}

/// Home's input filter on the tunnel (`home.input_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFilter {
    /// Installed and current.
    Installed,
    /// Not installed: the tunnel is off.
    Off,
    /// Replacing it failed; the previous rules stay.
    Failed,
}

impl InputFilter {
    /// From the protocol's enum (`None`: not reported).
    pub fn of(p: ceres_proto::InputFilter) -> Option<Self> {
        use ceres_proto::InputFilter as P;
        match p {
            P::Installed => Some(Self::Installed),
            P::Off => Some(Self::Off),
            P::Failed => Some(Self::Failed),
            P::Unspecified => None,
        }
    }
}

/// Whether the home owning the tunnel may use it (`home.access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// A home may connect (or never joined).
    Allowed,
    /// Its certificate lineage was revoked.
    Revoked,
}

impl Access {
    /// From the protocol's enum (`None`: a VPS too old to say).
    pub fn of(p: ceres_proto::HomeAccess) -> Option<Self> {
        use ceres_proto::HomeAccess as P;
        match p {
            P::Allowed => Some(Self::Allowed),
            P::Revoked => Some(Self::Revoked),
            P::Unspecified => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_json_is_the_one_name_and_reads_back() {
        for (proxy, json) in [
            (Proxy::PLAIN, serde_json::Value::Null),
            (Proxy(Some(ceres_relay::ProxyMode::V1)), "proxy-v1".into()),
            (Proxy(Some(ceres_relay::ProxyMode::V2)), "proxy-v2".into()),
            (Proxy(None), "unknown".into()),
        ] {
            let v = serde_json::to_value(proxy).unwrap();
            assert_eq!(v, json);
            assert_eq!(serde_json::from_value::<Proxy>(v).unwrap(), proxy);
        }
        assert_eq!(Proxy::PLAIN.sends(), Some(false));
        assert_eq!(Proxy(None).sends(), None);
    }

    #[test]
    fn an_unknown_enum_value_from_a_newer_agent_is_not_reported() {
        let r = ceres_proto::RelayPort {
            state: 99,
            ..Default::default()
        };
        assert_eq!(RelayState::of(r.state()), None);
        let f = ceres_proto::FirewallFinding {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(FirewallPart::of(&f), None);
    }
}
