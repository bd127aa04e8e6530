//! Who a certificate belongs to: its role, name and validity.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Fingerprint, PkiError};

/// The DNS name every VPS server certificate carries and every CERES client
/// verifies, whatever address it dialled.
///
/// Clients reach the VPS by public IP, by host name, through NAT or (in tests)
/// on loopback; the CA is private and pinned, and only the VPS ever gets a
/// server-auth certificate from it, so a fixed name loses nothing and saves
/// users from "certificate not valid for this address" after an IP change.
pub const SERVER_NAME: &str = "ceres-vps";

/// What a client certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The home agent: may hold the session stream.
    Home,
    /// An administrator (`cerectl`): may read status and request actions.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Home => "home",
            Role::Admin => "admin",
        }
    }

    /// The URI subject alternative name that carries the role in a certificate.
    pub(crate) fn uri(self) -> String {
        format!("urn:ceres:role:{}", self.name())
    }

    fn from_uri(uri: &str) -> Option<Role> {
        uri.strip_prefix("urn:ceres:role:")?.parse().ok()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "home" => Ok(Role::Home),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: expected home or admin")),
        }
    }
}

/// What CERES reads out of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The role, if the certificate is a CERES client certificate.
    pub role: Option<Role>,
    /// Subject common name (the host name given at enrolment).
    pub name: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the DER certificate.
    pub fingerprint: Fingerprint,
}

impl CertificateInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse {
            what: "certificate",
            detail: e.to_string(),
        })?;
        let mut role = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    role = role.or_else(|| Role::from_uri(uri));
                }
            }
        }
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let to_system = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(Self {
            role,
            name,
            serial: hex::encode(cert.raw_serial()),
            not_before: to_system(cert.validity().not_before),
            not_after: to_system(cert.validity().not_after),
            fingerprint: Fingerprint::of(der),
        })
    }

    /// Parses the first certificate of a PEM blob.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::from_der(&first_cert_der(pem)?)
    }
}

/// DER of the first certificate in `pem`.
pub(crate) fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut reader = pem.as_bytes();
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(PkiError::Parse {
            what: "certificate PEM",
            detail: e.to_string(),
        }),
        None => Err(PkiError::Parse {
            what: "certificate PEM",
            detail: "no CERTIFICATE block".into(),
        }),
    }
}

/// A freshly generated private key and the CSR for it.
///
/// Generated on the host that will use the key; only [`KeyAndCsr::csr_pem`]
/// is sent to the VPS.
pub struct KeyAndCsr {
    key: KeyPair,
    csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key", &"MASKED")
            .finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    /// Generates an ECDSA P-256 key and a CSR naming `name`.
    ///
    /// The CSR asks for nothing but the name: the VPS decides role, lifetime
    /// and usages, whatever a CSR might request.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sanitize_name(name));
        params.distinguished_name = dn;
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Self { key, csr_pem })
    }

    /// The CSR, PEM.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key, PKCS#8 PEM, for writing to a 0600 file.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// Keeps names printable and short: they end up in certificates and status.
pub(crate) fn sanitize_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "unnamed".to_owned()
    } else {
        clean
    }
}
