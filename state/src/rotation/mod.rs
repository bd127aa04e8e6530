//! The persisted half of a WireGuard key rotation, the same on both agents.
//!
//! A rotation is make-before-break and spans two processes (see
//! `ceres.proto`): the VPS prepares, home makes its new key, the VPS makes
//! its own and the pre-shared key and commits, both install the new keys
//! beside the current ones and promote them once a handshake proves them.
//! Either agent may die at any step, so each side keeps where it stands in
//! `rotation.json` (and its new private key in `wg.next.key`) *before* it
//! acts on it, and resumes from there after a restart.
//!
//! [`Rotation`] is that state as one explicit machine: a [`Phase`], and
//! transitions that are checked against it and returned as a
//! [`Transition`] value saying what must be on disk first. The caller
//! writes it with [`Store::write`] (blocking: off the async workers), then
//! [`Rotation::apply`]s it. Nothing here needs root, a tunnel or a runtime,
//! so every transition and every crash point is unit-tested.
//!
//! What differs between the sides (the VPS's history of used keys, the
//! messages each sends, the engine calls) stays in the agents.

mod crash;
mod phase;
mod store;

pub use crash::{CrashPoint, crash_point};
pub use phase::{Phase, Rotation, Transition, TransitionError, Write};
pub use store::{NEXT_KEY, RECORD, Store, StoreError};

use std::fmt;

/// Which agent's half of a rotation this is. The VPS coordinates (it
/// prepares, then stages its new key and the PSK when home's key arrives);
/// home answers (it makes its key, then takes the VPS's commit). Each side
/// has transitions the other has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The VPS agent.
    Vps,
    /// The home agent.
    Home,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Vps => "VPS",
            Side::Home => "home",
        })
    }
}

/// 32 bytes of secret key material: our next private key, or a pre-shared
/// key. `Debug` prints none of it, so a [`Phase`] can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(MASKED)")
    }
}

/// Every new key of a rotation, once both halves are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeys {
    /// Our new private key (kept in `wg.next.key`).
    pub key: Secret,
    /// The peer's new public key.
    pub peer: [u8; 32],
    /// The new pre-shared key.
    pub psk: Secret,
}
