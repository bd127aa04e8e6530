//! Property-based fuzzing of the UDP datagram path, without root: two
//! `Sessions` wired back to back in memory, and whatever arrives on the UDP
//! socket fed to [`PeerSlot::decapsulate`] exactly as the decrypt loop does
//! (same buffer sizing, same drop accounting). Garbage must be refused and
//! counted, never panic, never reach the TUN device or provoke a reply, and
//! never disturb an established session or a staged rotation.
//!
//! Bounded for CI by a fixed case count and seed; `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` override them. Failures are kept under
//! `tunnel/proptest-regressions/`.

use std::net::{IpAddr, SocketAddr};

use boringtun::noise::TunnResult;
use proptest::prelude::*;

use crate::config::PeerConfig;
use crate::key::{PresharedKey, PrivateKey};
use crate::peer::{Context, PeerSlot, Route, Sessions, Which};
use crate::stats::{Counters, DropReason, DropTally};
use crate::udp;

/// Cases per property unless `PROPTEST_CASES` says otherwise. Each case
/// builds two sessions and handshakes them, so fewer than the parsers get.
const CASES: u32 = 128;
/// Seed unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0xCE7E_5005;

const HOME_IP: [u8; 4] = [10, 77, 77, 2];
const VPS_IP: [u8; 4] = [10, 77, 77, 1];
/// Where datagrams claim to come from (a documentation address).
const FROM: [u8; 4] = [192, 0, 2, 9];

fn config() -> ProptestConfig {
    ceres_testkit::fuzz_config(CASES, SEED)
}

fn peer_cfg(key: &PrivateKey, psk: &PresharedKey, dials: bool, ip: [u8; 4]) -> PeerConfig {
    PeerConfig {
        public_key: key.public_key(),
        preshared_key: Some(psk.clone()),
        endpoint: dials.then(|| SocketAddr::from(([192, 0, 2, 1], 51820))),
        allowed_ips: vec![IpAddr::from(ip).into()],
        persistent_keepalive: dials.then_some(25),
    }
}

/// What the decrypt loop made of one datagram.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Written to the TUN device: the inner packet's payload.
    Packet(Which, Vec<u8>),
    /// Sent back to the source.
    Reply(Which, Vec<u8>),
    /// Accepted, nothing to do (keepalive, cookie, empty read).
    Done(Which),
    /// Dropped and counted under this reason.
    Dropped(Which, DropReason),
}

/// One side: its sessions and the counters its decrypt loop keeps.
struct Side {
    sessions: Sessions,
    counters: Counters,
}

impl Side {
    fn new(key: &PrivateKey, peer: PeerConfig) -> Side {
        let mut sessions = Sessions::new(key.clone());
        sessions.peer = Some(PeerSlot::new(Context::new(key.clone(), peer, None, &[])));
        Side {
            sessions,
            counters: Counters::default(),
        }
    }

    fn slot(&mut self) -> &mut PeerSlot {
        self.sessions.peer.as_mut().expect("a peer")
    }

    /// Receives `d` the way `decrypt_loop` does: a buffer of
    /// `max(len, 256)`, one `decapsulate`, drops tallied by reason.
    fn receive(&mut self, d: &[u8]) -> Outcome {
        let mut buf = vec![0u8; d.len().max(256)];
        let mut tally = DropTally::default();
        let slot = self.sessions.peer.as_mut().expect("a peer");
        let (which, r) = slot.decapsulate(Some(IpAddr::from(FROM)), d, &mut buf);
        let out = match r {
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                Outcome::Packet(which, p.get(20..).unwrap_or_default().to_vec())
            }
            TunnResult::WriteToNetwork(p) => Outcome::Reply(which, p.to_vec()),
            TunnResult::Done => Outcome::Done(which),
            TunnResult::Err(e) => {
                let reason = DropReason::of(&e);
                tally.add(reason);
                Outcome::Dropped(which, reason)
            }
        };
        tally.flush(&self.counters);
        out
    }

    /// Everything counted as a dropped incoming datagram.
    fn dropped(&self) -> u64 {
        let d = self.counters.drops();
        d.garbage
            + d.bad_mac
            + d.unknown_key
            + d.bad_session
            + d.replay
            + d.under_load
            + d.not_allowed_source
            + d.other
    }
}

/// A minimal IPv4 packet with a payload.
fn ip_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let len = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

struct Pair {
    home: Side,
    vps: Side,
}

impl Pair {
    /// Two sides with an established session (home dials, as in production).
    fn new() -> Pair {
        let (hk, vk) = (PrivateKey::generate(), PrivateKey::generate());
        let psk = PresharedKey::generate();
        let mut p = Pair {
            home: Side::new(&hk, peer_cfg(&vk, &psk, true, VPS_IP)),
            vps: Side::new(&vk, peer_cfg(&hk, &psk, false, HOME_IP)),
        };
        let init = p.home.slot().current.initiation().expect("initiation");
        p.deliver_all(init, false);
        // The responder confirms the session on the initiator's first data.
        let k = p.send(true, b"");
        p.deliver_all(k, false);
        assert!(p.home.slot().current.established());
        assert!(p.vps.slot().current.established());
        p
    }

    fn side(&mut self, home: bool) -> &mut Side {
        if home { &mut self.home } else { &mut self.vps }
    }

    /// Encrypts `payload` on one side's current context (empty: keepalive).
    fn send(&mut self, from_home: bool, payload: &[u8]) -> Vec<u8> {
        let pkt = match (payload.is_empty(), from_home) {
            (true, _) => Vec::new(),
            (false, true) => ip_packet(HOME_IP, VPS_IP, payload),
            (false, false) => ip_packet(VPS_IP, HOME_IP, payload),
        };
        let mut out = vec![0u8; pkt.len() + 148];
        match self
            .side(from_home)
            .slot()
            .current
            .tunn
            .encapsulate(&pkt, &mut out)
        {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("encapsulate: {other:?}"),
        }
    }

    /// Delivers `d` and the replies it provokes until quiet; panics on a drop.
    fn deliver_all(&mut self, d: Vec<u8>, to_home: bool) -> Vec<Which> {
        let mut took = Vec::new();
        let mut next = Some((d, to_home));
        while let Some((d, to_home)) = next.take() {
            match self.side(to_home).receive(&d) {
                Outcome::Reply(w, r) => {
                    took.push(w);
                    next = Some((r, !to_home));
                }
                Outcome::Done(w) | Outcome::Packet(w, _) => took.push(w),
                Outcome::Dropped(w, r) => panic!("{w:?} dropped a genuine message: {r:?}"),
            }
        }
        took
    }

    /// A packet each way on the current sessions.
    fn roundtrip(&mut self, tag: &[u8]) -> Result<(), TestCaseError> {
        let d = self.send(true, tag);
        prop_assert_eq!(
            self.vps.receive(&d),
            Outcome::Packet(Which::Current, tag.to_vec())
        );
        let d = self.send(false, tag);
        prop_assert_eq!(
            self.home.receive(&d),
            Outcome::Packet(Which::Current, tag.to_vec())
        );
        Ok(())
    }
}

/// Datagrams that look like WireGuard messages more often than chance: a
/// valid type in the first four bytes, the exact length of a handshake,
/// response or cookie, or a data header naming a plausible index.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let typed = |t: u8, len: std::ops::Range<usize>| {
        prop::collection::vec(any::<u8>(), len).prop_map(move |mut v| {
            if v.len() >= 4 {
                v[..4].copy_from_slice(&[t, 0, 0, 0]);
            }
            v
        })
    };
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        typed(1, 148..149),
        typed(2, 92..93),
        typed(3, 64..65),
        typed(4, 16..200),
        typed(4, 32..33),
        (1u8..=4, 0usize..160).prop_flat_map(move |(t, n)| typed(t, n..n + 1)),
    ]
}

/// One change to a genuine datagram.
fn damage() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)
}

fn damaged(d: &[u8], edits: &[(prop::sample::Index, u8)]) -> Vec<u8> {
    let mut v = d.to_vec();
    for (i, x) in edits {
        let at = i.index(v.len());
        // XOR with a non-zero byte: every edit really changes the datagram.
        v[at] ^= x;
    }
    v
}

proptest! {
    #![proptest_config(config())]

    /// A burst of garbage at either side of an established session: every
    /// datagram dropped and counted (an empty one is the "anything queued?"
    /// poll and is not a drop), nothing written to the TUN device or sent
    /// back, and the session still carries traffic both ways afterwards.
    #[test]
    fn garbage_is_dropped_and_counted(
        burst in prop::collection::vec(datagram(), 1..24),
        to_home in any::<bool>(),
    ) {
        let mut p = Pair::new();
        p.roundtrip(b"before")?;
        let side = p.side(to_home);
        let before = side.dropped();
        let mut expected = 0;
        for d in &burst {
            match side.receive(d) {
                Outcome::Dropped(Which::Current, _) => expected += 1,
                Outcome::Done(Which::Current) if d.is_empty() => {}
                other => prop_assert!(false, "garbage {:?} gave {:?}", d, other),
            }
        }
        prop_assert_eq!(side.dropped() - before, expected);
        p.roundtrip(b"after")?;
    }

    /// Genuine data with bytes changed is refused (type, index, counter,
    /// ciphertext and tag are all covered), and does not burn the genuine
    /// datagram's counter: it still arrives, once; its replay is counted.
    #[test]
    fn damaged_data_is_refused_and_the_original_still_arrives(
        edits in prop::collection::vec(damage(), 1..6),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut p = Pair::new();
        let d = p.send(true, &payload);
        for e in &edits {
            let bad = damaged(&d, e);
            match p.vps.receive(&bad) {
                Outcome::Dropped(..) => {}
                other => prop_assert!(false, "damaged data {:?} gave {:?}", e, other),
            }
        }
        prop_assert_eq!(p.vps.dropped(), edits.len() as u64);
        let want = if payload.is_empty() {
            Outcome::Done(Which::Current)
        } else {
            Outcome::Packet(Which::Current, payload.clone())
        };
        prop_assert_eq!(p.vps.receive(&d), want);
        // A damaged counter may name one already received (the handshake's
        // keepalives used the first ones): that is refused as a replay before
        // decryption, and counted so. Count from here.
        let replays = p.vps.counters.drops().replay;
        prop_assert_eq!(p.vps.receive(&d), Outcome::Dropped(Which::Current, DropReason::Replay));
        prop_assert_eq!(p.vps.counters.drops().replay, replays + 1);
    }

    /// A damaged handshake initiation is refused without an answer, and the
    /// genuine one is still answered and completes the handshake. MAC2 (the
    /// last 16 bytes) is left alone: WireGuard checks it only under load.
    #[test]
    fn damaged_initiations_are_refused(edits in prop::collection::vec(damage(), 1..6)) {
        let mut p = Pair::new();
        let init = {
            let mut buf = [0u8; 148];
            match p.home.slot().current.tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        };
        for e in &edits {
            match p.vps.receive(&damaged(&init[..132], e).into_iter().chain(init[132..].iter().copied()).collect::<Vec<_>>()) {
                Outcome::Dropped(..) => {}
                other => prop_assert!(false, "damaged initiation {:?} gave {:?}", e, other),
            }
        }
        prop_assert_eq!(p.vps.dropped(), edits.len() as u64);
        p.deliver_all(init, false);
        let k = p.send(true, b"");
        p.deliver_all(k, false);
        p.roundtrip(b"rehandshaken")?;
    }

    /// Garbage while a key rotation is staged on both sides: routing never
    /// panics, every datagram is dropped, and the rotation still completes
    /// with the new keys carrying traffic.
    #[test]
    fn garbage_during_a_rotation(burst in prop::collection::vec(datagram(), 1..16)) {
        let mut p = Pair::new();
        let (hk, vk) = (PrivateKey::generate(), PrivateKey::generate());
        let psk = PresharedKey::generate();
        p.vps
            .sessions
            .stage(Some(vk.clone()), peer_cfg(&hk, &psk, false, HOME_IP), false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (init, _) = p
            .home
            .sessions
            .stage(Some(hk), peer_cfg(&vk, &psk, true, VPS_IP), false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .initiation
            .ok_or_else(|| TestCaseError::fail("no initiation"))?;
        for d in &burst {
            // Initiations carry no receiver index: offered to the staged context first.
            let route = p.vps.slot().route(d);
            if d.first() == Some(&1) {
                prop_assert_eq!(route, Route::StagedThenCurrent);
            }
            match p.vps.receive(d) {
                Outcome::Dropped(..) => {}
                Outcome::Done(Which::Current) if d.is_empty() => {}
                other => prop_assert!(false, "garbage {:?} gave {:?}", d, other),
            }
        }
        let took = p.deliver_all(init, false);
        prop_assert_eq!(took, vec![Which::Staged, Which::Staged, Which::Staged]);
        prop_assert!(p.home.sessions.promote_if_ready().is_some());
        prop_assert!(p.vps.sessions.promote_if_ready().is_some());
        p.roundtrip(b"rotated")?;
    }

    /// Socket addresses survive the trip through the kernel's form, and any
    /// bytes in a `sockaddr_storage` (as `recvmmsg` might leave) give an
    /// address or `None`, never a panic.
    #[test]
    fn raw_socket_addresses(
        addr in any::<SocketAddr>(),
        v6_socket in any::<bool>(),
        raw in prop::collection::vec(any::<u8>(), 128..129),
        family in prop_oneof![
            Just(libc::AF_INET as u16),
            Just(libc::AF_INET6 as u16),
            any::<u16>()
        ],
    ) {
        let (ss, _) = udp::to_raw(addr, v6_socket);
        let back = udp::from_raw(&ss).ok_or_else(|| TestCaseError::fail("no address"))?;
        // IPv4-mapped addresses come back as IPv4; flow and scope are not kept.
        prop_assert_eq!(back, crate::config::canonical(SocketAddr::new(addr.ip(), addr.port())));

        // SAFETY: sockaddr_storage is plain old data (128 bytes on Linux);
        // any bit pattern is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let n = raw.len().min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: writes n bytes within ss from a buffer of at least n bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
                n,
            );
        }
        ss.ss_family = family;
        let got = udp::from_raw(&ss);
        let known = family == libc::AF_INET as u16 || family == libc::AF_INET6 as u16;
        prop_assert_eq!(got.is_some(), known);
    }
}
