//! Typed settings of `ceres-home`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ceres_config::{ConfigError, HumanDuration, Layers, PortList, Switch};
use ceres_relay::stack::MailStack;
use clap::Args;

/// `ceres-home run` settings; each `--x-y` flag is also the key `CERES_X_Y`.
#[derive(Debug, Clone, Default, Args)]
pub struct HomeFlags {
    /// Reach the VPS control plane here instead of the address from the join
    /// token (e.g. after the VPS got a new IP). [CERES_CONTROL_ADDRESS]
    #[arg(long, value_name = "HOST:PORT")]
    pub control_address: Option<String>,
    /// Name of this host as shown in `cerectl status`; default the hostname.
    /// [CERES_NAME]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Longest wait between reconnect attempts when the VPS is away; default
    /// 30s. [CERES_RECONNECT_MAX]
    #[arg(long, value_name = "DURATION")]
    pub reconnect_max: Option<String>,
    /// on: run the WireGuard tunnel (needs root or CAP_NET_ADMIN); off: the
    /// session alone. Default on. [CERES_TUNNEL]
    #[arg(long, value_name = "on|off")]
    pub tunnel: Option<String>,
    /// Name of the tunnel interface; default ceres0. [CERES_TUNNEL_IFNAME]
    #[arg(long, value_name = "NAME")]
    pub tunnel_ifname: Option<String>,
    /// Local UDP address for WireGuard; default [::]:0 (any port: home dials
    /// out, so no port needs to be open at home). [CERES_WG_LISTEN]
    #[arg(long, value_name = "ADDR:PORT")]
    pub wg_listen: Option<String>,
    /// Directory of the WireGuard userspace API socket (`wg show` reads it);
    /// default /var/run/wireguard. [CERES_WG_UAPI_DIR]
    #[arg(long, value_name = "DIR")]
    pub wg_uapi_dir: Option<String>,
    /// Where the mail server listens; relayed connections are forwarded
    /// here, to the relay's home port (a PROXY relay's loopback PROXY port,
    /// 10000 + port, by default). Default 127.0.0.1: keep it on loopback so
    /// nothing but this agent can reach the PROXY ports. [CERES_MAIL_SERVER]
    #[arg(long, value_name = "IP")]
    pub mail_server: Option<String>,
    /// The packaged mail stack the mail server is (postfix-dovecot, mailcow,
    /// docker-mailserver, mailu, stalwart, iredmail): the agent then also
    /// probes the stack's PROXY listeners and `cerectl status` says which
    /// answer and which are missing. Unset: a mail server of another kind,
    /// probed per relayed port only. [CERES_MAIL_STACK]
    #[arg(long, value_name = "STACK")]
    pub mail_stack: Option<String>,
    /// on: route outbound mail through the tunnel so it leaves from the VPS;
    /// off: leave routing alone. Default on. [CERES_EGRESS]
    #[arg(long, value_name = "on|off")]
    pub egress: Option<String>,
    /// Sources whose outbound mail goes through the tunnel, comma-separated
    /// addresses or networks; default the home tunnel address (set Postfix's
    /// smtp_bind_address to it). A Docker mail network (e.g. 172.18.0.0/16)
    /// is the other common case. [CERES_EGRESS_FROM]
    #[arg(long, value_name = "NET[,NET]")]
    pub egress_from: Option<String>,
    /// Destination TCP ports routed through the tunnel; default 25,465,587.
    /// [CERES_EGRESS_PORTS]
    #[arg(long, value_name = "PORT[,PORT]")]
    pub egress_ports: Option<String>,
    /// How often the mail server is probed on each forwarded port (shown in
    /// `cerectl status`); default 30s. [CERES_PROBE_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub probe_interval: Option<String>,
    /// Concurrent forwarded connections per port; default 1000. Keep it at
    /// least the VPS's CERES_RELAY_MAX_PER_PORT. [CERES_FORWARD_MAX_PER_PORT]
    #[arg(long, value_name = "N")]
    pub forward_max_per_port: Option<String>,
    /// Prometheus metrics at http://ADDR/metrics; default 127.0.0.1:9478;
    /// off to disable. [CERES_METRICS_LISTEN]
    #[arg(long, value_name = "IP:PORT|off")]
    pub metrics_listen: Option<String>,
    /// With several VPSes: how often each uplink's tunnel is probed (a ping
    /// to its VPS tunnel address through its interface); 3 missed probes in a
    /// row mark it down and new outbound connections move to the next
    /// uplink. Default 2s. [CERES_UPLINK_PROBE_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub uplink_probe_interval: Option<String>,
    /// With several VPSes: how long a down uplink must answer every probe
    /// before outbound mail moves back to it, so a flapping link does not
    /// bounce traffic. Default 30s. [CERES_UPLINK_HOLDDOWN]
    #[arg(long, value_name = "DURATION")]
    pub uplink_holddown: Option<String>,
}

/// A comma-separated list of networks (a bare address is a /32 or /128).
#[derive(Debug, Clone)]
pub struct NetList(pub Vec<ipnet::IpNet>);

impl std::str::FromStr for NetList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let nets: Result<Vec<ipnet::IpNet>, String> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{p:?} is neither an address nor a network"))
            })
            .collect();
        Ok(NetList(nets?))
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct HomeSettings {
    /// Control address override.
    pub control_address: Option<String>,
    /// Display name.
    pub name: String,
    /// Backoff cap.
    pub reconnect_max: Duration,
    /// Whether to run the tunnel.
    pub tunnel: bool,
    /// Tunnel interface name.
    pub tunnel_ifname: String,
    /// Local WireGuard UDP address.
    pub wg_listen: SocketAddr,
    /// UAPI socket directory.
    pub wg_uapi_dir: PathBuf,
    /// Mail server address.
    pub mail_server: std::net::IpAddr,
    /// The mail stack (`CERES_MAIL_STACK`), if one is named.
    pub mail_stack: Option<MailStack>,
    /// Egress on.
    pub egress: bool,
    /// Egress sources (empty: the tunnel address).
    pub egress_from: Vec<ipnet::IpNet>,
    /// Egress ports.
    pub egress_ports: Vec<u16>,
    /// Mail server probe interval.
    pub probe_interval: Duration,
    /// Forwarder per-port limit.
    pub forward_max_per_port: u32,
    /// Metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Uplink tunnel probe interval (outbound failover).
    pub uplink_probe_interval: Duration,
    /// How long a recovered uplink must answer before it is chosen again.
    pub uplink_holddown: Duration,
    /// This uplink's interface slot (issue 16): 0 the first VPS (the
    /// interface `tunnel_ifname` as configured), n ≥ 1 a further one. Not a
    /// setting: the agent sets it per uplink.
    pub uplink_slot: u16,
    /// Set when this uplink is one of several: its egress goes through the
    /// agent's outbound failover instead of its own routing. Not a setting.
    pub failover: Option<crate::failover::Hook>,
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "home".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl HomeFlags {
    /// Resolves against the config layers.
    pub fn resolve(&self, layers: &Layers) -> Result<HomeSettings, ConfigError> {
        let HumanDuration(reconnect_max) =
            layers.get_or("CERES_RECONNECT_MAX", self.reconnect_max.as_deref(), "30s")?;
        Ok(HomeSettings {
            control_address: layers
                .get("CERES_CONTROL_ADDRESS", self.control_address.as_deref())?,
            name: layers
                .get::<String>("CERES_NAME", self.name.as_deref())?
                .unwrap_or_else(hostname),
            reconnect_max,
            tunnel: layers
                .get_or::<Switch>("CERES_TUNNEL", self.tunnel.as_deref(), "on")?
                .0,
            tunnel_ifname: layers.get_or(
                "CERES_TUNNEL_IFNAME",
                self.tunnel_ifname.as_deref(),
                "ceres0",
            )?,
            wg_listen: layers.get_or("CERES_WG_LISTEN", self.wg_listen.as_deref(), "[::]:0")?,
            wg_uapi_dir: layers.get_or(
                "CERES_WG_UAPI_DIR",
                self.wg_uapi_dir.as_deref(),
                "/var/run/wireguard",
            )?,
            mail_server: layers.get_or(
                "CERES_MAIL_SERVER",
                self.mail_server.as_deref(),
                "127.0.0.1",
            )?,
            mail_stack: layers.get("CERES_MAIL_STACK", self.mail_stack.as_deref())?,
            egress: layers
                .get_or::<Switch>("CERES_EGRESS", self.egress.as_deref(), "on")?
                .0,
            egress_from: layers
                .get_or::<NetList>("CERES_EGRESS_FROM", self.egress_from.as_deref(), "")?
                .0,
            egress_ports: layers
                .get::<PortList>("CERES_EGRESS_PORTS", self.egress_ports.as_deref())?
                .map_or_else(
                    || ceres_relay::egress::DEFAULT_EGRESS_PORTS.to_vec(),
                    |p| p.0,
                ),
            probe_interval: layers
                .get_or::<HumanDuration>(
                    "CERES_PROBE_INTERVAL",
                    self.probe_interval.as_deref(),
                    "30s",
                )?
                .0,
            forward_max_per_port: layers.get_or(
                "CERES_FORWARD_MAX_PER_PORT",
                self.forward_max_per_port.as_deref(),
                "1000",
            )?,
            metrics_listen: layers
                .get_or::<ceres_daemon::metrics::ListenSetting>(
                    "CERES_METRICS_LISTEN",
                    self.metrics_listen.as_deref(),
                    "127.0.0.1:9478",
                )?
                .0,
            uplink_probe_interval: layers
                .get_or::<HumanDuration>(
                    "CERES_UPLINK_PROBE_INTERVAL",
                    self.uplink_probe_interval.as_deref(),
                    "2s",
                )?
                .0,
            uplink_holddown: layers
                .get_or::<HumanDuration>(
                    "CERES_UPLINK_HOLDDOWN",
                    self.uplink_holddown.as_deref(),
                    "30s",
                )?
                .0,
            uplink_slot: 0,
            failover: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::path::Path;

    use ceres_config::{EnvFile, Layers};

    use super::*;

    fn resolve(text: &str) -> Result<HomeSettings, ConfigError> {
        let file = EnvFile::parse(Path::new("/etc/ceres/ceres.env"), text).unwrap();
        HomeFlags::default().resolve(&Layers::from_parts(Some(file), BTreeMap::new()))
    }

    #[test]
    fn mail_stack_is_named_or_unset_and_a_bad_name_says_which_exist() {
        assert_eq!(resolve("").unwrap().mail_stack, None);
        assert_eq!(
            resolve("CERES_MAIL_STACK=docker-mailserver\n")
                .unwrap()
                .mail_stack,
            Some(MailStack::DockerMailserver)
        );
        let e = resolve("CERES_MAIL_STACK=mail-cow\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("CERES_MAIL_STACK=\"mail-cow\""), "{e}");
        assert!(
            e.contains("postfix-dovecot, mailcow, docker-mailserver, mailu, stalwart, iredmail"),
            "{e}"
        );
    }

    #[test]
    fn uplink_probe_and_holddown_have_defaults_and_can_be_set() {
        let s = resolve("").unwrap();
        assert_eq!(s.uplink_probe_interval, Duration::from_secs(2));
        assert_eq!(s.uplink_holddown, Duration::from_secs(30));
        let s = resolve("CERES_UPLINK_PROBE_INTERVAL=500ms\nCERES_UPLINK_HOLDDOWN=1m\n").unwrap();
        assert_eq!(s.uplink_probe_interval, Duration::from_millis(500));
        assert_eq!(s.uplink_holddown, Duration::from_secs(60));
    }
}
