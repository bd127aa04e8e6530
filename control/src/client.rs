//! Dialling the VPS control plane.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// How long one TCP connect + TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control plane could not be reached, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address does not parse as `host:port`.
    #[error("bad control address {0:?}: expected host:port")]
    BadAddress(String),
    /// TCP, TLS or HTTP/2 failed; the message explains the likely cause.
    #[error("cannot reach the CERES control plane at {addr}: {detail}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// Cause and advice.
        detail: String,
    },
}

/// Connects to `addr` (`host:port`) with `tls` and returns a tonic channel.
///
/// The server certificate is checked against [`ceres_pki::SERVER_NAME`]
/// whatever the address, see there why. HTTP/2 keepalives detect a dead
/// peer on long-lived streams within about a minute.
pub async fn connect(addr: &str, tls: rustls::ClientConfig) -> Result<Channel, ConnectError> {
    if !addr.contains(':') {
        return Err(ConnectError::BadAddress(addr.to_owned()));
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ConnectError::BadAddress(addr.to_owned()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(Arc::new(tls));
    let target = addr.to_owned();
    let dial = tower::service_fn(move |_uri: http_uri::Uri| {
        let connector = connector.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(ceres_pki::SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(dial)
        .await
        .map_err(|e| ConnectError::Unreachable {
            addr: addr.to_owned(),
            detail: explain(&e),
        })
}

/// Re-export so callers need not name the `http` crate.
mod http_uri {
    pub use tonic::codegen::http::Uri;
}

/// Turns an error chain into one line with advice for the common causes.
pub fn explain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p: &String| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    let chain = parts.join(": ");
    let advice = if chain.contains(ceres_pki::tls::PIN_MISMATCH) {
        " — this token belongs to another VPS (or something between you and the VPS is \
         intercepting TLS); check the address and create a token on the right VPS"
    } else if chain.contains("CertificateExpired") || chain.contains("certificate expired") {
        " — a certificate has expired; if it is this host's, enrol again with a new token \
         (`ceres-vps token create`)"
    } else if chain.contains("UnknownCA")
        || chain.contains("BadCertificate")
        || chain.contains("UnknownIssuer")
    {
        " — the VPS and this host do not trust each other's certificates (another CA, or \
         the VPS was re-initialised); enrol again with a new token"
    } else if chain.contains("Connection refused") {
        " — nothing listens there: is `ceres-vps run` started, and is the port open in the VPS firewall?"
    } else if chain.contains("timed out") {
        " — no answer: check the address and any firewall between here and the VPS"
    } else {
        ""
    };
    format!("{chain}{advice}")
}
