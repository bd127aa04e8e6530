//! Accepting control-plane connections: TLS handshakes off the accept loop,
//! the caller's certificate attached to every request, role checks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use ceres_pki::{CertificateInfo, Role};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

/// A peer that has not finished its handshake by then is dropped: a slow or
/// silent client must not hold a slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; more wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// Who is calling: the TCP peer and, if it presented one, its verified certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Remote address of the connection.
    pub remote: SocketAddr,
    /// The client certificate, already verified against the CA by rustls.
    pub certificate: Option<CertificateInfo>,
}

/// A TLS connection with its caller identity, as tonic wants it.
#[derive(Debug)]
pub struct AuthedConn {
    inner: TlsStream<TcpStream>,
    caller: Caller,
}

impl Connected for AuthedConn {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for AuthedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Says whether a certificate serial (hex) has been revoked. Checked after
/// every handshake, so a revocation takes effect for the next connection.
pub type RevocationCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The TLS server configuration in use; replaced when the server certificate renews.
pub type SharedServerConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Stream of authenticated connections for `tonic::transport::Server::serve_with_incoming`.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<io::Result<AuthedConn>>,
}

impl Stream for TlsIncoming {
    type Item = io::Result<AuthedConn>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl TlsIncoming {
    /// Accepts on `listener` until `cancel`, handshaking each connection in
    /// its own task (tracked by `tracker`) so one slow peer never blocks others.
    ///
    /// Failed handshakes — garbage, plain HTTP, a certificate from another CA,
    /// an expired one — are logged with the peer address and dropped; the
    /// listener keeps serving.
    pub fn spawn(
        listener: TcpListener,
        config: SharedServerConfig,
        revoked: RevocationCheck,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let handshakes = tracker.clone();
        tracker.spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                };
                let (tcp, remote) = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok(conn) => conn,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "control: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = match config.read() {
                    Ok(c) => TlsAcceptor::from(c.clone()),
                    Err(_) => break,
                };
                let tx = tx.clone();
                let cancel = cancel.clone();
                let revoked = revoked.clone();
                handshakes.spawn(async move {
                    let _permit = permit;
                    let hs = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
                    };
                    let tls = match hs {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(peer = %remote, error = %e, "control: TLS handshake failed, connection dropped");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(peer = %remote, "control: TLS handshake timed out, connection dropped");
                            return;
                        }
                    };
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| CertificateInfo::from_der(der).ok());
                    if let Some(cert) = certificate.as_ref().filter(|c| revoked(&c.serial)) {
                        tracing::warn!(peer = %remote, name = %cert.name, serial = %cert.serial, "control: revoked certificate refused");
                        return;
                    }
                    let conn = AuthedConn { inner: tls, caller: Caller { remote, certificate } };
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        });
        Self { rx }
    }
}

/// The caller of a request.
pub fn caller<T>(req: &Request<T>) -> Result<&Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::internal("connection identity missing"))
}

/// The caller's certificate, if it has `role`; a clear refusal otherwise.
pub fn require_role<T>(req: &Request<T>, role: Role) -> Result<CertificateInfo, Status> {
    let who = caller(req)?;
    let Some(cert) = &who.certificate else {
        return Err(Status::unauthenticated(format!(
            "this call needs a {role} certificate and the connection has none: enrol first with a \
             join token (`ceres-vps token create --role {role}` on the VPS)"
        )));
    };
    match cert.role {
        Some(r) if r == role => Ok(cert.clone()),
        Some(other) => Err(Status::permission_denied(format!(
            "this call needs the {role} role; the certificate of {:?} has the {other} role",
            cert.name
        ))),
        None => Err(Status::permission_denied(
            "the certificate carries no CERES role",
        )),
    }
}
