//! The agent's WireGuard static key, kept in its state directory.

use ceres_state::StateDir;
use ceres_tunnel::PrivateKey;

/// File name of the key (base64, as `wg genkey` writes it; mode 0600).
pub const WG_KEY: &str = "wg.key";

/// Errors loading the key.
#[derive(Debug, thiserror::Error)]
pub enum WgKeyError {
    /// File problem.
    #[error(transparent)]
    State(#[from] ceres_state::StateError),
    /// Not a key.
    #[error(
        "{0} does not hold a WireGuard key (32 bytes, base64): remove it and a new one is made"
    )]
    Damaged(String),
}

/// Loads the key, creating it on first use. Created exclusively, so two
/// processes starting at once agree on one key.
pub fn load_or_create(dir: &StateDir) -> Result<PrivateKey, WgKeyError> {
    if !dir.exists(WG_KEY) {
        let key = PrivateKey::generate();
        dir.create_new(WG_KEY, format!("{}\n", key.to_base64()).as_bytes())?;
    }
    let text = dir.read_secret(WG_KEY)?;
    let damaged = || WgKeyError::Damaged(dir.join(WG_KEY).display().to_string());
    std::str::from_utf8(&text)
        .map_err(|_| damaged())?
        .trim()
        .parse()
        .map_err(|_| damaged())
}
