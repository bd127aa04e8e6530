//! `cerectl dns`: the DNS and PTR records the mail domain needs, and with
//! `--check` their live verification.
//!
//! The domain, mail host and VPS addresses come from the VPS (Admin.Status
//! over mutual TLS, like `status`) unless given as flags; with `--domain` and
//! `--public-ip` it works offline, without enrolment. Enrolled with several
//! VPSes, or given one `--public-ip` per VPS, it covers all of them at once
//! (module `fleet::dns`). The pieces shared with `doctor` (where the identity
//! comes from, which resolver, colour) live here.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use ceres_dnscheck::{Checklist, HickoryLookup, MailIdentity, Report, verify_fleet};
use ceres_proto::VpsStatus;
use clap::{Args, ValueEnum};

use crate::cli::Cli;

/// Env var for the DKIM selector, so scripts and shells need not repeat it.
pub const DKIM_SELECTOR_ENV: &str = "CERES_DKIM_SELECTOR";

/// Which mail domain to look at; shared by `dns` and `doctor`.
///
/// Each flag overrides what the VPS reports; the VPS is only asked when
/// `--domain` or `--public-ip` is missing.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The mail domain; default the VPS's. With --public-ip, no VPS is asked
    /// (works offline, without enrolment).
    #[arg(long, value_name = "DOMAIN", value_parser = parse_domain)]
    pub domain: Option<String>,
    /// The host MX and PTR point at; default the VPS's, or mail.DOMAIN offline.
    /// Offline with several --public-ip: once per --public-ip, in the same
    /// order (default mx1.DOMAIN, mx2.DOMAIN, ...).
    #[arg(long, value_name = "HOST", value_parser = parse_mail_host)]
    pub mail_host: Vec<String>,
    /// The VPS's public address(es), comma-separated; default the VPS's.
    /// Repeat it for several VPSes, one VPS each, in priority order
    /// (`dns` only).
    #[arg(long, value_name = "IP[,IP]", value_parser = parse_vps_ips)]
    pub public_ip: Vec<VpsIps>,
    /// The DKIM selector your mail software signs with (e.g. "mail", "dkim",
    /// "s1"); without it the DKIM record is only described, not checked.
    #[arg(long, value_name = "SELECTOR", env = DKIM_SELECTOR_ENV, value_parser = parse_selector)]
    pub dkim_selector: Option<String>,
    /// Reach the VPS here instead of the address stored at enrolment.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
}

/// One VPS's public addresses, as one `--public-ip` gives them (`IP[,IP]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpsIps(pub Vec<IpAddr>);

fn parse_vps_ips(s: &str) -> Result<VpsIps, String> {
    s.split(',')
        .map(|ip| {
            ip.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{ip:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(VpsIps)
}

impl IdentityArgs {
    /// The addresses and mail host of the one VPS a command is about; several
    /// `--public-ip` (several VPSes) are for `dns` only.
    pub(crate) fn one_vps(&self) -> anyhow::Result<(Vec<IpAddr>, Option<String>)> {
        if self.public_ip.len() > 1 || self.mail_host.len() > 1 {
            return Err(crate::fleet::Usage(
                "this command is about one VPS: give its addresses in one --public-ip \
                 (comma-separated) and at most one --mail-host; `cerectl dns` takes several"
                    .into(),
            )
            .into());
        }
        Ok((
            self.public_ip.iter().flat_map(|v| v.0.clone()).collect(),
            self.mail_host.first().cloned(),
        ))
    }
}

/// Output format of the checklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table: where to set it, type, name, value; notes below.
    Text,
    /// A BIND zone-file snippet to paste into the domain's zone.
    Zone,
}

/// `dns` arguments.
#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Which domain, host and addresses.
    #[command(flatten)]
    pub id: IdentityArgs,
    /// Look every record up live and say pass or fail, what was found and
    /// what to set; exit 1 when any check fails or cannot be completed.
    #[arg(long)]
    pub check: bool,
    /// How to print the checklist (without --check).
    #[arg(long, value_enum, conflicts_with_all = ["check", "json"])]
    pub format: Option<Format>,
    /// Print JSON: the checklist, or with --check the report (schema in README, "DNS records").
    #[arg(long)]
    pub json: bool,
    /// TTL of the records in the zone snippet (with --format zone), in
    /// seconds; default 3600. While you set up or move mail use 300: a
    /// wrong record, or the MX switch, then takes effect or is undone
    /// within five minutes.
    #[arg(long, value_name = "SECS", requires = "format",
          value_parser = clap::value_parser!(u32).range(30..=604_800))]
    pub ttl: Option<u32>,
    /// Ask this DNS server instead of the system's (with --check).
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_resolver, requires = "check")]
    pub resolver: Option<SocketAddr>,
}

/// Outcome of a command: an exit code (errors are printed by `cli::main`).
pub(crate) type Outcome = anyhow::Result<ExitCode>;

/// Runs `cerectl dns`.
pub async fn run(cli: &Cli, args: &DnsArgs) -> Outcome {
    let fleet = crate::fleet::dns::fleet(cli, &args.id).await?;
    if !args.check {
        let list = Checklist::for_fleet(&fleet);
        if args.json {
            println!("{}", list.render_json());
        } else if args.format == Some(Format::Zone) {
            print!(
                "{}",
                list.render_zone_ttl(args.ttl.unwrap_or(ceres_dnscheck::DEFAULT_ZONE_TTL))
            );
        } else {
            print!("{}", list.render_text());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let lookup = lookup(args.resolver)?;
    let report = verify_fleet(&fleet, &lookup).await;
    if args.json {
        println!("{}", report.render_json());
    } else {
        print!("{}", report.render_text(color()));
    }
    Ok(exit_code(&report))
}

/// 0 when every check passed (warnings allowed), 1 otherwise.
pub(crate) fn exit_code(report: &Report) -> ExitCode {
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Colour and symbols only for a person at a terminal, and never with
/// `NO_COLOR` (https://no-color.org).
pub(crate) fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The resolver: the given server, or the system's.
pub(crate) fn lookup(server: Option<SocketAddr>) -> anyhow::Result<HickoryLookup> {
    Ok(match server {
        Some(addr) => HickoryLookup::with_server_addr(addr)?,
        None => HickoryLookup::from_system()?,
    })
}

/// The mail identity from the flags, completed from the VPS's status when
/// the flags do not say enough.
pub(crate) async fn identity(cli: &Cli, args: &IdentityArgs) -> anyhow::Result<MailIdentity> {
    let (public_ip, mail_host) = args.one_vps()?;
    let (domain, mail_host, ips) = match (&args.domain, public_ip.is_empty()) {
        (Some(domain), false) => (domain.clone(), mail_host, public_ip),
        _ => {
            let vps = vps_status(cli, args.address.as_deref()).await?;
            let ips = if public_ip.is_empty() {
                vps.public_ips
                    .iter()
                    .map(|s| {
                        s.parse::<IpAddr>()
                            .with_context(|| format!("the VPS reported a bad public address {s:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            } else {
                public_ip
            };
            let mail_host = mail_host.or_else(|| Some(vps.mail_host).filter(|h| !h.is_empty()));
            (args.domain.clone().unwrap_or(vps.domain), mail_host, ips)
        }
    };
    let mut builder = MailIdentity::builder(&domain).addresses(ips);
    if let Some(host) = &mail_host {
        builder = builder.mail_host(host);
    }
    if let Some(selector) = &args.dkim_selector {
        builder = builder.dkim_selector(selector);
    }
    Ok(builder.build()?)
}

/// The VPS section of Admin.Status; any failure to get it is [`Unreachable`](crate::cli::Unreachable)
/// (exit 3), with the hint that flags make the VPS unnecessary.
async fn vps_status(cli: &Cli, address: Option<&str>) -> anyhow::Result<VpsStatus> {
    const OFFLINE: &str = "cannot get the domain and addresses from the VPS \
                           (or give --domain and --public-ip to work without it)";
    let resp = crate::vps::fetch_status(cli, address, OFFLINE).await?;
    Ok(crate::vps::vps_part(&resp)?.clone())
}

/// A placeholder address: the builder needs one to validate names alone.
const PROBE_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

// The value parsers validate with the same rules `MailIdentity` applies
// later, so a bad name is a usage error (exit 2) naming the flag.
fn parse_domain(s: &str) -> Result<String, String> {
    MailIdentity::builder(s)
        .address(PROBE_IP)
        .build()
        .map(|id| id.domain().to_owned())
        .map_err(|e| e.to_string())
}

pub(crate) fn parse_mail_host(s: &str) -> Result<String, String> {
    MailIdentity::builder("example.com")
        .mail_host(s)
        .address(PROBE_IP)
        .build()
        .map(|id| id.mail_host().to_owned())
        .map_err(|e| e.to_string())
}

fn parse_selector(s: &str) -> Result<String, String> {
    MailIdentity::builder("example.com")
        .dkim_selector(s)
        .address(PROBE_IP)
        .build()
        .map(|id| id.dkim_selector().unwrap_or_default().to_owned())
        .map_err(|e| e.to_string())
}

/// `IP` (port 53), `IP:PORT` or `[IPv6]:PORT`.
pub(crate) fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("expected IP, IP:PORT or [IPv6]:PORT, got {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_specs() {
        assert_eq!(
            parse_resolver("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_resolver("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(
            parse_resolver("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert!(parse_resolver("dns.example").is_err());
        assert!(parse_resolver("127.0.0.1:x").is_err());
    }

    #[test]
    fn names_are_validated_and_normalised() {
        assert_eq!(parse_domain("Example.COM.").unwrap(), "example.com");
        assert!(parse_domain("localhost").is_err());
        assert_eq!(parse_mail_host("MX.example.com").unwrap(), "mx.example.com");
        assert!(parse_mail_host("bad host.example").is_err());
        assert_eq!(parse_selector("S1").unwrap(), "s1");
        assert!(parse_selector("s 1").is_err());
    }
}
