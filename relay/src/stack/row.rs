//! One row of the table: a port a stack's relays carry, and where it lands
//! at home. A stack's `CERES_RELAYS` and its PROXY listeners are both
//! derived from its rows (see [`StackFacts`](super::StackFacts)), so the two
//! cannot disagree about a port.

use serde::Serialize;

use super::{Protocol, ProxyListener, Software};
use crate::spec::{ProxyMode, RelaySpec, default_relays, proxy_home_port};

/// Where a public port goes at home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Home {
    /// With a PROXY v2 header, to the stack's PROXY listener on this port.
    Proxy(u16),
    /// Plain TCP to the same port: the stack's own listener, which reads no
    /// header, so there is no PROXY listener to probe (mailcow's 80 and 443).
    Plain,
}

/// One relayed port of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRow {
    /// The public port on the VPS.
    pub public_port: u16,
    /// Where it goes at home.
    pub home: Home,
    /// The program behind it at home.
    pub software: Software,
    /// What it speaks.
    pub protocol: Protocol,
}

impl PortRow {
    /// Its `CERES_RELAYS` entry, parsed.
    pub fn relay(&self) -> RelaySpec {
        match self.home {
            Home::Proxy(port) => RelaySpec {
                home_port: port,
                ..RelaySpec::new(self.public_port, ProxyMode::V2)
            },
            Home::Plain => RelaySpec::new(self.public_port, ProxyMode::None),
        }
    }

    /// The PROXY listener at home; `None` for a port relayed plain.
    pub fn listener(&self) -> Option<ProxyListener> {
        match self.home {
            Home::Proxy(port) => Some(ProxyListener {
                port,
                public_port: self.public_port,
                software: self.software,
                protocol: self.protocol,
            }),
            Home::Plain => None,
        }
    }
}

/// A port relayed with PROXY to the convention's home port, 10000 + the
/// port ([`proxy_home_port`]).
pub(super) const fn proxy(port: u16, software: Software, protocol: Protocol) -> PortRow {
    let Some(home) = proxy_home_port(port) else {
        panic!("no PROXY port by convention above 55535: name it with proxy_to");
    };
    proxy_to(port, home, software, protocol)
}

/// A port relayed with PROXY to a home port other than the convention's.
pub(super) const fn proxy_to(
    port: u16,
    home: u16,
    software: Software,
    protocol: Protocol,
) -> PortRow {
    PortRow {
        public_port: port,
        home: Home::Proxy(home),
        software,
        protocol,
    }
}

/// A port relayed plain, to the stack's own listener on the same port.
pub(super) const fn plain(port: u16, software: Software, protocol: Protocol) -> PortRow {
    PortRow {
        public_port: port,
        home: Home::Plain,
        software,
        protocol,
    }
}

/// How a stack's `CERES_RELAYS` is written out. Both styles say the same
/// relays; the stacks keep the text their recipes and docs have printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayStyle {
    /// In [`DEFAULT_RELAYS`](crate::DEFAULT_RELAYS)'s order, each entry in
    /// its short form: the home port named only where it is not the
    /// convention's (`25:12525/proxy-v2,465/proxy-v2,...`).
    Default,
    /// In the rows' order, every home port named
    /// (`25:25/proxy-v2,143:20143/proxy-v2,993:10993/proxy-v2,...`): Mailu,
    /// whose PROXY listeners are all ones its recipe adds, at ports chosen
    /// around Mailu's own.
    Explicit,
}

impl RelayStyle {
    /// Puts `relays` (in the rows' order) in this style's order.
    pub(super) fn order(self, relays: &mut [RelaySpec]) {
        if self == RelayStyle::Default {
            let default = default_relays();
            // Stable: ports outside the default list keep the rows' order, last.
            relays.sort_by_key(|r| {
                default
                    .iter()
                    .position(|d| d.public_port == r.public_port)
                    .unwrap_or(usize::MAX)
            });
        }
    }

    /// `relay` written as this style writes entries.
    pub(super) fn entry(self, relay: &RelaySpec) -> String {
        match self {
            RelayStyle::Default => relay.to_string(),
            RelayStyle::Explicit => relay.explicit(),
        }
    }
}
