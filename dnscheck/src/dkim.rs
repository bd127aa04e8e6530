//! DKIM key record parsing (RFC 6376 section 3.6.1): does the record hold a usable key?

use serde::Serialize;

/// The key algorithm (`k=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimKeyType {
    /// `k=rsa` (the default).
    Rsa,
    /// `k=ed25519` (RFC 8463).
    Ed25519,
}

impl std::fmt::Display for DkimKeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        })
    }
}

/// A parsed DKIM key record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DkimRecord {
    /// The key algorithm.
    pub key_type: DkimKeyType,
    /// Size of the decoded `p=` value in bytes.
    pub key_bytes: usize,
    /// Approximate key strength in bits (RSA: modulus size estimated from the
    /// SubjectPublicKeyInfo length; Ed25519: 256).
    pub approx_bits: usize,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
}

/// Why a DKIM record holds no usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimError {
    /// `v=` present but not first or not `DKIM1`.
    #[error("v= must be first and equal to DKIM1")]
    BadVersion,
    /// No `p=` tag at all.
    #[error("no public key: the p= tag is missing")]
    MissingKey,
    /// `p=` present but empty: the key is revoked.
    #[error("the key is revoked (p= is empty)")]
    RevokedKey,
    /// `p=` is not base64.
    #[error("p= is not valid base64")]
    BadBase64,
    /// `k=` names an algorithm nobody verifies.
    #[error("unknown key type k={0}")]
    UnknownKeyType(String),
    /// A piece that is not `tag=value`.
    #[error("{0:?} is not a tag=value pair")]
    Malformed(String),
}

impl DkimRecord {
    /// Parses a DKIM key record (`v=DKIM1; k=rsa; p=MIIB...`).
    pub fn parse(text: &str) -> Result<Self, DkimError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (tag, value) = piece
                .split_once('=')
                .ok_or_else(|| DkimError::Malformed(piece.to_owned()))?;
            // Folding whitespace inside values (long keys split over strings) is not
            // part of the value.
            let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
            pairs.push((tag.trim().to_ascii_lowercase(), value));
        }
        if let Some(pos) = pairs.iter().position(|(t, _)| t == "v")
            && (pos != 0 || pairs[0].1 != "DKIM1")
        {
            return Err(DkimError::BadVersion);
        }
        let get = |tag: &str| {
            pairs
                .iter()
                .find(|(t, _)| t == tag)
                .map(|(_, v)| v.as_str())
        };
        let key_type = match get("k").map(str::to_ascii_lowercase).as_deref() {
            None | Some("rsa") => DkimKeyType::Rsa,
            Some("ed25519") => DkimKeyType::Ed25519,
            Some(other) => return Err(DkimError::UnknownKeyType(other.to_owned())),
        };
        let p = get("p").ok_or(DkimError::MissingKey)?;
        if p.is_empty() {
            return Err(DkimError::RevokedKey);
        }
        let key_bytes = base64_len(p).ok_or(DkimError::BadBase64)?;
        let approx_bits = match key_type {
            DkimKeyType::Ed25519 => 256,
            // SPKI DER of RSA-n is roughly n/8 + 38 bytes (1024: 162, 2048: 294).
            DkimKeyType::Rsa => key_bytes.saturating_sub(38) * 8,
        };
        let testing = get("t").is_some_and(|t| t.split(':').any(|f| f == "y"));
        Ok(Self {
            key_type,
            key_bytes,
            approx_bits,
            testing,
        })
    }
}

/// Decoded length of standard base64 (with optional padding), or None if invalid.
fn base64_len(s: &str) -> Option<usize> {
    let body = s.trim_end_matches('=');
    let padding = s.len() - body.len();
    if padding > 2
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        || (padding > 0 && s.len() % 4 != 0)
        || body.len() % 4 == 1
    {
        return None;
    }
    Some(body.len() * 3 / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically valid stand-in for a 2048-bit RSA SPKI (392 base64 chars).
    fn rsa2048_b64() -> String {
        format!(
            "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}IDAQAB",
            "A".repeat(342)
        )
    }

    #[test]
    fn parses_rsa_and_ed25519() {
        let r = DkimRecord::parse(&format!("v=DKIM1; k=rsa; p={}", rsa2048_b64())).unwrap();
        assert_eq!(r.key_type, DkimKeyType::Rsa);
        assert!((2000..=2100).contains(&r.approx_bits), "{}", r.approx_bits);
        let r =
            DkimRecord::parse("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
                .unwrap();
        assert_eq!(r.key_type, DkimKeyType::Ed25519);
        assert_eq!(r.key_bytes, 32);
        // No v= and no k= is still valid (defaults).
        assert!(DkimRecord::parse("p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC").is_ok());
    }

    #[test]
    fn reports_unusable_keys() {
        assert_eq!(
            DkimRecord::parse("v=DKIM1; k=rsa"),
            Err(DkimError::MissingKey)
        );
        assert_eq!(
            DkimRecord::parse("v=DKIM1; k=rsa; p="),
            Err(DkimError::RevokedKey)
        );
        assert_eq!(
            DkimRecord::parse("k=rsa; v=DKIM1; p=AAAA"),
            Err(DkimError::BadVersion)
        );
        assert_eq!(
            DkimRecord::parse("v=DKIM1; p=not*base64"),
            Err(DkimError::BadBase64)
        );
        assert_eq!(
            DkimRecord::parse("v=DKIM1; k=dsa; p=AAAA"),
            Err(DkimError::UnknownKeyType("dsa".into()))
        );
    }
}
