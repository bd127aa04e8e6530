//! Typed settings of `ceres-vps`, resolved once from flags, environment and
//! `ceres.env`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_config::{ConfigError, HumanDuration, Layers};
use clap::Args;

/// Default control-plane port (mutual TLS gRPC).
pub const DEFAULT_CONTROL_PORT: u16 = 7443;

/// Settings every `ceres-vps` key can be given as a flag. Each flag `--x-y`
/// is also the key `CERES_X_Y` in `ceres.env` or the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct VpsFlags {
    /// Public address(es) of the VPS, comma-separated (IPv4 and IPv6). MX and
    /// the SPF/PTR records point here. [CERES_PUBLIC_IP]
    #[arg(long, value_name = "IP[,IP]")]
    pub public_ip: Option<String>,
    /// The mail domain, e.g. example.com. [CERES_DOMAIN]
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Host name of the mail server as the world sees it; default mail.DOMAIN.
    /// [CERES_MAIL_HOST]
    #[arg(long, value_name = "HOST")]
    pub mail_host: Option<String>,
    /// Where the control plane listens; default 0.0.0.0:7443. Open this TCP
    /// port in the VPS firewall. [CERES_CONTROL_LISTEN]
    #[arg(long, value_name = "ADDR:PORT")]
    pub control_listen: Option<String>,
    /// The control address written into join tokens; default the first public
    /// IP with the listen port. Set it when clients reach the VPS by another
    /// name or through NAT. [CERES_CONTROL_ADDRESS]
    #[arg(long, value_name = "HOST:PORT")]
    pub control_address: Option<String>,
    /// Lifetime of client certificates (home agent, cerectl); they renew at
    /// two thirds of it. Default 30d. [CERES_CLIENT_CERT_TTL]
    #[arg(long, value_name = "DURATION")]
    pub client_cert_ttl: Option<String>,
    /// How often the home agent reports; default 10s. Home counts as gone
    /// after three missed reports. [CERES_REPORT_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub report_interval: Option<String>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct VpsSettings {
    /// Public addresses, first one preferred.
    pub public_ips: Vec<IpAddr>,
    /// Mail domain.
    pub domain: String,
    /// Mail host name.
    pub mail_host: String,
    /// Control-plane listen address.
    pub control_listen: SocketAddr,
    /// Control address advertised in tokens.
    pub control_address: String,
    /// Client certificate lifetime.
    pub client_cert_ttl: Duration,
    /// Home report interval.
    pub report_interval: Duration,
}

/// A comma-separated list of addresses.
#[derive(Debug, Clone)]
pub struct IpList(pub Vec<IpAddr>);

impl std::str::FromStr for IpList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ips: Result<Vec<IpAddr>, _> =
            s.split(',').map(|p| p.trim().parse::<IpAddr>()).collect();
        let ips = ips.map_err(|e| format!("{e}: expected IP addresses separated by commas"))?;
        if ips.is_empty() {
            return Err("no address given".into());
        }
        Ok(IpList(ips))
    }
}

/// A DNS name, checked loosely (letters, digits, dots, hyphens).
#[derive(Debug, Clone)]
pub struct DnsName(pub String);

impl std::str::FromStr for DnsName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.contains('.')
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if ok {
            Ok(DnsName(s))
        } else {
            Err("not a valid domain name (expected e.g. example.com)".into())
        }
    }
}

impl VpsFlags {
    /// Resolves the settings against the config layers.
    pub fn resolve(&self, layers: &Layers) -> Result<VpsSettings, ConfigError> {
        let IpList(public_ips) = layers.require("CERES_PUBLIC_IP", self.public_ip.as_deref())?;
        let DnsName(domain) = layers.require("CERES_DOMAIN", self.domain.as_deref())?;
        let mail_host = match layers.get::<DnsName>("CERES_MAIL_HOST", self.mail_host.as_deref())? {
            Some(DnsName(h)) => h,
            None => format!("mail.{domain}"),
        };
        let control_listen: SocketAddr = layers.get_or(
            "CERES_CONTROL_LISTEN",
            self.control_listen.as_deref(),
            &format!("0.0.0.0:{DEFAULT_CONTROL_PORT}"),
        )?;
        let control_address =
            match layers.get::<String>("CERES_CONTROL_ADDRESS", self.control_address.as_deref())? {
                Some(a) => a,
                None => SocketAddr::new(public_ips[0], control_listen.port()).to_string(),
            };
        let HumanDuration(client_cert_ttl) = layers.get_or(
            "CERES_CLIENT_CERT_TTL",
            self.client_cert_ttl.as_deref(),
            "30d",
        )?;
        let HumanDuration(report_interval) = layers.get_or(
            "CERES_REPORT_INTERVAL",
            self.report_interval.as_deref(),
            "10s",
        )?;
        Ok(VpsSettings {
            public_ips,
            domain,
            mail_host,
            control_listen,
            control_address,
            client_cert_ttl,
            report_interval,
        })
    }
}
