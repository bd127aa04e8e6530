//! Reading a WireGuard interface through its UAPI socket, as `wg show` does:
//! the agents' local `status` uses it so it needs neither `wireguard-tools`
//! nor the control plane. Works with any engine that serves the standard
//! `get=1` (ours, wireguard-go, boringtun-cli).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A handshake older than this means no session: WireGuard rejects a session
/// key after 180 s (`REJECT_AFTER_TIME`), and with keepalives a live tunnel
/// re-handshakes every 120 s.
pub const HANDSHAKE_STALE_SECS: u64 = 180;

/// The socket path of interface `ifname` under `dir`.
pub fn socket_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.sock"))
}

/// What `get=1` says about the interface (public parts only: the private and
/// pre-shared keys in the reply are never kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UapiDevice {
    /// UDP port the interface listens on.
    pub listen_port: u16,
    /// The peer, if one is configured.
    pub peer: Option<UapiPeer>,
}

/// One peer from `get=1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UapiPeer {
    /// The peer's public key, hex.
    pub public_key_hex: String,
    /// Where datagrams to the peer go, if known.
    pub endpoint: Option<String>,
    /// Unix seconds of the last completed handshake; 0 if none.
    pub last_handshake_unix: i64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

impl UapiPeer {
    /// Seconds since the last handshake at `now`, if there was one.
    pub fn handshake_age_secs(&self, now: SystemTime) -> Option<u64> {
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
        (self.last_handshake_unix > 0).then(|| (now - self.last_handshake_unix).max(0) as u64)
    }

    /// A handshake completed within [`HANDSHAKE_STALE_SECS`].
    pub fn is_up(&self, now: SystemTime) -> bool {
        self.handshake_age_secs(now)
            .is_some_and(|a| a < HANDSHAKE_STALE_SECS)
    }
}

/// Asks the socket at `path` for `get=1`, waiting at most `timeout` per read
/// or write. Blocking: call it off async workers.
pub fn query(path: &Path, timeout: Duration) -> std::io::Result<UapiDevice> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"get=1\n\n")?;
    let mut text = String::new();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\n" {
            break;
        }
        text.push_str(&line);
    }
    parse_get(&text)
}

/// Parses a `get=1` reply.
pub fn parse_get(text: &str) -> std::io::Result<UapiDevice> {
    let mut dev = UapiDevice::default();
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once('=').ok_or_else(|| bad(line))?;
        let num = || v.parse::<u64>().map_err(|_| bad(line));
        match k {
            "listen_port" => dev.listen_port = v.parse().map_err(|_| bad(line))?,
            "public_key" => {
                dev.peer = Some(UapiPeer {
                    public_key_hex: v.to_owned(),
                    ..Default::default()
                })
            }
            "errno" if v != "0" => {
                return Err(std::io::Error::other(format!(
                    "the interface answered errno={v}"
                )));
            }
            _ => {
                let Some(p) = dev.peer.as_mut() else { continue };
                match k {
                    "endpoint" => p.endpoint = Some(v.to_owned()),
                    "last_handshake_time_sec" => p.last_handshake_unix = num()? as i64,
                    "rx_bytes" => p.rx_bytes = num()?,
                    "tx_bytes" => p.tx_bytes = num()?,
                    _ => {}
                }
            }
        }
    }
    Ok(dev)
}

/// The tunnel as its UAPI socket answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TunnelPart {
    /// Interface name.
    pub ifname: String,
    /// A handshake within the last 180 s.
    pub up: bool,
    /// Seconds since the last handshake.
    pub last_handshake_age_secs: Option<u64>,
    /// The peer's endpoint.
    pub endpoint: Option<String>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Why it could not be read (no socket: the tunnel is not running).
    pub error: Option<String>,
}

impl TunnelPart {
    /// From a UAPI answer.
    pub fn from_uapi(ifname: &str, r: std::io::Result<UapiDevice>, now: SystemTime) -> Self {
        let mut t = TunnelPart {
            ifname: ifname.to_owned(),
            up: false,
            last_handshake_age_secs: None,
            endpoint: None,
            rx_bytes: 0,
            tx_bytes: 0,
            error: None,
        };
        match r {
            Ok(d) => match d.peer {
                Some(p) => {
                    t.up = p.is_up(now);
                    t.last_handshake_age_secs = p.handshake_age_secs(now);
                    t.endpoint = p.endpoint;
                    t.rx_bytes = p.rx_bytes;
                    t.tx_bytes = p.tx_bytes;
                }
                None => t.error = Some("no peer configured yet".into()),
            },
            Err(e) => t.error = Some(format!("no answer from its UAPI socket: {e}")),
        }
        t
    }
}

/// Reads the tunnel through its UAPI socket, off the caller's thread's
/// worries: a short timeout so a wedged engine cannot hang `status`.
pub fn read_tunnel(dir: &Path, ifname: &str, now: SystemTime) -> TunnelPart {
    let path = socket_path(dir, ifname);
    TunnelPart::from_uapi(ifname, query(&path, Duration::from_secs(2)), now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_get_reply_and_keeps_no_secrets() {
        let reply = "private_key=ab\nlisten_port=51820\npublic_key=0707\npreshared_key=cd\n\
                     protocol_version=1\nendpoint=192.0.2.1:4000\nlast_handshake_time_sec=1800000000\n\
                     last_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n\
                     persistent_keepalive_interval=25\nallowed_ip=10.77.77.1/32\nerrno=0\n";
        let d = parse_get(reply).unwrap();
        assert_eq!(d.listen_port, 51820);
        let p = d.peer.unwrap();
        assert_eq!(p.public_key_hex, "0707");
        assert_eq!(p.endpoint.as_deref(), Some("192.0.2.1:4000"));
        assert_eq!((p.rx_bytes, p.tx_bytes), (20, 10));
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert!(p.is_up(at(1_800_000_010)));
        assert!(!p.is_up(at(1_800_000_200)));
        assert!(!format!("{:?}", parse_get(reply).unwrap()).contains("cd"));
    }

    #[test]
    fn no_peer_and_errors() {
        let d = parse_get("private_key=ab\nlisten_port=1\nerrno=0\n").unwrap();
        assert_eq!(d.peer, None);
        assert!(parse_get("errno=71\n").is_err());
    }
}
