//! One-time join tokens.
//!
//! A token is everything a joining host needs and nothing it could reuse:
//! where the VPS is, which CA to trust (by SHA-256), and a random secret the
//! VPS stores only as a hash. Text form: `ceres1_` + base64url of
//!
//! ```text
//! version(1) role(1) ca_sha256(32) secret(32) expires_unix(8, BE) addr_len(1) addr check(4)
//! ```
//!
//! where `check` is the first 4 bytes of SHA-256 over everything before it,
//! so a truncated or mistyped token is recognised as such before any network
//! traffic, with a message that says so.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Fingerprint, Role, Secret};

const PREFIX: &str = "ceres1_";
const VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 1 + 32 + 32 + 8 + 1;
const CHECK_LEN: usize = 4;

/// Why a token string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// It does not start with `ceres1_`.
    #[error(
        "this is not a CERES join token (it should start with `ceres1_`); copy the whole output of `ceres-vps token create`"
    )]
    NotAToken,
    /// Characters outside base64url, or the wrong length.
    #[error(
        "the join token is truncated or damaged ({0}); copy it again in one piece, or create a new one with `ceres-vps token create`"
    )]
    Damaged(&'static str),
    /// A future token format.
    #[error("the join token has format version {0}, which this program does not know: upgrade it")]
    UnsupportedVersion(u8),
}

/// A decoded join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Role the enrolled certificate will carry.
    pub role: Role,
    /// SHA-256 of the VPS's CA certificate; the joining side trusts nothing else.
    pub ca_fingerprint: Fingerprint,
    /// The one-time secret.
    pub secret: Secret,
    /// When the VPS will stop accepting the token (informational on the client side).
    pub expires_at_unix: u64,
    /// `host:port` of the VPS control plane.
    pub control_address: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("role", &self.role)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("secret", &self.secret)
            .field("expires_at_unix", &self.expires_at_unix)
            .field("control_address", &self.control_address)
            .finish()
    }
}

impl JoinToken {
    /// A new token with a fresh secret, valid for `ttl`.
    pub fn new(
        role: Role,
        ca_fingerprint: Fingerprint,
        control_address: String,
        ttl: Duration,
    ) -> Self {
        let expires = SystemTime::now() + ttl;
        Self {
            role,
            ca_fingerprint,
            secret: Secret::random(),
            expires_at_unix: crate::unix_secs(expires).max(0) as u64,
            control_address,
        }
    }

    /// The text form. Contains the secret: print it once, never log it.
    pub fn encode(&self) -> String {
        let addr = self.control_address.as_bytes();
        // Cut an overlong address on a character boundary, so the token still
        // decodes (to a shorter address) instead of failing as "not UTF-8".
        let mut addr_len = addr.len().min(255);
        while !self.control_address.is_char_boundary(addr_len) {
            addr_len -= 1;
        }
        let mut buf = Vec::with_capacity(FIXED_LEN + addr_len + CHECK_LEN);
        buf.push(VERSION);
        buf.push(match self.role {
            Role::Home => 1,
            Role::Admin => 2,
        });
        buf.extend_from_slice(&self.ca_fingerprint.0);
        buf.extend_from_slice(self.secret.expose());
        buf.extend_from_slice(&self.expires_at_unix.to_be_bytes());
        buf.push(addr_len as u8);
        buf.extend_from_slice(&addr[..addr_len]);
        let check = Fingerprint::of(&buf);
        buf.extend_from_slice(&check.0[..CHECK_LEN]);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(buf))
    }

    /// Parses the text form; surrounding whitespace is ignored.
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::NotAToken)?;
        let buf = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Damaged("not base64url"))?;
        if buf.is_empty() {
            return Err(TokenError::Damaged("empty"));
        }
        if buf[0] != VERSION {
            // Checked before the length: a newer format may be laid out differently.
            if buf.len() >= FIXED_LEN + CHECK_LEN && checksum_ok(&buf) {
                return Err(TokenError::UnsupportedVersion(buf[0]));
            }
            return Err(TokenError::Damaged("bad header"));
        }
        if buf.len() < FIXED_LEN + CHECK_LEN {
            return Err(TokenError::Damaged("too short"));
        }
        let addr_len = buf[FIXED_LEN - 1] as usize;
        if buf.len() != FIXED_LEN + addr_len + CHECK_LEN {
            return Err(TokenError::Damaged("wrong length"));
        }
        if !checksum_ok(&buf) {
            return Err(TokenError::Damaged("checksum mismatch"));
        }
        let role = match buf[1] {
            1 => Role::Home,
            2 => Role::Admin,
            _ => return Err(TokenError::Damaged("unknown role")),
        };
        let take32 = |at: usize| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&buf[at..at + 32]);
            out
        };
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&buf[66..74]);
        let control_address = std::str::from_utf8(&buf[FIXED_LEN..FIXED_LEN + addr_len])
            .map_err(|_| TokenError::Damaged("address is not UTF-8"))?
            .to_owned();
        Ok(Self {
            role,
            ca_fingerprint: Fingerprint(take32(2)),
            secret: Secret(take32(34)),
            expires_at_unix: u64::from_be_bytes(exp),
            control_address,
        })
    }
}

fn checksum_ok(buf: &[u8]) -> bool {
    let (body, check) = buf.split_at(buf.len() - CHECK_LEN);
    Fingerprint::of(body).0[..CHECK_LEN] == *check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinToken {
        JoinToken::new(
            Role::Home,
            Fingerprint::of(b"ca"),
            "203.0.113.10:7443".into(),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn round_trips() {
        let t = sample();
        assert_eq!(JoinToken::decode(&t.encode()).unwrap(), t);
        assert_eq!(
            JoinToken::decode(&format!("  {}\n", t.encode())).unwrap(),
            t
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let text = sample().encode();
        for cut in 0..text.len() {
            assert!(
                JoinToken::decode(&text[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let text = sample().encode();
        let bytes = text.as_bytes();
        for i in PREFIX.len()..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(changed).unwrap();
            // Changing the last char may only touch unused padding bits; the decoded value must then equal the original.
            if let Ok(t) = JoinToken::decode(&s) {
                assert_eq!(
                    t,
                    sample_with(&text),
                    "altered token at {i} decoded differently"
                );
            }
        }
    }

    fn sample_with(text: &str) -> JoinToken {
        JoinToken::decode(text).unwrap()
    }

    #[test]
    fn not_a_token() {
        assert_eq!(JoinToken::decode("hello"), Err(TokenError::NotAToken));
    }

    #[test]
    fn debug_hides_secret() {
        let dbg = format!("{:?}", sample());
        assert!(dbg.contains("MASKED"), "{dbg}");
        assert!(!dbg.contains(&hex::encode(sample().secret.expose())));
    }
}
