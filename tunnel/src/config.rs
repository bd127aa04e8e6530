//! Typed configuration of the engine, and the small wg-style config file the
//! `ceres-wg` binary reads.

#[cfg(test)]
use std::net::Ipv4Addr;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::key::{PresharedKey, PrivateKey, PublicKey};

/// Default MTU of the tunnel device: 1500 minus the worst-case WireGuard over
/// IPv6 overhead (40 IPv6 + 8 UDP + 32 WireGuard), as wg-quick uses.
pub const DEFAULT_MTU: u16 = 1420;
/// Default UDP port of the VPS end.
pub const DEFAULT_PORT: u16 = 51820;
/// Default persistent keepalive of the home side, in seconds: short enough for
/// NAT/CGNAT mappings (often 30 s for UDP) to stay open.
pub const DEFAULT_KEEPALIVE_SECS: u16 = 25;
/// Where `wg` looks for userspace interfaces' API sockets.
pub const DEFAULT_UAPI_DIR: &str = "/var/run/wireguard";

/// Our side of the tunnel.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// TUN device name (at most 15 bytes); also names the UAPI socket.
    pub ifname: String,
    /// MTU of the TUN device.
    pub mtu: u16,
    /// Our tunnel address with its prefix (the prefix gives the on-link route).
    pub address: IpNet,
    /// More tunnel addresses on the same device, e.g. the IPv6 one of a
    /// dual-stack tunnel beside the IPv4 [`address`](Self::address).
    pub extra_addresses: Vec<IpNet>,
    /// UDP address to bind. `[::]:port` accepts IPv4 and IPv6 peers; port 0
    /// picks a free port (see [`crate::TunnelStats::listen_port`]).
    pub listen: SocketAddr,
    /// Our static private key.
    pub private_key: PrivateKey,
    /// Directory of the UAPI socket; `None` means [`DEFAULT_UAPI_DIR`].
    pub uapi_dir: Option<PathBuf>,
    /// Add routes in the main table for the peer's allowed networks (as
    /// wg-quick does). Off when the caller routes by policy instead — home
    /// allows 0.0.0.0/0 for outbound mail but must not move its default route.
    pub route_allowed_ips: bool,
}

impl TunnelConfig {
    /// A config with the defaults for everything but the name, address and key.
    pub fn new(ifname: impl Into<String>, address: IpNet, private_key: PrivateKey) -> Self {
        TunnelConfig {
            ifname: ifname.into(),
            mtu: DEFAULT_MTU,
            address,
            extra_addresses: Vec::new(),
            listen: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            private_key,
            uapi_dir: None,
            route_allowed_ips: true,
        }
    }

    /// Checks what the kernel would otherwise reject later with a vaguer error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self
                .ifname
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
        {
            return Err(ConfigError::Invalid {
                key: "ifname",
                reason: "1-15 characters of [A-Za-z0-9._-]".into(),
            });
        }
        // IPv6 needs 1280 on every link it uses.
        let min_mtu = if self.addresses().any(|a| a.addr().is_ipv6()) {
            1280
        } else {
            576
        };
        if self.mtu < min_mtu || self.mtu > 9000 {
            return Err(ConfigError::Invalid {
                key: "mtu",
                reason: format!("must be between {min_mtu} and 9000"),
            });
        }
        if self.extra_addresses.len() > 1
            || self.addresses().filter(|a| a.addr().is_ipv4()).count() > 1
        {
            return Err(ConfigError::Invalid {
                key: "address",
                reason: "at most one IPv4 and one IPv6 tunnel address".into(),
            });
        }
        Ok(())
    }

    /// Every tunnel address: [`address`](Self::address) first.
    pub fn addresses(&self) -> impl Iterator<Item = &IpNet> {
        std::iter::once(&self.address).chain(&self.extra_addresses)
    }
}

/// The one peer (the other agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Optional pre-shared key mixed into the handshake.
    pub preshared_key: Option<PresharedKey>,
    /// Where to send until the peer tells us otherwise (roaming). `None` on
    /// the VPS: it learns home's address from home's first packet.
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses the peer may use as source, and that we route to it.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives when idle; `None` disables them.
    pub persistent_keepalive: Option<u16>,
}

/// A configuration value is missing or wrong. Names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value does not parse or is out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A key in the file that we do not know (a typo must not pass silently).
    #[error("line {line}: unknown key {key:?} in section [{section}]")]
    UnknownKey {
        /// 1-based line number.
        line: usize,
        /// The section the key was in.
        section: String,
        /// The key as written.
        key: String,
    },
    /// A line that is neither a section, a comment nor `key = value`.
    #[error("line {line}: expected `[Section]` or `Key = Value`")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A required key is absent.
    #[error("missing {0}")]
    Missing(&'static str),
}

/// The `ceres-wg` config file, before key files are read. A subset of
/// wg-quick's format, except that keys are always referenced by file.
///
/// ```text
/// [Interface]
/// Name = ceres0
/// Address = 10.77.77.1/24
/// ListenPort = 51820
/// PrivateKeyFile = /var/lib/ceres/wg.key
/// MTU = 1420
///
/// [Peer]
/// PublicKey = <base64>
/// PresharedKeyFile = /var/lib/ceres/wg.psk
/// Endpoint = 192.0.2.1:51820
/// AllowedIPs = 10.77.77.2/32
/// PersistentKeepalive = 25
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// `Name`.
    pub name: Option<String>,
    /// `Address`.
    pub address: Option<IpNet>,
    /// `ListenPort`.
    pub listen_port: Option<u16>,
    /// `ListenAddress` (our extension; default `::`, which also takes IPv4).
    pub listen_address: Option<IpAddr>,
    /// `PrivateKeyFile`.
    pub private_key_file: Option<PathBuf>,
    /// `MTU`.
    pub mtu: Option<u16>,
    /// `[Peer] PublicKey`.
    pub peer_public_key: Option<PublicKey>,
    /// `[Peer] PresharedKeyFile`.
    pub preshared_key_file: Option<PathBuf>,
    /// `[Peer] Endpoint` (an IP literal and port; no DNS).
    pub endpoint: Option<SocketAddr>,
    /// `[Peer] AllowedIPs`, comma separated.
    pub allowed_ips: Vec<IpNet>,
    /// `[Peer] PersistentKeepalive`, seconds; 0 or `off` disables.
    pub persistent_keepalive: Option<u16>,
    /// Whether a `[Peer]` section was present.
    pub has_peer: bool,
}

fn invalid(key: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.to_string(),
    }
}

/// Parses a comma-separated list of networks; a bare address means a host route.
pub fn parse_allowed_ips(s: &str) -> Result<Vec<IpNet>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid("AllowedIPs", format!("{p:?} is not a network")))
        })
        .collect()
}

/// Parses a keepalive value in seconds; `0` and `off` mean none.
pub fn parse_keepalive(s: &str) -> Result<Option<u16>, ConfigError> {
    match s.trim() {
        "off" | "0" => Ok(None),
        v => v
            .parse::<u16>()
            .map(Some)
            .map_err(|_| invalid("PersistentKeepalive", "seconds 0-65535 or off")),
    }
}

impl FileConfig {
    /// Parses the file's text. Unknown sections and keys are errors.
    pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        let mut c = FileConfig::default();
        let mut section = String::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                match section.as_str() {
                    "Interface" => {}
                    "Peer" if !c.has_peer => c.has_peer = true,
                    "Peer" => return Err(invalid("Peer", "only one [Peer] is supported")),
                    _ => {
                        return Err(ConfigError::UnknownKey {
                            line: line_no,
                            section: String::new(),
                            key: section,
                        });
                    }
                }
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or(ConfigError::Syntax { line: line_no })?;
            match (section.as_str(), key) {
                ("Interface", "Name") => c.name = Some(value.to_string()),
                ("Interface", "Address") => {
                    c.address = Some(value.parse().map_err(|_| {
                        invalid(
                            "Address",
                            "expected an address with prefix, e.g. 10.77.77.1/24",
                        )
                    })?)
                }
                ("Interface", "ListenPort") => {
                    c.listen_port = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("ListenPort", "0-65535"))?,
                    )
                }
                ("Interface", "ListenAddress") => {
                    c.listen_address = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("ListenAddress", "expected an IP address"))?,
                    )
                }
                ("Interface", "PrivateKeyFile") => c.private_key_file = Some(value.into()),
                ("Interface", "MTU") => {
                    c.mtu = Some(value.parse().map_err(|_| invalid("MTU", "a number"))?)
                }
                ("Peer", "PublicKey") => {
                    c.peer_public_key = Some(value.parse().map_err(|e| invalid("PublicKey", e))?)
                }
                ("Peer", "PresharedKeyFile") => c.preshared_key_file = Some(value.into()),
                ("Peer", "Endpoint") => {
                    c.endpoint = Some(value.parse().map_err(|_| {
                        invalid(
                            "Endpoint",
                            "expected IP:port or [IPv6]:port (no host names)",
                        )
                    })?)
                }
                ("Peer", "AllowedIPs") => c.allowed_ips.extend(parse_allowed_ips(value)?),
                ("Peer", "PersistentKeepalive") => c.persistent_keepalive = parse_keepalive(value)?,
                _ => {
                    return Err(ConfigError::UnknownKey {
                        line: line_no,
                        section: section.clone(),
                        key: key.to_string(),
                    });
                }
            }
        }
        Ok(c)
    }

    /// The UDP address to bind: `ListenAddress` (default `::`) and `ListenPort`.
    pub fn listen(&self) -> SocketAddr {
        let ip = self
            .listen_address
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        SocketAddr::new(ip, self.listen_port.unwrap_or(0))
    }
}

/// An IPv4-mapped IPv6 socket address (what a dual-stack socket reports for an
/// IPv4 peer) turned back into plain IPv4, so endpoints compare and print the
/// way users wrote them.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Whether `ip` lies in any of `nets`. Linear scan: a CERES peer has one or two
/// allowed networks, far below the size where a trie pays off.
#[inline]
pub(crate) fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

    const SAMPLE: &str = "\
# comment
[Interface]
Name = ceres0
Address = 10.77.77.1/24
ListenPort = 51820
PrivateKeyFile = /k
MTU = 1380

[Peer]
PublicKey = hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
PresharedKeyFile = /p
Endpoint = [2001:db8::1]:51820
AllowedIPs = 10.77.77.2/32, 2001:db8:77::2, 10.1.2.3/16
PersistentKeepalive = 25
";

    #[test]
    fn parses_sample() {
        let c = FileConfig::parse(SAMPLE).unwrap();
        assert_eq!(c.name.as_deref(), Some("ceres0"));
        assert_eq!(c.address.unwrap().to_string(), "10.77.77.1/24");
        assert_eq!(c.listen().to_string(), "[::]:51820");
        assert_eq!(c.mtu, Some(1380));
        assert_eq!(c.endpoint.unwrap().to_string(), "[2001:db8::1]:51820");
        let nets: Vec<String> = c.allowed_ips.iter().map(|n| n.to_string()).collect();
        // Host bits are cleared, as wg does.
        assert_eq!(nets, ["10.77.77.2/32", "2001:db8:77::2/128", "10.1.0.0/16"]);
        assert_eq!(c.persistent_keepalive, Some(25));
        assert!(c.has_peer);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = FileConfig::parse("[Interface]\nListenPrt = 1\n").unwrap_err();
        assert!(err.to_string().contains("ListenPrt"), "{err}");
        let err = FileConfig::parse("[Peer]\nPrivateKey = x\n").unwrap_err();
        assert!(err.to_string().contains("PrivateKey"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(FileConfig::parse("[Peer]\nEndpoint = example.com:1\n").is_err());
        assert!(FileConfig::parse("[Peer]\nAllowedIPs = 10.0.0.0/33\n").is_err());
        assert!(FileConfig::parse("[Interface]\nnonsense\n").is_err());
        assert!(FileConfig::parse("[Peer]\n[Peer]\n").is_err());
        assert_eq!(parse_keepalive("off").unwrap(), None);
        assert_eq!(parse_keepalive("0").unwrap(), None);
    }

    #[test]
    fn tunnel_config_validation() {
        let mut c = TunnelConfig::new(
            "ceres0",
            "10.0.0.1/24".parse().unwrap(),
            PrivateKey::generate(),
        );
        assert!(c.validate().is_ok());
        c.ifname = "a-name-that-is-too-long".into();
        assert!(c.validate().is_err());
        c.ifname = "ok0".into();
        c.address = "2001:db8::1/64".parse().unwrap();
        c.mtu = 1200;
        assert!(c.validate().is_err());
        // Dual stack: the IPv6 address raises the minimum MTU too.
        c.address = "10.0.0.1/24".parse().unwrap();
        assert!(c.validate().is_ok());
        c.extra_addresses = vec!["fd77::1/64".parse().unwrap()];
        assert!(c.validate().is_err());
        c.mtu = 1420;
        assert!(c.validate().is_ok());
        c.extra_addresses.push("10.0.0.2/24".parse().unwrap());
        assert!(c.validate().is_err());
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let a: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
        assert_eq!(canonical(a).to_string(), "192.0.2.1:5");
        assert!(allowed(
            &["10.0.0.0/8".parse().unwrap()],
            "10.2.3.4".parse().unwrap()
        ));
        assert!(!allowed(&["10.0.0.0/8".parse().unwrap()], ANY_V4));
    }
}
