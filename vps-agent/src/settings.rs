//! Typed settings of `ceres-vps`, resolved once from flags, environment and
//! `ceres.env`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use ceres_config::{ConfigError, HumanDuration, Layers, PortList, Switch};
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
    /// Control-plane connections at once (handshaking or established);
    /// more wait in the kernel's queue. Default 256. [CERES_CONTROL_MAX_CONNECTIONS]
    #[arg(long, value_name = "N")]
    pub control_max_connections: Option<String>,
    /// Control-plane connections at once per client address (IPv6: per /64);
    /// more are closed at once. Default 16. [CERES_CONTROL_MAX_PER_SOURCE]
    #[arg(long, value_name = "N")]
    pub control_max_per_source: Option<String>,
    /// HTTP/2 streams at once per control-plane connection; default 32.
    /// [CERES_CONTROL_MAX_STREAMS]
    #[arg(long, value_name = "N")]
    pub control_max_streams: Option<String>,
    /// HTTP/2 keepalive PING interval on control-plane connections; default
    /// 20s. [CERES_CONTROL_KEEPALIVE]
    #[arg(long, value_name = "DURATION")]
    pub control_keepalive: Option<String>,
    /// How long a keepalive PING may go unanswered before the connection is
    /// closed; default 20s. [CERES_CONTROL_KEEPALIVE_TIMEOUT]
    #[arg(long, value_name = "DURATION")]
    pub control_keepalive_timeout: Option<String>,
    /// A control-plane connection without a client certificate (it can only
    /// enrol) is closed after this; default 60s. [CERES_CONTROL_NO_CERT_MAX_AGE]
    #[arg(long, value_name = "DURATION")]
    pub control_no_cert_max_age: Option<String>,
    /// Lifetime of client certificates (home agent, cerectl); they renew at
    /// two thirds of it. Default 30d. [CERES_CLIENT_CERT_TTL]
    #[arg(long, value_name = "DURATION")]
    pub client_cert_ttl: Option<String>,
    /// How often the home agent reports; default 10s. Home counts as gone
    /// after three missed reports. [CERES_REPORT_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub report_interval: Option<String>,
    /// on: run the WireGuard tunnel (needs root or CAP_NET_ADMIN); off: the
    /// control plane alone. Default on. [CERES_TUNNEL]
    #[arg(long, value_name = "on|off")]
    pub tunnel: Option<String>,
    /// Name of the tunnel interface; default ceres0. [CERES_TUNNEL_IFNAME]
    #[arg(long, value_name = "NAME")]
    pub tunnel_ifname: Option<String>,
    /// UDP address WireGuard listens on; default [::]:51820 (IPv4 and IPv6).
    /// Open this UDP port in the VPS firewall. [CERES_WG_LISTEN]
    #[arg(long, value_name = "ADDR:PORT")]
    pub wg_listen: Option<String>,
    /// Where home sends WireGuard packets; default the first public IP with
    /// the listen port. [CERES_WG_ENDPOINT]
    #[arg(long, value_name = "HOST:PORT")]
    pub wg_endpoint: Option<String>,
    /// The VPS's tunnel address with prefix; default 10.77.77.1/24.
    /// [CERES_TUNNEL_VPS_ADDRESS]
    #[arg(long, value_name = "IP/PREFIX")]
    pub tunnel_vps_address: Option<String>,
    /// Home's tunnel address with prefix; default 10.77.77.2/24. Home's mail
    /// server sees relayed connections arrive here. [CERES_TUNNEL_HOME_ADDRESS]
    #[arg(long, value_name = "IP/PREFIX")]
    pub tunnel_home_address: Option<String>,
    /// The VPS's IPv6 tunnel address with prefix (a ULA); default
    /// fd77:77:77::1/64; off: the tunnel carries IPv4 only. Both IPv6
    /// settings must be on or off together. [CERES_TUNNEL_VPS_ADDRESS6]
    #[arg(long, value_name = "IP/PREFIX|off")]
    pub tunnel_vps_address6: Option<String>,
    /// Home's IPv6 tunnel address with prefix; default fd77:77:77::2/64; off:
    /// IPv4 only. Home's mail server binds to it for IPv6 (Postfix
    /// smtp_bind_address6), and the VPS masquerades it to its public IPv6.
    /// [CERES_TUNNEL_HOME_ADDRESS6]
    #[arg(long, value_name = "IP/PREFIX|off")]
    pub tunnel_home_address6: Option<String>,
    /// MTU of the tunnel interface (both ends); default 1420. [CERES_MTU]
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<String>,
    /// Directory of the WireGuard userspace API socket (`wg show` reads it);
    /// default /var/run/wireguard. [CERES_WG_UAPI_DIR]
    #[arg(long, value_name = "DIR")]
    pub wg_uapi_dir: Option<String>,
    /// Relayed ports with their PROXY mode:
    /// PORT[:HOME_PORT][/proxy-v1|/proxy-v2][/smtp|/no-smtp], comma-separated;
    /// empty for none. Default 25,465,587,993,143,995,110,4190,80,443, each
    /// with proxy-v2 to its PROXY port 10000+PORT at home (`cerectl
    /// mailserver-config --apply`); without a mode a port is relayed plain
    /// to the same port. /smtp or /no-smtp: whether the VPS answers 421 on
    /// the port while home is down (default: on 25 and 587 only).
    /// [CERES_RELAYS]
    #[arg(long, value_name = "LIST")]
    pub relays: Option<String>,
    /// Addresses the relays listen on; default the public IPs. Use
    /// 0.0.0.0,:: on a VPS whose public IP is NATed to a private one.
    /// [CERES_RELAY_LISTEN]
    #[arg(long, value_name = "IP[,IP]")]
    pub relay_listen: Option<String>,
    /// A relayed connection with no traffic either way is closed after this;
    /// default 30m (IMAP IDLE refreshes every 29 min). [CERES_RELAY_IDLE_TIMEOUT]
    #[arg(long, value_name = "DURATION")]
    pub relay_idle_timeout: Option<String>,
    /// Idle timeout on SMTP ports (25, 465, 587 and ports relayed /smtp);
    /// default 5m (RFC 5321's server timeout). [CERES_RELAY_SMTP_IDLE_TIMEOUT]
    #[arg(long, value_name = "DURATION")]
    pub relay_smtp_idle_timeout: Option<String>,
    /// Concurrent connections per relayed port; default 1000. [CERES_RELAY_MAX_PER_PORT]
    #[arg(long, value_name = "N")]
    pub relay_max_per_port: Option<String>,
    /// Concurrent connections per client address (IPv6: per /64) and port;
    /// default 50. [CERES_RELAY_MAX_PER_SOURCE]
    #[arg(long, value_name = "N")]
    pub relay_max_per_source: Option<String>,
    /// Concurrent connections per IPv4 /24 and port; default a tenth of
    /// CERES_RELAY_MAX_PER_PORT (not below the per-source cap). [CERES_RELAY_MAX_PER_V4_24]
    #[arg(long, value_name = "N")]
    pub relay_max_per_v4_24: Option<String>,
    /// Concurrent connections per IPv6 /56 and port; default a tenth of
    /// CERES_RELAY_MAX_PER_PORT (not below the per-source cap). [CERES_RELAY_MAX_PER_V6_56]
    #[arg(long, value_name = "N")]
    pub relay_max_per_v6_56: Option<String>,
    /// Concurrent connections per IPv6 /48 and port; default a fifth of
    /// CERES_RELAY_MAX_PER_PORT (not below the per-source cap). [CERES_RELAY_MAX_PER_V6_48]
    #[arg(long, value_name = "N")]
    pub relay_max_per_v6_48: Option<String>,
    /// New connections per client address (IPv6: per /64) and port per
    /// minute; 0 for no limit; default 60. [CERES_RELAY_RATE_PER_SOURCE]
    #[arg(long, value_name = "N")]
    pub relay_rate_per_source: Option<String>,
    /// New connections a client address may open at once before its rate
    /// applies; default 30. [CERES_RELAY_BURST_PER_SOURCE]
    #[arg(long, value_name = "N")]
    pub relay_burst_per_source: Option<String>,
    /// The last N slots of each port only go to clients seen delivering (a
    /// connection that carried 256 bytes each way); default a tenth of
    /// CERES_RELAY_MAX_PER_PORT. [CERES_RELAY_RESERVED_FOR_KNOWN]
    #[arg(long, value_name = "N")]
    pub relay_reserved_for_known: Option<String>,
    /// on: send home's outbound mail out from this VPS (nftables NAT, only
    /// CERES_EGRESS_PORTS); off: no egress. Default on. [CERES_EGRESS]
    #[arg(long, value_name = "on|off")]
    pub egress: Option<String>,
    /// Destination TCP ports home may reach through the VPS; default 25,465,587.
    /// [CERES_EGRESS_PORTS]
    #[arg(long, value_name = "PORT[,PORT]")]
    pub egress_ports: Option<String>,
    /// The interface outbound mail leaves by; default the one of the default
    /// route. [CERES_PUBLIC_IFNAME]
    #[arg(long, value_name = "NAME")]
    pub public_ifname: Option<String>,
    /// How often the WireGuard keys and PSK rotate by themselves (with up to
    /// a tenth of jitter); default 7d. `cerectl rotate` rotates at once.
    /// [CERES_ROTATE_EVERY]
    #[arg(long, value_name = "DURATION")]
    pub rotate_every: Option<String>,
    /// Prometheus metrics at http://ADDR/metrics; default 127.0.0.1:9477
    /// (never the public address unless you say so); off to disable.
    /// [CERES_METRICS_LISTEN]
    #[arg(long, value_name = "IP:PORT|off")]
    pub metrics_listen: Option<String>,
    /// The watchdog and its alerts (CERES_WATCH_*, CERES_ALERT_*).
    #[command(flatten)]
    pub watch: crate::watch::WatchFlags,
}

/// Relay and egress settings of the VPS.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The relayed ports.
    pub relays: Vec<ceres_relay::RelaySpec>,
    /// Listen addresses.
    pub listen: Vec<IpAddr>,
    /// Idle timeout (ports that are not SMTP).
    pub idle_timeout: Duration,
    /// Idle timeout on SMTP ports.
    pub smtp_idle_timeout: Duration,
    /// Connection limits of each port.
    pub limits: ceres_relay::Limits,
    /// Egress on.
    pub egress: bool,
    /// Egress ports.
    pub egress_ports: Vec<u16>,
    /// Public interface (None: detect).
    pub public_ifname: Option<String>,
}

/// The relays list.
#[derive(Debug, Clone)]
pub struct Relays(pub Vec<ceres_relay::RelaySpec>);

impl std::str::FromStr for Relays {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Relays(Vec::new()));
        }
        ceres_relay::parse_relays(s)
            .map(Relays)
            .map_err(|e| e.to_string())
    }
}

/// Tunnel settings of the VPS.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// Whether to run the tunnel at all.
    pub enabled: bool,
    /// Interface name.
    pub ifname: String,
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Endpoint advertised to home.
    pub endpoint: String,
    /// VPS tunnel address.
    pub vps_address: IpNet,
    /// Home tunnel address.
    pub home_address: IpNet,
    /// VPS IPv6 tunnel address (`None`: IPv4 only).
    pub vps_address6: Option<IpNet>,
    /// Home IPv6 tunnel address (`None`: IPv4 only).
    pub home_address6: Option<IpNet>,
    /// MTU.
    pub mtu: u16,
    /// UAPI socket directory.
    pub uapi_dir: PathBuf,
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
    /// Control-plane connection limits.
    pub control_limits: ceres_control::ConnLimits,
    /// Client certificate lifetime.
    pub client_cert_ttl: Duration,
    /// Home report interval.
    pub report_interval: Duration,
    /// The tunnel.
    pub tunnel: TunnelSettings,
    /// Relays and egress.
    pub relay: RelaySettings,
    /// Key rotation period.
    pub rotate_every: Duration,
    /// Metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The watchdog and its alerts.
    pub watch: crate::watch::WatchSettings,
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

/// An IPv6 address with prefix, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6NetOrOff(pub Option<IpNet>);

impl std::str::FromStr for Ipv6NetOrOff {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Ipv6NetOrOff(None));
        }
        match s.parse::<IpNet>() {
            Ok(net @ IpNet::V6(_)) => Ok(Ipv6NetOrOff(Some(net))),
            Ok(IpNet::V4(_)) => Err("expected an IPv6 address with prefix or off".into()),
            Err(_) => {
                Err("expected an IPv6 address with prefix (e.g. fd77:77:77::1/64) or off".into())
            }
        }
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
    /// The relays' connection limits: the caps not given scale with the
    /// per-port cap ([`ceres_relay::Limits::scaled`], the one place of the defaults).
    fn relay_limits(&self, layers: &Layers) -> Result<ceres_relay::Limits, ConfigError> {
        let per_port = layers.get_or(
            "CERES_RELAY_MAX_PER_PORT",
            self.relay_max_per_port.as_deref(),
            &ceres_relay::DEFAULT_MAX_PER_PORT.to_string(),
        )?;
        let per_source = layers.get_or(
            "CERES_RELAY_MAX_PER_SOURCE",
            self.relay_max_per_source.as_deref(),
            &ceres_relay::DEFAULT_MAX_PER_SOURCE.to_string(),
        )?;
        let d = ceres_relay::Limits::scaled(per_port, per_source);
        let or = |key: &str, flag: &Option<String>, default: u32| {
            layers
                .get::<u32>(key, flag.as_deref())
                .map(|v| v.unwrap_or(default))
        };
        Ok(ceres_relay::Limits {
            per_port,
            per_source,
            per_v4_24: or(
                "CERES_RELAY_MAX_PER_V4_24",
                &self.relay_max_per_v4_24,
                d.per_v4_24,
            )?,
            per_v6_56: or(
                "CERES_RELAY_MAX_PER_V6_56",
                &self.relay_max_per_v6_56,
                d.per_v6_56,
            )?,
            per_v6_48: or(
                "CERES_RELAY_MAX_PER_V6_48",
                &self.relay_max_per_v6_48,
                d.per_v6_48,
            )?,
            rate_per_minute: or(
                "CERES_RELAY_RATE_PER_SOURCE",
                &self.relay_rate_per_source,
                d.rate_per_minute,
            )?,
            burst: or(
                "CERES_RELAY_BURST_PER_SOURCE",
                &self.relay_burst_per_source,
                d.burst,
            )?,
            reserved_for_known: or(
                "CERES_RELAY_RESERVED_FOR_KNOWN",
                &self.relay_reserved_for_known,
                d.reserved_for_known,
            )?,
        })
    }

    /// The control plane's connection limits; defaults from
    /// [`ceres_control::ConnLimits::default`].
    fn control_limits(&self, layers: &Layers) -> Result<ceres_control::ConnLimits, ConfigError> {
        let d = ceres_control::ConnLimits::default();
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let dur = |key: &str, flag: &Option<String>, default: Duration| {
            layers
                .get_or::<HumanDuration>(key, flag.as_deref(), &secs(default))
                .map(|h| h.0)
        };
        Ok(ceres_control::ConnLimits {
            max_connections: layers.get_or(
                "CERES_CONTROL_MAX_CONNECTIONS",
                self.control_max_connections.as_deref(),
                &d.max_connections.to_string(),
            )?,
            max_per_source: layers.get_or(
                "CERES_CONTROL_MAX_PER_SOURCE",
                self.control_max_per_source.as_deref(),
                &d.max_per_source.to_string(),
            )?,
            max_streams: layers.get_or(
                "CERES_CONTROL_MAX_STREAMS",
                self.control_max_streams.as_deref(),
                &d.max_streams.to_string(),
            )?,
            keepalive_interval: dur(
                "CERES_CONTROL_KEEPALIVE",
                &self.control_keepalive,
                d.keepalive_interval,
            )?,
            keepalive_timeout: dur(
                "CERES_CONTROL_KEEPALIVE_TIMEOUT",
                &self.control_keepalive_timeout,
                d.keepalive_timeout,
            )?,
            no_cert_max_age: dur(
                "CERES_CONTROL_NO_CERT_MAX_AGE",
                &self.control_no_cert_max_age,
                d.no_cert_max_age,
            )?,
        })
    }

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
        let Switch(enabled) = layers.get_or("CERES_TUNNEL", self.tunnel.as_deref(), "on")?;
        let ifname: String = layers.get_or(
            "CERES_TUNNEL_IFNAME",
            self.tunnel_ifname.as_deref(),
            "ceres0",
        )?;
        let listen: SocketAddr =
            layers.get_or("CERES_WG_LISTEN", self.wg_listen.as_deref(), "[::]:51820")?;
        let endpoint =
            match layers.get::<String>("CERES_WG_ENDPOINT", self.wg_endpoint.as_deref())? {
                Some(e) => e,
                None => SocketAddr::new(public_ips[0], listen.port()).to_string(),
            };
        let tunnel = TunnelSettings {
            enabled,
            ifname,
            listen,
            endpoint,
            vps_address: layers.get_or(
                "CERES_TUNNEL_VPS_ADDRESS",
                self.tunnel_vps_address.as_deref(),
                "10.77.77.1/24",
            )?,
            home_address: layers.get_or(
                "CERES_TUNNEL_HOME_ADDRESS",
                self.tunnel_home_address.as_deref(),
                "10.77.77.2/24",
            )?,
            vps_address6: layers
                .get_or::<Ipv6NetOrOff>(
                    "CERES_TUNNEL_VPS_ADDRESS6",
                    self.tunnel_vps_address6.as_deref(),
                    "fd77:77:77::1/64",
                )?
                .0,
            home_address6: layers
                .get_or::<Ipv6NetOrOff>(
                    "CERES_TUNNEL_HOME_ADDRESS6",
                    self.tunnel_home_address6.as_deref(),
                    "fd77:77:77::2/64",
                )?
                .0,
            mtu: layers.get_or("CERES_MTU", self.mtu.as_deref(), "1420")?,
            uapi_dir: layers.get_or(
                "CERES_WG_UAPI_DIR",
                self.wg_uapi_dir.as_deref(),
                "/var/run/wireguard",
            )?,
        };
        if tunnel.vps_address6.is_some() != tunnel.home_address6.is_some() {
            // Name the key that turned IPv6 off: that is the one to change.
            let (key, flag) = if tunnel.vps_address6.is_none() {
                (
                    "CERES_TUNNEL_VPS_ADDRESS6",
                    self.tunnel_vps_address6.as_deref(),
                )
            } else {
                (
                    "CERES_TUNNEL_HOME_ADDRESS6",
                    self.tunnel_home_address6.as_deref(),
                )
            };
            let (value, origin) = layers
                .raw(key, flag)
                .unwrap_or_else(|| ("off".into(), ceres_config::Origin::Env));
            return Err(ConfigError::Invalid {
                key: key.into(),
                value,
                origin,
                message: "CERES_TUNNEL_VPS_ADDRESS6 and CERES_TUNNEL_HOME_ADDRESS6 are off together or set together".into(),
            });
        }
        let relay = RelaySettings {
            relays: layers
                .get_or::<Relays>(
                    "CERES_RELAYS",
                    self.relays.as_deref(),
                    ceres_relay::DEFAULT_RELAYS,
                )?
                .0,
            listen: match layers
                .get::<IpList>("CERES_RELAY_LISTEN", self.relay_listen.as_deref())?
            {
                Some(IpList(l)) => l,
                None => public_ips.clone(),
            },
            idle_timeout: layers
                .get_or::<HumanDuration>(
                    "CERES_RELAY_IDLE_TIMEOUT",
                    self.relay_idle_timeout.as_deref(),
                    &format!("{}s", ceres_relay::DEFAULT_IDLE_TIMEOUT.as_secs()),
                )?
                .0,
            smtp_idle_timeout: layers
                .get_or::<HumanDuration>(
                    "CERES_RELAY_SMTP_IDLE_TIMEOUT",
                    self.relay_smtp_idle_timeout.as_deref(),
                    &format!("{}s", ceres_relay::DEFAULT_SMTP_IDLE_TIMEOUT.as_secs()),
                )?
                .0,
            limits: self.relay_limits(layers)?,
            egress: layers
                .get_or::<Switch>("CERES_EGRESS", self.egress.as_deref(), "on")?
                .0,
            egress_ports: layers
                .get::<PortList>("CERES_EGRESS_PORTS", self.egress_ports.as_deref())?
                .map_or_else(
                    || ceres_relay::egress::DEFAULT_EGRESS_PORTS.to_vec(),
                    |p| p.0,
                ),
            public_ifname: layers.get("CERES_PUBLIC_IFNAME", self.public_ifname.as_deref())?,
        };
        let HumanDuration(rotate_every) =
            layers.get_or("CERES_ROTATE_EVERY", self.rotate_every.as_deref(), "7d")?;
        let metrics_listen = layers
            .get_or::<ceres_daemon::metrics::ListenSetting>(
                "CERES_METRICS_LISTEN",
                self.metrics_listen.as_deref(),
                "127.0.0.1:9477",
            )?
            .0;
        Ok(VpsSettings {
            watch: self.watch.resolve(layers, &domain)?,
            control_limits: self.control_limits(layers)?,
            metrics_listen,
            rotate_every,
            relay,
            tunnel,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn resolve(extra: &[(&str, &str)]) -> Result<VpsSettings, ConfigError> {
        let mut env: BTreeMap<String, String> = [
            ("CERES_PUBLIC_IP", "203.0.113.10"),
            ("CERES_DOMAIN", "example.com"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        env.retain(|_, v| !v.is_empty());
        VpsFlags::default().resolve(&Layers::from_parts(None, env))
    }

    #[test]
    fn the_tunnel_is_dual_stack_by_default_and_ipv6_can_be_turned_off() {
        let t = resolve(&[]).unwrap().tunnel;
        assert_eq!(t.vps_address6.unwrap().to_string(), "fd77:77:77::1/64");
        assert_eq!(t.home_address6.unwrap().to_string(), "fd77:77:77::2/64");
        let t = resolve(&[
            ("CERES_TUNNEL_VPS_ADDRESS6", "off"),
            ("CERES_TUNNEL_HOME_ADDRESS6", "off"),
        ])
        .unwrap()
        .tunnel;
        assert!(t.vps_address6.is_none() && t.home_address6.is_none());
    }

    #[test]
    fn half_an_ipv6_tunnel_or_an_ipv4_value_is_refused_naming_the_key() {
        let e = resolve(&[("CERES_TUNNEL_HOME_ADDRESS6", "off")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("CERES_TUNNEL_HOME_ADDRESS6=\"off\""), "{e}");
        let e = resolve(&[("CERES_TUNNEL_VPS_ADDRESS6", "10.0.0.1/24")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CERES_TUNNEL_VPS_ADDRESS6") && e.contains("IPv6"),
            "{e}"
        );
    }
}
