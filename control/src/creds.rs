//! A client's credentials (home agent or cerectl): enrolling with a join
//! token, storing the result, renewing the certificate before it expires.

use std::time::SystemTime;

use ceres_pki::tls::ClientIdentity;
use ceres_pki::{CertificateInfo, JoinToken, KeyAndCsr, Role};
use ceres_proto::enrollment_client::EnrollmentClient;
use ceres_proto::{EnrollRequest, RenewRequest};
use ceres_state::StateDir;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::client::{ConnectError, connect};

/// Errors while enrolling, loading or renewing credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// The token text is bad.
    #[error(transparent)]
    Token(#[from] ceres_pki::TokenError),
    /// The token is for the other kind of client.
    #[error("this is a {got} token, but {program} needs a {want} token: {hint}")]
    WrongRole {
        /// Role in the token.
        got: Role,
        /// Role needed.
        want: Role,
        /// Program name.
        program: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// Could not reach or trust the VPS.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The VPS refused the request.
    #[error("the VPS refused: {0}")]
    Refused(String),
    /// Files.
    #[error(transparent)]
    State(#[from] ceres_state::StateError),
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] ceres_pki::PkiError),
    /// Not enrolled yet.
    #[error("no credentials in {dir}: {hint}")]
    NotEnrolled {
        /// Where we looked.
        dir: String,
        /// How to enrol.
        hint: &'static str,
    },
    /// Already enrolled and not forced.
    #[error(
        "{dir} already holds credentials for the VPS at {address}; nothing was changed (pass --force to replace them)"
    )]
    AlreadyEnrolled {
        /// Where.
        dir: String,
        /// Which VPS.
        address: String,
    },
    /// Our certificate has expired: only a new token helps.
    #[error(
        "this host's certificate expired at {0} (it was not renewed in time): enrol again with a new token from `ceres-vps token create`"
    )]
    Expired(String),
    /// A stored file is corrupt.
    #[error("{0} is damaged: {1}")]
    Damaged(String, String),
}

/// Where the VPS is, stored next to the certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Endpoint {
    pub(crate) control_address: String,
    pub(crate) ca_fingerprint: String,
}

/// The endpoint file of the credentials in `dir`.
pub(crate) fn read_endpoint(dir: &StateDir) -> Result<Endpoint, CredError> {
    serde_json::from_slice(&dir.read("vps.json")?)
        .map_err(|e| CredError::Damaged(dir.join("vps.json").display().to_string(), e.to_string()))
}

/// The certificate and key file names of `role`.
pub(crate) fn files_of(role: Role) -> (&'static str, &'static str) {
    name_of(role)
}

/// A client's key, certificate, CA and the VPS address.
#[derive(Clone)]
pub struct Credentials {
    /// CA certificate (trusted for the server).
    pub ca_pem: String,
    /// Our certificate.
    pub cert_pem: String,
    pub(crate) key_pem: String,
    /// `host:port` of the control plane.
    pub control_address: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("control_address", &self.control_address)
            .field("key_pem", &"MASKED")
            .finish_non_exhaustive()
    }
}

fn name_of(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Home => ("home.pem", "home.key"),
        Role::Admin => ("admin.pem", "admin.key"),
    }
}

fn text(dir: &StateDir, name: &str, secret: bool) -> Result<String, CredError> {
    let bytes = if secret {
        dir.read_secret(name)?
    } else {
        dir.read(name)?
    };
    String::from_utf8(bytes)
        .map_err(|_| CredError::Damaged(dir.join(name).display().to_string(), "not text".into()))
}

impl Credentials {
    /// Credentials from their parts (as enrolment returns them; for tests
    /// and tools that sign their own).
    pub fn from_parts(
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        control_address: String,
    ) -> Self {
        Self {
            ca_pem,
            cert_pem,
            key_pem,
            control_address,
        }
    }

    /// Whether `dir` holds credentials for `role`.
    pub fn exists(dir: &StateDir, role: Role) -> bool {
        dir.exists(name_of(role).0)
    }

    /// Loads the credentials for `role` from `dir`.
    pub fn load(dir: &StateDir, role: Role, hint: &'static str) -> Result<Self, CredError> {
        let (cert, key) = name_of(role);
        if !dir.exists(cert) {
            return Err(CredError::NotEnrolled {
                dir: dir.path().display().to_string(),
                hint,
            });
        }
        let endpoint = read_endpoint(dir)?;
        Ok(Self {
            ca_pem: text(dir, "ca.pem", false)?,
            cert_pem: text(dir, cert, false)?,
            key_pem: text(dir, key, true)?,
            control_address: endpoint.control_address,
        })
    }

    /// Stores the credentials for `role` in `dir` (each file atomically; the
    /// key first, so a certificate never points at a key that is not there).
    pub fn save(&self, dir: &StateDir, role: Role) -> Result<(), CredError> {
        let (cert, key) = name_of(role);
        let fp = CertificateInfo::from_pem(&self.ca_pem)?.fingerprint;
        let endpoint = Endpoint {
            control_address: self.control_address.clone(),
            ca_fingerprint: fp.to_string(),
        };
        dir.write("ca.pem", self.ca_pem.as_bytes())?;
        dir.write(key, self.key_pem.as_bytes())?;
        dir.write(cert, self.cert_pem.as_bytes())?;
        dir.write(
            "vps.json",
            &serde_json::to_vec_pretty(&endpoint).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// What our certificate says.
    pub fn info(&self) -> Result<CertificateInfo, CredError> {
        Ok(CertificateInfo::from_pem(&self.cert_pem)?)
    }

    /// When to renew: two thirds through the certificate's life.
    pub fn renew_at(&self) -> Result<SystemTime, CredError> {
        let info = self.info()?;
        Ok(ceres_pki::renew_at(info.not_before, info.not_after))
    }

    /// TLS client configuration presenting our certificate and trusting the CA.
    pub fn tls(&self) -> Result<rustls::ClientConfig, CredError> {
        let id = ClientIdentity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        };
        Ok(ceres_pki::tls::client_config(&self.ca_pem, Some(&id))?)
    }

    /// Opens a mutual-TLS channel to the VPS (at `address`, default the stored one).
    pub async fn connect(&self, address: Option<&str>) -> Result<Channel, CredError> {
        // Say it plainly instead of letting the VPS drop the handshake.
        let info = self.info()?;
        if info.not_after <= SystemTime::now() {
            return Err(CredError::Expired(ceres_pki::rfc3339(
                ceres_pki::unix_secs(info.not_after),
            )));
        }
        Ok(connect(address.unwrap_or(&self.control_address), self.tls()?).await?)
    }

    /// Gets a new certificate for a new key, authenticated by the current one.
    pub async fn renew(&self, address: Option<&str>) -> Result<Credentials, CredError> {
        let info = self.info()?;
        let fresh = KeyAndCsr::generate(&info.name)?;
        let mut client = EnrollmentClient::new(self.connect(address).await?);
        let resp = client
            .renew(RenewRequest {
                protocol_version: ceres_proto::PROTOCOL_VERSION,
                csr_pem: fresh.csr_pem().to_owned(),
            })
            .await
            .map_err(|s| CredError::Refused(s.message().to_owned()))?
            .into_inner();
        Ok(Credentials {
            ca_pem: resp.ca_certificate_pem,
            cert_pem: resp.certificate_pem,
            key_pem: fresh.key_pem(),
            control_address: self.control_address.clone(),
        })
    }

    /// Refuses a token for the other kind of client, saying where it belongs —
    /// before anything is done with it (or spent).
    pub fn check_role(
        token: &JoinToken,
        want: Role,
        program: &'static str,
    ) -> Result<(), CredError> {
        if token.role != want {
            let hint = match token.role {
                Role::Home => {
                    "use it with `ceres-home join` on the home server, or create an admin token with `ceres-vps token create --role admin`"
                }
                Role::Admin => {
                    "use it with `cerectl enroll`, or create a home token with `ceres-vps token create --role home`"
                }
            };
            return Err(CredError::WrongRole {
                got: token.role,
                want,
                program,
                hint,
            });
        }
        Ok(())
    }

    /// Redeems `token` with the VPS: key generated here, only the CSR sent.
    pub async fn enroll(
        token: &JoinToken,
        want: Role,
        program: &'static str,
        name: &str,
        agent_version: &str,
    ) -> Result<Credentials, CredError> {
        Self::check_role(token, want, program)?;
        let key = KeyAndCsr::generate(name)?;
        let tls = ceres_pki::tls::client_config_pinned(token.ca_fingerprint)?;
        let channel = connect(&token.control_address, tls).await?;
        let resp = EnrollmentClient::new(channel)
            .enroll(EnrollRequest {
                protocol_version: ceres_proto::PROTOCOL_VERSION,
                token_secret: token.secret.expose().to_vec(),
                csr_pem: key.csr_pem().to_owned(),
                name: name.to_owned(),
                agent_version: agent_version.to_owned(),
            })
            .await
            .map_err(|s| CredError::Refused(s.message().to_owned()))?
            .into_inner();
        // The CA we were given must be the one the token pinned.
        let ca = CertificateInfo::from_pem(&resp.ca_certificate_pem)?;
        if !ca.fingerprint.ct_eq(&token.ca_fingerprint) {
            return Err(CredError::Refused(format!(
                "the VPS returned CA {} but the token pins {}",
                ca.fingerprint, token.ca_fingerprint
            )));
        }
        Ok(Credentials {
            ca_pem: resp.ca_certificate_pem,
            cert_pem: resp.certificate_pem,
            key_pem: key.key_pem(),
            control_address: token.control_address.clone(),
        })
    }
}
