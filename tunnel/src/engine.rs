//! The engine: one TUN device, one UDP socket, one peer, and three workers —
//! an encrypt thread (TUN -> UDP), a decrypt thread (UDP -> TUN) and a timer
//! task — plus the UAPI socket.
//!
//! boringtun's `Tunn` needs `&mut self` for both directions, so it sits behind
//! one mutex. Each direction takes that lock once per *batch* (a GSO
//! super-packet split into up to 128 segments on the way out, a `recvmmsg`
//! with GRO on the way in), never per packet, and does all system calls with
//! the lock released. That keeps the two directions from contending.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::config::{ConfigError, DEFAULT_UAPI_DIR, PeerConfig, TunnelConfig, allowed};
use crate::key::{PrivateKey, PublicKey};
use crate::stats::{Counters, DropReason, DropTally, TunnelStats};
use crate::uapi;
use crate::udp;

/// How often boringtun's timers are polled. boringtun exposes no "next
/// deadline", so like wireguard's own userspace implementations we tick; the
/// protocol's timers are whole seconds (keepalive 10 s, rekey 5 s, persistent
/// keepalive >= 1 s), so 100 ms keeps them within 10 % at ten wake-ups a second.
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Headroom in front of each packet written to the TUN device: the virtio-net
/// header that offload mode puts before every packet.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;

/// Decrypted packets gathered before one GRO-coalescing write to the TUN device.
const TUN_WRITE_BATCH: usize = 256;

/// Errors starting or reconfiguring a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The configuration is invalid.
    #[error("invalid tunnel configuration: {0}")]
    Config(#[from] ConfigError),
    /// The TUN device could not be created or configured (needs root or
    /// CAP_NET_ADMIN and /dev/net/tun).
    #[error("TUN device {ifname}: {source}")]
    Tun {
        /// Interface name.
        ifname: String,
        /// Underlying error.
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("UDP bind {addr}: {source}")]
    Udp {
        /// Address we tried to bind.
        addr: SocketAddr,
        /// Underlying error.
        source: io::Error,
    },
    /// The userspace API socket could not be created.
    #[error("UAPI socket {path}: {source}")]
    Uapi {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A route for an allowed network could not be set.
    #[error("route {net} via {ifname}: {reason}")]
    Route {
        /// The network.
        net: IpNet,
        /// Interface name.
        ifname: String,
        /// What `ip route` said.
        reason: String,
    },
    /// A worker thread or the stop signal could not be created.
    #[error("starting worker: {0}")]
    Worker(io::Error),
}

/// The peer and its cryptographic state. Guarded by one mutex (see module docs).
struct PeerSlot {
    config: PeerConfig,
    /// Current endpoint: configured, then the source of the last
    /// authenticated datagram (roaming).
    endpoint: Option<SocketAddr>,
    tunn: Tunn,
}

/// State shared by the workers and the handle.
pub(crate) struct Shared {
    pub ifname: String,
    pub private_key: PrivateKey,
    pub public_key: PublicKey,
    pub listen_port: u16,
    mtu: u16,
    address: IpNet,
    /// Whether the peer's allowed networks get routes in the main table.
    route_allowed_ips: bool,
    sock: UdpSocket,
    gro: bool,
    tun: SyncDevice,
    peer: Mutex<Option<PeerSlot>>,
    pub counters: Counters,
    /// Written once to stop the data-path threads (they poll it with their fd).
    stop: OwnedFd,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("ifname", &self.ifname)
            .field("public_key", &self.public_key)
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock_peer(&self) -> MutexGuard<'_, Option<PeerSlot>> {
        // A panic in another holder leaves boringtun's state as consistent as
        // it ever is between calls; keep the tunnel running.
        self.peer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal_stop(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Everything the UAPI `get` and [`Tunnel::stats`] report.
    pub(crate) fn stats(&self) -> TunnelStats {
        let g = self.lock_peer();
        let (peer_public_key, endpoint, last, keepalive) = match g.as_ref() {
            Some(s) => (
                Some(s.config.public_key),
                s.endpoint,
                s.tunn.time_since_last_handshake(),
                s.config.persistent_keepalive,
            ),
            None => (None, None, None, None),
        };
        drop(g);
        let c = &self.counters;
        use std::sync::atomic::Ordering::Relaxed;
        TunnelStats {
            ifname: self.ifname.clone(),
            public_key: self.public_key,
            listen_port: self.listen_port,
            peer_public_key,
            endpoint,
            last_handshake: last.and_then(|d| SystemTime::now().checked_sub(d)),
            last_handshake_age_secs: last.map(|d| d.as_secs_f64()),
            rx_bytes: c.rx_bytes.load(Relaxed),
            rx_packets: c.rx_packets.load(Relaxed),
            tx_bytes: c.tx_bytes.load(Relaxed),
            tx_packets: c.tx_packets.load(Relaxed),
            persistent_keepalive: keepalive,
            dropped: c.drops(),
        }
    }

    pub(crate) fn peer_view(&self) -> Option<(PeerConfig, Option<SocketAddr>)> {
        self.lock_peer()
            .as_ref()
            .map(|s| (s.config.clone(), s.endpoint))
    }
}

/// A running tunnel. Dropping it stops the workers (without waiting); call
/// [`Tunnel::shutdown`] to wait for them and remove the UAPI socket.
#[derive(Debug)]
pub struct Tunnel {
    shared: Arc<Shared>,
    token: CancellationToken,
    tasks: TaskTracker,
    threads: Vec<JoinHandle<()>>,
    uapi_path: Option<PathBuf>,
}

fn new_tunn(private_key: &PrivateKey, peer: &PeerConfig) -> Tunn {
    // The session index space is 24 bits (boringtun shifts it left by 8).
    let index = rand::random::<u32>() >> 8;
    Tunn::new(
        private_key.secret().clone(),
        x25519::PublicKey::from(peer.public_key.0),
        peer.preshared_key.as_ref().map(|k| k.0),
        peer.persistent_keepalive,
        index,
        None,
    )
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `ip route <op> <net> dev <ifname>`. Routes to the peer's allowed
/// networks are what makes the kernel hand their traffic to us.
fn route(op: &str, net: IpNet, ifname: &str) -> Result<(), TunnelError> {
    let out = std::process::Command::new("ip")
        .args([if net.addr().is_ipv6() { "-6" } else { "-4" }, "route", op])
        .arg(net.to_string())
        .args(["dev", ifname])
        .output()
        .map_err(|e| TunnelError::Route {
            net,
            ifname: ifname.into(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TunnelError::Route {
            net,
            ifname: ifname.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The allowed networks that need a route: the on-link prefix of our own
/// address already has one.
fn routed_nets(address: IpNet, allowed_ips: &[IpNet]) -> Vec<IpNet> {
    let onlink = address.trunc();
    allowed_ips
        .iter()
        .copied()
        .filter(|n| *n != onlink && !(onlink.contains(n) && n.prefix_len() >= onlink.prefix_len()))
        .collect()
}

impl Tunnel {
    /// Creates the TUN device (address, MTU, link up, routes for the peer's
    /// allowed networks), binds the UDP socket, opens the UAPI socket and
    /// starts the workers. The tunnel stops when `token` is cancelled.
    ///
    /// Needs a tokio runtime (the UAPI server and timer are tasks; the data
    /// path runs on two dedicated OS threads) and CAP_NET_ADMIN.
    pub async fn start(
        config: TunnelConfig,
        peer: Option<PeerConfig>,
        token: CancellationToken,
    ) -> Result<Tunnel, TunnelError> {
        config.validate()?;
        let tun_err = |source| TunnelError::Tun {
            ifname: config.ifname.clone(),
            source,
        };
        let mut builder = tun_rs::DeviceBuilder::new()
            .name(config.ifname.clone())
            .mtu(config.mtu)
            .offload(true)
            .enable(true);
        builder = match config.address {
            IpNet::V4(n) => builder.ipv4(n.addr(), n.prefix_len(), None),
            IpNet::V6(n) => builder.ipv6(n.addr(), n.prefix_len()),
        };
        let tun = builder.build_sync().map_err(tun_err)?;
        tun.set_nonblocking(true).map_err(tun_err)?;

        let (sock, gro) = udp::bind(config.listen).map_err(|source| TunnelError::Udp {
            addr: config.listen,
            source,
        })?;
        let listen_port = sock
            .local_addr()
            .map_err(|source| TunnelError::Udp {
                addr: config.listen,
                source,
            })?
            .port();

        let public_key = config.private_key.public_key();
        let shared = Arc::new(Shared {
            ifname: config.ifname.clone(),
            public_key,
            listen_port,
            mtu: config.mtu,
            address: config.address,
            route_allowed_ips: config.route_allowed_ips,
            sock,
            gro,
            tun,
            peer: Mutex::new(None),
            counters: Counters::default(),
            stop: eventfd().map_err(TunnelError::Worker)?,
            private_key: config.private_key,
        });
        let token = token.child_token();
        let mut tunnel = Tunnel {
            shared: shared.clone(),
            token: token.clone(),
            tasks: TaskTracker::new(),
            threads: Vec::new(),
            uapi_path: None,
        };
        if let Some(p) = peer {
            tunnel.set_peer(p)?;
        }

        let dir = config
            .uapi_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_UAPI_DIR));
        let path = dir.join(format!("{}.sock", config.ifname));
        let listener = uapi::bind(&dir, &path).map_err(|source| TunnelError::Uapi {
            path: path.clone(),
            source,
        })?;
        tunnel.uapi_path = Some(path);
        tunnel
            .tasks
            .spawn(uapi::serve(listener, shared.clone(), token.clone()));
        tunnel
            .tasks
            .spawn(timer_loop(shared.clone(), token.clone()));
        // The data-path threads block in poll(); they hear about cancellation
        // through the eventfd this task writes.
        let s = shared.clone();
        let t = token.clone();
        tunnel.tasks.spawn(async move {
            t.cancelled().await;
            s.signal_stop();
        });

        for (name, f) in [
            ("ceres-wg-encrypt", encrypt_loop as fn(Arc<Shared>)),
            ("ceres-wg-decrypt", decrypt_loop as fn(Arc<Shared>)),
        ] {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(s))
                .map_err(TunnelError::Worker)?;
            tunnel.threads.push(h);
        }
        tracing::info!(
            ifname = %shared.ifname,
            public_key = %shared.public_key,
            listen_port,
            gro,
            mtu = shared.mtu,
            "tunnel up"
        );
        Ok(tunnel)
    }

    /// Installs or replaces the peer. A different public key, pre-shared key or
    /// keepalive starts a fresh boringtun state (new handshake); otherwise the
    /// session is kept and only the endpoint and allowed networks change.
    /// Routes are updated with `ip route` (a short blocking call).
    pub fn set_peer(&self, peer: PeerConfig) -> Result<(), TunnelError> {
        let sh = &self.shared;
        let mut g = sh.lock_peer();
        let old_nets = g
            .as_ref()
            .filter(|_| sh.route_allowed_ips)
            .map(|s| routed_nets(sh.address, &s.config.allowed_ips))
            .unwrap_or_default();
        let new_nets = if sh.route_allowed_ips {
            routed_nets(sh.address, &peer.allowed_ips)
        } else {
            Vec::new()
        };
        let keep_session = g.as_ref().is_some_and(|s| {
            s.config.public_key == peer.public_key
                && s.config.preshared_key == peer.preshared_key
                && s.config.persistent_keepalive == peer.persistent_keepalive
        });
        let mut handshake = [0u8; 256];
        let mut first = None;
        match g.as_mut() {
            Some(slot) if keep_session => {
                if peer.endpoint.is_some() {
                    slot.endpoint = peer.endpoint;
                }
                slot.config = peer;
            }
            _ => {
                let mut tunn = new_tunn(&sh.private_key, &peer);
                // A side that knows where its peer is and keeps the path open
                // (home) handshakes at once instead of waiting for traffic.
                if peer.endpoint.is_some() && peer.persistent_keepalive.is_some() {
                    if let TunnResult::WriteToNetwork(p) =
                        tunn.format_handshake_initiation(&mut handshake, false)
                    {
                        first = Some(p.len());
                    }
                }
                tracing::info!(ifname = %sh.ifname, peer = %peer.public_key, endpoint = ?peer.endpoint, "peer configured");
                *g = Some(PeerSlot {
                    endpoint: peer.endpoint,
                    config: peer,
                    tunn,
                });
            }
        }
        let endpoint = g.as_ref().and_then(|s| s.endpoint);
        drop(g);
        if let (Some(n), Some(ep)) = (first, endpoint) {
            let _ = sh.sock.send_to(&handshake[..n], ep);
        }
        for net in old_nets.iter().filter(|n| !new_nets.contains(n)) {
            let _ = route("del", *net, &sh.ifname);
        }
        for net in &new_nets {
            route("replace", *net, &sh.ifname)?;
        }
        Ok(())
    }

    /// Starts a fresh handshake with the current peer right away, dropping
    /// the current session keys. For when the peer is known to have lost its
    /// state (it restarted): waiting for WireGuard's own timers would take
    /// about 15 s of silence. Queued packets go out once the handshake is done.
    pub fn rehandshake(&self) {
        let sh = &self.shared;
        let mut g = sh.lock_peer();
        let Some(slot) = g.as_mut() else { return };
        let mut tunn = new_tunn(&sh.private_key, &slot.config);
        let mut buf = [0u8; 256];
        let first = match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => Some(p.len()),
            _ => None,
        };
        slot.tunn = tunn;
        let endpoint = slot.endpoint;
        drop(g);
        if let (Some(n), Some(ep)) = (first, endpoint) {
            let _ = sh.sock.send_to(&buf[..n], ep);
        }
    }

    /// A snapshot of counters, endpoint and handshake age.
    pub fn stats(&self) -> TunnelStats {
        self.shared.stats()
    }

    /// Our static public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.public_key
    }

    /// The UDP port we listen on.
    pub fn listen_port(&self) -> u16 {
        self.shared.listen_port
    }

    /// The UAPI socket's path.
    pub fn uapi_path(&self) -> Option<&std::path::Path> {
        self.uapi_path.as_deref()
    }

    /// Stops the workers, waits for them, and removes the UAPI socket. The TUN
    /// device goes away with the last reference to it.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        self.shared.signal_stop();
        self.tasks.close();
        self.tasks.wait().await;
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        if let Some(p) = self.uapi_path.take() {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!(ifname = %self.shared.ifname, "tunnel down");
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.token.cancel();
        self.shared.signal_stop();
        if let Some(p) = self.uapi_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn timer_loop(shared: Arc<Shared>, token: CancellationToken) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 256];
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut g = shared.lock_peer();
        let Some(slot) = g.as_mut() else { continue };
        let out = match slot.tunn.update_timers(&mut buf) {
            TunnResult::WriteToNetwork(p) => slot.endpoint.map(|ep| (p.len(), ep)),
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, "timer");
                None
            }
            _ => None,
        };
        drop(g);
        if let Some((n, ep)) = out {
            if let Err(e) = shared.sock.send_to(&buf[..n], ep) {
                tracing::debug!(error = %e, endpoint = %ep, "timer send failed");
            }
        }
    }
}

/// TUN -> encrypt -> UDP.
fn encrypt_loop(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let stop = shared.stop.as_raw_fd();
    let tun_fd: RawFd = shared.tun.as_raw_fd();
    let mtu = shared.mtu as usize;
    // Room for the WireGuard header, tag and padding to 16 bytes, and never
    // less than a handshake initiation.
    let stride = (mtu + 32 + 16).max(148).next_multiple_of(64);
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs = vec![vec![0u8; mtu + 64]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut out = vec![0u8; stride * IDEAL_BATCH_SIZE];
    let mut lens = [0usize; IDEAL_BATCH_SIZE];
    let mut sender = match udp::Sender::new(&shared.sock) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "encrypt thread cannot start");
            return;
        }
    };
    loop {
        let n = match shared
            .tun
            .recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !udp::wait(tun_fd, libc::POLLIN, stop) {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EBADFD) {
                    tracing::error!(error = %e, "TUN device gone");
                    return;
                }
                tracing::debug!(error = %e, "TUN read error");
                continue;
            }
        };
        let mut k = 0;
        let mut no_route = 0u64;
        let endpoint;
        {
            let mut g = shared.lock_peer();
            let Some(slot) = g.as_mut() else {
                shared
                    .counters
                    .tx_dropped_no_route
                    .fetch_add(n as u64, Relaxed);
                continue;
            };
            endpoint = slot.endpoint;
            for i in 0..n {
                let pkt = &bufs[i][..sizes[i]];
                let routable =
                    Tunn::dst_address(pkt).is_some_and(|d| allowed(&slot.config.allowed_ips, d));
                if !routable || pkt.len() + 48 > stride {
                    no_route += 1;
                    continue;
                }
                match slot
                    .tunn
                    .encapsulate(pkt, &mut out[k * stride..(k + 1) * stride])
                {
                    TunnResult::WriteToNetwork(p) => {
                        lens[k] = p.len();
                        k += 1;
                    }
                    TunnResult::Err(e) => tracing::debug!(error = ?e, "encapsulate"),
                    // Queued inside boringtun until the handshake completes.
                    _ => {}
                }
            }
        }
        if no_route > 0 {
            shared
                .counters
                .tx_dropped_no_route
                .fetch_add(no_route, Relaxed);
        }
        if k == 0 {
            continue;
        }
        let Some(ep) = endpoint else {
            shared
                .counters
                .tx_dropped_no_endpoint
                .fetch_add(k as u64, Relaxed);
            continue;
        };
        let r = sender.send(ep, &out, stride, &lens[..k], stop);
        let bytes: usize = lens[..k].iter().sum();
        shared.counters.tx_packets.fetch_add(r.sent as u64, Relaxed);
        shared.counters.tx_bytes.fetch_add(bytes as u64, Relaxed);
        if r.errors > 0 {
            shared
                .counters
                .tx_send_errors
                .fetch_add(r.errors as u64, Relaxed);
        }
        if r.stopped {
            return;
        }
    }
}

/// Message type of a WireGuard datagram (first little-endian u32, one byte in
/// practice).
#[inline]
fn msg_type(d: &[u8]) -> u8 {
    d.first().copied().unwrap_or(0)
}

/// UDP -> decrypt -> TUN.
fn decrypt_loop(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let stop = shared.stop.as_raw_fd();
    let mtu = shared.mtu as usize;
    let max_datagram = (mtu + 32 + 16).max(148) + 64;
    let mut rx = udp::Receiver::new(&shared.sock, shared.gro, max_datagram);
    // Capacity for a whole coalesced 64 KiB packet up front: GRO appends
    // segments into the first buffer of a flow, and after this the data path
    // never allocates.
    let mut tbufs: Vec<Vec<u8>> = (0..TUN_WRITE_BATCH)
        .map(|_| Vec::with_capacity(TUN_OFFSET + 65_536 + 64))
        .collect();
    let mut gro = GROTable::default();
    let mut reply = vec![0u8; 2048];
    let mut tally = DropTally::default();

    let flush = |tbufs: &mut [Vec<u8>], gro: &mut GROTable| {
        if tbufs.is_empty() {
            return;
        }
        if let Err(e) = shared.tun.send_multiple(gro, tbufs, TUN_OFFSET) {
            tracing::debug!(error = %e, "TUN write error");
        }
    };

    loop {
        if !rx.recv(stop) {
            return;
        }
        let mut k = 0;
        let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
        let mut authenticated_src: Option<SocketAddr> = None;
        let mut g = shared.lock_peer();
        let Some(slot) = g.as_mut() else {
            drop(g);
            tally.counts[DropReason::UnknownKey as usize] += rx.got.len() as u64;
            tally.flush(&shared.counters);
            continue;
        };
        for (mi, got) in rx.got.iter().enumerate() {
            let msg = &rx.bufs[mi * rx.buf_len..mi * rx.buf_len + got.len];
            let src_ip = got.src.map(|s| s.ip());
            for chunk in msg.chunks(got.seg.max(1)) {
                if k == TUN_WRITE_BATCH {
                    flush(&mut tbufs[..k], &mut gro);
                    k = 0;
                }
                let tb = &mut tbufs[k];
                tb.resize(TUN_OFFSET + chunk.len().max(256), 0);
                let kind = msg_type(chunk);
                match slot.tunn.decapsulate(src_ip, chunk, &mut tb[TUN_OFFSET..]) {
                    TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                        let len = p.len();
                        // Cryptokey routing: the inner source must be one the
                        // peer is allowed to use.
                        let inner_src = inner_source(&tb[TUN_OFFSET..TUN_OFFSET + len]);
                        if inner_src.is_some_and(|s| allowed(&slot.config.allowed_ips, s)) {
                            tb.truncate(TUN_OFFSET + len);
                            k += 1;
                            rx_packets += 1;
                            rx_bytes += chunk.len() as u64;
                        } else {
                            tally.add(DropReason::NotAllowed);
                        }
                        authenticated_src = got.src;
                    }
                    TunnResult::WriteToNetwork(p) => {
                        let Some(src) = got.src else { continue };
                        let under_load = (kind == 1 || kind == 2) && msg_type(p) == 3;
                        if let Err(e) = shared.sock.send_to(p, src) {
                            tracing::debug!(error = %e, "handshake reply send failed");
                        }
                        if under_load {
                            tally.add(DropReason::UnderLoad);
                            continue;
                        }
                        authenticated_src = Some(src);
                    }
                    TunnResult::Done => {
                        // A keepalive (data, empty) or an accepted cookie reply:
                        // both are authenticated.
                        if kind == 4 {
                            rx_packets += 1;
                            rx_bytes += chunk.len() as u64;
                        }
                        authenticated_src = got.src;
                    }
                    TunnResult::Err(e) => {
                        let r = DropReason::of(&e);
                        if r == DropReason::Other {
                            tracing::debug!(error = ?e, "datagram dropped");
                        }
                        tally.add(r);
                    }
                }
            }
        }
        if let Some(src) = authenticated_src {
            if slot.endpoint != Some(src) {
                tracing::info!(ifname = %shared.ifname, old = ?slot.endpoint, new = %src, "peer endpoint changed");
                slot.endpoint = Some(src);
            }
            // A completed handshake (either role) releases the packets
            // boringtun queued while it had no session. Checking once per
            // batch costs one empty-queue pop.
            while let TunnResult::WriteToNetwork(p) = slot.tunn.decapsulate(None, &[], &mut reply) {
                if let Err(e) = shared.sock.send_to(p, src) {
                    tracing::debug!(error = %e, "queued packet send failed");
                }
            }
        }
        drop(g);
        flush(&mut tbufs[..k], &mut gro);
        tally.flush(&shared.counters);
        if rx_packets > 0 {
            shared.counters.rx_packets.fetch_add(rx_packets, Relaxed);
            shared.counters.rx_bytes.fetch_add(rx_bytes, Relaxed);
        }
    }
}

/// The source address of an IPv4 or IPv6 packet.
fn inner_source(p: &[u8]) -> Option<std::net::IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(<[u8; 4]>::try_from(&p[12..16]).ok()?.into()),
        6 if p.len() >= 40 => Some(<[u8; 16]>::try_from(&p[8..24]).ok()?.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_prefix_needs_no_route() {
        let addr: IpNet = "10.77.77.1/24".parse().unwrap();
        let nets: Vec<IpNet> = [
            "10.77.77.2/32",
            "10.77.77.0/24",
            "192.168.5.0/24",
            "10.0.0.0/8",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let r: Vec<String> = routed_nets(addr, &nets)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(r, ["192.168.5.0/24", "10.0.0.0/8"]);
    }

    #[test]
    fn inner_source_parses_both_families() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[198, 51, 100, 7]);
        assert_eq!(inner_source(&v4), Some("198.51.100.7".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8] = 0x20;
        v6[9] = 0x01;
        v6[10] = 0x0d;
        v6[11] = 0xb8;
        v6[23] = 1;
        assert_eq!(inner_source(&v6), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(inner_source(&[0x45, 0, 0]), None);
    }
}
