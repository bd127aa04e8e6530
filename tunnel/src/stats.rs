//! Counters of the data path and the snapshot callers read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use boringtun::noise::errors::WireGuardError;
use serde::Serialize;

use crate::key::PublicKey;
use crate::rotation::RotationStats;

/// Why an incoming datagram (or an outgoing packet) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Not a WireGuard message of a valid type and length.
    Garbage,
    /// Handshake whose MAC1 is not for our key (sender does not know us).
    BadMac,
    /// Handshake from a static key that is not our peer.
    UnknownKey,
    /// Data for a session index we do not have, or that fails decryption.
    BadSession,
    /// Replayed handshake (old timestamp) or data (counter already seen).
    Replay,
    /// Handshake answered with a cookie because we are under load.
    UnderLoad,
    /// Decrypted packet whose inner source is not in the peer's allowed IPs.
    NotAllowed,
    /// Anything else boringtun rejects.
    Other,
}

impl DropReason {
    pub(crate) fn of(e: &WireGuardError) -> DropReason {
        use WireGuardError as E;
        match e {
            E::InvalidPacket | E::IncorrectPacketLength | E::WrongPacketType => DropReason::Garbage,
            E::InvalidMac => DropReason::BadMac,
            E::WrongKey => DropReason::UnknownKey,
            E::WrongIndex | E::NoCurrentSession | E::InvalidAeadTag | E::UnexpectedPacket => {
                DropReason::BadSession
            }
            E::WrongTai64nTimestamp | E::DuplicateCounter | E::InvalidCounter => DropReason::Replay,
            E::UnderLoad => DropReason::UnderLoad,
            _ => DropReason::Other,
        }
    }
}

/// Live counters, shared by the data-path threads. Updated once per batch,
/// not per packet, so the two directions do not bounce a cache line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub drop_garbage: AtomicU64,
    pub drop_bad_mac: AtomicU64,
    pub drop_unknown_key: AtomicU64,
    pub drop_bad_session: AtomicU64,
    pub drop_replay: AtomicU64,
    pub drop_under_load: AtomicU64,
    pub drop_not_allowed: AtomicU64,
    pub drop_other: AtomicU64,
    pub tx_dropped_no_endpoint: AtomicU64,
    pub tx_dropped_no_route: AtomicU64,
    pub tx_send_errors: AtomicU64,
}

/// Per-batch tally, flushed into [`Counters`] at the end of a batch.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DropTally {
    pub counts: [u64; 8],
}

impl DropTally {
    #[inline]
    pub fn add(&mut self, r: DropReason) {
        self.counts[r as usize] += 1;
    }

    pub fn flush(&mut self, c: &Counters) {
        let targets = [
            &c.drop_garbage,
            &c.drop_bad_mac,
            &c.drop_unknown_key,
            &c.drop_bad_session,
            &c.drop_replay,
            &c.drop_under_load,
            &c.drop_not_allowed,
            &c.drop_other,
        ];
        for (n, t) in self.counts.iter_mut().zip(targets) {
            if *n != 0 {
                t.fetch_add(*n, Relaxed);
                *n = 0;
            }
        }
    }
}

/// Dropped-datagram counts by reason.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DropStats {
    /// Not a WireGuard message (bad type or length, truncated).
    pub garbage: u64,
    /// Handshake not addressed to our key (bad MAC1).
    pub bad_mac: u64,
    /// Valid handshake from a static key that is not our peer.
    pub unknown_key: u64,
    /// Data for an unknown session, or failing authentication.
    pub bad_session: u64,
    /// Replayed handshake or data packet.
    pub replay: u64,
    /// Handshakes answered with a cookie (or dropped) while under load.
    pub under_load: u64,
    /// Inner source address outside the peer's allowed IPs.
    pub not_allowed_source: u64,
    /// Other rejections.
    pub other: u64,
    /// Outgoing packets dropped: no endpoint known for the peer yet.
    pub tx_no_endpoint: u64,
    /// Outgoing packets dropped: destination not in the peer's allowed IPs.
    pub tx_no_route: u64,
    /// Outgoing datagrams the UDP socket refused.
    pub tx_send_errors: u64,
}

impl DropStats {
    /// Sum of all incoming drops.
    pub fn rx_total(&self) -> u64 {
        self.garbage
            + self.bad_mac
            + self.unknown_key
            + self.bad_session
            + self.replay
            + self.under_load
            + self.not_allowed_source
            + self.other
    }
}

/// A snapshot of the tunnel, for status reports (`cerectl status`, `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct TunnelStats {
    /// TUN device name.
    pub ifname: String,
    /// Our public key.
    pub public_key: PublicKey,
    /// The UDP port we listen on (resolved when configured as 0).
    pub listen_port: u16,
    /// The peer's public key, if a peer is configured.
    pub peer_public_key: Option<PublicKey>,
    /// Where we currently send to (follows the peer when it roams).
    pub endpoint: Option<SocketAddr>,
    /// Time of the last completed handshake (JSON: Unix seconds).
    #[serde(serialize_with = "unix_secs")]
    pub last_handshake: Option<std::time::SystemTime>,
    /// Seconds since the last completed handshake.
    pub last_handshake_age_secs: Option<f64>,
    /// UDP payload bytes received from the peer (authenticated data only).
    pub rx_bytes: u64,
    /// Data packets received from the peer.
    pub rx_packets: u64,
    /// UDP payload bytes sent to the peer.
    pub tx_bytes: u64,
    /// Data packets sent to the peer.
    pub tx_packets: u64,
    /// Persistent keepalive interval, seconds.
    pub persistent_keepalive: Option<u16>,
    /// Dropped datagrams by reason.
    pub dropped: DropStats,
    /// Key rotation: the staged rotation (our and the peer's new public
    /// keys), the rotation counter and the time of the last one.
    pub rotation: RotationStats,
}

fn unix_secs<S: serde::Serializer>(
    t: &Option<std::time::SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

impl Counters {
    pub(crate) fn drops(&self) -> DropStats {
        DropStats {
            garbage: self.drop_garbage.load(Relaxed),
            bad_mac: self.drop_bad_mac.load(Relaxed),
            unknown_key: self.drop_unknown_key.load(Relaxed),
            bad_session: self.drop_bad_session.load(Relaxed),
            replay: self.drop_replay.load(Relaxed),
            under_load: self.drop_under_load.load(Relaxed),
            not_allowed_source: self.drop_not_allowed.load(Relaxed),
            other: self.drop_other.load(Relaxed),
            tx_no_endpoint: self.tx_dropped_no_endpoint.load(Relaxed),
            tx_no_route: self.tx_dropped_no_route.load(Relaxed),
            tx_send_errors: self.tx_send_errors.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_flushes_into_the_right_counters() {
        let c = Counters::default();
        let mut t = DropTally::default();
        t.add(DropReason::of(&WireGuardError::InvalidPacket));
        t.add(DropReason::of(&WireGuardError::WrongTai64nTimestamp));
        t.add(DropReason::of(&WireGuardError::DuplicateCounter));
        t.add(DropReason::of(&WireGuardError::WrongKey));
        t.add(DropReason::of(&WireGuardError::InvalidMac));
        t.add(DropReason::NotAllowed);
        t.flush(&c);
        let d = c.drops();
        assert_eq!(d.garbage, 1);
        assert_eq!(d.replay, 2);
        assert_eq!(d.unknown_key, 1);
        assert_eq!(d.bad_mac, 1);
        assert_eq!(d.not_allowed_source, 1);
        assert_eq!(d.rx_total(), 6);
        // Flushing again adds nothing.
        t.flush(&c);
        assert_eq!(c.drops().rx_total(), 6);
    }
}
