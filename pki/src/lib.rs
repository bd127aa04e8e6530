//! The CERES private PKI: the VPS's CA, certificates that carry a role,
//! one-time join tokens, and the rustls configurations that enforce them.
//!
//! Private keys are generated where they are used and never serialised into
//! anything that crosses the wire; only CSRs and certificates travel.

mod ca;
mod identity;
mod secret;
pub mod tls;
mod token;

pub use ca::{Ca, IssuedCertificate, ServerNames};
pub use identity::{CertificateInfo, KeyAndCsr, Role, SERVER_NAME};
pub use secret::{Fingerprint, Masked, Secret};
pub use token::{JoinToken, TokenError};

use std::time::{Duration, SystemTime};

/// Errors from certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build or sign something.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM or DER blob could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What we tried to parse ("CSR", "certificate", ...).
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// The certificate carries no CERES role.
    #[error("the certificate has no CERES role (is it from this CA?)")]
    NoRole,
    /// TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Seconds since the Unix epoch of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When a certificate valid from `not_before` to `not_after` should be renewed:
/// two thirds into its life, so a host that was off for a while still has a
/// third of the lifetime left to reach the VPS.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life.mul_f64(2.0 / 3.0)
}

/// Checks that `csr_pem` is a well-formed, correctly self-signed CSR, so a
/// bad request is refused before a one-time token is spent on it.
pub fn validate_csr(csr_pem: &str) -> Result<(), PkiError> {
    rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| PkiError::Parse {
            what: "CSR",
            detail: e.to_string(),
        })
}

/// `unix` seconds as an RFC 3339 UTC timestamp, for messages people read.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix}"))
}
