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
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use ceres_relay::source_key;
use ceres_relay::throttle::{KeyedThrottle, clock_ms};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::limits::{ConnLimits, PerSource, SourceSlot};

/// A peer that has not finished its handshake by then is dropped: a slow or
/// silent client must not hold a slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// One log line per source and this window for failed handshakes and
/// per-source refusals; the next line says how many were held back.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Sources whose log lines are throttled one by one; beyond that they share one.
const LOG_SOURCES: usize = 4096;

/// Who is calling: the TCP peer and, if it presented one, its verified certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Remote address of the connection.
    pub remote: SocketAddr,
    /// The client certificate, already verified against the CA by rustls.
    pub certificate: Option<CertificateInfo>,
}

/// A TLS connection with its caller identity, as tonic wants it. It holds
/// its connection slots (global and per source) until tonic drops it.
#[derive(Debug)]
pub struct AuthedConn {
    inner: TlsStream<TcpStream>,
    caller: Caller,
    /// Without a client certificate: when the connection is cut. Reads and
    /// writes fail from then on, and hyper closes the connection.
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _source_slot: SourceSlot,
}

impl AuthedConn {
    /// `Err` once the connection has outlived its maximum age (and registers
    /// the waker, so an idle connection is woken to be closed).
    fn check_age(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let expired = self
            .expires
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection without a client certificate reached its maximum age",
            ));
        }
        Ok(())
    }
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
        if let Err(e) = self.check_age(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_age(cx) {
            return Poll::Ready(Err(e));
        }
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
        if let Err(e) = self.check_age(cx) {
            return Poll::Ready(Err(e));
        }
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
    /// an expired one — are logged with the peer address (one line per source
    /// and [`LOG_WINDOW`], with a count) and dropped; the listener keeps serving.
    ///
    /// Each connection holds a slot of `limits.max_connections` and one of its
    /// source's `limits.max_per_source` from the accept until it closes; at the
    /// global cap new connections wait in the kernel's accept queue, over the
    /// source's cap they are closed at once. Connections without a client
    /// certificate are cut after `limits.no_cert_max_age`.
    pub fn spawn(
        listener: TcpListener,
        config: SharedServerConfig,
        revoked: RevocationCheck,
        limits: ConnLimits,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let per_source = PerSource::new(limits.max_per_source.max(1));
        let window_ms = u64::try_from(LOG_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let failed_log = Arc::new(KeyedThrottle::new(window_ms, LOG_SOURCES));
        let refused_log = KeyedThrottle::new(window_ms, LOG_SOURCES);
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
                let source = source_key(remote.ip());
                let Some(source_slot) = per_source.take(source) else {
                    if let Some(held) = refused_log.admit(&source, clock_ms()) {
                        tracing::warn!(peer = %remote, limit = limits.max_per_source,
                            more_since_last_line = held,
                            "control: too many connections from this source (IPv6: its /64), connection closed");
                    }
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = match config.read() {
                    Ok(c) => TlsAcceptor::from(c.clone()),
                    Err(_) => break,
                };
                let tx = tx.clone();
                let cancel = cancel.clone();
                let revoked = revoked.clone();
                let failed_log = Arc::clone(&failed_log);
                handshakes.spawn(async move {
                    let hs = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
                    };
                    let tls = match hs {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            if let Some(held) = failed_log.admit(&source, clock_ms()) {
                                tracing::info!(peer = %remote, error = %e, more_since_last_line = held,
                                    "control: TLS handshake failed, connection dropped");
                            }
                            return;
                        }
                        Err(_) => {
                            if let Some(held) = failed_log.admit(&source, clock_ms()) {
                                tracing::info!(peer = %remote, more_since_last_line = held,
                                    "control: TLS handshake timed out, connection dropped");
                            }
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
                    let expires = certificate
                        .is_none()
                        .then(|| Box::pin(tokio::time::sleep(limits.no_cert_max_age)));
                    let conn = AuthedConn {
                        inner: tls,
                        caller: Caller { remote, certificate },
                        expires,
                        _slot: permit,
                        _source_slot: source_slot,
                    };
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
