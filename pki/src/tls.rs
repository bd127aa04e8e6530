//! rustls configurations for the control plane.
//!
//! TLS 1.3 only, ring as the one crypto provider. The server accepts clients
//! without a certificate (they may only enrol) and verifies every presented
//! certificate against the CA, expiry included. Clients either pin the CA by
//! the fingerprint from a join token (first contact) or trust the CA file
//! they received at enrolment.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::{Fingerprint, PkiError};

/// ALPN for gRPC over HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Installs ring as the process-wide rustls provider (idempotent).
///
/// rustls panics when more than one provider is compiled in and none is
/// chosen; doing it explicitly at start-up removes that trap.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses all certificates of a PEM blob.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Parse {
        what: "certificate PEM",
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(PkiError::Parse {
            what: "certificate PEM",
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Parses a private key PEM.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| PkiError::Parse {
            what: "private key PEM",
            detail: e.to_string(),
        })?
        .ok_or_else(|| PkiError::Parse {
            what: "private key PEM",
            detail: "no PRIVATE KEY block".into(),
        })
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut store = RootCertStore::empty();
    store
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| PkiError::Tls(format!("CA certificate unusable: {e}")))?;
    Ok(Arc::new(store))
}

/// The VPS control-plane server configuration.
///
/// `server_cert_pem` is the VPS certificate; the CA certificate is appended to
/// the chain so that a client that knows only the CA's fingerprint can find it.
pub fn server_config(
    ca_der: &[u8],
    server_cert_pem: &str,
    server_key_pem: &str,
) -> Result<ServerConfig, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut chain = certs_from_pem(server_cert_pem)?;
    chain.push(CertificateDer::from(ca_der.to_vec()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_from_pem(server_key_pem)?)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client identity: certificate chain and key.
#[derive(Debug)]
pub struct ClientIdentity {
    /// The client's certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

fn finish_client(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, PkiError> {
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(certs_from_pem(&id.cert_pem)?, key_from_pem(&id.key_pem)?)
            .map_err(|e| PkiError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Client configuration trusting exactly the CA in `ca_pem`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, PkiError> {
    let ca = certs_from_pem(ca_pem)?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&ca[0])?, provider())
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    finish_client(builder, identity)
}

/// Client configuration for first contact: trust the CA whose certificate
/// (sent by the server in its chain) hashes to `pin`, then verify the server
/// certificate against that CA as usual.
pub fn client_config_pinned(pin: Fingerprint) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin }));
    finish_client(builder, None)
}

/// Text in the TLS error when the server's CA does not match the pin, so the
/// client can explain it.
pub const PIN_MISMATCH: &str = "CA fingerprint mismatch";

#[derive(Debug)]
struct PinnedCa {
    pin: Fingerprint,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| Fingerprint::of(c).ct_eq(&self.pin))
        else {
            let offered = intermediates
                .last()
                .map(|c| Fingerprint::of(c).to_string())
                .unwrap_or_else(|| "no CA certificate".into());
            return Err(TlsError::General(format!(
                "{PIN_MISMATCH}: the server presented {offered}, the token pins {}",
                self.pin
            )));
        };
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(ca).map_err(|e| TlsError::General(e.to_string()))?,
            provider(),
        )
        .build()
        .map_err(|e| TlsError::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        // The configuration is TLS 1.3 only.
        Err(TlsError::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
