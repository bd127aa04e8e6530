//! The engine: one TUN device, one UDP socket, one peer, and three workers —
//! an encrypt thread (TUN -> UDP), a decrypt thread (UDP -> TUN) and a timer
//! task — plus the UAPI socket.
//!
//! boringtun's `Tunn` needs `&mut self` for both directions, so it sits behind
//! one mutex. The two data-path threads ([`datapath`], with its rules: the
//! lock once per batch, no system call and no allocation under it) and the
//! control operations here share it; everything that sends (handshake
//! initiations, timer keepalives) or runs `ip route` does so after the lock
//! is released.

mod datapath;

use ceres_sync::Unpoison;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use boringtun::noise::TunnResult;
use boringtun::noise::errors::WireGuardError;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tun_rs::SyncDevice;

use crate::config::{ConfigError, DEFAULT_UAPI_DIR, PeerConfig, TunnelConfig};
use crate::key::{PrivateKey, PublicKey};
use crate::peer::{Context, PeerSlot, Sessions};
use crate::rotation::{RotationError, RotationId, RotationStats};
use crate::stats::{Counters, TunnelStats};
use crate::uapi;
use crate::udp;

/// How often boringtun's timers are polled. boringtun exposes no "next
/// deadline", so like wireguard's own userspace implementations we tick; the
/// protocol's timers are whole seconds (keepalive 10 s, rekey 5 s, persistent
/// keepalive >= 1 s), so 100 ms keeps them within 10 % at ten wake-ups a second.
const TIMER_TICK: Duration = Duration::from_millis(100);

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
    /// A key rotation request was refused; the current session is untouched.
    #[error("key rotation refused: {0}")]
    Rotation(#[from] RotationError),
}

/// State shared by the workers and the handle.
pub(crate) struct Shared {
    pub ifname: String,
    pub listen_port: u16,
    mtu: u16,
    /// Our tunnel addresses (their on-link prefixes need no routes).
    addresses: Vec<IpNet>,
    /// Whether the peer's allowed networks get routes in the main table.
    route_allowed_ips: bool,
    sock: UdpSocket,
    gro: bool,
    tun: SyncDevice,
    /// Our key, the peer and its session contexts (see module docs).
    sessions: Mutex<Sessions>,
    /// The latest rotation status, for callers awaiting a rotation.
    rotation_tx: watch::Sender<RotationStats>,
    pub counters: Counters,
    /// Written once to stop the data-path threads (they poll it with their fd).
    stop: OwnedFd,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("ifname", &self.ifname)
            // try_lock: formatting must never wait on (or deadlock with)
            // the data path.
            .field(
                "public_key",
                &self.sessions.try_lock().ok().map(|g| g.public),
            )
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sessions> {
        // A panic in another holder leaves boringtun's state as consistent as
        // it ever is between calls; keep the tunnel running.
        self.sessions.locked()
    }

    /// Our current static public key.
    pub(crate) fn public_key(&self) -> PublicKey {
        self.lock().public
    }

    /// Tells rotation watchers about a change. Called with the lock held, so
    /// watchers see changes in order.
    fn publish_rotation(&self, s: &Sessions) {
        self.rotation_tx.send_replace(s.rotation_stats());
    }

    fn signal_stop(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Everything the UAPI `get` and [`Tunnel::stats`] report.
    pub(crate) fn stats(&self) -> TunnelStats {
        self.stats_of(&self.lock())
    }

    /// What the UAPI `get=1` reply shows — our private key, the stats, the
    /// peer — read under one lock: read one by one, a rotation promoted in
    /// between could pair our new private key with the peer from before.
    pub(crate) fn uapi_snapshot(&self) -> UapiSnapshot {
        let g = self.lock();
        UapiSnapshot {
            private_key_hex: g.key.to_hex(),
            stats: self.stats_of(&g),
            peer: Self::peer_of(&g),
        }
    }

    fn stats_of(&self, g: &Sessions) -> TunnelStats {
        let (peer_public_key, endpoint, last, keepalive) = match g.peer.as_ref() {
            Some(s) => (
                Some(s.current.config.public_key),
                s.endpoint,
                s.current.tunn.time_since_last_handshake(),
                s.current.config.persistent_keepalive,
            ),
            None => (None, None, None, None),
        };
        let public_key = g.public;
        let rotation = g.rotation_stats();
        let c = &self.counters;
        use std::sync::atomic::Ordering::Relaxed;
        TunnelStats {
            ifname: self.ifname.clone(),
            public_key,
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
            rotation,
        }
    }

    fn peer_of(g: &Sessions) -> Option<(PeerConfig, Option<SocketAddr>)> {
        g.peer
            .as_ref()
            .map(|s| (s.current.config.clone(), s.endpoint))
    }
}

/// One consistent view for the UAPI `get=1` reply.
pub(crate) struct UapiSnapshot {
    /// Our static private key, hex.
    pub private_key_hex: String,
    pub stats: TunnelStats,
    pub peer: Option<(PeerConfig, Option<SocketAddr>)>,
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

/// The allowed networks that need a route: the on-link prefixes of our own
/// addresses already have one.
fn routed_nets(addresses: &[IpNet], allowed_ips: &[IpNet]) -> Vec<IpNet> {
    allowed_ips
        .iter()
        .copied()
        .filter(|n| {
            !addresses.iter().any(|a| {
                let onlink = a.trunc();
                *n == onlink || (onlink.contains(n) && n.prefix_len() >= onlink.prefix_len())
            })
        })
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
        for address in config.addresses() {
            builder = match *address {
                IpNet::V4(n) => builder.ipv4(n.addr(), n.prefix_len(), None),
                IpNet::V6(n) => builder.ipv6(n.addr(), n.prefix_len()),
            };
        }
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

        let shared = Arc::new(Shared {
            ifname: config.ifname.clone(),
            listen_port,
            mtu: config.mtu,
            addresses: config.addresses().copied().collect(),
            route_allowed_ips: config.route_allowed_ips,
            sock,
            gro,
            tun,
            sessions: Mutex::new(Sessions::new(config.private_key)),
            rotation_tx: watch::Sender::new(RotationStats::default()),
            counters: Counters::default(),
            stop: eventfd().map_err(TunnelError::Worker)?,
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
            (
                "ceres-wg-encrypt",
                datapath::encrypt_loop as fn(Arc<Shared>),
            ),
            (
                "ceres-wg-decrypt",
                datapath::decrypt_loop as fn(Arc<Shared>),
            ),
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
            public_key = %shared.public_key(),
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
    ///
    /// A fresh state also drops a staged rotation and the previous session
    /// of a finished one: they were made for the peer being replaced. After
    /// a rotation, "the current keys" are the rotated ones — pass the new
    /// peer key here, or this starts over with the old one.
    pub fn set_peer(&self, peer: PeerConfig) -> Result<(), TunnelError> {
        let sh = &self.shared;
        let mut g = sh.lock();
        let old_nets = g
            .peer
            .as_ref()
            .filter(|_| sh.route_allowed_ips)
            .map(|s| routed_nets(&sh.addresses, &s.current.config.allowed_ips))
            .unwrap_or_default();
        let new_nets = if sh.route_allowed_ips {
            routed_nets(&sh.addresses, &peer.allowed_ips)
        } else {
            Vec::new()
        };
        let keep_session = g.peer.as_ref().is_some_and(|s| {
            let c = &s.current.config;
            c.public_key == peer.public_key
                && c.preshared_key == peer.preshared_key
                && c.persistent_keepalive == peer.persistent_keepalive
        });
        let mut first = None;
        let key = g.key.clone();
        let sessions = &mut *g;
        match sessions.peer.as_mut() {
            Some(slot) if keep_session => {
                if peer.endpoint.is_some() {
                    slot.endpoint = peer.endpoint;
                }
                slot.current.config = peer;
            }
            _ => {
                let limiter = sessions.peer.as_ref().map(|s| s.current.limiter.clone());
                // A side that knows where its peer is and keeps the path open
                // (home) handshakes at once instead of waiting for traffic.
                let initiate = peer.endpoint.is_some() && peer.persistent_keepalive.is_some();
                let mut ctx = Context::new(key, peer, limiter, &[]);
                if initiate {
                    first = ctx.initiation();
                }
                tracing::info!(ifname = %sh.ifname, peer = %ctx.config.public_key, endpoint = ?ctx.config.endpoint, "peer configured");
                if let Some(id) = sessions
                    .peer
                    .as_ref()
                    .and_then(|s| s.staged.as_ref())
                    .map(|s| s.id)
                {
                    tracing::info!(ifname = %sh.ifname, rotation = %id, "staged key rotation dropped: the peer was replaced");
                    sessions.last_abandoned = Some(id);
                }
                sessions.peer = Some(PeerSlot::new(ctx));
                sh.publish_rotation(sessions);
            }
        }
        let endpoint = g.peer.as_ref().and_then(|s| s.endpoint);
        drop(g);
        if let (Some(p), Some(ep)) = (first, endpoint) {
            let _ = sh.sock.send_to(&p, ep);
        }
        for net in old_nets.iter().filter(|n| !new_nets.contains(n)) {
            let _ = route("del", *net, &sh.ifname);
        }
        for net in &new_nets {
            route("replace", *net, &sh.ifname)?;
        }
        Ok(())
    }

    /// Removes the peer: its sessions (a staged rotation too) and routes go,
    /// and datagrams from it are dropped as from an unknown key. For a peer
    /// whose owner lost the right to the tunnel (its certificate was
    /// revoked). Returns the removed peer's public key.
    pub fn remove_peer(&self) -> Option<PublicKey> {
        let sh = &self.shared;
        let mut g = sh.lock();
        let old = g.peer.take()?;
        if let Some(staged) = &old.staged {
            g.last_abandoned = Some(staged.id);
        }
        sh.publish_rotation(&g);
        drop(g);
        if sh.route_allowed_ips {
            for net in routed_nets(&sh.addresses, &old.current.config.allowed_ips) {
                let _ = route("del", net, &sh.ifname);
            }
        }
        let key = old.current.config.public_key;
        tracing::info!(ifname = %sh.ifname, peer = %key, "peer removed");
        Some(key)
    }

    /// Starts a fresh handshake with the current peer right away, dropping
    /// the current session keys. For when the peer is known to have lost its
    /// state (it restarted): waiting for WireGuard's own timers would take
    /// about 15 s of silence. Queued packets go out once the handshake is done.
    /// A staged rotation is left alone.
    pub fn rehandshake(&self) {
        let sh = &self.shared;
        let mut g = sh.lock();
        let Some(slot) = g.peer.as_mut() else { return };
        let cur = &slot.current;
        let mut ctx = Context::new(
            cur.key.clone(),
            cur.config.clone(),
            Some(cur.limiter.clone()),
            &slot.taken(),
        );
        let first = ctx.initiation();
        slot.current = ctx;
        let endpoint = slot.endpoint;
        drop(g);
        if let (Some(p), Some(ep)) = (first, endpoint) {
            let _ = sh.sock.send_to(&p, ep);
        }
    }

    /// Stages a make-before-break key rotation: a second session context,
    /// with `new_private_key` (or our current key when `None`) and
    /// `new_peer`'s public key and pre-shared key, beside the current one.
    ///
    /// Incoming datagrams reach the context they belong to; outgoing traffic
    /// keeps using the current session until the staged one completes a
    /// handshake, and then the staged context is promoted by itself (see
    /// [`Tunnel::wait_rotation`]); the old one still accepts packets in
    /// flight for a grace period of about 2 s. When `new_peer.endpoint` is
    /// set (the home side, which dials) the first handshake initiation is
    /// sent at once; the other side (the VPS, whose `PeerConfig` has no
    /// endpoint) only answers. So stage on the VPS first, then at home: an
    /// initiation that arrives before its context exists is lost and only
    /// retried after WireGuard's 5 s rekey timeout.
    ///
    /// `new_peer.endpoint` and `persistent_keepalive` apply to the new
    /// context; its `allowed_ips` must equal the current ones (networks are
    /// changed with [`Tunnel::set_peer`]).
    ///
    /// Refused, with the current session untouched, when there is no peer,
    /// the new peer key is all-zero or low-order, the peer key and PSK are
    /// the current ones, neither static key changes, the networks change, or
    /// a rotation is already staged (see [`Tunnel::replace_rotation`]).
    pub fn stage_rotation(
        &self,
        new_private_key: Option<PrivateKey>,
        new_peer: PeerConfig,
    ) -> Result<RotationId, TunnelError> {
        self.stage(new_private_key, new_peer, false)
    }

    /// [`Tunnel::stage_rotation`], replacing a rotation already staged
    /// (which is dropped, as by [`Tunnel::abort_rotation`]).
    pub fn replace_rotation(
        &self,
        new_private_key: Option<PrivateKey>,
        new_peer: PeerConfig,
    ) -> Result<RotationId, TunnelError> {
        self.stage(new_private_key, new_peer, true)
    }

    fn stage(
        &self,
        new_private_key: Option<PrivateKey>,
        new_peer: PeerConfig,
        replace: bool,
    ) -> Result<RotationId, TunnelError> {
        let sh = &self.shared;
        let mut g = sh.lock();
        let staging = match g.stage(new_private_key, new_peer, replace) {
            Ok(s) => s,
            Err(e) => {
                drop(g);
                tracing::warn!(ifname = %sh.ifname, error = %e, "key rotation refused");
                return Err(e.into());
            }
        };
        sh.publish_rotation(&g);
        let staged = g.rotation_stats().staged;
        drop(g);
        if let Some(staged) = staged {
            tracing::info!(
                ifname = %sh.ifname,
                rotation = %staging.id,
                replaced = ?staging.replaced.map(|r| r.to_string()),
                public_key = %staged.public_key,
                peer_public_key = %staged.peer_public_key,
                initiating = staging.initiation.is_some(),
                "key rotation staged"
            );
        }
        if let Some((p, ep)) = staging.initiation {
            if let Err(e) = sh.sock.send_to(&p, ep) {
                tracing::debug!(error = %e, endpoint = %ep, "rotation handshake send failed");
            }
        }
        Ok(staging.id)
    }

    /// Promotes the staged rotation now, without waiting for its handshake:
    /// outgoing traffic moves to the new keys at once (a handshake is sent
    /// if the new session has none yet). For when the control plane knows
    /// the peer has already moved over. Returns the promoted rotation.
    pub fn commit_rotation(&self) -> Result<RotationId, TunnelError> {
        let sh = &self.shared;
        let mut g = sh.lock();
        let id = g.promote()?;
        let mut send = None;
        if let Some(slot) = g.peer.as_mut() {
            if !slot.current.established() {
                send = slot.current.initiation().zip(slot.endpoint);
            }
        }
        sh.publish_rotation(&g);
        drop(g);
        tracing::info!(ifname = %sh.ifname, rotation = %id, how = "commit", public_key = %sh.public_key(), "key rotation done");
        if let Some((p, ep)) = send {
            let _ = sh.sock.send_to(&p, ep);
        }
        Ok(id)
    }

    /// Drops the staged rotation, if any; the current session carries on.
    /// Returns the dropped rotation.
    pub fn abort_rotation(&self) -> Option<RotationId> {
        let sh = &self.shared;
        let mut g = sh.lock();
        let id = g.abort();
        if id.is_some() {
            sh.publish_rotation(&g);
        }
        drop(g);
        if let Some(id) = id {
            tracing::info!(ifname = %sh.ifname, rotation = %id, "key rotation aborted");
        }
        id
    }

    /// The rotation status (also part of [`Tunnel::stats`]).
    pub fn rotation(&self) -> RotationStats {
        self.shared.lock().rotation_stats()
    }

    /// A receiver that sees every change of the rotation status.
    pub fn watch_rotation(&self) -> watch::Receiver<RotationStats> {
        self.shared.rotation_tx.subscribe()
    }

    /// Waits until rotation `id` is promoted (`Ok`) or abandoned (`Err`).
    /// Wrap it in a timeout: a staged rotation whose peer never answers
    /// waits forever (until aborted).
    pub async fn wait_rotation(&self, id: RotationId) -> Result<(), RotationError> {
        let mut rx = self.watch_rotation();
        let outcome = rx.wait_for(|s| s.outcome(id).is_some()).await;
        match outcome {
            Ok(s) => s.outcome(id).unwrap_or(Ok(())),
            // The sender lives in `Shared`, which `self` keeps alive.
            Err(_) => Err(RotationError::Abandoned(id)),
        }
    }

    /// A snapshot of counters, endpoint and handshake age.
    pub fn stats(&self) -> TunnelStats {
        self.shared.stats()
    }

    /// Our static public key: the rotated one once a rotation is promoted.
    pub fn public_key(&self) -> PublicKey {
        self.shared.public_key()
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
    // What the current and the staged context send (a handshake initiation
    // or a keepalive, both well under 256 bytes), built under the lock and
    // sent after it, like the data path's answers.
    let mut out = [[0u8; 256]; 2];
    let mut lens = [0usize; 2];
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut n = 0;
        let mut error: Option<WireGuardError> = None;
        let mut g = shared.lock();
        let sessions = &mut *g;
        let Some(slot) = sessions.peer.as_mut() else {
            continue;
        };
        // Our limiters are shared between contexts, so boringtun leaves
        // resetting them to us: once per tick, as it would itself.
        for l in slot.limiters() {
            l.reset_count();
        }
        let endpoint = slot.endpoint;
        // The staged context ticks too (handshake retries); the previous one
        // does not: it only receives, and must not start handshakes.
        let staged = slot.staged.as_mut().map(|s| &mut s.ctx);
        for ctx in std::iter::once(&mut slot.current).chain(staged) {
            match ctx.tunn.update_timers(&mut out[n]) {
                TunnResult::WriteToNetwork(p) => {
                    lens[n] = p.len();
                    n += 1;
                }
                TunnResult::Err(e) => error = Some(e),
                _ => {}
            }
        }
        let promoted = sessions.promote_if_ready();
        let expired = sessions.expire_previous(std::time::Instant::now());
        if promoted.is_some() || expired {
            shared.publish_rotation(sessions);
        }
        drop(g);
        if let Some(e) = error {
            tracing::trace!(error = ?e, "timer");
        }
        if let Some(id) = promoted {
            log_promoted(&shared, id);
        }
        if expired {
            tracing::debug!(ifname = %shared.ifname, "previous session dropped after its grace period");
        }
        let Some(ep) = endpoint else { continue };
        for (p, len) in out.iter().zip(lens).take(n) {
            if let Err(e) = shared.sock.send_to(&p[..len], ep) {
                tracing::debug!(error = %e, endpoint = %ep, "timer send failed");
            }
        }
    }
}

fn log_promoted(shared: &Shared, id: RotationId) {
    tracing::info!(
        ifname = %shared.ifname,
        rotation = %id,
        how = "handshake",
        public_key = %shared.public_key(),
        "key rotation done"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_prefix_needs_no_route() {
        let addrs: Vec<IpNet> = vec![
            "10.77.77.1/24".parse().unwrap(),
            "fd77:77:77::1/64".parse().unwrap(),
        ];
        let nets: Vec<IpNet> = [
            "10.77.77.2/32",
            "10.77.77.0/24",
            "fd77:77:77::2/128",
            "192.168.5.0/24",
            "10.0.0.0/8",
            "::/0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let r: Vec<String> = routed_nets(&addrs, &nets)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(r, ["192.168.5.0/24", "10.0.0.0/8", "::/0"]);
    }
}
