//! The VPS's certificate authority.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::{first_cert_der, sanitize_name};
use crate::{Fingerprint, PkiError, Role, SERVER_NAME};

/// Certificates are dated this far back so a client whose clock is a little
/// behind does not see a certificate "from the future".
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The CA: its certificate and signing key. Lives only on the VPS.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A certificate with the private key generated for it (server certificates,
/// and tests). Client certificates are issued from CSRs instead.
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("key_pem", &"MASKED")
            .finish_non_exhaustive()
    }
}

/// Names the VPS server certificate is valid for.
#[derive(Debug, Clone, Default)]
pub struct ServerNames {
    /// Public addresses of the VPS.
    pub ips: Vec<IpAddr>,
    /// Host names (the mail host, the control host).
    pub hosts: Vec<String>,
}

impl Ca {
    /// Creates a new CA valid for `lifetime`, named after `domain`.
    pub fn generate(domain: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("CERES CA for {}", sanitize_name(domain)),
        );
        dn.push(DnType::OrganizationName, "CERES mail gateway");
        params.distinguished_name = dn;
        // Path length 0: this CA signs leaf certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, lifetime);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads a CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = first_cert_der(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Parse {
            what: "CA private key",
            detail: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key, PEM, for the 0600 state file.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate: what join tokens pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &self.cert_der.clone().into(),
            &self.key,
        )?)
    }

    /// Issues the VPS's TLS server certificate with a fresh key.
    pub fn issue_server(
        &self,
        names: &ServerNames,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, SERVER_NAME);
        params.distinguished_name = dn;
        let mut sans = vec![SanType::DnsName(SERVER_NAME.try_into()?)];
        for host in &names.hosts {
            sans.push(SanType::DnsName(host.as_str().try_into()?));
        }
        sans.extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a client CSR for `role`.
    ///
    /// Only the CSR's public key is used (its signature is checked by the
    /// parser): subject, role, usages and lifetime are decided here, so a CSR
    /// cannot ask for more than the token or the old certificate granted.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Parse {
                what: "CSR",
                detail: e.to_string(),
            })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sanitize_name(name));
        dn.push(DnType::OrganizationalUnitName, role.name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(role.uri().as_str().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, lifetime);
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// Signs a client CSR with explicit validity bounds. For tests that need
    /// expired or not-yet-valid certificates.
    pub fn sign_client_with_validity(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Parse {
                what: "CSR",
                detail: e.to_string(),
            })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sanitize_name(name));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(role.uri().as_str().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    // Backdating by more than a tenth of a short lifetime would put its
    // renewal time (two thirds in) in the past at once.
    let skew = CLOCK_SKEW.min(lifetime / 10);
    params.not_before = OffsetDateTime::from(now - skew);
    params.not_after = OffsetDateTime::from(now + lifetime);
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    // DER integers are signed: keep the serial positive.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
