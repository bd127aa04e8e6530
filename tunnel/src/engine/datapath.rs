//! The data path: the encrypt thread (TUN -> UDP) and the decrypt thread
//! (UDP -> TUN), each on an OS thread of its own.
//!
//! Both take the one lock around the peer's sessions (boringtun's `Tunn`
//! needs `&mut` for either direction), so how they hold it decides whether
//! the two directions run side by side or in turn. The rules:
//!
//! 1. **The lock is taken once per batch**, never per packet: a GSO
//!    super-packet split into up to 128 segments on the way out, a `recvmmsg`
//!    with GRO (up to hundreds of segments) on the way in.
//! 2. **No system call under the lock.** Reading the TUN device or the
//!    socket, sending, writing to the TUN device and logging (a log line is a
//!    write) all happen with the lock released. What a batch has to send
//!    back — handshake responses, cookie replies, and the packets boringtun
//!    queued until a handshake completed — is written into an [`Outbox`]
//!    under the lock and sent after it is released. When the outbox or the
//!    batch of decrypted packets fills up in the middle of a batch, the
//!    decrypt thread releases the lock, sends and writes what it has, and
//!    carries on under a fresh lock from where it stopped ([`Progress`]).
//!    Errors are kept (the last one of a round, with the count) and logged
//!    after the lock is released.
//! 3. **No allocation in the loops**: every buffer is made when the thread
//!    starts, sized for the largest batch.
//!
//! Exceptions, each rare and bounded: boringtun copies a packet it has to
//! queue while there is no session yet (at most 256, before a handshake
//! completes); and when a rotated session is promoted the decrypt thread
//! tells the rotation watchers (a wake-up) before releasing the lock, so
//! they see the changes in the order they happened.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::{Shared, log_promoted};
use crate::config::allowed;
use crate::peer::{Context, PeerSlot, Sessions, Which};
use crate::rotation::RotationId;
use crate::stats::{DropReason, DropTally};
use crate::udp::{self, Received};

/// Headroom in front of each packet written to the TUN device: the virtio-net
/// header that offload mode puts before every packet.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;

/// Decrypted packets gathered before one GRO-coalescing write to the TUN device.
const TUN_WRITE_BATCH: usize = 256;

/// Datagrams the decrypt thread may hold for sending before it must release
/// the lock and send them. Handshakes are rare and boringtun's queue drains
/// once per handshake, so this is seldom reached; a flood of initiations
/// (each answered with a cookie) just costs a lock release per 64.
const OUTBOX_SLOTS: usize = 64;

/// Bytes per encrypted datagram slot for an MTU: room for the WireGuard
/// header, tag and padding to 16 bytes, and never less than a handshake
/// initiation; a multiple of 64 for alignment.
fn stride(mtu: usize) -> usize {
    (mtu + 32 + 16).max(148).next_multiple_of(64)
}

/// TUN -> encrypt -> UDP.
pub(super) fn encrypt_loop(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let stop = shared.stop.as_raw_fd();
    let tun_fd: RawFd = shared.tun.as_raw_fd();
    let mtu = shared.mtu as usize;
    let stride = stride(mtu);
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
        let mut errors = Errors::default();
        let endpoint;
        {
            let mut g = shared.lock();
            let Some(slot) = g.peer.as_mut() else {
                drop(g);
                shared
                    .counters
                    .tx_dropped_no_route
                    .fetch_add(n as u64, Relaxed);
                continue;
            };
            endpoint = slot.endpoint;
            // Outgoing traffic always uses the current context; a staged
            // one takes over only once promoted (between two batches).
            let ctx = &mut slot.current;
            for i in 0..n {
                let pkt = &bufs[i][..sizes[i]];
                let routable =
                    Tunn::dst_address(pkt).is_some_and(|d| allowed(&ctx.config.allowed_ips, d));
                if !routable || pkt.len() + 48 > stride {
                    no_route += 1;
                    continue;
                }
                match ctx
                    .tunn
                    .encapsulate(pkt, &mut out[k * stride..(k + 1) * stride])
                {
                    TunnResult::WriteToNetwork(p) => {
                        lens[k] = p.len();
                        k += 1;
                    }
                    TunnResult::Err(e) => errors.keep(e),
                    // Queued inside boringtun until the handshake completes.
                    _ => {}
                }
            }
        }
        errors.log("encapsulate failed");
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

/// UDP -> decrypt -> TUN.
pub(super) fn decrypt_loop(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let stop = shared.stop.as_raw_fd();
    let mtu = shared.mtu as usize;
    let max_datagram = stride(mtu) + 64;
    let mut rx = udp::Receiver::new(&shared.sock, shared.gro, max_datagram);
    let mut out = RoundOut::new(OUTBOX_SLOTS, stride(mtu));
    let mut gro = GROTable::default();

    loop {
        if !rx.recv(stop) {
            return;
        }
        let batch = Batch {
            got: &rx.got,
            bufs: &rx.bufs,
            buf_len: rx.buf_len,
        };
        let mut progress = Progress::default();
        loop {
            let mut g = shared.lock();
            let finished = decrypt_round(&mut g, &batch, &mut progress, &mut out);
            if out.promoted.is_some() {
                shared.publish_rotation(&g);
            }
            drop(g);

            // The lock is released: now the system calls.
            if let Some(id) = out.promoted.take() {
                log_promoted(&shared, id);
            }
            out.errors.log("datagram dropped");
            out.outbox.send(&shared.sock);
            if out.k > 0 {
                if let Err(e) =
                    shared
                        .tun
                        .send_multiple(&mut gro, &mut out.tbufs[..out.k], TUN_OFFSET)
                {
                    tracing::debug!(error = %e, "TUN write error");
                }
                out.k = 0;
            }
            out.tally.flush(&shared.counters);
            if out.rx_packets > 0 {
                shared
                    .counters
                    .rx_packets
                    .fetch_add(out.rx_packets, Relaxed);
                shared.counters.rx_bytes.fetch_add(out.rx_bytes, Relaxed);
                (out.rx_packets, out.rx_bytes) = (0, 0);
            }
            if finished {
                break;
            }
        }
        if let (Some(src), Some(before)) = (progress.authenticated_src, progress.endpoint_before) {
            if before != Some(src) {
                tracing::info!(ifname = %shared.ifname, old = ?before, new = %src, "peer endpoint changed");
            }
        }
    }
}

/// One received batch: message `i` is `bufs[i * buf_len..][..got[i].len]`,
/// cut into `got[i].seg`-byte datagrams when the kernel coalesced them (GRO).
struct Batch<'a> {
    got: &'a [Received],
    bufs: &'a [u8],
    buf_len: usize,
}

/// How far the decrypt thread got in a batch, kept while the lock is
/// released to send and write what the batch produced so far.
#[derive(Debug, Default)]
struct Progress {
    /// The message and the byte offset in it of the next datagram.
    msg: usize,
    off: usize,
    step: Step,
    /// The peer's endpoint when the batch started (`Some` once the batch
    /// found a peer), to log a change once per batch.
    endpoint_before: Option<Option<SocketAddr>>,
    /// The source of the last datagram that proved to come from the peer.
    authenticated_src: Option<SocketAddr>,
    /// Whether a datagram went to the staged context of a rotation.
    touched_staged: bool,
}

/// The steps of a batch, in order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    #[default]
    Decrypt,
    /// A completed handshake (either role) releases the packets boringtun
    /// queued while it had no session; checking once per batch costs one
    /// empty-queue pop.
    ReleaseQueued,
    /// A staged context that just completed its handshake takes over
    /// outgoing traffic now, not at the next timer tick: every tick of delay
    /// is traffic still riding the old keys.
    Promote,
    /// The promoted context's queue, to the peer's endpoint.
    ReleasePromoted(SocketAddr),
    Done,
}

/// What a round under the lock produced, for after the lock is released.
/// Allocated once per thread.
struct RoundOut {
    /// Decrypted packets at `TUN_OFFSET`, the first `k` ready to write.
    /// Capacity for a whole coalesced 64 KiB packet up front: GRO appends
    /// segments into the first buffer of a flow.
    tbufs: Vec<Vec<u8>>,
    k: usize,
    outbox: Outbox,
    tally: DropTally,
    rx_packets: u64,
    rx_bytes: u64,
    errors: Errors,
    /// A rotation promoted in this round.
    promoted: Option<RotationId>,
}

impl RoundOut {
    fn new(outbox_slots: usize, stride: usize) -> RoundOut {
        RoundOut {
            tbufs: (0..TUN_WRITE_BATCH)
                .map(|_| Vec::with_capacity(TUN_OFFSET + 65_536 + 64))
                .collect(),
            k: 0,
            outbox: Outbox::new(outbox_slots, stride),
            tally: DropTally::default(),
            rx_packets: 0,
            rx_bytes: 0,
            errors: Errors::default(),
            promoted: None,
        }
    }

    /// Whether the next datagram might not fit: the TUN batch or the outbox
    /// is full.
    fn full(&self) -> bool {
        self.k == self.tbufs.len() || self.outbox.is_full()
    }
}

/// One round of a batch under the lock: decrypts datagrams from where
/// `p` says until the batch is done (`true`) or `out` is full (`false`:
/// release the lock, empty `out`, call again).
fn decrypt_round(
    sessions: &mut Sessions,
    batch: &Batch<'_>,
    p: &mut Progress,
    out: &mut RoundOut,
) -> bool {
    let Some(slot) = sessions.peer.as_mut() else {
        // No peer (never configured, or removed while we sent): what is
        // left of the batch comes from a key we do not know.
        out.tally.counts[DropReason::UnknownKey as usize] +=
            batch.got.len().saturating_sub(p.msg) as u64;
        p.step = Step::Done;
        return true;
    };
    if p.endpoint_before.is_none() {
        p.endpoint_before = Some(slot.endpoint);
    }
    loop {
        match p.step {
            Step::Decrypt => {
                let Some(slot) = sessions.peer.as_mut() else {
                    return true;
                };
                if !decrypt_datagrams(slot, batch, p, out) {
                    return false;
                }
                p.step = Step::ReleaseQueued;
            }
            Step::ReleaseQueued => {
                if let (Some(src), Some(slot)) = (p.authenticated_src, sessions.peer.as_mut()) {
                    if !release_queued(&mut slot.current, src, &mut out.outbox) {
                        return false;
                    }
                }
                p.step = Step::Promote;
            }
            Step::Promote => {
                p.step = Step::Done;
                if p.touched_staged {
                    out.promoted = sessions.promote_if_ready();
                    if out.promoted.is_some() {
                        if let Some(ep) = sessions.peer.as_ref().and_then(|s| s.endpoint) {
                            p.step = Step::ReleasePromoted(ep);
                        }
                    }
                }
            }
            Step::ReleasePromoted(ep) => {
                if let Some(slot) = sessions.peer.as_mut() {
                    if !release_queued(&mut slot.current, ep, &mut out.outbox) {
                        return false;
                    }
                }
                p.step = Step::Done;
            }
            Step::Done => return true,
        }
    }
}

/// Decrypts the batch's datagrams from `p.msg`/`p.off` on; `false` when it
/// stopped because `out` is full.
fn decrypt_datagrams(
    slot: &mut PeerSlot,
    batch: &Batch<'_>,
    p: &mut Progress,
    out: &mut RoundOut,
) -> bool {
    while p.msg < batch.got.len() {
        let got = batch.got[p.msg];
        let msg = &batch.bufs[p.msg * batch.buf_len..][..got.len];
        let seg = got.seg.max(1);
        while p.off < msg.len() {
            if out.full() {
                return false;
            }
            let chunk = &msg[p.off..(p.off + seg).min(msg.len())];
            p.off += chunk.len();
            decrypt_one(slot, got.src, chunk, p, out);
        }
        p.msg += 1;
        p.off = 0;
    }
    true
}

/// Decrypts one datagram into the next TUN buffer, or its answer into the
/// outbox. The caller made sure both have room.
fn decrypt_one(
    slot: &mut PeerSlot,
    src: Option<SocketAddr>,
    chunk: &[u8],
    p: &mut Progress,
    out: &mut RoundOut,
) {
    let tb = &mut out.tbufs[out.k];
    tb.resize(TUN_OFFSET + chunk.len().max(256), 0);
    let kind = msg_type(chunk);
    let (which, r, proven) = slot.receive(src, chunk, &mut tb[TUN_OFFSET..]);
    if proven {
        p.authenticated_src = src;
    }
    p.touched_staged |= which == Which::Staged;
    match r {
        TunnResult::WriteToTunnelV4(pkt, _) | TunnResult::WriteToTunnelV6(pkt, _) => {
            let len = pkt.len();
            // Cryptokey routing: the inner source must be one the peer is
            // allowed to use.
            let inner_src = inner_source(&tb[TUN_OFFSET..TUN_OFFSET + len]);
            let nets = &slot.ctx(which).config.allowed_ips;
            if inner_src.is_some_and(|s| allowed(nets, s)) {
                tb.truncate(TUN_OFFSET + len);
                out.k += 1;
                out.rx_packets += 1;
                out.rx_bytes += chunk.len() as u64;
            } else {
                out.tally.add(DropReason::NotAllowed);
            }
        }
        TunnResult::WriteToNetwork(reply) => {
            let Some(src) = src else { return };
            // A cookie reply to a handshake: we are under load.
            if (kind == 1 || kind == 2) && msg_type(reply) == 3 {
                out.tally.add(DropReason::UnderLoad);
            }
            out.outbox.push(reply, src);
        }
        TunnResult::Done => {
            // A keepalive (data, empty) or an accepted cookie reply.
            if kind == 4 {
                out.rx_packets += 1;
                out.rx_bytes += chunk.len() as u64;
            }
        }
        TunnResult::Err(e) => {
            let r = DropReason::of(&e);
            if r == DropReason::Other {
                out.errors.keep(e);
            }
            out.tally.add(r);
        }
    }
}

/// Moves what boringtun queued in `ctx` while it had no session into the
/// outbox, addressed to `to`. `false` when the outbox filled up first.
fn release_queued(ctx: &mut Context, to: SocketAddr, outbox: &mut Outbox) -> bool {
    while !outbox.is_full() {
        match ctx.tunn.decapsulate(None, &[], outbox.free_slot()) {
            TunnResult::WriteToNetwork(d) => {
                let len = d.len();
                outbox.commit(len, to);
            }
            _ => return true,
        }
    }
    false
}

/// Datagrams made under the lock, sent after it is released. One slot per
/// datagram, all allocated up front.
struct Outbox {
    buf: Vec<u8>,
    slot: usize,
    /// Length and destination of the filled slots, in order.
    filled: Vec<(usize, SocketAddr)>,
}

impl Outbox {
    fn new(slots: usize, slot: usize) -> Outbox {
        Outbox {
            buf: vec![0; slots * slot],
            slot,
            filled: Vec::with_capacity(slots),
        }
    }

    fn is_full(&self) -> bool {
        self.filled.len() == self.filled.capacity()
    }

    /// The next free slot, to build a datagram in place. Only when not full.
    fn free_slot(&mut self) -> &mut [u8] {
        let at = self.filled.len() * self.slot;
        &mut self.buf[at..at + self.slot]
    }

    /// Marks the first `len` bytes of [`Outbox::free_slot`] as a datagram to `to`.
    fn commit(&mut self, len: usize, to: SocketAddr) {
        debug_assert!(!self.is_full() && len <= self.slot);
        self.filled.push((len, to));
    }

    /// Copies `d` into the next slot. Only when not full; a datagram larger
    /// than a slot (none that boringtun answers with) is dropped.
    fn push(&mut self, d: &[u8], to: SocketAddr) {
        if d.len() <= self.slot && !self.is_full() {
            self.free_slot()[..d.len()].copy_from_slice(d);
            self.commit(d.len(), to);
        }
    }

    /// Sends every datagram and empties the outbox. Never under the lock.
    fn send(&mut self, sock: &UdpSocket) {
        for (i, &(len, to)) in self.filled.iter().enumerate() {
            if let Err(e) = sock.send_to(&self.buf[i * self.slot..][..len], to) {
                tracing::debug!(error = %e, endpoint = %to, "send failed");
            }
        }
        self.filled.clear();
    }
}

/// The last error of a round and how many there were: logged once, after the
/// lock is released. boringtun's error is moved in, not formatted, so keeping
/// it costs nothing.
#[derive(Debug, Default)]
struct Errors {
    last: Option<WireGuardError>,
    count: u64,
}

impl Errors {
    fn keep(&mut self, e: WireGuardError) {
        self.last = Some(e);
        self.count += 1;
    }

    fn log(&mut self, what: &'static str) {
        if let Some(e) = self.last.take() {
            tracing::debug!(error = ?e, count = self.count, "{what}");
        }
        self.count = 0;
    }
}

/// Message type of a WireGuard datagram (first little-endian u32, one byte in
/// practice).
#[inline]
fn msg_type(d: &[u8]) -> u8 {
    d.first().copied().unwrap_or(0)
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
    //! The rounds under the lock, driven by hand with two `Sessions` (home
    //! and VPS) back to back: no socket and no TUN device, so what a round
    //! "sends" can only be what it left in the outbox for after the lock.
    use super::*;
    use crate::config::PeerConfig;
    use crate::key::PrivateKey;
    use crate::stats::Counters;

    const HOME_IP: [u8; 4] = [10, 77, 77, 2];
    const VPS_IP: [u8; 4] = [10, 77, 77, 1];
    const HOME_EP: &str = "192.0.2.2:40000";
    const VPS_EP: &str = "192.0.2.1:51820";

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn side(
        key: &PrivateKey,
        peer: &PrivateKey,
        peer_ip: [u8; 4],
        endpoint: Option<&str>,
    ) -> Sessions {
        let config = PeerConfig {
            public_key: peer.public_key(),
            preshared_key: None,
            endpoint: endpoint.map(ep),
            allowed_ips: vec![std::net::IpAddr::from(peer_ip).into()],
            persistent_keepalive: None,
        };
        let mut s = Sessions::new(key.clone());
        s.peer = Some(PeerSlot::new(Context::new(key.clone(), config, None, &[])));
        s
    }

    fn home_and_vps() -> (Sessions, Sessions) {
        let (hk, vk) = (PrivateKey::generate(), PrivateKey::generate());
        (
            side(&hk, &vk, VPS_IP, Some(VPS_EP)),
            side(&vk, &hk, HOME_IP, None),
        )
    }

    /// A minimal IPv4 packet with a payload.
    fn ip_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    /// A received batch as `recvmmsg` leaves it: each entry of `msgs` is one
    /// message of datagrams of one size (more than one: coalesced by GRO).
    struct Rx {
        got: Vec<Received>,
        bufs: Vec<u8>,
        buf_len: usize,
    }

    impl Rx {
        fn new(from: &str, msgs: &[Vec<Vec<u8>>]) -> Rx {
            let buf_len = 65_536;
            let mut rx = Rx {
                got: Vec::new(),
                bufs: vec![0; msgs.len() * buf_len],
                buf_len,
            };
            for (i, datagrams) in msgs.iter().enumerate() {
                let seg = datagrams[0].len();
                let mut at = i * buf_len;
                for d in datagrams {
                    assert!(d.len() == seg || std::ptr::eq(d, datagrams.last().unwrap()));
                    rx.bufs[at..at + d.len()].copy_from_slice(d);
                    at += d.len();
                }
                rx.got.push(Received {
                    src: Some(ep(from)),
                    len: at - i * buf_len,
                    seg,
                });
            }
            rx
        }

        fn batch(&self) -> Batch<'_> {
            Batch {
                got: &self.got,
                bufs: &self.bufs,
                buf_len: self.buf_len,
            }
        }
    }

    /// Runs rounds until the batch is done, taking what each left behind
    /// (as the thread does once the lock is released). Returns the rounds,
    /// the datagrams "sent" and the decrypted packets.
    #[allow(clippy::type_complexity)]
    fn run(
        s: &mut Sessions,
        rx: &Rx,
        out: &mut RoundOut,
    ) -> (usize, Vec<(Vec<u8>, SocketAddr)>, Vec<Vec<u8>>) {
        let mut p = Progress::default();
        let (mut rounds, mut sent, mut packets) = (0, Vec::new(), Vec::new());
        loop {
            rounds += 1;
            let finished = decrypt_round(s, &rx.batch(), &mut p, out);
            for (i, &(len, to)) in out.outbox.filled.iter().enumerate() {
                sent.push((out.outbox.buf[i * out.outbox.slot..][..len].to_vec(), to));
            }
            out.outbox.filled.clear();
            for tb in &out.tbufs[..out.k] {
                packets.push(tb[TUN_OFFSET..].to_vec());
            }
            out.k = 0;
            if finished {
                return (rounds, sent, packets);
            }
            assert!(rounds < 1000, "no progress");
        }
    }

    fn encrypt(s: &mut Sessions, pkt: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        match s
            .peer
            .as_mut()
            .unwrap()
            .current
            .tunn
            .encapsulate(pkt, &mut buf)
        {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("encapsulate: {other:?}"),
        }
    }

    #[test]
    fn handshake_answers_and_queued_packets_wait_in_the_outbox() {
        let (mut home, mut vps) = home_and_vps();
        let mut out = RoundOut::new(OUTBOX_SLOTS, stride(1420));
        // Home has no session yet: the packet is queued and an initiation
        // goes out instead.
        let first = ip_packet(HOME_IP, VPS_IP, b"queued before the handshake");
        let init = encrypt(&mut home, &first);
        assert_eq!(msg_type(&init), 1);

        let (rounds, sent, packets) = run(&mut vps, &Rx::new(HOME_EP, &[vec![init]]), &mut out);
        assert_eq!(rounds, 1);
        assert!(packets.is_empty());
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((msg_type(&sent[0].0), sent[0].1), (2, ep(HOME_EP)));

        // The response completes home's handshake: a keepalive answers it,
        // and the queued packet is released, both to the VPS.
        let response = sent[0].0.clone();
        let (_, sent, packets) = run(&mut home, &Rx::new(VPS_EP, &[vec![response]]), &mut out);
        assert!(packets.is_empty());
        let kinds: Vec<(u8, SocketAddr)> = sent.iter().map(|(d, to)| (msg_type(d), *to)).collect();
        assert_eq!(kinds, [(4, ep(VPS_EP)), (4, ep(VPS_EP))]);

        // The VPS decrypts both: the keepalive counts, the packet goes to TUN.
        let datagrams: Vec<Vec<Vec<u8>>> = sent.into_iter().map(|(d, _)| vec![d]).collect();
        out.rx_packets = 0;
        let (_, sent, packets) = run(&mut vps, &Rx::new(HOME_EP, &datagrams), &mut out);
        assert!(sent.is_empty(), "{sent:?}");
        assert_eq!(packets, [first]);
        assert_eq!(out.rx_packets, 2);
        assert_eq!(vps.peer.as_ref().unwrap().endpoint, Some(ep(HOME_EP)));
    }

    #[test]
    fn a_full_outbox_ends_the_round_and_the_next_one_resumes() {
        let (mut home, mut vps) = home_and_vps();
        let mut out = RoundOut::new(2, stride(1420));
        let init = home.peer.as_mut().unwrap().current.initiation().unwrap();
        // Twelve copies of one initiation in one batch: the first is
        // answered, the next nine are replays, and from the eleventh the
        // limiter (ten per tick) answers with cookie replies.
        let rx = Rx::new(HOME_EP, &vec![vec![init]; 12]);
        let (rounds, sent, packets) = run(&mut vps, &rx, &mut out);
        assert!(packets.is_empty());
        let kinds: Vec<u8> = sent.iter().map(|(d, _)| msg_type(d)).collect();
        assert_eq!(kinds, [2, 3, 3]);
        assert_eq!(
            rounds, 2,
            "two slots: the third answer waits for a second round"
        );
        let c = Counters::default();
        out.tally.flush(&c);
        let d = c.drops();
        assert_eq!((d.under_load, d.replay), (2, 9), "{d:?}");
    }

    #[test]
    fn a_full_tun_batch_ends_the_round_and_the_next_one_resumes_mid_message() {
        let (mut home, mut vps) = home_and_vps();
        let mut out = RoundOut::new(OUTBOX_SLOTS, stride(1420));
        let init = home.peer.as_mut().unwrap().current.initiation().unwrap();
        let (_, sent, _) = run(&mut vps, &Rx::new(HOME_EP, &[vec![init]]), &mut out);
        run(
            &mut home,
            &Rx::new(VPS_EP, &[vec![sent[0].0.clone()]]),
            &mut out,
        );
        // 30 GRO messages of 10 equal datagrams: TUN_WRITE_BATCH (256) ends
        // the first round in the middle of the 26th message.
        let sent: Vec<Vec<u8>> = (0..300u32)
            .map(|i| encrypt(&mut home, &ip_packet(HOME_IP, VPS_IP, &i.to_be_bytes())))
            .collect();
        let msgs: Vec<Vec<Vec<u8>>> = sent.chunks(10).map(<[_]>::to_vec).collect();
        out.rx_packets = 0;
        let (rounds, answers, packets) = run(&mut vps, &Rx::new(HOME_EP, &msgs), &mut out);
        assert_eq!(rounds, 2);
        assert!(answers.is_empty());
        let got: Vec<u32> = packets
            .iter()
            .map(|p| u32::from_be_bytes(p[20..24].try_into().unwrap()))
            .collect();
        assert_eq!(
            got,
            (0..300).collect::<Vec<u32>>(),
            "every packet once, in order"
        );
        assert_eq!(out.rx_packets, 300);
    }

    #[test]
    fn without_a_peer_the_rest_of_the_batch_is_an_unknown_key() {
        let (mut home, _) = home_and_vps();
        let init = home.peer.as_mut().unwrap().current.initiation().unwrap();
        let mut lonely = Sessions::new(PrivateKey::generate());
        let mut out = RoundOut::new(OUTBOX_SLOTS, stride(1420));
        let (rounds, sent, packets) = run(
            &mut lonely,
            &Rx::new(HOME_EP, &[vec![init.clone()], vec![init]]),
            &mut out,
        );
        assert_eq!((rounds, sent.len(), packets.len()), (1, 0, 0));
        let c = Counters::default();
        out.tally.flush(&c);
        assert_eq!(c.drops().unknown_key, 2);
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
