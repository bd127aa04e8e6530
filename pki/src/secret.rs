//! Small value types for secrets and fingerprints.

use std::fmt;

use sha2::{Digest, Sha256};

/// A 32-byte random secret (join token secret, pre-shared key, ...).
///
/// `Debug` and `Display` print `MASKED`, so a secret that ends up in a log
/// line or an error message leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl Secret {
    /// A fresh secret from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        Self(bytes)
    }

    /// The secret's bytes. Call sites are where secrets are handled on purpose.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256 of the secret: what the VPS stores instead of the secret.
    pub fn hash(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(MASKED)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// A secret kept in its stored form (a base64 pre-shared key in a state
/// file, say): serialised as the inner value, but `Debug` prints `MASKED`,
/// so a struct that holds one can derive `Debug` without leaking it.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Masked<T>(pub T);

impl<T> fmt::Debug for Masked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// A SHA-256 digest, shown as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Lower-case hex, 64 characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (colons allowed, as `openssl x509 -fingerprint` prints).
    pub fn parse_hex(s: &str) -> Option<Self> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(clean).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Constant-time comparison, for comparing secrets' hashes.
    pub fn ct_eq(&self, other: &Fingerprint) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}
