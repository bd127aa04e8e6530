//! `cerectl mailserver-config --stack NAME`: the whole recipe for a packaged
//! mail stack — the VPS's `CERES_RELAYS`, home's `CERES_MAIL_SERVER` and
//! `CERES_EGRESS_FROM`, and every file to drop in at the stack's own override
//! path — built from facts read in the stack's own repository, each cited.
//! The ports, relays and default Docker networks come from one table,
//! `ceres_relay::stack`, which the home agent's stack probe
//! (`CERES_MAIL_STACK`) reads too; [`Options`] move a stack's network
//! (gateway, trusted address, egress sources), never its ports.
//!
//! The safety rules are the hand-built ones (see the parent module): a PROXY
//! header is read only by listeners published on the host's 127.0.0.1; the
//! stack's stock listeners stay as they are; nothing relayed is trusted by
//! address; Dovecot trusts PROXY headers only from the Docker gateway address
//! the published port connects from.

mod dms;
mod iredmail;
mod mail_in_a_box;
mod mailcow;
mod mailu;
mod network;
mod postfix_dovecot;
mod render;
mod stalwart;

use std::net::{Ipv4Addr, Ipv6Addr};

use clap::ValueEnum;
use serde::Serialize;

pub use network::{DockerNet, Subnet4, Subnet6Arg};
pub use render::{markdown, text, write};

/// A packaged mail stack with a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stack {
    /// Postfix, Dovecot and nginx from the distribution on the home host.
    PostfixDovecot,
    /// mailcow-dockerized.
    Mailcow,
    /// docker-mailserver (DMS).
    DockerMailserver,
    /// Mailu.
    Mailu,
    /// Stalwart (v0.16, in Docker).
    Stalwart,
    /// iRedMail (Postfix, Dovecot and nginx on the host).
    Iredmail,
    /// Mail-in-a-Box: a statement of why it is not relayed, no recipe.
    MailInABox,
}

/// What the user's installation says where a stack's defaults do not fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `--docker-subnet4`: the stack's Docker network, IPv4.
    pub subnet4: Option<Subnet4>,
    /// `--docker-subnet6`: its IPv6 subnet, or `off`.
    pub subnet6: Option<Subnet6Arg>,
    /// `--home-tunnel-address`: where a stack on the host sends mail from.
    pub home_tunnel4: Option<Ipv4Addr>,
    /// `--home-tunnel-address6`: the same for IPv6 (`Some(None)`: `off`).
    pub home_tunnel6: Option<Option<Ipv6Addr>>,
}

/// Why the options do not fit the stack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A Docker network flag for a stack without one.
    #[error(
        "--{flag} is for stacks that run in Docker (mailcow, docker-mailserver, mailu, stalwart); {stack} runs on the host, without a Docker network"
    )]
    NotDocker {
        /// The flag given.
        flag: &'static str,
        /// The `--stack` name.
        stack: &'static str,
    },
    /// A tunnel address flag for a stack that sends from its Docker network.
    #[error(
        "--{flag} is for iredmail, whose Postfix on the host binds the tunnel address for outbound mail; {stack} {why}"
    )]
    NotHost {
        /// The flag given.
        flag: &'static str,
        /// The `--stack` name.
        stack: &'static str,
        /// How that stack sends instead.
        why: &'static str,
    },
    /// mailcow's network is `${IPV4_NETWORK}.0/24`: a /24 always.
    #[error(
        "mailcow's network is always a /24 (docker-compose.yml: ${{IPV4_NETWORK:-172.22.1}}.0/24, IPV4_NETWORK being three octets): {0} is not one; for IPV4_NETWORK=172.22.1 give 172.22.1.0/24"
    )]
    MailcowPrefix(Subnet4),
}

impl Options {
    fn docker_net(&self, stack: Stack, default: DockerNet) -> Result<DockerNet, OptionsError> {
        if self.home_tunnel4.is_some() || self.home_tunnel6.is_some() {
            return Err(OptionsError::NotHost {
                flag: if self.home_tunnel4.is_some() {
                    "home-tunnel-address"
                } else {
                    "home-tunnel-address6"
                },
                stack: stack.name(),
                why: "sends from its Docker network, which home's CERES_EGRESS_FROM routes through the tunnel",
            });
        }
        Ok(default.with(self.subnet4, self.subnet6))
    }

    fn no_docker(&self, stack: Stack) -> Result<(), OptionsError> {
        let flag = if self.subnet4.is_some() {
            "docker-subnet4"
        } else if self.subnet6.is_some() {
            "docker-subnet6"
        } else {
            return Ok(());
        };
        Err(OptionsError::NotDocker {
            flag,
            stack: stack.name(),
        })
    }
}

impl Stack {
    /// Every stack, in the order the docs list them.
    #[cfg(test)]
    pub const ALL: [Stack; 7] = [
        Stack::PostfixDovecot,
        Stack::Mailcow,
        Stack::DockerMailserver,
        Stack::Mailu,
        Stack::Stalwart,
        Stack::Iredmail,
        Stack::MailInABox,
    ];

    /// The name `--stack` takes.
    pub fn name(self) -> &'static str {
        match self {
            Stack::PostfixDovecot => "postfix-dovecot",
            Stack::Mailcow => "mailcow",
            Stack::DockerMailserver => "docker-mailserver",
            Stack::Mailu => "mailu",
            Stack::Stalwart => "stalwart",
            Stack::Iredmail => "iredmail",
            Stack::MailInABox => "mail-in-a-box",
        }
    }

    /// The stack's recipe for its default installation (the docs page's).
    pub fn recipe(self) -> Recipe {
        match self {
            Stack::PostfixDovecot => postfix_dovecot::recipe(),
            Stack::Mailcow => mailcow::recipe(mailcow::NET),
            Stack::DockerMailserver => dms::recipe(dms::NET),
            Stack::Mailu => mailu::recipe(mailu::NET),
            Stack::Stalwart => stalwart::recipe(stalwart::NET),
            Stack::Iredmail => iredmail::recipe(&iredmail::Outbound::default()),
            Stack::MailInABox => mail_in_a_box::recipe(),
        }
    }

    /// The stack's recipe for the user's installation: `--docker-subnet4`,
    /// `--docker-subnet6`, `--home-tunnel-address[6]` where they apply.
    pub fn recipe_for(self, opts: &Options) -> Result<Recipe, OptionsError> {
        Ok(match self {
            Stack::Mailcow => {
                let net = opts.docker_net(self, mailcow::NET)?;
                if net.subnet4.prefix() != 24 {
                    return Err(OptionsError::MailcowPrefix(net.subnet4));
                }
                mailcow::recipe(net)
            }
            Stack::DockerMailserver => dms::recipe(opts.docker_net(self, dms::NET)?),
            Stack::Mailu => mailu::recipe(opts.docker_net(self, mailu::NET)?),
            Stack::Stalwart => stalwart::recipe(opts.docker_net(self, stalwart::NET)?),
            Stack::Iredmail => {
                opts.no_docker(self)?;
                let mut out = iredmail::Outbound::default();
                if let Some(a) = opts.home_tunnel4 {
                    out.bind4 = a;
                }
                if let Some(a6) = opts.home_tunnel6 {
                    out.bind6 = a6;
                }
                iredmail::recipe(&out)
            }
            Stack::PostfixDovecot | Stack::MailInABox => {
                opts.no_docker(self)?;
                if opts.home_tunnel4.is_some() || opts.home_tunnel6.is_some() {
                    return Err(OptionsError::NotHost {
                        flag: if opts.home_tunnel4.is_some() {
                            "home-tunnel-address"
                        } else {
                            "home-tunnel-address6"
                        },
                        stack: self.name(),
                        why: if self == Stack::PostfixDovecot {
                            "takes it with the per-target commands (cerectl mailserver-config postfix --home-tunnel-address ...)"
                        } else {
                            "has no recipe"
                        },
                    });
                }
                self.recipe()
            }
        })
    }
}

/// Where a fact was read: a file of a repository at a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Citation {
    /// `owner/name` on GitHub.
    pub repo: &'static str,
    /// The file inside the repository.
    pub path: &'static str,
    /// The commit read.
    pub commit: &'static str,
    /// What the file says that the recipe uses.
    pub fact: &'static str,
}

/// A file of the recipe, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackFile {
    /// Path relative to the stack's directory (where its compose file is).
    pub path: &'static str,
    /// Why the file is there and what to do if one already exists.
    pub purpose: &'static str,
    /// The whole file.
    pub contents: String,
    /// Whether the file must be executable (DMS's `user-patches.sh`).
    pub executable: bool,
}

/// Everything a stack needs, at both ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipe {
    /// `--stack` name.
    pub stack: &'static str,
    /// The human name of the stack.
    pub title: &'static str,
    /// The stack version the facts were read at.
    pub version: &'static str,
    /// `CERES_RELAYS` for the VPS's ceres.env; empty for a stack CERES
    /// cannot front (the notes say why and what to do instead).
    pub relays: String,
    /// `CERES_MAIL_SERVER` for home's ceres.env.
    pub mail_server: &'static str,
    /// `CERES_EGRESS_FROM` for home's ceres.env: the stack's Docker networks
    /// (empty: Postfix on the host binds the tunnel address itself).
    pub egress_from: Vec<String>,
    /// The address the stack's PROXY listeners must accept headers from (the
    /// Docker network's gateway), and how to confirm it.
    pub trusted_proxy: Option<TrustedProxy>,
    /// Files to create at the stack's override paths.
    pub files: Vec<StackFile>,
    /// The command that makes the stack read them.
    pub restart: &'static str,
    /// Facts the admin must know: what is not relayed with PROXY and why,
    /// what the stock listeners keep doing.
    pub notes: Vec<&'static str>,
    /// What the stack's own ban machinery (fail2ban, its own) sees of a
    /// relayed client and whether its bans stop one.
    pub bans: &'static str,
    /// How the recipe was checked here.
    pub verified: &'static str,
    /// Where every number and path came from.
    pub citations: Vec<Citation>,
}

/// Who may send PROXY headers to the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustedProxy {
    /// The address: the stack's Docker network gateway, or loopback.
    pub address: String,
    /// Whose address that is, and why it is the home agent's.
    pub source: &'static str,
    /// How to confirm it on the running installation.
    pub find_with: &'static str,
}

/// [`TrustedProxy::source`] of every stack in Docker.
const DOCKER_GATEWAY: &str = "the Docker network's gateway, where the published ports connect from";

#[cfg(test)]
mod tests;
