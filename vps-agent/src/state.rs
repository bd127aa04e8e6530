//! The VPS agent's state directory: CA, server certificate, join tokens.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ceres_pki::{Ca, CertificateInfo, ServerNames};
use ceres_state::StateDir;

use crate::settings::VpsSettings;

/// The CA outlives many server and client certificates; replacing it means
/// re-enrolling every host, so it is long-lived.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);
/// Server certificates renew themselves at two thirds of this.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86400);

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// Errors about the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File-level problem.
    #[error(transparent)]
    Files(#[from] ceres_state::StateError),
    /// Certificate problem.
    #[error(transparent)]
    Pki(#[from] ceres_pki::PkiError),
    /// `init` on an initialised directory.
    #[error(
        "{0} is already initialised (CA {1}); nothing was changed. To start over — which \
         forces every host to join again — remove that directory first"
    )]
    AlreadyInitialised(String, String),
    /// `run` or `token` before `init`.
    #[error("{0} holds no CA: run `ceres-vps init --public-ip IP --domain DOMAIN` first")]
    NotInitialised(String),
    /// A file is not UTF-8.
    #[error("{0} is not valid PEM text")]
    NotText(String),
}

/// Loaded VPS state.
#[derive(Debug)]
pub struct VpsState {
    /// The directory.
    pub dir: StateDir,
    /// The CA.
    pub ca: Ca,
}

/// The server certificate and its key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM key.
    key_pem: String,
    /// Parsed validity.
    pub info: CertificateInfo,
}

impl ServerCert {
    /// The key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

fn text(dir: &StateDir, name: &str, secret: bool) -> Result<String, StateError> {
    let bytes = if secret {
        dir.read_secret(name)?
    } else {
        dir.read(name)?
    };
    String::from_utf8(bytes).map_err(|_| StateError::NotText(dir.join(name).display().to_string()))
}

impl VpsState {
    /// Creates the CA and the server certificate in a fresh state directory.
    pub fn init(dir: StateDir, settings: &VpsSettings) -> Result<(Self, ServerCert), StateError> {
        if dir.exists(CA_CERT) {
            let existing = text(&dir, CA_CERT, false)?;
            let fp = CertificateInfo::from_pem(&existing)
                .map(|i| i.fingerprint.to_string())
                .unwrap_or_default();
            return Err(StateError::AlreadyInitialised(
                dir.path().display().to_string(),
                fp,
            ));
        }
        let ca = Ca::generate(&settings.domain, CA_LIFETIME)?;
        // Key first: a crash between the two leaves no certificate without its key.
        dir.write(CA_KEY, ca.key_pem().as_bytes())?;
        dir.write(CA_CERT, ca.cert_pem().as_bytes())?;
        let state = Self { dir, ca };
        let server = state.issue_server_cert(settings)?;
        Ok((state, server))
    }

    /// Loads an initialised state directory.
    pub fn load(dir: StateDir) -> Result<Self, StateError> {
        if !dir.exists(CA_CERT) {
            return Err(StateError::NotInitialised(dir.path().display().to_string()));
        }
        let ca = Ca::from_pem(&text(&dir, CA_CERT, false)?, &text(&dir, CA_KEY, true)?)?;
        Ok(Self { dir, ca })
    }

    fn names(settings: &VpsSettings) -> ServerNames {
        let mut ips: Vec<IpAddr> = settings.public_ips.clone();
        if let Ok(sa) = settings.control_address.parse::<std::net::SocketAddr>() {
            if !ips.contains(&sa.ip()) {
                ips.push(sa.ip());
            }
        }
        ServerNames {
            ips,
            hosts: vec![settings.mail_host.clone()],
        }
    }

    fn issue_server_cert(&self, settings: &VpsSettings) -> Result<ServerCert, StateError> {
        let issued = self
            .ca
            .issue_server(&Self::names(settings), SERVER_CERT_LIFETIME)?;
        self.dir.write(SERVER_KEY, issued.key_pem.as_bytes())?;
        self.dir.write(SERVER_CERT, issued.cert_pem.as_bytes())?;
        let info = CertificateInfo::from_pem(&issued.cert_pem)?;
        Ok(ServerCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            info,
        })
    }

    /// The current server certificate, reissued when missing, from another
    /// CA, or two thirds through its life.
    pub fn server_cert(&self, settings: &VpsSettings) -> Result<ServerCert, StateError> {
        if self.dir.exists(SERVER_CERT) && self.dir.exists(SERVER_KEY) {
            let cert_pem = text(&self.dir, SERVER_CERT, false)?;
            let key_pem = text(&self.dir, SERVER_KEY, true)?;
            if let Ok(info) = CertificateInfo::from_pem(&cert_pem) {
                let due = ceres_pki::renew_at(info.not_before, info.not_after) <= SystemTime::now();
                if !due {
                    return Ok(ServerCert {
                        cert_pem,
                        key_pem,
                        info,
                    });
                }
                tracing::info!("server certificate is two thirds through its life: renewing it");
            }
        }
        self.issue_server_cert(settings)
    }

    /// The token directory.
    pub fn tokens_dir(&self) -> Result<StateDir, StateError> {
        Ok(self.dir.subdir("tokens")?)
    }
}
