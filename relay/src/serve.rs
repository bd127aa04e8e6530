//! The accept loop and per-connection task shared by the VPS listener and the home
//! forwarder: admission (trust, limits), connecting to the target, the home-down
//! answer, and splicing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::RelayError;
use crate::admission::Refusal;
use crate::listener::HomeReach;
use crate::proxy::{self, unmap};
use crate::spec::ProxyMode;
use crate::splice::{self, End};
use crate::stats::{PortCounters, Slot, Warning};
use crate::throttle::clock_ms;

/// Bound on writing our own short replies (`421`), so a client that never reads
/// cannot pin a task.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of fds), so the loop does not spin while
/// the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What is special about a port, depending on which side runs it.
#[derive(Debug)]
pub(crate) enum Role {
    /// VPS side: add a PROXY header; answer `421` on SMTP ports while home is down.
    Relay {
        proxy: ProxyMode,
        smtp_banner: bool,
        mail_host: String,
        home: watch::Receiver<HomeReach>,
        /// The mail server's port at home; home reports which tunnel-address port
        /// its forwarder for it listens on.
        home_port: u16,
    },
    /// Home side: only the VPS tunnel address may connect; bytes pass unchanged.
    Forward {
        allowed_peer: IpAddr,
        /// A PROXY header comes first: read and vetted before the mail server
        /// is dialled (see [`read_vetted_header`]).
        proxy: bool,
    },
}

/// Everything a connection task needs, shared by all connections of one port.
#[derive(Debug)]
pub(crate) struct PortCtx {
    pub(crate) role: Role,
    pub(crate) counters: Arc<PortCounters>,
    /// Where connections go; on the VPS the port is home's mail port, replaced
    /// by the forwarder port home reported when connecting.
    pub(crate) target: SocketAddr,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Binds a listening socket. IPv6 sockets get `IPV6_V6ONLY` so the same port can also
/// be bound on IPv4; `freebind` lets the home side bind the tunnel address before the
/// tunnel device has it.
pub(crate) fn bind(addr: SocketAddr, freebind: bool) -> Result<std::net::TcpListener, RelayError> {
    let err = |source: io::Error| RelayError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
        if freebind {
            socket.set_freebind_v6(true).map_err(err)?;
        }
    } else if freebind {
        socket.set_freebind_v4(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

/// Runs one accept loop per listener until each port's shutdown token fires, then
/// waits for every connection task to finish (they watch the same token).
pub(crate) async fn serve(
    listeners: Vec<(std::net::TcpListener, Arc<PortCtx>)>,
) -> Result<(), RelayError> {
    let tracker = TaskTracker::new();
    let mut loops = Vec::new();
    for (std_listener, ctx) in listeners {
        let addr = std_listener.local_addr().map_err(RelayError::Runtime)?;
        let listener = TcpListener::from_std(std_listener).map_err(RelayError::Runtime)?;
        loops.push((listener, addr, ctx));
    }
    for (listener, addr, ctx) in loops {
        let t = tracker.clone();
        tracker.spawn(accept_loop(listener, addr, ctx, t));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    ctx: Arc<PortCtx>,
    tracker: TaskTracker,
) {
    debug!(%addr, target = %ctx.target, "relay port listening");
    loop {
        let (stream, peer) = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(%addr, error = %e, "accept failed");
                    ctx.counters.record_error(format!("accept on {addr}: {e}"));
                    tokio::select! {
                        () = ctx.shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let peer = unmap(peer);
        if let Role::Forward { allowed_peer, .. } = &ctx.role {
            if peer.ip() != unmap(SocketAddr::new(*allowed_peer, 0)).ip() {
                ctx.counters.count_refused(Refusal::Untrusted);
                if let Some(held) = ctx.counters.log.admit(Warning::Untrusted, clock_ms()) {
                    warn!(port = ctx.counters.port, source = %peer.ip(), allowed = %allowed_peer,
                        more_since_last_line = held,
                        "refused connection not from the VPS tunnel address");
                }
                continue;
            }
        }
        let slot = match ctx.counters.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                if let Some(held) = ctx.counters.log.admit(Warning::Limit, clock_ms()) {
                    warn!(port = ctx.counters.port, source = %peer.ip(), reason = refusal.as_str(),
                        limits = ?ctx.counters.limits(),
                        more_since_last_line = held,
                        "connection limit reached, refusing");
                }
                let ctx = Arc::clone(&ctx);
                tracker.spawn(async move {
                    refuse(stream, &ctx, "4.7.0", refusal.smtp_text()).await;
                });
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            handle(stream, peer, &ctx, &slot).await;
        });
    }
    debug!(%addr, "relay port stopped");
}

/// Closes a connection we will not relay; on SMTP relay ports first says `421` so the
/// sender retries later instead of treating the close as a protocol error.
async fn refuse(mut stream: TcpStream, ctx: &PortCtx, why_code: &str, why: &str) {
    if let Role::Relay {
        smtp_banner: true,
        mail_host,
        ..
    } = &ctx.role
    {
        let line = format!("421 {why_code} {mail_host} {why}, try again later\r\n");
        let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
            stream.write_all(line.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }
    // Dropping closes with FIN (or RST if the client already sent bytes): no hang.
}

/// The longest PROXY header we read (v2 with TLVs would be longer; the VPS
/// sends none).
const MAX_HEADER: usize = 536;

/// Why a forwarded connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
enum HeaderRefusal {
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Malformed(#[from] proxy::ProxyError),
    #[error(
        "the PROXY header names no client (LOCAL/UNKNOWN): the mail server would see 127.0.0.1"
    )]
    NoClient,
    #[error("the PROXY header claims client {0}, which would look local at home")]
    LocalClient(IpAddr),
}

/// Reads the PROXY header the VPS sends ahead of a relayed connection (and any
/// bytes that came with it) and refuses one that would make the client look
/// local to the mail server. The VPS writes the real peer address, which is
/// never loopback; a header saying otherwise comes from a compromised or
/// misconfigured VPS, and 127.0.0.1 is trusted by many mail servers.
async fn read_vetted_header(
    client: &mut TcpStream,
    timeout: Duration,
) -> Result<Vec<u8>, HeaderRefusal> {
    use tokio::io::AsyncReadExt as _;
    let read = async {
        let mut buf = Vec::with_capacity(128);
        loop {
            match proxy::parse(&buf)? {
                Some((header, _)) => {
                    let source = header.source.ok_or(HeaderRefusal::NoClient)?;
                    let ip = unmap(source).ip();
                    if ip.is_loopback() || ip.is_unspecified() {
                        return Err(HeaderRefusal::LocalClient(ip));
                    }
                    return Ok(buf);
                }
                None if buf.len() >= MAX_HEADER => {
                    return Err(HeaderRefusal::Malformed(proxy::ProxyError::NotProxy));
                }
                None => {}
            }
            let mut chunk = [0u8; MAX_HEADER];
            let want = MAX_HEADER - buf.len();
            let n = client.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(HeaderRefusal::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HeaderRefusal::Timeout(timeout))?
}

async fn handle(mut client: TcpStream, peer: SocketAddr, ctx: &PortCtx, slot: &Slot) {
    let port = ctx.counters.port;
    let mut early = Vec::new();
    if let Role::Forward { proxy: true, .. } = &ctx.role {
        match read_vetted_header(&mut client, ctx.connect_timeout).await {
            Ok(bytes) => early = bytes,
            Err(why) => {
                ctx.counters.count_refused(Refusal::Untrusted);
                if let Some(held) = ctx.counters.log.admit(Warning::Untrusted, clock_ms()) {
                    warn!(port, source = %peer.ip(), more_since_last_line = held, error = %why,
                        "refused relayed connection: bad PROXY header");
                }
                ctx.counters
                    .record_error(format!("refused a relayed connection: {why}"));
                return;
            }
        }
    }
    let target = match &ctx.role {
        Role::Relay {
            home, home_port, ..
        } => {
            // Read under the borrow, which must not be held across an await.
            let (forwarder_port, up) = {
                let reach = home.borrow();
                (reach.port_for(*home_port), reach.up)
            };
            match forwarder_port {
                Some(p) => SocketAddr::new(ctx.target.ip(), p),
                None => {
                    ctx.counters.count_unavailable();
                    if up {
                        let why = format!(
                            "home is connected but reports no forwarder for its port {home_port} \
                             (see the home agent's log and `cerectl status`)"
                        );
                        if let Some(held) = ctx.counters.log.admit(Warning::Unreachable, clock_ms())
                        {
                            warn!(port, source = %peer.ip(), more_since_last_line = held, "{why}");
                        }
                        ctx.counters.record_error(why);
                    } else {
                        debug!(port, source = %peer.ip(), "home down, refusing at once");
                    }
                    refuse(client, ctx, "4.4.2", "temporarily unavailable").await;
                    return;
                }
            }
        }
        Role::Forward { .. } => ctx.target,
    };
    let connect = tokio::select! {
        r = tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(target)) => r,
        // Shutting down: do not hold the relay's exit for a slow connect.
        () = ctx.shutdown.cancelled() => return,
    };
    let mut server = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            unavailable(client, ctx, format!("connect to {target}: {e}")).await;
            return;
        }
        Err(_) => {
            let why = format!(
                "connect to {target}: timed out after {:?}",
                ctx.connect_timeout
            );
            unavailable(client, ctx, why).await;
            return;
        }
    };
    // Small SMTP/IMAP exchanges are latency-bound; Nagle would delay them.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let header = match &ctx.role {
        Role::Relay { proxy, .. } => match client.local_addr() {
            Ok(local) => proxy::encode(*proxy, peer, local),
            Err(e) => {
                ctx.counters.record_error(format!("local address: {e}"));
                return;
            }
        },
        // The vetted header (and what came with it), passed on unchanged.
        Role::Forward { .. } => early,
    };
    {
        if !header.is_empty() {
            let sent = tokio::time::timeout(REPLY_TIMEOUT, server.write_all(&header)).await;
            if !matches!(sent, Ok(Ok(()))) {
                ctx.counters
                    .record_error(format!("sending PROXY header to {target}"));
                return;
            }
        }
    }
    let c = &ctx.counters;
    let (conn_in, conn_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = splice::bidirectional(
        &client,
        &server,
        [&c.bytes_in, &conn_in],
        [&c.bytes_out, &conn_out],
        ctx.idle_timeout,
        &ctx.shutdown,
    )
    .await;
    slot.finished(
        conn_in.load(Ordering::Relaxed),
        conn_out.load(Ordering::Relaxed),
    );
    match result {
        Ok(End::Closed) => debug!(port, source = %peer.ip(), "connection closed"),
        Ok(End::Idle) => {
            info!(port, source = %peer.ip(), idle = ?ctx.idle_timeout, "idle timeout, closing")
        }
        Ok(End::Shutdown) => debug!(port, source = %peer.ip(), "closed for shutdown"),
        Err(e) => {
            debug!(port, source = %peer.ip(), error = %e, "connection ended with error");
            // Resets by either side are everyday events; only count unusual errors.
            if !matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) {
                c.record_error(format!("relaying: {e}"));
            }
        }
    }
}

/// The target could not be reached: record why and refuse the client.
async fn unavailable(client: TcpStream, ctx: &PortCtx, why: String) {
    if let Some(held) = ctx.counters.log.admit(Warning::Unreachable, clock_ms()) {
        warn!(port = ctx.counters.port, error = %why, more_since_last_line = held, "target unreachable");
    }
    ctx.counters.count_unavailable();
    ctx.counters.record_error(why);
    refuse(client, ctx, "4.4.2", "temporarily unavailable").await;
}
