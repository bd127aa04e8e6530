//! The cross-platform userspace API socket (`<dir>/<ifname>.sock`) that `wg`
//! talks to, so `wg show IFNAME` works on our interface. We answer `get=1` in
//! the standard format. `set=1` is refused (configuration comes from the
//! agents, not from `wg set`). One extension: `stats=1` returns our full
//! counters (drops by reason) as one JSON line, for tests and debugging.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PeerConfig;
use crate::engine::Shared;
use crate::stats::TunnelStats;

/// `EINVAL`-style error for requests we do not serve (the UAPI reports errno).
const ERRNO_UNSUPPORTED: i32 = libc::EPROTO;

/// Binds the socket: the directory is created 0700 (so nobody else can even
/// reach the socket while we set its mode), the socket ends up 0600. A stale
/// socket left by a crashed process is replaced; a live one is an error, since
/// two engines with one name would answer for each other.
pub(crate) fn bind(dir: &Path, path: &Path) -> io::Result<UnixListener> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process serves this interface name",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub(crate) async fn serve(listener: UnixListener, shared: Arc<Shared>, token: CancellationToken) {
    let conns = TaskTracker::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    conns.spawn(handle(stream, shared.clone(), token.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "UAPI accept failed");
                    break;
                }
            }
        }
    }
    conns.close();
    conns.wait().await;
}

async fn handle(stream: UnixStream, shared: Arc<Shared>, token: CancellationToken) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    loop {
        let first = tokio::select! {
            _ = token.cancelled() => return,
            l = lines.next_line() => l,
        };
        let Ok(Some(op)) = first else { return };
        // Read the rest of the request up to the blank line that ends it.
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if !l.is_empty() => continue,
                Ok(Some(_)) => break,
                _ => return,
            }
        }
        let reply = match op.as_str() {
            "get=1" => {
                let snap = shared.uapi_snapshot();
                format_get(&snap.private_key_hex, &snap.stats, snap.peer.as_ref())
            }
            "stats=1" => match serde_json::to_string(&shared.stats()) {
                Ok(j) => format!("ceres_stats={j}\nerrno=0\n\n"),
                Err(_) => format!("errno={}\n\n", libc::EIO),
            },
            _ => format!("errno={ERRNO_UNSUPPORTED}\n\n"),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn endpoint_text(ep: SocketAddr) -> String {
    // wg parses `[v6]:port` and `v4:port`, which is SocketAddr's Display.
    ep.to_string()
}

/// The `get=1` reply, per the cross-platform userspace API spec.
pub(crate) fn format_get(
    private_key_hex: &str,
    stats: &TunnelStats,
    peer: Option<&(PeerConfig, Option<SocketAddr>)>,
) -> String {
    let mut s = String::with_capacity(512);
    let _ = writeln!(s, "private_key={private_key_hex}");
    let _ = writeln!(s, "listen_port={}", stats.listen_port);
    if let Some((p, ep)) = peer {
        let _ = writeln!(s, "public_key={}", p.public_key.to_hex());
        if let Some(psk) = &p.preshared_key {
            let _ = writeln!(s, "preshared_key={}", hex::encode(psk.0));
        }
        let _ = writeln!(s, "protocol_version=1");
        if let Some(ep) = ep {
            let _ = writeln!(s, "endpoint={}", endpoint_text(*ep));
        }
        let (sec, nsec) = stats
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", stats.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", stats.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive.unwrap_or(0)
        );
        for net in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{PresharedKey, PublicKey};
    use crate::stats::DropStats;
    use std::time::{Duration, SystemTime};

    #[test]
    fn get_reply_has_the_standard_fields_in_order() {
        let pk = PublicKey([7; 32]);
        let stats = TunnelStats {
            ifname: "ceres0".into(),
            public_key: PublicKey([1; 32]),
            listen_port: 51820,
            peer_public_key: Some(pk),
            endpoint: None,
            last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
            last_handshake_age_secs: Some(1.0),
            rx_bytes: 10,
            rx_packets: 1,
            tx_bytes: 20,
            tx_packets: 2,
            persistent_keepalive: Some(25),
            dropped: DropStats::default(),
            rotation: Default::default(),
        };
        let peer = PeerConfig {
            public_key: pk,
            preshared_key: Some(PresharedKey([9; 32])),
            endpoint: None,
            allowed_ips: vec![
                "10.77.77.2/32".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
        };
        let ep: SocketAddr = "[2001:db8::2]:51820".parse().unwrap();
        let text = format_get("ab", &stats, Some(&(peer, Some(ep))));
        let want = format!(
            "private_key=ab\nlisten_port=51820\npublic_key={}\npreshared_key={}\n\
             protocol_version=1\nendpoint=[2001:db8::2]:51820\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=25\n\
             allowed_ip=10.77.77.2/32\nallowed_ip=2001:db8::/64\nerrno=0\n\n",
            "07".repeat(32),
            "09".repeat(32),
        );
        assert_eq!(text, want);
        let _ = SystemTime::now();
    }

    #[test]
    fn get_reply_without_peer() {
        let stats = TunnelStats {
            ifname: "x".into(),
            public_key: PublicKey([1; 32]),
            listen_port: 1,
            peer_public_key: None,
            endpoint: None,
            last_handshake: None,
            last_handshake_age_secs: None,
            rx_bytes: 0,
            rx_packets: 0,
            tx_bytes: 0,
            tx_packets: 0,
            persistent_keepalive: None,
            dropped: DropStats::default(),
            rotation: Default::default(),
        };
        assert_eq!(
            format_get("00", &stats, None),
            "private_key=00\nlisten_port=1\nerrno=0\n\n"
        );
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("wg");
        let path = sub.join("t0.sock");
        let l = bind(&sub, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        // A live socket refuses a second engine with the same name.
        assert!(bind(&sub, &path).is_err());
        drop(l);
        // The file is left behind by the dropped listener: stale, replaced.
        assert!(bind(&sub, &path).is_ok());
    }
}
