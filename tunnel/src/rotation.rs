//! The public face of make-before-break key rotation: ids, refusals and the
//! status the engine reports. The mechanics (a second session context beside
//! the current one, dispatch by receiver index) live in `peer.rs`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::key::PublicKey;

/// Names one staged rotation of a tunnel. Ids count up from 1 over the
/// tunnel's life, so a later rotation always has a larger id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RotationId(pub u64);

impl fmt::Display for RotationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a rotation request was refused, or why a staged one did not complete.
/// Whenever a request is refused the tunnel keeps running on its current
/// keys, untouched. Carries no key material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    /// There is no peer yet, so no session to rotate away from.
    #[error("no peer is configured: nothing to rotate")]
    NoPeer,
    /// The new peer key is all-zero or a low-order point: the X25519 shared
    /// secret with it is zero, which WireGuard refuses (it would make the
    /// handshake's static-static term public).
    #[error("the new peer public key is all-zero or a low-order point (no shared secret)")]
    WeakPeerKey,
    /// The new peer key and pre-shared key are the ones in use.
    #[error("the new peer public key and pre-shared key are the current ones: nothing to rotate")]
    NothingToRotate,
    /// Only the pre-shared key would change. A handshake initiation carries
    /// nothing the pre-shared key affects, so one meant for the new session
    /// could not be told from one for the current session; rotate a static
    /// key with it.
    #[error(
        "neither static key changes: a pre-shared-key-only rotation cannot be told apart \
         on the wire; rotate at least one static key with it"
    )]
    NoStaticKeyChange,
    /// A rotation is already staged; abort it or replace it explicitly.
    #[error("rotation {0} is already staged (abort or replace it)")]
    InProgress(RotationId),
    /// The new peer configuration changes the allowed networks. A rotation
    /// changes keys only (routes are not touched on the data path); change
    /// networks with `Tunnel::set_peer`.
    #[error("a rotation may not change the peer's allowed networks (use set_peer)")]
    AllowedIpsChanged,
    /// `commit_rotation` without a staged rotation.
    #[error("no rotation is staged")]
    NoneStaged,
    /// The awaited rotation was aborted, replaced, or dropped by `set_peer`.
    #[error("rotation {0} was aborted or replaced before it completed")]
    Abandoned(RotationId),
    /// Later rotations happened since; how this one ended is no longer known.
    #[error("rotation {0} has been superseded by later rotations")]
    Superseded(RotationId),
}

/// A rotation that is staged but not yet promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StagedRotation {
    /// Its id.
    pub id: RotationId,
    /// Our public key in the staged session (the new one, or the current one
    /// when only the peer's key rotates).
    pub public_key: PublicKey,
    /// The peer's new public key.
    pub peer_public_key: PublicKey,
    /// When it was staged (JSON: Unix seconds).
    #[serde(serialize_with = "unix_secs")]
    pub since: SystemTime,
}

/// Rotation status, part of [`crate::TunnelStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RotationStats {
    /// The rotation waiting for its first handshake, if any.
    pub staged: Option<StagedRotation>,
    /// Rotations promoted since the tunnel started.
    pub rotations: u64,
    /// The id of the last promoted rotation.
    pub last_rotation_id: Option<RotationId>,
    /// When the last rotation was promoted (JSON: Unix seconds).
    #[serde(serialize_with = "opt_unix_secs")]
    pub last_rotation: Option<SystemTime>,
    /// Whether the session from before the last rotation still accepts
    /// packets (the grace period for packets in flight).
    pub previous_session_active: bool,
    /// The last staged rotation that ended without promotion (aborted,
    /// replaced, or dropped by a peer change).
    pub last_abandoned_id: Option<RotationId>,
}

fn unix_secs<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

pub(crate) fn opt_unix_secs<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

impl RotationStats {
    /// How rotation `id` ended, if it has: `Some(Ok)` once promoted,
    /// `Some(Err(Abandoned))` once aborted or replaced, `None` while staged.
    /// For an id older than the latest promoted, abandoned or staged one the
    /// status no longer says: `Some(Err(Superseded))`.
    pub fn outcome(&self, id: RotationId) -> Option<Result<(), RotationError>> {
        if self.last_rotation_id == Some(id) {
            return Some(Ok(()));
        }
        if self.last_abandoned_id == Some(id) {
            return Some(Err(RotationError::Abandoned(id)));
        }
        let latest = [
            self.last_rotation_id,
            self.last_abandoned_id,
            self.staged.as_ref().map(|s| s.id),
        ]
        .into_iter()
        .flatten()
        .max();
        match latest {
            Some(l) if l > id => Some(Err(RotationError::Superseded(id))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_follows_the_status() {
        let staged = |id| {
            Some(StagedRotation {
                id: RotationId(id),
                public_key: PublicKey([1; 32]),
                peer_public_key: PublicKey([2; 32]),
                since: UNIX_EPOCH,
            })
        };
        let mut s = RotationStats {
            staged: staged(3),
            ..Default::default()
        };
        assert_eq!(s.outcome(RotationId(3)), None);
        s.staged = None;
        s.last_rotation_id = Some(RotationId(3));
        assert_eq!(s.outcome(RotationId(3)), Some(Ok(())));
        // Replaced by a later one.
        s.staged = staged(5);
        s.last_abandoned_id = Some(RotationId(4));
        assert_eq!(
            s.outcome(RotationId(4)),
            Some(Err(RotationError::Abandoned(RotationId(4))))
        );
        assert_eq!(s.outcome(RotationId(5)), None);
        assert_eq!(
            s.outcome(RotationId(2)),
            Some(Err(RotationError::Superseded(RotationId(2))))
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["staged"]["id"], 5);
        assert_eq!(json["staged"]["since"], 0);
        assert_eq!(json["last_rotation"], serde_json::Value::Null);
    }
}
