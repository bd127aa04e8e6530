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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_then_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        let first = load_or_create(&dir).unwrap();
        let again = load_or_create(&dir).unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }

    #[test]
    fn a_damaged_key_file_is_named_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        dir.write(WG_KEY, b"not a key\n").unwrap();
        let err = load_or_create(&dir).unwrap_err();
        assert!(
            matches!(&err, WgKeyError::Damaged(p) if p.ends_with(WG_KEY)),
            "{err:?}"
        );
        // Nothing is replaced behind the admin's back: the file is as it was.
        assert_eq!(dir.read_secret(WG_KEY).unwrap(), b"not a key\n");
    }
}
