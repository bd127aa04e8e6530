//! Make-before-break key rotation of the real engine, in network namespaces:
//! the library's `Tunnel` runs on a thread that joined each namespace, the
//! way the agents run it. Need root.
//!
//! The long test carries a paced TCP stream and a 20 ms UDP echo probe
//! through the tunnel across 10 rotations of both static keys and the PSK,
//! checks every byte of the stream and prints the longest silence of the
//! probe (the rotation gap). Speed is printed, never asserted.

// Helpers panic to fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ceres_tunnel::{
    PeerConfig, PresharedKey, PrivateKey, RotationError, RotationId, Tunnel, TunnelConfig,
    TunnelError,
};
use lab::*;
use tokio_util::sync::CancellationToken;

const VPS_TUN: &str = "198.51.100.1";
const HOME_TUN: &str = "198.51.100.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A `Tunnel` running on its own thread inside a namespace (with a
/// current-thread runtime there, so the TUN device, the sockets and the
/// `ip` commands all land in the namespace). Stopped and joined on drop.
struct NsTunnel {
    tunnel: Option<Arc<Tunnel>>,
    token: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl NsTunnel {
    fn start(ns: &Netns, cfg: TunnelConfig, peer: PeerConfig) -> NsTunnel {
        let path = format!("/var/run/netns/{}", ns.name);
        let token = CancellationToken::new();
        let t = token.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                match Tunnel::start(cfg, Some(peer), t.clone()).await {
                    Ok(tunnel) => {
                        let tunnel = Arc::new(tunnel);
                        let _ = tx.send(Ok(tunnel.clone()));
                        t.cancelled().await;
                        // The test drops its handle before cancelling.
                        if let Ok(tunnel) = Arc::try_unwrap(tunnel) {
                            tunnel.shutdown().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let tunnel = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tunnel thread answers")
            .expect("tunnel starts");
        NsTunnel {
            tunnel: Some(tunnel),
            token,
            thread: Some(thread),
        }
    }

    fn t(&self) -> &Tunnel {
        self.tunnel.as_ref().unwrap()
    }
}

impl Drop for NsTunnel {
    fn drop(&mut self) {
        self.tunnel = None;
        self.token.cancel();
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// One side's configuration: its key and the peer it talks to.
fn side_config(ifname: &str, address: &str, key: &PrivateKey, uapi: &Path) -> TunnelConfig {
    let mut c = TunnelConfig::new(ifname, address.parse().unwrap(), key.clone());
    c.uapi_dir = Some(uapi.to_path_buf());
    c
}

fn vps_peer(home: &PrivateKey, psk: &PresharedKey) -> PeerConfig {
    PeerConfig {
        public_key: home.public_key(),
        preshared_key: Some(psk.clone()),
        endpoint: None,
        allowed_ips: vec![format!("{HOME_TUN}/32").parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn home_peer(vps: &PrivateKey, psk: &PresharedKey, endpoint: SocketAddr) -> PeerConfig {
    PeerConfig {
        public_key: vps.public_key(),
        preshared_key: Some(psk.clone()),
        endpoint: Some(endpoint),
        allowed_ips: vec![format!("{VPS_TUN}/32").parse().unwrap()],
        persistent_keepalive: Some(25),
    }
}

/// A VPS and a home tunnel in two namespaces joined by a veth pair.
/// (Fields drop in order: the tunnels stop before their namespaces go.)
struct Lab {
    vps: NsTunnel,
    home: NsTunnel,
    vps_ns: Netns,
    home_ns: Netns,
    vps_endpoint: SocketAddr,
    _dir: tempfile::TempDir,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let uapi = dir.path().join("uapi");
    let (vps_ns, home_ns) = (Netns::new(), Netns::new());
    veth(&vps_ns, "192.0.2.1/24", &home_ns, "192.0.2.2/24");
    let (vk, hk, psk) = (
        PrivateKey::generate(),
        PrivateKey::generate(),
        PresharedKey::generate(),
    );
    let vps = NsTunnel::start(
        &vps_ns,
        side_config(
            &format!("rv{}", unique_id()),
            &format!("{VPS_TUN}/24"),
            &vk,
            &uapi,
        ),
        vps_peer(&hk, &psk),
    );
    let vps_endpoint: SocketAddr = format!("192.0.2.1:{}", vps.t().listen_port())
        .parse()
        .unwrap();
    let home = NsTunnel::start(
        &home_ns,
        side_config(
            &format!("rh{}", unique_id()),
            &format!("{HOME_TUN}/24"),
            &hk,
            &uapi,
        ),
        home_peer(&vk, &psk, vps_endpoint),
    );
    Lab {
        _dir: dir,
        vps_ns,
        home_ns,
        vps,
        home,
        vps_endpoint,
    }
}

impl Lab {
    /// Stages a rotation of both static keys and the PSK, VPS first (it
    /// only answers), then home (which sends the initiation at once).
    fn stage_both(&self) -> (RotationId, RotationId, PrivateKey, PrivateKey) {
        let (vk, hk, psk) = (
            PrivateKey::generate(),
            PrivateKey::generate(),
            PresharedKey::generate(),
        );
        let v = self
            .vps
            .t()
            .stage_rotation(Some(vk.clone()), vps_peer(&hk, &psk))
            .expect("VPS stages");
        let h = self
            .home
            .t()
            .stage_rotation(Some(hk.clone()), home_peer(&vk, &psk, self.vps_endpoint))
            .expect("home stages");
        (v, h, vk, hk)
    }
}

/// Bytes of the test stream: position-determined, so the receiver checks
/// every byte without keeping a copy. Word `k` is splitmix64(k).
fn stream_word(k: u64) -> u64 {
    let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_stream(word_offset: u64, buf: &mut [u8]) {
    for (i, c) in buf.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&stream_word(word_offset + i as u64).to_le_bytes());
    }
}

/// Reads a TCP stream to its end and checks it against `fill_stream`;
/// returns the byte count, or where it first differed.
fn check_stream(mut s: std::net::TcpStream) -> Result<u64, String> {
    const BLOCK: usize = 64 << 10;
    let mut pending = Vec::with_capacity(2 * BLOCK);
    let mut expect = vec![0u8; BLOCK];
    let mut buf = vec![0u8; BLOCK];
    let mut checked: u64 = 0;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read after {checked} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        let whole = pending.len() / 8 * 8;
        if whole >= BLOCK {
            let len = whole;
            let mut off = 0;
            while off < len {
                let l = (len - off).min(BLOCK);
                fill_stream((checked + off as u64) / 8, &mut expect[..l]);
                if pending[off..off + l] != expect[..l] {
                    return Err(format!("stream differs near byte {}", checked + off as u64));
                }
                off += l;
            }
            pending.drain(..len);
            checked += len as u64;
        }
    }
    // The tail (the sender writes whole words).
    if pending.len() % 8 != 0 {
        return Err(format!("stream ends mid-word after {checked} bytes"));
    }
    fill_stream(checked / 8, &mut expect[..pending.len()]);
    if pending[..] != expect[..pending.len()] {
        return Err(format!("stream tail differs after {checked} bytes"));
    }
    Ok(checked + pending.len() as u64)
}

/// Echo probes every 20 ms; records when each reply came back.
struct Prober {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<()>>,
    replies: Arc<Mutex<Vec<(u64, Instant)>>>,
    /// Signalled by the receiver after each reply.
    replied: Arc<Condvar>,
    /// Set by the receiver when it has gone (so `stop` need not wait for it).
    stop_rx: Arc<AtomicBool>,
    sent_at: Arc<Mutex<Vec<Instant>>>,
}

const PROBE_EVERY: Duration = Duration::from_millis(20);

impl Prober {
    fn start(sock: UdpSocket, to: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sent_at = Arc::new(Mutex::new(Vec::new()));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let rx = sock.try_clone().unwrap();
        let replied = Arc::new(Condvar::new());
        let stop_rx = Arc::new(AtomicBool::new(false));
        let (st, r, cv) = (stop_rx.clone(), replies.clone(), replied.clone());
        let receiver = std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                if let Ok((8, _)) = rx.recv_from(&mut b) {
                    let seq = u64::from_le_bytes(b[..8].try_into().unwrap());
                    r.lock().unwrap().push((seq, Instant::now()));
                    cv.notify_all();
                }
            }
        });
        let (st, s_at) = (stop.clone(), sent_at.clone());
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                // Paced against the start, so a late wake-up does not
                // stretch every later interval.
                let due = start + PROBE_EVERY * seq as u32;
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                s_at.lock().unwrap().push(Instant::now());
                let _ = sock.send_to(&seq.to_le_bytes(), to);
                seq += 1;
            }
            seq
        });
        Prober {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            replies,
            replied,
            stop_rx,
            sent_at,
        }
    }

    /// Stops sending, then waits for the reply to the last probe (at most
    /// 300 ms: a lost last probe must not hang the test) before stopping the
    /// receiver.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.take().map_or(0, |h| h.join().unwrap());
        let replies = self.replies.lock().unwrap();
        let _ = self
            .replied
            .wait_timeout_while(replies, Duration::from_millis(300), |r| {
                sent > 0 && !r.iter().any(|(seq, _)| *seq == sent - 1)
            })
            .unwrap();
        self.stop_rx.store(true, Ordering::Relaxed);
        if let Some(h) = self.receiver.take() {
            h.join().unwrap();
        }
    }

    /// The intervals between consecutive replies in `[from, to]` (the
    /// window's edges count as replies).
    fn silences(&self, from: Instant, to: Instant) -> Vec<(Instant, Instant)> {
        let mut times: Vec<Instant> = self
            .replies
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t >= from && *t <= to)
            .collect();
        times.sort();
        let mut edges = vec![from];
        edges.extend(times);
        edges.push(to);
        edges.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Summarises the window `[from, to]`: the longest time without any
    /// reply, probes sent in it that were never answered, the worst round trip.
    fn report(&self, from: Instant, to: Instant) -> ProbeReport {
        let replies = self.replies.lock().unwrap().clone();
        let sent_at = self.sent_at.lock().unwrap().clone();
        let in_window: Vec<usize> = (0..sent_at.len())
            .filter(|&i| sent_at[i] >= from && sent_at[i] <= to)
            .collect();
        let mut answered = vec![None; sent_at.len()];
        for (seq, at) in &replies {
            if let Some(a) = answered.get_mut(*seq as usize) {
                a.get_or_insert(*at);
            }
        }
        let lost = in_window.iter().filter(|&&i| answered[i].is_none()).count();
        let max_rtt = in_window
            .iter()
            .filter_map(|&i| answered[i].map(|a| a - sent_at[i]))
            .max()
            .unwrap_or_default();
        let longest_silence = self
            .silences(from, to)
            .iter()
            .map(|(a, b)| *b - *a)
            .max()
            .unwrap_or_default();
        ProbeReport {
            probes: in_window.len(),
            lost,
            longest_silence,
            max_rtt,
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct ProbeReport {
    probes: usize,
    lost: usize,
    longest_silence: Duration,
    max_rtt: Duration,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "longest silence {:.1} ms (probe every {} ms), lost probes {} of {}, \
             worst probe round trip {:.1} ms",
            self.longest_silence.as_secs_f64() * 1e3,
            PROBE_EVERY.as_millis(),
            self.lost,
            self.probes,
            self.max_rtt.as_secs_f64() * 1e3,
        )
    }
}

/// A UDP echo server in `ns`; stops when `stop` is set.
fn udp_echo(ns: &Netns, addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let sock = ns.run(|| UdpSocket::bind(addr).expect("bind udp echo"));
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut b) {
                let _ = sock.send_to(&b[..n], from);
            }
        }
    })
}

/// The private key a UAPI `get=1` reports, as hex.
fn uapi_private_key(t: &Tunnel) -> String {
    let r = uapi(t.uapi_path().unwrap(), "get=1\n\n");
    r.lines()
        .find_map(|l| l.strip_prefix("private_key="))
        .unwrap()
        .to_string()
}

fn hex_of(k: &PrivateKey) -> String {
    let raw = base64_decode(&k.to_base64());
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Ten forced rotations (both static keys and the PSK each time) under a
/// running TCP stream and a 20 ms echo probe: the stream is never reset and
/// arrives intact, each rotation is promoted on both sides by its own
/// handshake, the old session is dropped after its grace period, and our
/// public key (also in `wg`'s `get=1`) is the new one. Prints the gap.
#[test]
fn ten_rotations_under_a_tcp_stream() {
    if !require_root("ten_rotations_under_a_tcp_stream") {
        return;
    }
    let lab = lab();
    let stop = Arc::new(AtomicBool::new(false));
    let echo_addr: SocketAddr = SocketAddr::new(ip(VPS_TUN), 7007);
    let echo = udp_echo(&lab.vps_ns, echo_addr, stop.clone());

    // The TCP sink at the VPS checks every byte.
    let listener = lab
        .vps_ns
        .run(|| TcpListener::bind(SocketAddr::new(ip(VPS_TUN), 0)).unwrap());
    let sink_addr = listener.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        check_stream(s)
    });
    let conn = connect(&lab.home_ns, sink_addr);
    // The stream from home: paced at about 6.5 MB/s, which keeps TCP busy
    // without filling the tunnel's queues (their delay would hide the gap).
    let stream_stop = Arc::new(AtomicBool::new(false));
    let st = stream_stop.clone();
    let writer = std::thread::spawn(move || -> Result<u64, String> {
        let mut conn = conn;
        let mut buf = vec![0u8; 64 << 10];
        let mut sent: u64 = 0;
        let start = Instant::now();
        let mut n = 0u32;
        while !st.load(Ordering::Relaxed) {
            fill_stream(sent / 8, &mut buf);
            conn.write_all(&buf)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += buf.len() as u64;
            n += 1;
            let due = start + Duration::from_millis(10) * n;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        conn.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        Ok(sent)
    });

    let probe_sock = lab
        .home_ns
        .run(|| UdpSocket::bind(SocketAddr::new(ip(HOME_TUN), 0)).unwrap());
    let mut prober = Prober::start(probe_sock, echo_addr);
    // Traffic flows before the first rotation.
    wait_until("first echo replies", Duration::from_secs(10), || {
        Ok(prober.replies.lock().unwrap().len() >= 5)
    })
    .unwrap();
    // A baseline window without rotations: the same traffic's own jitter.
    // (A measurement window, not a readiness wait.)
    let base_from = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let base_to = Instant::now();

    let from = Instant::now();
    // Around each switch of keys and each drop of the old session: the
    // windows where a silence would be the rotation's doing.
    let mut windows = Vec::new();
    let margin = Duration::from_millis(300);
    for i in 1..=10u64 {
        let staged_at = Instant::now();
        let (v, h, vk, hk) = lab.stage_both();
        let (vps, home) = (lab.vps.t(), lab.home.t());
        wait_until(
            &format!("rotation {i} promoted on both sides"),
            Duration::from_secs(15),
            || {
                Ok(vps.rotation().last_rotation_id == Some(v)
                    && home.rotation().last_rotation_id == Some(h))
            },
        )
        .unwrap();
        windows.push((staged_at, Instant::now() + margin));
        assert_eq!(vps.public_key(), vk.public_key());
        assert_eq!(home.public_key(), hk.public_key());
        assert_eq!(uapi_private_key(vps), hex_of(&vk));
        assert_eq!(uapi_private_key(home), hex_of(&hk));
        let s = home.stats();
        assert_eq!(s.rotation.rotations, i);
        assert!(s.rotation.staged.is_none());
        assert_eq!(s.peer_public_key, Some(vk.public_key()));
        // The old session lingers for its grace period, then goes.
        wait_until(
            &format!("rotation {i}: previous sessions dropped"),
            Duration::from_secs(15),
            || {
                Ok(!vps.rotation().previous_session_active
                    && !home.rotation().previous_session_active)
            },
        )
        .unwrap();
        let dropped_at = Instant::now();
        windows.push((dropped_at - margin, dropped_at + margin));
    }
    let to = Instant::now();
    prober.stop();
    let report = prober.report(from, to);
    let baseline = prober.report(base_from, base_to);
    let (mut in_rotation, mut elsewhere) = (Duration::ZERO, Duration::ZERO);
    for (a, b) in prober.silences(from, to) {
        let d = b - a;
        if windows.iter().any(|(ws, we)| a < *we && b > *ws) {
            in_rotation = in_rotation.max(d);
        } else {
            elsewhere = elsewhere.max(d);
        }
    }

    stream_stop.store(true, Ordering::Relaxed);
    let sent = writer
        .join()
        .unwrap()
        .expect("stream written without reset");
    let received = sink.join().unwrap().expect("stream intact");
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    assert_eq!(sent, received, "every byte sent arrived");

    let (vs, hs) = (lab.vps.t().stats(), lab.home.t().stats());
    assert_eq!(vs.rotation.rotations, 10);
    assert_eq!(hs.rotation.rotations, 10);
    println!(
        "rotation gap: 10 rotations in {:.1} s under a {} MiB TCP stream: {report}",
        (to - from).as_secs_f64(),
        sent >> 20,
    );
    println!(
        "  longest silence overlapping a key switch or old-session drop (+-{} ms): {:.1} ms; \
         elsewhere: {:.1} ms",
        margin.as_millis(),
        in_rotation.as_secs_f64() * 1e3,
        elsewhere.as_secs_f64() * 1e3,
    );
    println!(
        "baseline ({:.1} s before the first rotation): {baseline}",
        (base_to - base_from).as_secs_f64()
    );
    println!("drops: vps {:?}\n       home {:?}", vs.dropped, hs.dropped);
    assert!(report.probes > 0);
}

/// Bad requests are refused with a clear error and the tunnel keeps its
/// keys; abort drops a staged rotation; an explicit commit on both sides
/// moves the tunnel to the new keys with a fresh handshake.
#[test]
fn refusals_abort_and_commit() {
    if !require_root("refusals_abort_and_commit") {
        return;
    }
    let lab = lab();
    let server = echo_server(&lab.vps_ns, ip(VPS_TUN));
    let mut s = connect(&lab.home_ns, server);
    echo_round(&mut s, 64 << 10);
    let (vps, home) = (lab.vps.t(), lab.home.t());
    let before = (vps.public_key(), home.public_key());
    let cur = home_peer(
        &PrivateKey::generate(),
        &PresharedKey::generate(),
        lab.vps_endpoint,
    );

    let refused = |r: Result<RotationId, TunnelError>, want: RotationError| match r {
        Err(TunnelError::Rotation(e)) => {
            assert_eq!(e, want);
            // The message says what is wrong.
            assert!(!TunnelError::Rotation(e).to_string().is_empty());
        }
        other => panic!("expected {want:?}, got {other:?}"),
    };
    let zero = PeerConfig {
        public_key: ceres_tunnel::PublicKey([0; 32]),
        ..cur.clone()
    };
    refused(
        home.stage_rotation(Some(PrivateKey::generate()), zero),
        RotationError::WeakPeerKey,
    );
    // The peer's current key and PSK, as home knows them.
    let current_peer = {
        let st = home.stats();
        PeerConfig {
            public_key: st.peer_public_key.unwrap(),
            ..cur.clone()
        }
    };
    // (Its PSK differs from the real one, but both static keys stay.)
    refused(
        home.stage_rotation(None, current_peer),
        RotationError::NoStaticKeyChange,
    );

    // Stage on the VPS only; a second stage is refused; abort it.
    let hk = PrivateKey::generate();
    let psk = PresharedKey::generate();
    let id = vps
        .stage_rotation(None, vps_peer(&hk, &psk))
        .expect("stage");
    refused(
        vps.stage_rotation(None, vps_peer(&PrivateKey::generate(), &psk)),
        RotationError::InProgress(id),
    );
    assert_eq!(vps.rotation().staged.as_ref().unwrap().id, id);
    assert_eq!(vps.abort_rotation(), Some(id));
    assert!(vps.rotation().staged.is_none());
    echo_round(&mut s, 64 << 10);
    assert_eq!((vps.public_key(), home.public_key()), before);
    assert!(matches!(
        vps.commit_rotation(),
        Err(TunnelError::Rotation(RotationError::NoneStaged))
    ));

    // Both sides staged and committed by hand: the same connection goes on.
    let (v, h, vk, hk) = lab.stage_both();
    // Home initiated on staging; whichever way it went, a commit on each
    // side promotes (or the handshake already did).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (t, id) in [(vps, v), (home, h)] {
        match t.commit_rotation() {
            Ok(got) => assert_eq!(got, id),
            Err(TunnelError::Rotation(RotationError::NoneStaged)) => {
                assert_eq!(t.rotation().last_rotation_id, Some(id));
            }
            Err(e) => panic!("commit: {e}"),
        }
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), t.wait_rotation(id)).await
        });
        assert_eq!(r.expect("outcome known"), Ok(()));
    }
    echo_round(&mut s, 256 << 10);
    assert_eq!(vps.public_key(), vk.public_key());
    assert_eq!(home.public_key(), hk.public_key());
    // A new connection works on the new keys too.
    tcp_check(&lab.vps_ns, ip(VPS_TUN), &lab.home_ns, 64 << 10);
    // Replacing a staged rotation abandons the first; the waiter hears so.
    let a = vps
        .stage_rotation(None, vps_peer(&PrivateKey::generate(), &psk))
        .unwrap();
    let b = vps
        .replace_rotation(None, vps_peer(&PrivateKey::generate(), &psk))
        .unwrap();
    assert!(b > a);
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), vps.wait_rotation(a)).await
    });
    assert_eq!(r.expect("outcome known"), Err(RotationError::Abandoned(a)));
    assert_eq!(vps.abort_rotation(), Some(b));
    echo_round(&mut s, 64 << 10);
}

/// `wg show` (UAPI `get=1`) while rotations are promoted back to back: every
/// reply pairs our private key with the peer key of the same generation. Read
/// one by one under separate locks, a promotion in between showed the new
/// private key with the peer from before.
#[test]
fn uapi_get_never_mixes_generations_during_rotations() {
    if !require_root("uapi_get_never_mixes_generations_during_rotations") {
        return;
    }
    let lab = lab();
    let vps = lab.vps.t();
    let sock = vps.uapi_path().unwrap().to_path_buf();
    let field = |reply: &str, key: &str| {
        reply
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    };
    // (private key hex, peer public key hex) of each generation, recorded
    // before the engine can show it.
    let first = uapi(&sock, "get=1\n\n");
    let pairs = Arc::new(Mutex::new(std::collections::HashSet::from([(
        field(&first, "private_key"),
        field(&first, "public_key"),
    )])));
    let done = Arc::new(AtomicBool::new(false));
    let mismatches = std::thread::scope(|scope| {
        let rotor = {
            let (pairs, done) = (pairs.clone(), done.clone());
            scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(4);
                while Instant::now() < deadline {
                    let (vk, hk, psk) = (
                        PrivateKey::generate(),
                        PrivateKey::generate(),
                        PresharedKey::generate(),
                    );
                    pairs
                        .lock()
                        .unwrap()
                        .insert((hex_of(&vk), hk.public_key().to_hex()));
                    vps.stage_rotation(Some(vk), vps_peer(&hk, &psk))
                        .expect("VPS stages");
                    vps.commit_rotation().expect("VPS commits");
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut mismatches = Vec::new();
        let mut gets = 0u32;
        while !done.load(Ordering::SeqCst) {
            let r = uapi(&sock, "get=1\n\n");
            gets += 1;
            let pair = (field(&r, "private_key"), field(&r, "public_key"));
            if !pairs.lock().unwrap().contains(&pair) {
                mismatches.push(pair);
            }
        }
        rotor.join().unwrap();
        eprintln!("{gets} UAPI gets during the rotations");
        mismatches
    });
    assert!(
        mismatches.is_empty(),
        "{} UAPI replies paired a private key with another generation's peer",
        mismatches.len()
    );
}
