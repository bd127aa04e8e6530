//! `cerectl mailserver-config`: what the home mail software needs for the ports
//! CERES relays — Postfix, Dovecot, nginx — printed, applied to the live
//! configuration (`--apply`) or checked against it (`--check`); and the SMTP
//! settings for a Keycloak realm that sends its mail through the VPS.
//!
//! The safety rules every target follows (docs/operations.md, "At the mail server"):
//! - a PROXY header is read only by listeners on loopback that nothing but the
//!   home agent reaches — the **PROXY ports** `10000 + port` the relays dial
//!   (`ceres_relay::proxy_home_port`); the ordinary ports stay as they were, so LAN
//!   clients keep working and a LAN host cannot forge a client address;
//! - nothing relayed is trusted by address: the PROXY services trust no network
//!   (`mynetworks` empty), and a port relayed without PROXY, where every client
//!   looks like 127.0.0.1, is refused for SMTP and reported for the others;
//! - outbound mail leaves through the tunnel over IPv4 and, only where the VPS
//!   offers it, over IPv6; otherwise Postfix's SMTP client is kept to IPv4.

mod dovecot;
mod edit;
mod finding;
mod keycloak;
mod nginx;
mod plain;
mod postfix;
pub mod stacks;

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use ceres_relay::{DEFAULT_RELAYS, ProxyMode, RelaySpec, parse_relays};
use clap::{Args, ValueEnum};

use crate::cli::Cli;
use crate::vps::{fetch_status, split_prefix, vps_part};

pub use finding::Finding;
pub use keycloak::{KeycloakOptions, keycloak};
pub use plain::plain_relay_warning;

/// Which software to print lines for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Postfix: PROXY services on loopback, submission, outbound through the tunnel.
    Postfix,
    /// Dovecot: PROXY listeners on loopback, haproxy_trusted_networks, SASL for Postfix.
    Dovecot,
    /// nginx: PROXY listens on loopback in each site, the real client address.
    Nginx,
    /// A realm's SMTP settings (key/value and the realm JSON's smtpServer).
    Keycloak,
}

/// `mailserver-config` arguments.
#[derive(Debug, Args)]
#[command(after_long_help = "\
What it does, per target:
  print (default)  the configuration CERES needs, whole, with why
  --check          read the live configuration and list every unsafe or missing
                   setting with its fix; exit 1 if any
  --apply          change the live configuration to exactly what is printed:
                   backup first, the software's own check after, reload; a
                   failed check restores the backup. A second --apply changes
                   nothing.

Run --check and --apply on the home host (as root). Examples:
  cerectl mailserver-config postfix --apply
  cerectl mailserver-config dovecot --apply
  cerectl mailserver-config nginx --check
  cerectl mailserver-config postfix --domain example.com --home-tunnel-address 10.77.77.2

Packaged stacks (offline; files whole, at the stack's own override paths):
  cerectl mailserver-config --stack mailcow
  cerectl mailserver-config --stack mailcow --docker-subnet4 172.30.1.0/24 --docker-subnet6 off
  cerectl mailserver-config --stack docker-mailserver --write /srv/dms
  cerectl mailserver-config --stack stalwart --write /srv/stalwart
  cerectl mailserver-config --stack iredmail --home-tunnel-address 10.77.77.2
  cerectl mailserver-config --stack postfix-dovecot")]
pub struct MailConfigArgs {
    /// What to print lines for (or --stack).
    #[arg(value_enum, required_unless_present = "stack")]
    pub target: Option<Target>,
    /// A whole packaged stack: the VPS's CERES_RELAYS, home's
    /// CERES_MAIL_SERVER / CERES_EGRESS_FROM, and every file to create at the
    /// stack's own override paths, with the restart command and the sources.
    #[arg(long, value_enum, value_name = "NAME", conflicts_with_all = ["target", "apply", "check"])]
    pub stack: Option<stacks::Stack>,
    /// With --stack: write the files under DIR (the stack's directory) at the
    /// stack's relative paths.
    #[arg(
        long,
        value_name = "DIR",
        requires = "stack",
        conflicts_with = "target"
    )]
    pub write: Option<PathBuf>,
    /// With --write: replace files that exist.
    #[arg(long, requires = "write")]
    pub force: bool,
    /// With --stack: the recipe as the Markdown of docs/mail-servers.md.
    #[arg(long, requires = "stack", conflicts_with_all = ["json", "target"])]
    pub markdown: bool,
    /// With --stack (mailcow, docker-mailserver, mailu, stalwart): the stack's
    /// Docker network when it is not the recipe's default (mailcow:
    /// IPV4_NETWORK.0/24; Mailu: SUBNET).
    #[arg(
        long,
        value_name = "CIDR",
        requires = "stack",
        conflicts_with = "target"
    )]
    pub docker_subnet4: Option<stacks::Subnet4>,
    /// With --stack: that network's IPv6 subnet (mailcow: IPV6_NETWORK;
    /// Mailu: SUBNET6), or `off` for a network without IPv6.
    #[arg(
        long,
        value_name = "CIDR|off",
        requires = "stack",
        conflicts_with = "target"
    )]
    pub docker_subnet6: Option<stacks::Subnet6Arg>,
    /// Change the live configuration (Postfix, Dovecot, nginx) to what is printed.
    #[arg(long, conflicts_with = "check")]
    pub apply: bool,
    /// Check the live configuration; exit 1 if anything is unsafe or missing.
    #[arg(long)]
    pub check: bool,
    /// The software's configuration directory; default /etc/postfix,
    /// /etc/dovecot or /etc/nginx.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Dovecot: Postfix's queue directory, where Dovecot puts the SASL socket
    /// Postfix's submission services authenticate with; default /var/spool/postfix.
    #[arg(long, value_name = "DIR")]
    pub postfix_queue_dir: Option<PathBuf>,
    /// With --check: the findings as JSON; with --stack: the recipe as JSON.
    #[arg(long)]
    pub json: bool,
    /// The mail domain; with --home-tunnel-address no VPS is asked (offline).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// The mail host; default the VPS's, or mail.DOMAIN offline.
    #[arg(long, value_name = "HOST")]
    pub mail_host: Option<String>,
    /// Relayed ports, CERES_RELAYS syntax; default the VPS's (offline: the
    /// CERES default list).
    #[arg(long, value_name = "LIST")]
    pub relays: Option<String>,
    /// Home's tunnel address (CERES_TUNNEL_HOME_ADDRESS, e.g. 10.77.77.2/24);
    /// default the VPS's (with --stack iredmail: 10.77.77.2, CERES's default).
    #[arg(long, value_name = "IP[/PREFIX]")]
    pub home_tunnel_address: Option<String>,
    /// Home's IPv6 tunnel address when the VPS sends mail out over IPv6
    /// (CERES_TUNNEL_HOME_ADDRESS6), or `off` when it does not; default the
    /// VPS's (offline: off, so outbound mail stays on IPv4).
    #[arg(long, value_name = "IP|off")]
    pub home_tunnel_address6: Option<String>,
    /// Where the home agent connects to the mail server from, as the mail
    /// server sees it (trusted to send PROXY headers). Default 127.0.0.1 and
    /// ::1: the mail server on the agent's host. Mail server in a container:
    /// the container network's gateway address.
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    pub agent_address: Vec<IpAddr>,
    /// Keycloak: the submission port applications use (587 STARTTLS or 465
    /// implicit TLS); default 587 when relayed, else 465.
    #[arg(long, value_name = "587|465")]
    pub port: Option<u16>,
    /// Keycloak: the sender address; default noreply@DOMAIN.
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Keycloak: the SMTP login; default the sender address.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Reach the VPS here instead of the address stored at enrolment.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
}

/// What the generated configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSetup {
    /// The mail domain.
    pub domain: String,
    /// The host MX points at (the VPS's name).
    pub mail_host: String,
    /// The relays in effect.
    pub relays: Vec<RelaySpec>,
    /// Home's tunnel address (Postfix's `smtp_bind_address`).
    pub home_tunnel: IpAddr,
    /// Home's IPv6 tunnel address when the VPS carries outbound mail over IPv6
    /// (Postfix's `smtp_bind_address6`); `None`: outbound stays on IPv4.
    pub home_tunnel6: Option<Ipv6Addr>,
    /// Prefix length of the tunnel subnet (for the mynetworks warning).
    pub tunnel_prefix: u8,
    /// Where the home agent's forwarder connects to the mail server from.
    pub agent_addresses: Vec<IpAddr>,
}

/// Why no configuration could be printed or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(
    clippy::enum_variant_names,
    reason = "each variant is a different problem with a port; `Port` is what they share, not noise"
)]
pub enum MailConfigError {
    /// Keycloak needs a submission port and none is relayed.
    #[error(
        "neither 587 nor 465 is relayed (CERES_RELAYS): applications cannot submit mail through the VPS"
    )]
    NoSubmissionPort,
    /// `--port` names a port that is not relayed or is not a submission port.
    #[error("port {0} is not a relayed submission port (relayed: {1})")]
    BadPort(u16, String),
    /// An SMTP port relayed without PROXY onto the ordinary service: every
    /// internet client would be 127.0.0.1 there, which Postfix trusts.
    #[error(
        "port {port} is relayed without PROXY to home port {home_port}, the service LAN clients and local programs use: \
         every internet client would reach Postfix as the home agent (127.0.0.1), which Postfix trusts (mynetworks) — an open relay. \
         Relay it with PROXY (`{port}/proxy-v2` in CERES_RELAYS on the VPS, the default), \
         or give it a port of its own (`{port}:{alt}`) and run this again for a service there that trusts no one",
        alt = u32::from(*port) + 20000
    )]
    PlainSmtpOnSharedPort {
        /// The public port.
        port: u16,
        /// The home port it lands on.
        home_port: u16,
    },
}

/// The addresses the forwarder connects from when the flag is not given.
pub const DEFAULT_AGENT_ADDRESSES: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

/// Runs `cerectl mailserver-config`.
pub async fn run(cli: &Cli, args: &MailConfigArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.target, args.stack) {
        (_, Some(stack)) => return run_stack(stack, args),
        (Some(t), None) => t,
        (None, None) => {
            anyhow::bail!("name a target (postfix, dovecot, nginx, keycloak) or --stack NAME")
        }
    };
    let setup = setup(cli, args).await?;
    if target == Target::Keycloak {
        anyhow::ensure!(
            !args.apply && !args.check,
            "--apply and --check are for postfix, dovecot and nginx; Keycloak's settings are entered in its admin console"
        );
        print!(
            "{}",
            keycloak(
                &setup,
                &KeycloakOptions {
                    port: args.port,
                    from: args.from.clone(),
                    user: args.user.clone(),
                },
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let dir = args.config_dir.clone().unwrap_or_else(|| match target {
        Target::Postfix => "/etc/postfix".into(),
        Target::Dovecot => "/etc/dovecot".into(),
        _ => "/etc/nginx".into(),
    });
    let queue = args
        .postfix_queue_dir
        .clone()
        .unwrap_or_else(|| "/var/spool/postfix".into());
    let (apply, check, json) = (args.apply, args.check, args.json);
    // postconf, doveconf, nginx -t and the file edits block: off the runtime.
    tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        match (apply, check) {
            (false, false) => {
                print!(
                    "{}",
                    match target {
                        Target::Postfix => postfix::print(&setup)?,
                        Target::Dovecot => dovecot::print(&setup, &queue),
                        _ => nginx::print(&setup),
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            (false, true) => {
                let findings = match target {
                    Target::Postfix => postfix::check(&setup, &dir)?,
                    Target::Dovecot => dovecot::check(&setup, &dir)?,
                    _ => nginx::check(&setup, &dir)?,
                };
                finding::report(target_name(target), &findings, json);
                Ok(if findings.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            (true, _) => {
                let outcome = match target {
                    Target::Postfix => postfix::apply(&setup, &dir)?,
                    Target::Dovecot => dovecot::apply(&setup, &dir, &queue)?,
                    _ => nginx::apply(&setup, &dir)?,
                };
                println!("{outcome}");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
    .await?
}

/// The `--stack` options from the flags.
fn stack_options(args: &MailConfigArgs) -> anyhow::Result<stacks::Options> {
    let home_tunnel4 = match &args.home_tunnel_address {
        None => None,
        Some(a) => match split_prefix(a)?.0 {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(ip) => anyhow::bail!(
                "--home-tunnel-address {ip} is not an IPv4 address (give the IPv6 one as --home-tunnel-address6)"
            ),
        },
    };
    let home_tunnel6 = match args.home_tunnel_address6.as_deref().map(str::trim) {
        None => None,
        Some("off") => Some(None),
        Some(a) => match split_prefix(a)?.0 {
            IpAddr::V6(ip) => Some(Some(ip)),
            IpAddr::V4(ip) => anyhow::bail!("--home-tunnel-address6 {ip} is not an IPv6 address"),
        },
    };
    Ok(stacks::Options {
        subnet4: args.docker_subnet4,
        subnet6: args.docker_subnet6,
        home_tunnel4,
        home_tunnel6,
    })
}

/// `--stack NAME`: print (text, JSON or Markdown) or write the recipe.
fn run_stack(stack: stacks::Stack, args: &MailConfigArgs) -> anyhow::Result<ExitCode> {
    let recipe = stack.recipe_for(&stack_options(args)?)?;
    if let Some(dir) = &args.write {
        for p in stacks::write(&recipe, dir, args.force)? {
            println!("wrote {}", p.display());
        }
        if recipe.files.is_empty() {
            println!(
                "{} has no files to write: {}",
                recipe.stack,
                recipe.notes.join(" ")
            );
        } else {
            println!("then: {}", recipe.restart);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&recipe)?);
    } else if args.markdown {
        print!("{}", stacks::markdown(&recipe));
    } else {
        print!("{}", stacks::text(&recipe));
    }
    Ok(ExitCode::SUCCESS)
}

fn target_name(t: Target) -> &'static str {
    match t {
        Target::Postfix => "postfix",
        Target::Dovecot => "dovecot",
        Target::Nginx => "nginx",
        Target::Keycloak => "keycloak",
    }
}

async fn setup(cli: &Cli, args: &MailConfigArgs) -> anyhow::Result<MailSetup> {
    const OFFLINE: &str = "cannot get the relays and addresses from the VPS \
                           (or give --domain and --home-tunnel-address to work without it)";
    let (domain, mail_host, relays, tunnel, tunnel6) =
        match (&args.domain, &args.home_tunnel_address) {
            (Some(d), Some(t)) => (
                d.clone(),
                args.mail_host.clone(),
                args.relays.clone().unwrap_or_else(|| DEFAULT_RELAYS.into()),
                t.clone(),
                args.home_tunnel_address6
                    .clone()
                    .unwrap_or_else(|| "off".into()),
            ),
            _ => {
                let resp = fetch_status(cli, args.address.as_deref(), OFFLINE).await?;
                let vps = vps_part(&resp)?;
                (
                    args.domain.clone().unwrap_or_else(|| vps.domain.clone()),
                    args.mail_host
                        .clone()
                        .or_else(|| Some(vps.mail_host.clone()).filter(|h| !h.is_empty())),
                    args.relays.clone().unwrap_or_else(|| vps.relays.clone()),
                    args.home_tunnel_address
                        .clone()
                        .unwrap_or_else(|| vps.tunnel_home_address.clone()),
                    args.home_tunnel_address6
                        .clone()
                        .unwrap_or_else(|| crate::vps::egress6_home_address(&resp)),
                )
            }
        };
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    anyhow::ensure!(
        domain.contains('.'),
        "{domain:?} is not a mail domain (like example.com)"
    );
    let relays = if relays.trim().is_empty() {
        Vec::new()
    } else {
        parse_relays(&relays)?
    };
    let (home_tunnel, prefix) = split_prefix(&tunnel)?;
    let home_tunnel6 = match tunnel6.trim() {
        "" | "off" => None,
        t => match split_prefix(t)?.0 {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(ip) => anyhow::bail!("--home-tunnel-address6 {ip} is not an IPv6 address"),
        },
    };
    Ok(MailSetup {
        mail_host: mail_host.unwrap_or_else(|| format!("mail.{domain}")),
        domain,
        relays,
        home_tunnel,
        home_tunnel6,
        tunnel_prefix: prefix.unwrap_or(if home_tunnel.is_ipv4() { 24 } else { 64 }),
        agent_addresses: if args.agent_address.is_empty() {
            DEFAULT_AGENT_ADDRESSES.to_vec()
        } else {
            args.agent_address.clone()
        },
    })
}

impl MailSetup {
    /// The relay whose public port is `port`.
    pub fn relay(&self, port: u16) -> Option<&RelaySpec> {
        self.relays.iter().find(|r| r.public_port == port)
    }

    /// The tunnel subnet, e.g. `10.77.77.0/24`.
    pub fn tunnel_subnet(&self) -> String {
        let p = self.tunnel_prefix;
        match self.home_tunnel {
            IpAddr::V4(ip) => {
                let p = p.min(32);
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                format!("{}/{p}", std::net::Ipv4Addr::from(u32::from(ip) & mask))
            }
            IpAddr::V6(ip) => {
                let p = p.min(128);
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                format!("{}/{p}", std::net::Ipv6Addr::from(u128::from(ip) & mask))
            }
        }
    }

    fn relay_list(&self) -> String {
        if self.relays.is_empty() {
            return "(none)".into();
        }
        self.relays
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn agents(&self, sep: &str) -> String {
        self.agent_addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// The address PROXY listeners bind: the loopback address the home agent
    /// dials (CERES_MAIL_SERVER's default). Nothing on the LAN and nothing
    /// arriving through the tunnel can reach it.
    pub fn proxy_listen(&self) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }
}

/// How a port is relayed, for a comment in the configuration written:
/// "with PROXY v2", "without PROXY" (the mode's name from
/// [`ProxyMode::label`], its one table).
fn proxy_name(mode: ProxyMode) -> String {
    match mode {
        ProxyMode::None => "without PROXY".to_owned(),
        sends => format!("with {}", sends.label()),
    }
}

/// Whether a listen address is only reachable from this host.
fn is_loopback_listen(addr: &str) -> bool {
    let host = addr
        .trim()
        .trim_start_matches('[')
        .split(']')
        .next()
        .unwrap_or_default();
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn setup(relays: &str) -> MailSetup {
        MailSetup {
            domain: "example.com".into(),
            mail_host: "mail.example.com".into(),
            relays: parse_relays(relays).unwrap(),
            home_tunnel: "10.77.77.2".parse().unwrap(),
            home_tunnel6: None,
            tunnel_prefix: 24,
            agent_addresses: DEFAULT_AGENT_ADDRESSES.to_vec(),
        }
    }

    #[test]
    fn tunnel_subnets() {
        let mut s = setup("25");
        assert_eq!(s.tunnel_subnet(), "10.77.77.0/24");
        s.home_tunnel = "fd00:77::2".parse().unwrap();
        s.tunnel_prefix = 64;
        assert_eq!(s.tunnel_subnet(), "fd00:77::/64");
    }

    #[test]
    fn loopback_listens() {
        for a in ["127.0.0.1", "[::1]", "localhost", "127.0.0.2", "::1"] {
            assert!(is_loopback_listen(a), "{a}");
        }
        for a in ["0.0.0.0", "*", "[::]", "", "192.0.2.1", "all"] {
            assert!(!is_loopback_listen(a), "{a}");
        }
    }
}
