//! The peer's session contexts and which one a datagram belongs to.
//!
//! A context is one boringtun `Tunn`: our static key, the peer's static key
//! and pre-shared key. Normally there is one, the *current* context. A key
//! rotation stages a second one beside it; incoming datagrams go to whichever
//! context they belong to, outgoing packets keep using the current one until
//! the staged one has completed a handshake, and then the staged context is
//! promoted. The old one stays as the *previous* context for a short grace
//! period, so packets already in flight under the old keys still arrive.
//!
//! How a datagram finds its context:
//! - handshake responses, cookie replies and data carry our receiver index.
//!   boringtun builds every session index of a `Tunn` as `index << 8 | n`
//!   from the 24-bit index it was created with, so the top 24 bits name the
//!   context; we keep the contexts' indices distinct.
//! - a handshake initiation carries no index. It is offered to the staged
//!   context first: when our static key changes, one meant for the current
//!   key fails the staged context's MAC1 check; when only the peer's key
//!   changes, the staged context decrypts the initiator's static key and
//!   refuses it as the wrong key. Either refusal hands it to the current
//!   context. (With both static keys unchanged nothing tells them apart,
//!   which is why such a rotation is refused.)
//!
//! Everything here is plain state, tested without sockets or a TUN device.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use crate::config::PeerConfig;
use crate::key::{PrivateKey, PublicKey};
use crate::rotation::{RotationError, RotationId, RotationStats, StagedRotation};

/// How long the previous context keeps accepting packets after a rotation,
/// counted from the promotion or from the last packet it accepted, whichever
/// is later. The peer moves to the new keys one round trip after us; 2 s
/// covers that and any packets queued on the path with a wide margin.
pub(crate) const GRACE: Duration = Duration::from_secs(2);
/// The previous context is dropped after this long even if the peer still
/// uses it: a peer that never moves over has a problem no grace will fix.
pub(crate) const GRACE_MAX: Duration = Duration::from_secs(60);
/// Handshakes per rate-limiter period before cookies are demanded; the same
/// value boringtun uses for a limiter it makes itself. The period is our
/// timer tick (the timer loop resets the count).
const HANDSHAKE_RATE_LIMIT: u64 = 10;
/// Large enough for anything a `Tunn` answers a handshake initiation with
/// (a 92-byte response or a 64-byte cookie reply).
const INIT_REPLY_MAX: usize = 148;

/// Message types on the wire (first byte; the next three are zero).
const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_DATA: u8 = 4;

/// One boringtun state: our key, the peer's key and pre-shared key.
pub(crate) struct Context {
    pub tunn: Tunn,
    /// The 24-bit index `tunn` was created with: the top 24 bits of every
    /// receiver index the peer sends to this context.
    pub index: u32,
    /// Our static key in this context.
    pub key: PrivateKey,
    /// Its public half (cached: deriving it is a scalar multiplication).
    pub public: PublicKey,
    pub config: PeerConfig,
    /// Shared by all contexts with the same static key, so a cookie one of
    /// them hands out is honoured by the others under load.
    pub limiter: Arc<RateLimiter>,
}

impl Context {
    /// A fresh context whose index is none of `taken`.
    pub fn new(
        key: PrivateKey,
        config: PeerConfig,
        limiter: Option<Arc<RateLimiter>>,
        taken: &[u32],
    ) -> Context {
        let public = key.public_key();
        let limiter = limiter.unwrap_or_else(|| {
            Arc::new(RateLimiter::new(
                &x25519::PublicKey::from(public.0),
                HANDSHAKE_RATE_LIMIT,
            ))
        });
        let index = loop {
            let i = rand::random::<u32>() >> 8;
            if !taken.contains(&i) {
                break i;
            }
        };
        let tunn = Tunn::new(
            key.secret().clone(),
            x25519::PublicKey::from(config.public_key.0),
            config.preshared_key.as_ref().map(|k| k.0),
            config.persistent_keepalive,
            index,
            Some(limiter.clone()),
        );
        Context {
            tunn,
            index,
            key,
            public,
            config,
            limiter,
        }
    }

    /// Whether outgoing packets would use an established session: boringtun
    /// reports a handshake time exactly when its current session exists
    /// (an initiator after the response, a responder after the first data).
    pub fn established(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Formats a handshake initiation (unless one is already in flight).
    pub fn initiation(&mut self) -> Option<Vec<u8>> {
        let mut buf = [0u8; INIT_REPLY_MAX];
        match self.tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
            _ => None,
        }
    }
}

/// Which context a datagram went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Current,
    Staged,
    Previous,
}

/// The staged context's answer to an initiation, without a borrow of the
/// output buffer.
enum Answer {
    /// This many bytes in the output buffer go back to the sender.
    Reply(usize),
    Done,
    Err(WireGuardError),
}

/// Where [`PeerSlot::route`] sends a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this context (by receiver index, or because there is no choice).
    To(Which),
    /// A handshake initiation while a rotation is staged: staged first,
    /// current if the staged context says it is not for it.
    StagedThenCurrent,
}

pub(crate) struct Staged {
    pub ctx: Context,
    pub id: RotationId,
    pub since: SystemTime,
}

pub(crate) struct Previous {
    pub ctx: Context,
    pub since: Instant,
    pub last_rx: Instant,
}

/// The peer: where it is and its contexts.
pub(crate) struct PeerSlot {
    /// Configured, then the source of the last authenticated datagram
    /// (roaming). Shared by the contexts: a rotation changes keys, not paths.
    pub endpoint: Option<SocketAddr>,
    pub current: Context,
    pub staged: Option<Staged>,
    pub previous: Option<Previous>,
}

/// Whether a datagram of type `kind` that `decapsulate` turned into `r`
/// proves that its sender holds the peer's keys, so that its source address
/// may become the peer's endpoint (roaming).
///
/// Decrypted data, keepalives and handshake messages answered with a
/// handshake do. A handshake answered with a cookie reply (we are under
/// load) does not: the sender proved nothing yet. Nor does a cookie reply:
/// it is encrypted to a MAC we sent, not with a session key, and anyone who
/// saw it can replay it from another address; roaming on it would let them
/// point our traffic anywhere.
pub(crate) fn proves_source(kind: u8, r: &TunnResult<'_>) -> bool {
    if kind == MSG_COOKIE {
        return false;
    }
    match r {
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => true,
        TunnResult::WriteToNetwork(reply) => {
            !((kind == MSG_INIT || kind == MSG_RESPONSE) && reply.first() == Some(&MSG_COOKIE))
        }
        TunnResult::Done => true,
        TunnResult::Err(_) => false,
    }
}

/// The receiver index of a response, cookie reply or data message.
fn receiver_index(d: &[u8]) -> Option<u32> {
    let at = match (d.first().copied()?, d.len()) {
        (MSG_RESPONSE, 92) => 8,
        (MSG_COOKIE, 64) => 4,
        (MSG_DATA, n) if n >= 32 => 4,
        _ => return None,
    };
    Some(u32::from_le_bytes(d[at..at + 4].try_into().ok()?))
}

impl PeerSlot {
    pub fn new(current: Context) -> PeerSlot {
        PeerSlot {
            endpoint: current.config.endpoint,
            current,
            staged: None,
            previous: None,
        }
    }

    /// The indices in use, which a new context must avoid.
    pub fn taken(&self) -> Vec<u32> {
        let mut v = vec![self.current.index];
        v.extend(self.staged.as_ref().map(|s| s.ctx.index));
        v.extend(self.previous.as_ref().map(|p| p.ctx.index));
        v
    }

    /// The context `w`, or the current one when `w` is gone.
    pub fn ctx(&self, w: Which) -> &Context {
        match w {
            Which::Staged => self.staged.as_ref().map(|s| &s.ctx),
            Which::Previous => self.previous.as_ref().map(|p| &p.ctx),
            Which::Current => None,
        }
        .unwrap_or(&self.current)
    }

    fn ctx_mut(&mut self, w: Which) -> &mut Context {
        match w {
            Which::Staged => self.staged.as_mut().map(|s| &mut s.ctx),
            Which::Previous => self.previous.as_mut().map(|p| &mut p.ctx),
            Which::Current => None,
        }
        .unwrap_or(&mut self.current)
    }

    /// Which context a datagram goes to. Unknown indices go to the current
    /// context, which refuses and counts them as before.
    pub fn route(&self, d: &[u8]) -> Route {
        if self.staged.is_none() && self.previous.is_none() {
            return Route::To(Which::Current);
        }
        if let Some(idx) = receiver_index(d) {
            let top = idx >> 8;
            if self.staged.as_ref().is_some_and(|s| s.ctx.index == top) {
                return Route::To(Which::Staged);
            }
            if self.previous.as_ref().is_some_and(|p| p.ctx.index == top) {
                return Route::To(Which::Previous);
            }
            return Route::To(Which::Current);
        }
        if self.staged.is_some() && d.first() == Some(&MSG_INIT) {
            return Route::StagedThenCurrent;
        }
        Route::To(Which::Current)
    }

    /// Decapsulates `d` from `src` like [`PeerSlot::decapsulate`], and
    /// moves the endpoint to `src` when the datagram proves its sender
    /// ([`proves_source`]). Returns the context, the result and whether the
    /// endpoint is now `src` because of it.
    pub fn receive<'a>(
        &mut self,
        src: Option<SocketAddr>,
        d: &[u8],
        dst: &'a mut [u8],
    ) -> (Which, TunnResult<'a>, bool) {
        let kind = d.first().copied().unwrap_or(0);
        let (which, r) = self.decapsulate(src.map(|s| s.ip()), d, dst);
        let proven = src.is_some() && proves_source(kind, &r);
        if proven {
            self.endpoint = src;
        }
        (which, r, proven)
    }

    /// Decapsulates `d` in the context it belongs to; says which one.
    pub fn decapsulate<'a>(
        &mut self,
        src: Option<IpAddr>,
        d: &[u8],
        dst: &'a mut [u8],
    ) -> (Which, TunnResult<'a>) {
        let which = match self.route(d) {
            Route::To(w) => w,
            Route::StagedThenCurrent => match self.try_staged_initiation(src, d, dst) {
                Some(Answer::Reply(n)) => {
                    return (Which::Staged, TunnResult::WriteToNetwork(&mut dst[..n]));
                }
                Some(Answer::Done) => return (Which::Staged, TunnResult::Done),
                Some(Answer::Err(e)) => return (Which::Staged, TunnResult::Err(e)),
                None => Which::Current,
            },
        };
        if which == Which::Previous {
            if let Some(p) = self.previous.as_mut() {
                p.last_rx = Instant::now();
            }
        }
        (which, self.ctx_mut(which).tunn.decapsulate(src, d, dst))
    }

    /// Offers an initiation to the staged context. `None` when the staged
    /// context says it is not addressed to it (MAC1 for another of our keys,
    /// or another peer key inside). The answer is built in a scratch buffer
    /// and copied to `dst`, and only its length is returned, so that `dst`
    /// is still free for the fallback.
    fn try_staged_initiation(
        &mut self,
        src: Option<IpAddr>,
        d: &[u8],
        dst: &mut [u8],
    ) -> Option<Answer> {
        let staged = self.staged.as_mut()?;
        let mut scratch = [0u8; INIT_REPLY_MAX];
        match staged.ctx.tunn.decapsulate(src, d, &mut scratch) {
            TunnResult::Err(WireGuardError::InvalidMac | WireGuardError::WrongKey) => None,
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                dst[..n].copy_from_slice(p);
                Some(Answer::Reply(n))
            }
            TunnResult::Done => Some(Answer::Done),
            TunnResult::Err(e) => Some(Answer::Err(e)),
            // An initiation never decrypts to a packet.
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                Some(Answer::Err(WireGuardError::InvalidPacket))
            }
        }
    }

    /// Distinct rate limiters of the contexts (reset once per timer tick).
    pub fn limiters(&self) -> Vec<&Arc<RateLimiter>> {
        let mut v = vec![&self.current.limiter];
        for l in [
            self.staged.as_ref().map(|s| &s.ctx.limiter),
            self.previous.as_ref().map(|p| &p.ctx.limiter),
        ]
        .into_iter()
        .flatten()
        {
            if !v.iter().any(|x| Arc::ptr_eq(x, l)) {
                v.push(l);
            }
        }
        v
    }
}

/// What staging a rotation produced.
#[derive(Debug)]
pub(crate) struct Staging {
    pub id: RotationId,
    /// The rotation this one replaced.
    pub replaced: Option<RotationId>,
    /// A handshake initiation to send at once, and where.
    pub initiation: Option<(Vec<u8>, SocketAddr)>,
}

/// Everything behind the engine's one lock: our key, the peer, and the
/// rotation bookkeeping.
pub(crate) struct Sessions {
    /// Our static key: the current context's once a peer exists.
    pub key: PrivateKey,
    pub public: PublicKey,
    pub peer: Option<PeerSlot>,
    pub rotations: u64,
    pub last_rotation: Option<(RotationId, SystemTime)>,
    pub last_abandoned: Option<RotationId>,
    next_id: u64,
}

/// Whether `peer` gives a non-zero X25519 shared secret with `key` — false
/// for the all-zero key and the other low-order points.
pub(crate) fn contributory(key: &PrivateKey, peer: &PublicKey) -> bool {
    key.secret()
        .diffie_hellman(&x25519::PublicKey::from(peer.0))
        .was_contributory()
}

impl Sessions {
    pub fn new(key: PrivateKey) -> Sessions {
        Sessions {
            public: key.public_key(),
            key,
            peer: None,
            rotations: 0,
            last_rotation: None,
            last_abandoned: None,
            next_id: 1,
        }
    }

    /// Stages a rotation: a second context with `new_key` (or our current
    /// key) and `peer`'s keys beside the current one. Refused, leaving
    /// everything as it was, when the keys are weak or change nothing, or a
    /// rotation is already staged and `replace` is false. When `peer` has a
    /// configured endpoint (the side that dials and keeps the path open),
    /// the staged context's first handshake initiation is returned to send.
    pub fn stage(
        &mut self,
        new_key: Option<PrivateKey>,
        peer: PeerConfig,
        replace: bool,
    ) -> Result<Staging, RotationError> {
        let our_key = new_key.unwrap_or_else(|| self.key.clone());
        let slot = self.peer.as_mut().ok_or(RotationError::NoPeer)?;
        if let Some(s) = &slot.staged {
            if !replace {
                return Err(RotationError::InProgress(s.id));
            }
        }
        if !contributory(&our_key, &peer.public_key) {
            return Err(RotationError::WeakPeerKey);
        }
        let cur = &slot.current;
        if peer.public_key == cur.config.public_key {
            if peer.preshared_key == cur.config.preshared_key {
                return Err(RotationError::NothingToRotate);
            }
            if our_key.public_key() == cur.public {
                return Err(RotationError::NoStaticKeyChange);
            }
        }
        if peer.allowed_ips != cur.config.allowed_ips {
            return Err(RotationError::AllowedIpsChanged);
        }
        let replaced = slot.staged.take().map(|s| s.id);
        if let Some(r) = replaced {
            self.last_abandoned = Some(r);
        }
        let limiter =
            (our_key.public_key() == slot.current.public).then(|| slot.current.limiter.clone());
        let initiate = peer.endpoint.is_some();
        let endpoint = slot.endpoint.or(peer.endpoint);
        let mut ctx = Context::new(our_key, peer, limiter, &slot.taken());
        let initiation = if initiate {
            ctx.initiation().zip(endpoint)
        } else {
            None
        };
        let id = RotationId(self.next_id);
        self.next_id += 1;
        slot.staged = Some(Staged {
            ctx,
            id,
            since: SystemTime::now(),
        });
        Ok(Staging {
            id,
            replaced,
            initiation,
        })
    }

    /// Drops the staged context; the current one carries on.
    pub fn abort(&mut self) -> Option<RotationId> {
        let id = self.peer.as_mut()?.staged.take()?.id;
        self.last_abandoned = Some(id);
        Some(id)
    }

    /// Makes the staged context the current one; the old current one stays
    /// as the previous context for the grace period.
    pub fn promote(&mut self) -> Result<RotationId, RotationError> {
        let slot = self.peer.as_mut().ok_or(RotationError::NoneStaged)?;
        let staged = slot.staged.take().ok_or(RotationError::NoneStaged)?;
        let old = std::mem::replace(&mut slot.current, staged.ctx);
        let now = Instant::now();
        slot.previous = Some(Previous {
            ctx: old,
            since: now,
            last_rx: now,
        });
        self.key = slot.current.key.clone();
        self.public = slot.current.public;
        self.rotations += 1;
        self.last_rotation = Some((staged.id, SystemTime::now()));
        Ok(staged.id)
    }

    /// Promotes the staged context if it has completed a handshake.
    pub fn promote_if_ready(&mut self) -> Option<RotationId> {
        let ready = self
            .peer
            .as_ref()?
            .staged
            .as_ref()
            .is_some_and(|s| s.ctx.established());
        if ready { self.promote().ok() } else { None }
    }

    /// Drops the previous context once its grace period is over. True when
    /// it did.
    pub fn expire_previous(&mut self, now: Instant) -> bool {
        let Some(slot) = self.peer.as_mut() else {
            return false;
        };
        let over = slot.previous.as_ref().is_some_and(|p| {
            let quiet_since = p.since.max(p.last_rx);
            now.saturating_duration_since(quiet_since) >= GRACE
                || now.saturating_duration_since(p.since) >= GRACE_MAX
        });
        if over {
            slot.previous = None;
        }
        over
    }

    pub fn rotation_stats(&self) -> RotationStats {
        let slot = self.peer.as_ref();
        RotationStats {
            staged: slot
                .and_then(|s| s.staged.as_ref())
                .map(|s| StagedRotation {
                    id: s.id,
                    public_key: s.ctx.public,
                    peer_public_key: s.ctx.config.public_key,
                    since: s.since,
                }),
            rotations: self.rotations,
            last_rotation_id: self.last_rotation.map(|(id, _)| id),
            last_rotation: self.last_rotation.map(|(_, t)| t),
            previous_session_active: slot.is_some_and(|s| s.previous.is_some()),
            last_abandoned_id: self.last_abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Two `Sessions` (home and VPS) wired back to back in memory: datagrams
    //! are carried by hand, so every step of a rotation can be checked.
    use super::*;
    use crate::key::PresharedKey;

    const HOME_IP: [u8; 4] = [10, 77, 77, 2];
    const VPS_IP: [u8; 4] = [10, 77, 77, 1];

    fn peer_cfg(public: PublicKey, psk: &PresharedKey, endpoint: bool, ip: [u8; 4]) -> PeerConfig {
        PeerConfig {
            public_key: public,
            preshared_key: Some(psk.clone()),
            endpoint: endpoint.then(|| "192.0.2.1:51820".parse().unwrap()),
            allowed_ips: vec![IpAddr::from(ip).into()],
            persistent_keepalive: endpoint.then_some(25),
        }
    }

    struct Pair {
        home: Sessions,
        vps: Sessions,
        home_key: PrivateKey,
        vps_key: PrivateKey,
        psk: PresharedKey,
    }

    fn sessions(key: &PrivateKey, peer: PeerConfig) -> Sessions {
        let mut s = Sessions::new(key.clone());
        s.peer = Some(PeerSlot::new(Context::new(key.clone(), peer, None, &[])));
        s
    }

    fn pair() -> Pair {
        let (home_key, vps_key) = (PrivateKey::generate(), PrivateKey::generate());
        let psk = PresharedKey::generate();
        let home = sessions(
            &home_key,
            peer_cfg(vps_key.public_key(), &psk, true, VPS_IP),
        );
        let vps = sessions(
            &vps_key,
            peer_cfg(home_key.public_key(), &psk, false, HOME_IP),
        );
        let mut p = Pair {
            home,
            vps,
            home_key,
            vps_key,
            psk,
        };
        let init = p.slot(true).current.initiation().unwrap();
        deliver_all(&mut p, init, false);
        assert!(p.slot(true).current.established());
        // The responder needs the initiator's first data to confirm.
        let k = send(&mut p, true, b"");
        deliver_all(&mut p, k, false);
        assert!(p.slot(false).current.established());
        p
    }

    impl Pair {
        fn side(&mut self, home: bool) -> &mut Sessions {
            if home { &mut self.home } else { &mut self.vps }
        }
        fn slot(&mut self, home: bool) -> &mut PeerSlot {
            self.side(home).peer.as_mut().unwrap()
        }
    }

    /// A minimal IPv4 packet from `src` with a payload.
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

    /// Encrypts on `from_home`'s current context (an empty payload is a
    /// keepalive); returns the datagram.
    fn send(p: &mut Pair, from_home: bool, payload: &[u8]) -> Vec<u8> {
        let pkt = if payload.is_empty() {
            Vec::new()
        } else if from_home {
            ip_packet(HOME_IP, VPS_IP, payload)
        } else {
            ip_packet(VPS_IP, HOME_IP, payload)
        };
        let mut out = vec![0u8; 2048];
        match p.slot(from_home).current.tunn.encapsulate(&pkt, &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("encapsulate: {other:?}"),
        }
    }

    /// What the receiver made of a datagram.
    #[derive(Debug, PartialEq)]
    enum Got {
        Packet(Which, Vec<u8>),
        Reply(Which, Vec<u8>),
        Done(Which),
        /// The error's `Debug` form (boringtun's error is not `PartialEq`).
        Err(Which, String),
    }

    fn receive(p: &mut Pair, to_home: bool, d: &[u8]) -> Got {
        let mut out = vec![0u8; 2048];
        let (w, r) = p
            .slot(to_home)
            .decapsulate(Some("192.0.2.9".parse().unwrap()), d, &mut out);
        match r {
            TunnResult::WriteToTunnelV4(b, _) => Got::Packet(w, b[20..].to_vec()),
            TunnResult::WriteToNetwork(b) => Got::Reply(w, b.to_vec()),
            TunnResult::Done => Got::Done(w),
            TunnResult::Err(e) => Got::Err(w, format!("{e:?}")),
            TunnResult::WriteToTunnelV6(..) => panic!("v6"),
        }
    }

    /// Delivers `d` to one side and any replies back and forth until quiet.
    /// Returns the contexts that took each message, in order.
    fn deliver_all(p: &mut Pair, d: Vec<u8>, to_home: bool) -> Vec<Which> {
        let mut took = Vec::new();
        let mut next = Some((d, to_home));
        while let Some((d, to_home)) = next.take() {
            match receive(p, to_home, &d) {
                Got::Reply(w, r) => {
                    took.push(w);
                    next = Some((r, !to_home));
                }
                Got::Done(w) | Got::Packet(w, _) => took.push(w),
                Got::Err(w, e) => panic!("{w:?} refused: {e:?}"),
            }
        }
        took
    }

    fn data_roundtrip(p: &mut Pair, tag: &[u8]) -> (Which, Which) {
        let d = send(p, true, tag);
        let a = match receive(p, false, &d) {
            Got::Packet(w, b) => {
                assert_eq!(b, tag);
                w
            }
            other => panic!("vps got {other:?}"),
        };
        let d = send(p, false, tag);
        let b = match receive(p, true, &d) {
            Got::Packet(w, b) => {
                assert_eq!(b, tag);
                w
            }
            other => panic!("home got {other:?}"),
        };
        (a, b)
    }

    /// Stages a full rotation on both sides (VPS first, as the control plane
    /// does); returns home's initiation.
    fn stage_both(p: &mut Pair) -> (PrivateKey, PrivateKey, Vec<u8>) {
        let (hk, vk) = (PrivateKey::generate(), PrivateKey::generate());
        let psk = PresharedKey::generate();
        let st = p
            .vps
            .stage(
                Some(vk.clone()),
                peer_cfg(hk.public_key(), &psk, false, HOME_IP),
                false,
            )
            .unwrap();
        assert!(st.initiation.is_none(), "the VPS does not initiate");
        let st = p
            .home
            .stage(
                Some(hk.clone()),
                peer_cfg(vk.public_key(), &psk, true, VPS_IP),
                false,
            )
            .unwrap();
        let (init, _) = st.initiation.expect("home initiates at once");
        (hk, vk, init)
    }

    #[test]
    fn a_replayed_cookie_reply_does_not_move_the_endpoint() {
        // A VPS under load (limit 0) answers every initiation with a cookie
        // reply.
        let (home_key, vps_key) = (PrivateKey::generate(), PrivateKey::generate());
        let psk = PresharedKey::generate();
        let mut home = sessions(
            &home_key,
            peer_cfg(vps_key.public_key(), &psk, true, VPS_IP),
        );
        let limiter = Arc::new(RateLimiter::new(
            &x25519::PublicKey::from(vps_key.public_key().0),
            0,
        ));
        let mut vps = Sessions::new(vps_key.clone());
        vps.peer = Some(PeerSlot::new(Context::new(
            vps_key.clone(),
            peer_cfg(home_key.public_key(), &psk, false, HOME_IP),
            Some(limiter),
            &[],
        )));
        let home_at: SocketAddr = "198.51.100.10:40000".parse().unwrap();
        let vps_at: SocketAddr = "203.0.113.10:51820".parse().unwrap();
        let init = home.peer.as_mut().unwrap().current.initiation().unwrap();
        let mut out = vec![0u8; 2048];
        let (_, r, proven) = vps
            .peer
            .as_mut()
            .unwrap()
            .receive(Some(home_at), &init, &mut out);
        let cookie = match r {
            TunnResult::WriteToNetwork(c) => c.to_vec(),
            other => panic!("expected a cookie reply, got {other:?}"),
        };
        assert_eq!(cookie[0], MSG_COOKIE);
        assert!(
            !proven,
            "an initiation answered with a cookie proves nothing"
        );
        assert_eq!(vps.peer.as_ref().unwrap().endpoint, None);

        let slot = home.peer.as_mut().unwrap();
        slot.endpoint = Some(vps_at);
        // The genuine one from the VPS, then the same bytes replayed from
        // an attacker's address: both are accepted, neither moves us.
        let attacker: SocketAddr = "192.0.2.66:9999".parse().unwrap();
        for from in [vps_at, attacker] {
            let (_, r, proven) = slot.receive(Some(from), &cookie, &mut out);
            assert!(matches!(r, TunnResult::Done), "cookie refused: {r:?}");
            assert_eq!(
                slot.endpoint,
                Some(vps_at),
                "a cookie reply moved the endpoint"
            );
            assert!(!proven);
        }
        // A proven datagram still roams (the ordinary path).
        let mut p = pair();
        let d = send(&mut p, true, b"roam");
        let slot = p.slot(false);
        let (_, _, proven) = slot.receive(Some(attacker), &d, &mut out);
        assert!(proven);
        assert_eq!(slot.endpoint, Some(attacker));
    }

    #[test]
    fn make_before_break_rotation_keeps_both_directions_working() {
        let mut p = pair();
        assert_eq!(
            data_roundtrip(&mut p, b"before"),
            (Which::Current, Which::Current)
        );
        let (hk, vk, init) = stage_both(&mut p);
        // Staged on both sides, nothing exchanged yet: old keys still work.
        assert_eq!(
            data_roundtrip(&mut p, b"staged"),
            (Which::Current, Which::Current)
        );

        // The VPS's staged context answers the initiation by itself.
        let reply = match receive(&mut p, false, &init) {
            Got::Reply(Which::Staged, r) => r,
            other => panic!("{other:?}"),
        };
        assert!(
            p.vps.promote_if_ready().is_none(),
            "VPS waits for confirmation"
        );
        // Data from the VPS in flight under the old keys, sent before home
        // gets the response.
        let old_from_vps = send(&mut p, false, b"in flight");
        let keepalive = match receive(&mut p, true, &reply) {
            Got::Reply(Which::Staged, k) => k,
            other => panic!("{other:?}"),
        };
        // Home, the initiator, has a session: promoted.
        assert!(p.home.promote_if_ready().is_some());
        assert_eq!(p.home.public, hk.public_key());
        assert_eq!(p.home.rotations, 1);
        // The packet under the old keys still arrives (previous context).
        assert_eq!(
            receive(&mut p, true, &old_from_vps),
            Got::Packet(Which::Previous, b"in flight".to_vec())
        );
        // Home's keepalive on the new session confirms it at the VPS.
        assert_eq!(receive(&mut p, false, &keepalive), Got::Done(Which::Staged));
        assert!(p.vps.promote_if_ready().is_some());
        assert_eq!(p.vps.public, vk.public_key());
        assert_eq!(
            data_roundtrip(&mut p, b"after"),
            (Which::Current, Which::Current)
        );

        let st = p.home.rotation_stats();
        assert_eq!(st.rotations, 1);
        assert!(st.previous_session_active);
        assert!(st.staged.is_none());
        // The grace period ends; then old-key packets are refused.
        let later = Instant::now() + GRACE;
        assert!(p.home.expire_previous(later));
        assert!(!p.home.rotation_stats().previous_session_active);
    }

    #[test]
    fn old_initiations_still_reach_the_current_context() {
        let mut p = pair();
        let (_, _, _init) = stage_both(&mut p);
        // Home's *current* context rehandshakes (its timers would) while the
        // rotation is staged: the VPS's staged context refuses it (MAC1 for
        // its old key), the current one answers.
        let mut old = Context::new(
            p.home_key.clone(),
            p.slot(true).current.config.clone(),
            None,
            &[],
        );
        let init = old.initiation().unwrap();
        assert_eq!(p.slot(false).route(&init), Route::StagedThenCurrent);
        match receive(&mut p, false, &init) {
            Got::Reply(Which::Current, _) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn peer_only_rotation_is_dispatched_by_the_peer_key() {
        // Our key stays; only the peer's key and the PSK change. MAC1 is the
        // same for both contexts, so the staged one must refuse by key.
        let mut p = pair();
        let hk = PrivateKey::generate();
        let psk = PresharedKey::generate();
        p.vps
            .stage(None, peer_cfg(hk.public_key(), &psk, false, HOME_IP), false)
            .unwrap();
        let vps_pub = p.vps_key.public_key();
        let (new_init, _) = p
            .home
            .stage(
                Some(hk.clone()),
                peer_cfg(vps_pub, &psk, true, VPS_IP),
                false,
            )
            .unwrap()
            .initiation
            .unwrap();
        // An initiation from home's old key reaches the VPS's current context.
        let mut old = Context::new(
            p.home_key.clone(),
            p.slot(true).current.config.clone(),
            None,
            &[],
        );
        let init = old.initiation().unwrap();
        assert!(matches!(
            receive(&mut p, false, &init),
            Got::Reply(Which::Current, _)
        ));
        // The one from home's new key reaches the staged context.
        let init = new_init;
        let took = deliver_all(&mut p, init, false);
        assert_eq!(took, [Which::Staged, Which::Staged, Which::Staged]);
        assert!(p.home.promote_if_ready().is_some());
        // The VPS's own key is unchanged by a peer-only rotation.
        let k = send(&mut p, true, b"");
        assert_eq!(receive(&mut p, false, &k), Got::Done(Which::Staged));
        assert!(p.vps.promote_if_ready().is_some());
        assert_eq!(p.vps.public, vps_pub);
        assert_eq!(
            data_roundtrip(&mut p, b"x"),
            (Which::Current, Which::Current)
        );
    }

    #[test]
    fn indices_of_the_contexts_are_distinct() {
        let mut p = pair();
        let _ = stage_both(&mut p);
        let s = p.slot(true);
        let t = s.taken();
        assert_eq!(t.len(), 2);
        assert_ne!(t[0], t[1]);
        // Every index fits 24 bits, so `index << 8` loses nothing.
        assert!(t.iter().all(|i| *i < 1 << 24));
        // A datagram naming an unknown index goes to the current context.
        let mut d = vec![0u8; 32];
        d[0] = MSG_DATA;
        let unknown = (0..1u32 << 24).find(|i| !t.contains(i)).unwrap();
        d[4..8].copy_from_slice(&(unknown << 8).to_le_bytes());
        assert_eq!(s.route(&d), Route::To(Which::Current));
        d[4..8].copy_from_slice(&((t[1] << 8) | 7).to_le_bytes());
        assert_eq!(s.route(&d), Route::To(Which::Staged));
        // Garbage and short messages: current (which refuses them).
        assert_eq!(s.route(&[4, 0, 0]), Route::To(Which::Current));
        assert_eq!(s.route(&[]), Route::To(Which::Current));
    }

    #[test]
    fn abort_keeps_the_current_session() {
        let mut p = pair();
        let (_, _, init) = stage_both(&mut p);
        assert_eq!(p.home.abort(), Some(RotationId(1)));
        assert_eq!(p.home.abort(), None);
        assert_eq!(
            p.home.rotation_stats().last_abandoned_id,
            Some(RotationId(1))
        );
        // The VPS answers the initiation, but home no longer has the context
        // the response is for: refused, nothing changes.
        let reply = match receive(&mut p, false, &init) {
            Got::Reply(_, r) => r,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            receive(&mut p, true, &reply),
            Got::Err(Which::Current, _)
        ));
        assert_eq!(p.vps.abort(), Some(RotationId(1)));
        assert_eq!(
            data_roundtrip(&mut p, b"still"),
            (Which::Current, Which::Current)
        );
        assert_eq!(p.home.public, p.home_key.public_key());
        assert_eq!(p.home.rotations, 0);
    }

    #[test]
    fn explicit_commit_promotes_without_a_handshake() {
        let mut p = pair();
        let _ = stage_both(&mut p);
        assert_eq!(p.vps.promote(), Ok(RotationId(1)));
        assert_eq!(p.vps.promote(), Err(RotationError::NoneStaged));
        assert!(!p.slot(false).current.established());
        assert_eq!(p.vps.rotations, 1);
    }

    #[test]
    fn refusals_leave_everything_as_it_was() {
        let mut p = pair();
        let cur = p.slot(true).current.config.clone();
        let with_key = |k: [u8; 32]| PeerConfig {
            public_key: PublicKey(k),
            preshared_key: Some(PresharedKey::generate()),
            ..cur.clone()
        };
        // All-zero key and the low-order points (u = 1, and an order-8
        // point listed by the X25519 literature).
        let mut one = [0u8; 32];
        one[0] = 1;
        let order8: [u8; 32] =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap()
                .try_into()
                .unwrap();
        for k in [[0u8; 32], one, order8] {
            assert_eq!(
                p.home
                    .stage(Some(PrivateKey::generate()), with_key(k), false)
                    .unwrap_err(),
                RotationError::WeakPeerKey
            );
        }
        // Same peer key and PSK: nothing to rotate (even with a new key of ours).
        assert_eq!(
            p.home
                .stage(Some(PrivateKey::generate()), cur.clone(), false)
                .unwrap_err(),
            RotationError::NothingToRotate
        );
        // Only the PSK changes: cannot be told apart.
        let psk_only = PeerConfig {
            preshared_key: Some(PresharedKey::generate()),
            ..cur.clone()
        };
        assert_eq!(
            p.home.stage(None, psk_only.clone(), false).unwrap_err(),
            RotationError::NoStaticKeyChange
        );
        assert_eq!(
            p.home
                .stage(Some(p.home_key.clone()), psk_only, false)
                .unwrap_err(),
            RotationError::NoStaticKeyChange
        );
        // Allowed networks are set_peer's business.
        let nets = PeerConfig {
            allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
            ..with_key(PrivateKey::generate().public_key().0)
        };
        assert_eq!(
            p.home.stage(None, nets, false).unwrap_err(),
            RotationError::AllowedIpsChanged
        );
        assert!(p.slot(true).staged.is_none());
        assert_eq!(p.home.rotation_stats().last_abandoned_id, None);

        // One staged: a second is refused unless it replaces the first.
        let good = || with_key(PrivateKey::generate().public_key().0);
        let first = p.home.stage(None, good(), false).unwrap().id;
        assert_eq!(
            p.home.stage(None, good(), false).unwrap_err(),
            RotationError::InProgress(first)
        );
        let second = p.home.stage(None, good(), true).unwrap();
        assert_eq!(second.replaced, Some(first));
        assert!(second.id > first);
        let st = p.home.rotation_stats();
        assert_eq!(st.staged.unwrap().id, second.id);
        assert_eq!(st.last_abandoned_id, Some(first));
        // And the current session never noticed.
        assert_eq!(
            data_roundtrip(&mut p, b"fine"),
            (Which::Current, Which::Current)
        );
        assert_eq!(p.home.public, p.home_key.public_key());

        // No peer at all.
        let mut lone = Sessions::new(PrivateKey::generate());
        assert_eq!(
            lone.stage(None, good(), false).unwrap_err(),
            RotationError::NoPeer
        );
        let _ = &p.psk;
        let _ = &p.vps_key;
    }

    #[test]
    fn ten_rotations_in_a_row() {
        let mut p = pair();
        for i in 1..=10u64 {
            let (hk, vk, init) = stage_both(&mut p);
            let took = deliver_all(&mut p, init, false);
            // Initiation at the VPS, response at home, keepalive at the VPS.
            assert_eq!(took, [Which::Staged, Which::Staged, Which::Staged]);
            assert_eq!(p.home.promote_if_ready(), Some(RotationId(i)));
            assert_eq!(p.vps.promote_if_ready(), Some(RotationId(i)));
            assert_eq!(p.home.public, hk.public_key());
            assert_eq!(p.vps.public, vk.public_key());
            assert_eq!(
                data_roundtrip(&mut p, b"ok"),
                (Which::Current, Which::Current)
            );
        }
        assert_eq!(p.home.rotations, 10);
        assert_eq!(
            p.vps.rotation_stats().last_rotation_id,
            Some(RotationId(10))
        );
    }

    #[test]
    fn limiters_are_shared_for_the_same_key() {
        let mut p = pair();
        let hk = PrivateKey::generate();
        p.vps
            .stage(
                None,
                peer_cfg(hk.public_key(), &p.psk.clone(), false, HOME_IP),
                false,
            )
            .unwrap();
        assert_eq!(p.slot(false).limiters().len(), 1);
        p.home
            .stage(
                Some(hk),
                peer_cfg(
                    p.vps_key.public_key(),
                    &PresharedKey::generate(),
                    true,
                    VPS_IP,
                ),
                false,
            )
            .unwrap();
        assert_eq!(p.slot(true).limiters().len(), 2);
    }
}
