//! The packaged mail stacks CERES knows, and the PROXY listeners each one
//! serves relayed connections on: one table for `cerectl mailserver-config
//! --stack` (which prints how to set them up) and for the home agent's stack
//! probe (`CERES_MAIL_STACK`, which checks that they answer), so the two
//! cannot disagree about a port.
//!
//! [`advice`] turns a probe's typed outcome into the sentence `cerectl status`
//! and `ceres-home status` print; nothing here parses prose.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::RelaySpec;

pub mod advice;
mod facts;
mod row;

pub use row::{Home, PortRow, RelayStyle};

/// A mail stack, as `CERES_MAIL_STACK` and `--stack` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailStack {
    /// Postfix, Dovecot and nginx from the distribution, set up by
    /// `cerectl mailserver-config postfix|dovecot|nginx --apply`.
    PostfixDovecot,
    /// mailcow-dockerized.
    Mailcow,
    /// docker-mailserver (DMS).
    DockerMailserver,
    /// Mailu.
    Mailu,
    /// Stalwart.
    Stalwart,
    /// iRedMail.
    Iredmail,
}

impl MailStack {
    /// Every stack, in the order `CERES_MAIL_STACK`'s error lists them.
    pub const ALL: [MailStack; 6] = [
        MailStack::PostfixDovecot,
        MailStack::Mailcow,
        MailStack::DockerMailserver,
        MailStack::Mailu,
        MailStack::Stalwart,
        MailStack::Iredmail,
    ];

    /// The name `CERES_MAIL_STACK` and `--stack` take.
    pub fn name(self) -> &'static str {
        match self {
            MailStack::PostfixDovecot => "postfix-dovecot",
            MailStack::Mailcow => "mailcow",
            MailStack::DockerMailserver => "docker-mailserver",
            MailStack::Mailu => "mailu",
            MailStack::Stalwart => "stalwart",
            MailStack::Iredmail => "iredmail",
        }
    }

    /// Its ports and setup facts.
    pub fn facts(self) -> &'static StackFacts {
        match self {
            MailStack::PostfixDovecot => &facts::POSTFIX_DOVECOT,
            MailStack::Mailcow => &facts::MAILCOW,
            MailStack::DockerMailserver => &facts::DOCKER_MAILSERVER,
            MailStack::Mailu => &facts::MAILU,
            MailStack::Stalwart => &facts::STALWART,
            MailStack::Iredmail => &facts::IREDMAIL,
        }
    }

    /// The Docker network its recipe sets up unless told another
    /// (`--docker-subnet4`, `--docker-subnet6`); `None` for a stack on the
    /// host. A `const fn`, so that the recipes' defaults are this table's,
    /// fixed at compile time.
    pub const fn network(self) -> Option<DockerNetwork> {
        match self {
            MailStack::PostfixDovecot | MailStack::Iredmail => None,
            MailStack::Mailcow => Some(facts::MAILCOW_NET),
            MailStack::DockerMailserver => Some(facts::DOCKER_MAILSERVER_NET),
            MailStack::Mailu => Some(facts::MAILU_NET),
            MailStack::Stalwart => Some(facts::STALWART_NET),
        }
    }
}

/// A stack's default Docker network: the subnets its containers send from
/// and, by Docker's rule for a bridge without an explicit gateway, the
/// gateway its published ports connect from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DockerNetwork {
    /// The IPv4 subnet: network address and prefix length.
    pub subnet4: (Ipv4Addr, u8),
    /// The IPv6 subnet, when the network has IPv6 by default.
    pub subnet6: Option<(Ipv6Addr, u8)>,
}

impl DockerNetwork {
    /// The gateway: the IPv4 subnet's first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet4.0) + 1)
    }
}

impl fmt::Display for MailStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `CERES_MAIL_STACK` value that names no stack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a mail stack CERES knows: use one of {}, or leave it unset for a mail server of another kind",
    names()
)]
pub struct UnknownStack {
    /// What was given.
    pub value: String,
}

fn names() -> String {
    MailStack::ALL
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for MailStack {
    type Err = UnknownStack;
    fn from_str(s: &str) -> Result<Self, UnknownStack> {
        MailStack::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| UnknownStack {
                value: s.to_owned(),
            })
    }
}

/// The program behind a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Software {
    /// Postfix (smtpd or postscreen).
    Postfix,
    /// Dovecot (a login service, or Mailu's Dovecot proxy).
    Dovecot,
    /// nginx (Mailu's SMTP front, or a web server).
    Nginx,
    /// Stalwart, which serves every protocol itself.
    Stalwart,
}

impl Software {
    /// Its name in sentences.
    pub fn name(self) -> &'static str {
        match self {
            Software::Postfix => "Postfix",
            Software::Dovecot => "Dovecot",
            Software::Nginx => "nginx",
            Software::Stalwart => "Stalwart",
        }
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// SMTP from other mail servers (25).
    Smtp,
    /// Submission with STARTTLS (587).
    Submission,
    /// Submission over implicit TLS (465).
    Submissions,
    /// IMAP (143).
    Imap,
    /// IMAP over implicit TLS (993).
    Imaps,
    /// POP3 (110).
    Pop3,
    /// POP3 over implicit TLS (995).
    Pop3s,
    /// ManageSieve (4190).
    #[serde(rename = "managesieve")]
    ManageSieve,
    /// HTTP (80).
    Http,
    /// HTTPS (443).
    Https,
}

/// How a protocol's conversation starts: what a probe sends first and what
/// a server's answer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The server speaks first (SMTP 220, IMAP `* OK`, POP3 `+OK`, Sieve).
    ServerFirst,
    /// TLS from the first byte: the client sends a ClientHello.
    ImplicitTls,
    /// HTTP: the client sends a request.
    Http,
}

impl Protocol {
    /// Its name in sentences.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Submissions => "submissions",
            Protocol::Imap => "imap",
            Protocol::Imaps => "imaps",
            Protocol::Pop3 => "pop3",
            Protocol::Pop3s => "pop3s",
            Protocol::ManageSieve => "managesieve",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    /// How its conversation starts.
    pub fn opening(self) -> Opening {
        match self {
            Protocol::Submissions | Protocol::Imaps | Protocol::Pop3s | Protocol::Https => {
                Opening::ImplicitTls
            }
            Protocol::Http => Opening::Http,
            _ => Opening::ServerFirst,
        }
    }

    /// Whether `first_line` is how this protocol's server greets (or, for
    /// HTTP, answers a request). Implicit-TLS protocols are judged on bytes,
    /// not lines: see [`Opening::ImplicitTls`].
    pub fn greets_with(self, first_line: &str) -> bool {
        match self {
            Protocol::Smtp | Protocol::Submission => {
                first_line.starts_with("220 ") || first_line.starts_with("220-")
            }
            Protocol::Imap => first_line.starts_with("* OK"),
            Protocol::Pop3 => first_line.starts_with("+OK"),
            // Capability lines (`"IMPLEMENTATION" "..."`), then `OK`.
            Protocol::ManageSieve => first_line.starts_with('"') || first_line.starts_with("OK"),
            Protocol::Http => first_line.starts_with("HTTP/"),
            Protocol::Submissions | Protocol::Imaps | Protocol::Pop3s | Protocol::Https => false,
        }
    }
}

/// One listener of a stack that reads a PROXY header: where the home agent
/// forwards a PROXY relay's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyListener {
    /// Its port on `CERES_MAIL_SERVER` (the relay's home port).
    pub port: u16,
    /// The public port on the VPS relayed to it.
    pub public_port: u16,
    /// The program listening.
    pub software: Software,
    /// What it speaks.
    pub protocol: Protocol,
}

/// What CERES knows of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StackFacts {
    /// The stack.
    pub stack: MailStack,
    /// Every port its relays carry, one row each, in the order of its PROXY
    /// listeners: [`relays`](Self::relays) and
    /// [`listeners`](Self::listeners) are both read from here.
    pub rows: &'static [PortRow],
    /// How [`relays`](Self::relays) is written out.
    pub relay_style: RelayStyle,
    /// Where each program's PROXY listeners are set up, said as the fix
    /// for a missing one.
    pub setup: &'static [(Software, &'static str)],
}

impl StackFacts {
    /// The one address the listeners take PROXY headers from: the gateway
    /// of the stack's default Docker network (see [`MailStack::network`]),
    /// loopback for a stack on the host, where the home agent runs.
    pub fn trusted_from(&self) -> IpAddr {
        match self.stack.network() {
            Some(net) => IpAddr::V4(net.gateway()),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// `CERES_RELAYS` for the VPS: a PROXY entry for every PROXY listener,
    /// a plain one for every port the stack serves without a header.
    pub fn relays(&self) -> String {
        self.relay_specs()
            .iter()
            .map(|r| self.relay_style.entry(r))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The entries of [`relays`](Self::relays), in its order.
    pub fn relay_specs(&self) -> Vec<RelaySpec> {
        let mut relays: Vec<RelaySpec> = self.rows.iter().map(PortRow::relay).collect();
        self.relay_style.order(&mut relays);
        relays
    }

    /// The PROXY listeners the recipe sets up (or the stack ships), in
    /// table order.
    pub fn listeners(&self) -> impl Iterator<Item = ProxyListener> {
        self.rows.iter().filter_map(PortRow::listener)
    }

    /// The ports of `software`'s PROXY listeners, in table order.
    pub fn ports(&self, software: Software) -> impl Iterator<Item = u16> {
        self.listeners()
            .filter(move |l| l.software == software)
            .map(|l| l.port)
    }

    /// The PROXY listener of `protocol`, if the stack has one.
    pub fn listener(&self, protocol: Protocol) -> Option<ProxyListener> {
        self.listeners().find(|l| l.protocol == protocol)
    }

    /// How to set up `software`'s PROXY listeners in this stack.
    pub fn setup_of(&self, software: Software) -> &'static str {
        self.setup
            .iter()
            .find(|(s, _)| *s == software)
            .map_or("set it up as the recipe says", |(_, how)| how)
    }
}

#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;
