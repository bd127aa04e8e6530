//! WireGuard key types: X25519 static keys and pre-shared keys, with the
//! standard base64 text form and `Debug` output that never shows a secret.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use boringtun::x25519;
use rand::RngCore as _;

/// Why a key could not be parsed. Carries no key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not valid base64.
    #[error("key is not valid base64")]
    Base64,
    /// The text decodes to something other than 32 bytes.
    #[error("key must be 32 bytes, got {0}")]
    Length(usize),
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = B64.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// A peer's (or our) X25519 public key. Public keys are not secret, so they
/// print in full (base64, as `wg` shows them).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, the form the userspace API (UAPI) uses.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode32(s).map(PublicKey)
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(b: [u8; 32]) -> Self {
        PublicKey(b)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Our X25519 static private key. `Debug` prints only the matching public
/// key, so a config struct holding it can be logged safely.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

impl PrivateKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        PrivateKey(x25519::StaticSecret::from(bytes))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// The key in WireGuard's base64 form, for writing a key file. Handle the
    /// result as a secret.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    /// The raw 32 bytes, for keeping the key in persisted state. Handle the
    /// result as a secret.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Lower-case hex, as the UAPI `private_key=` line wants it.
    pub(crate) fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl From<[u8; 32]> for PrivateKey {
    fn from(b: [u8; 32]) -> Self {
        PrivateKey(x25519::StaticSecret::from(b))
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode32(s).map(PrivateKey::from)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public={})", self.public_key())
    }
}

/// A WireGuard pre-shared key (32 symmetric bytes). `Debug` prints `MASKED`.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey(pub [u8; 32]);

impl PresharedKey {
    /// A fresh random pre-shared key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        PresharedKey(bytes)
    }

    /// The key in WireGuard's base64 form. Handle the result as a secret.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode32(s).map(PresharedKey)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(MASKED)")
    }
}

/// Generates a key pair; returns the private key (its public half is
/// [`PrivateKey::public_key`]).
pub fn generate_keypair() -> (PrivateKey, PublicKey) {
    let k = PrivateKey::generate();
    let p = k.public_key();
    (k, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1 test vector (Alice).
    const ALICE_PRIV_HEX: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUB_HEX: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    #[test]
    fn public_key_derivation_matches_rfc7748() {
        let mut b = [0u8; 32];
        b.copy_from_slice(&hex::decode(ALICE_PRIV_HEX).unwrap());
        let k = PrivateKey::from(b);
        assert_eq!(k.public_key().to_hex(), ALICE_PUB_HEX);
    }

    #[test]
    fn base64_round_trip() {
        let (k, p) = generate_keypair();
        let k2: PrivateKey = k.to_base64().parse().unwrap();
        assert_eq!(k2.public_key(), p);
        let p2: PublicKey = p.to_string().parse().unwrap();
        assert_eq!(p2, p);
        // Key files usually end with a newline.
        let p3: PublicKey = format!("{p}\n").parse().unwrap();
        assert_eq!(p3, p);
        // The raw bytes make the same key again.
        assert_eq!(PrivateKey::from(k.to_bytes()).public_key(), p);
        assert_eq!(PrivateKey::from(k.to_bytes()).to_base64(), k.to_base64());
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::Base64));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let k = PrivateKey::generate();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.to_base64()));
        assert!(dbg.contains(&k.public_key().to_string()));
        let psk = PresharedKey::generate();
        assert_eq!(format!("{psk:?}"), "PresharedKey(MASKED)");
    }
}
