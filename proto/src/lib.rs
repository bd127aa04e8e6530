//! The CERES control-plane protocol: `ceres.proto` and the tonic/prost code
//! generated from it, checked in so a normal build needs no `protoc`.
//!
//! `tests/generated.rs` regenerates the code with a vendored `protoc` and fails
//! on any difference; run it with `CERES_REGENERATE=1` to update the file.

/// Protocol version this build speaks.
///
/// Bump it when a change needs both sides to understand something new; keep
/// [`MIN_PROTOCOL_VERSION`] at the oldest version that can still be served.
pub const PROTOCOL_VERSION: u32 = 1;

/// Oldest peer protocol version this build still talks to.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Generated messages and services of package `ceres.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod v1 {
    include!("gen/ceres.v1.rs");
}

pub use v1::*;

pub mod compat;
mod watch;

/// Picks the protocol version for a session between a peer speaking
/// `[peer_min, peer_max]` and this build.
///
/// Returns the highest version both understand, or an error message that says
/// which side has to be upgraded.
pub fn negotiate(peer_min: u32, peer_max: u32) -> Result<u32, String> {
    // A peer that sent no minimum (an older field layout) is taken to speak only its max.
    let peer_min = if peer_min == 0 { peer_max } else { peer_min };
    let common = peer_max.min(PROTOCOL_VERSION);
    if common >= peer_min.max(MIN_PROTOCOL_VERSION) {
        Ok(common)
    } else if peer_max < MIN_PROTOCOL_VERSION {
        Err(format!(
            "the peer speaks protocol {peer_min}..={peer_max} but this side needs at least \
             {MIN_PROTOCOL_VERSION}: upgrade the peer"
        ))
    } else {
        Err(format!(
            "the peer needs protocol {peer_min} or newer but this side speaks at most \
             {PROTOCOL_VERSION}: upgrade this side"
        ))
    }
}

/// Messages with a secret field (pre-shared keys, join token secrets): the
/// generator skips their `Debug` (see `tests/generated.rs`) and the impls
/// below print the secret as `MASKED`.
pub const SECRET_MESSAGES: &[&str] = &["TunnelParams", "RotateCommit", "EnrollRequest"];

/// What a masked secret field prints: whether it is set, never its bytes.
fn masked(secret: &[u8]) -> &'static str {
    if secret.is_empty() { "" } else { "MASKED" }
}

impl std::fmt::Debug for TunnelParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelParams")
            .field("vps_public_key", &self.vps_public_key)
            .field("preshared_key", &masked(&self.preshared_key))
            .field("vps_address", &self.vps_address)
            .field("home_address", &self.home_address)
            .field("endpoint", &self.endpoint)
            .field("mtu", &self.mtu)
            .field("keepalive_secs", &self.keepalive_secs)
            .finish()
    }
}

impl std::fmt::Debug for RotateCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateCommit")
            .field("rotation", &self.rotation)
            .field("vps_public_key", &self.vps_public_key)
            .field("preshared_key", &masked(&self.preshared_key))
            .finish()
    }
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("protocol_version", &self.protocol_version)
            .field("token_secret", &masked(&self.token_secret))
            .field("csr_pem", &self.csr_pem)
            .field("name", &self.name)
            .field("agent_version", &self.agent_version)
            .finish()
    }
}

impl Role {
    /// The lower-case name used in tokens, certificates and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Home => "home",
            Role::Admin => "admin",
            Role::Unspecified => "unspecified",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_secret_carrying_messages_prints_no_secret() {
        let secret = vec![0xabu8; 32];
        let shown = [
            format!(
                "{:?}",
                TunnelParams {
                    preshared_key: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                VpsMessage {
                    kind: Some(vps_message::Kind::Command(Command {
                        kind: Some(command::Kind::RotateCommit(RotateCommit {
                            rotation: 1,
                            vps_public_key: vec![1; 32],
                            preshared_key: secret.clone(),
                        })),
                    })),
                }
            ),
            format!(
                "{:?}",
                EnrollRequest {
                    token_secret: secret.clone(),
                    ..Default::default()
                }
            ),
        ];
        for s in shown {
            // Debug of Vec<u8> prints decimal bytes: 0xab is 171.
            assert!(!s.contains("171"), "secret bytes in {s}");
            assert!(s.contains("MASKED"), "{s}");
        }
    }

    #[test]
    fn same_version_negotiates_itself() {
        assert_eq!(
            negotiate(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
            Ok(PROTOCOL_VERSION)
        );
    }

    #[test]
    fn newer_peer_that_still_speaks_ours_settles_on_ours() {
        assert_eq!(
            negotiate(PROTOCOL_VERSION, PROTOCOL_VERSION + 1),
            Ok(PROTOCOL_VERSION)
        );
    }

    #[test]
    fn too_new_peer_is_refused_with_upgrade_hint() {
        let err = negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2).unwrap_err();
        assert!(err.contains("upgrade this side"), "{err}");
    }

    #[test]
    fn too_old_peer_is_refused_with_upgrade_hint() {
        if MIN_PROTOCOL_VERSION == 0 {
            return;
        }
        let err = negotiate(0, MIN_PROTOCOL_VERSION - 1).unwrap_err();
        assert!(err.contains("upgrade the peer"), "{err}");
    }
}
