//! A small SMTP client: replies (multi-line), commands, DATA with dot
//! stuffing, and STARTTLS or implicit TLS through rustls. `cerectl` talks to
//! the VPS's public mail ports with it (`send-test`, `doctor`); the VPS agent
//! delivers its alert mail with it.
//!
//! Hand-written rather than a full mail library on purpose: each step must be
//! visible (the caller prints every reply), and the doctor's open-relay probe
//! has to stop after `RCPT TO` without ever sending a message.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Where Debian and most distributions keep the system's trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Longest reply line accepted (RFC 5321 allows 512 octets; servers send less).
const MAX_LINE: usize = 4096;
/// Most lines in one multi-line reply (EHLO lists a dozen or so).
const MAX_LINES: usize = 100;

/// What can go wrong talking SMTP.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// The OS error (refused, unreachable...).
        #[source]
        source: std::io::Error,
    },
    /// No TCP connection within the timeout: usually a firewall dropping the port.
    #[error("no answer from {addr} within {} s (a firewall dropping the port?)", timeout.as_secs())]
    ConnectTimeout {
        /// Where to.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The server did not finish a reply in time.
    #[error("the server sent no complete reply within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The server closed the connection (before a complete reply).
    #[error("the server closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// A reply line is not `NNN text` / `NNN-text`.
    #[error("not an SMTP reply: {0:?}")]
    Malformed(String),
    /// A reply line or a multi-line reply is absurdly long.
    #[error("the server's reply is too long")]
    TooLong,
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Bytes arrived after `220` to STARTTLS and before the TLS handshake:
    /// a man in the middle injecting commands (CVE-2011-0411 style).
    #[error("the server sent data between STARTTLS and the TLS handshake: refusing to go on")]
    Injection,
}

impl SmtpError {
    /// The connect to port 25 timed out (not refused): perhaps the network
    /// we run from blocks outbound 25.
    pub fn port25_timed_out(&self) -> bool {
        matches!(self, SmtpError::ConnectTimeout { addr, .. } if addr.port() == 25)
    }
}

/// One SMTP reply: its code and text lines (without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The first line as the server sent it, e.g. `250 2.1.0 Ok`.
    pub fn first_line(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(String::as_str).unwrap_or("")
        )
        .trim_end()
        .to_owned()
    }

    /// All lines joined with ` / `, for one-line display (a line repeated
    /// right after itself, like postscreen's `220-` teaser, shown once).
    pub fn text(&self) -> String {
        let mut lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        lines.dedup();
        format!("{} {}", self.code, lines.join(" / "))
    }

    /// EHLO keywords (upper case), i.e. the lines after the greeting line.
    pub fn extensions(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .map(|l| l.trim().to_ascii_uppercase())
            .collect()
    }

    /// Whether an EHLO reply lists `keyword` (e.g. `STARTTLS`, `AUTH`).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.extensions()
            .iter()
            .any(|e| e.split_whitespace().next() == Some(keyword))
    }

    /// The mechanisms of an EHLO reply's `AUTH` line.
    pub fn auth_mechanisms(&self) -> Vec<String> {
        self.extensions()
            .iter()
            .filter_map(|e| e.strip_prefix("AUTH ").or(e.strip_prefix("AUTH=")))
            .flat_map(|m| m.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// The queue id of a final `250` (`... queued as ABC123`), if the server says.
    pub fn queue_id(&self) -> Option<String> {
        let line = self.lines.first()?;
        let (_, rest) = line.split_once("queued as ")?;
        let id = rest.split_whitespace().next()?;
        Some(
            id.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned(),
        )
        .filter(|s| !s.is_empty())
    }
}

/// Anything the connection can run over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An SMTP connection.
pub struct SmtpConn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    timeout: Duration,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
}

impl std::fmt::Debug for SmtpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConn")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl SmtpConn {
    /// Connects to `addr`; `timeout` bounds the connect and each later reply.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, SmtpError> {
        Self::connect_from(addr, None, timeout).await
    }

    /// Connects to `addr` from the local address `from` (the receiver then
    /// sees that address: what SPF and reverse DNS are judged on), or from
    /// whatever the routing picks when `None`.
    pub async fn connect_from(
        addr: SocketAddr,
        from: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, SmtpError> {
        let dial = async {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            if let Some(ip) = from {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(addr).await
        };
        let tcp = match tokio::time::timeout(timeout, dial).await {
            Err(_) => return Err(SmtpError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(SmtpError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        // Commands are single small writes waiting for a reply: no batching.
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        Ok(Self {
            io: Box::new(tcp),
            buf: Vec::new(),
            timeout,
            peer: addr,
            local,
            tls: false,
        })
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Our address on this connection (for an `EHLO [address]` literal).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Whether the connection is encrypted now.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Reads one complete (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_reply_inner())
            .await
            .map_err(|_| SmtpError::Timeout(timeout))?
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, SmtpError> {
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let (c, more, text) = parse_line(&line)?;
            if *code.get_or_insert(c) != c {
                return Err(SmtpError::Malformed(line));
            }
            lines.push(text.to_owned());
            if lines.len() > MAX_LINES {
                return Err(SmtpError::TooLong);
            }
            if !more {
                return Ok(Reply { code: c, lines });
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, SmtpError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let line = std::mem::replace(&mut self.buf, rest);
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(SmtpError::TooLong);
            }
            let mut chunk = [0u8; 1024];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Err(SmtpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `line` (CRLF added) without waiting for a reply.
    pub async fn send_line(&mut self, line: &str) -> Result<(), SmtpError> {
        let timeout = self.timeout;
        let bytes = format!("{line}\r\n");
        tokio::time::timeout(timeout, async {
            self.io.write_all(bytes.as_bytes()).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| SmtpError::Timeout(timeout))??;
        Ok(())
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.send_line(line).await?;
        self.read_reply().await
    }

    /// Sends the message body after a `354` (line ends made CRLF, lines
    /// starting with a dot doubled, the final `.` added) and reads the reply.
    pub async fn send_data(&mut self, message: &str) -> Result<Reply, SmtpError> {
        let mut out = String::with_capacity(message.len() + 64);
        for line in message.lines() {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.io.write_all(out.as_bytes()).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| SmtpError::Timeout(timeout))??;
        self.read_reply().await
    }

    /// Runs the TLS handshake on this connection (after `STARTTLS` got its
    /// `220`, or at once for implicit TLS), checking the certificate for `name`.
    pub async fn start_tls(
        &mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> Result<(), SmtpError> {
        if !self.buf.is_empty() {
            return Err(SmtpError::Injection);
        }
        // Swap in a placeholder while the handshake owns the stream.
        let plain = std::mem::replace(&mut self.io, Box::new(empty::EmptyDuplex));
        let timeout = self.timeout;
        let shown = name.to_str().into_owned();
        let tls = tokio::time::timeout(timeout, connector.connect(name, plain))
            .await
            .map_err(|_| SmtpError::Timeout(timeout))?
            .map_err(|e| SmtpError::Tls(explain_tls(&e, &shown)))?;
        self.io = Box::new(tls);
        self.tls = true;
        Ok(())
    }

    /// Closes our side after `QUIT`, ignoring whatever the server does.
    pub async fn quit(mut self) -> Option<Reply> {
        let reply = self.command("QUIT").await.ok();
        let _ = self.io.shutdown().await;
        reply
    }
}

/// A duplex stream that reads nothing and swallows writes: the placeholder
/// while a TLS handshake holds the real one.
mod empty {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// See the module docs.
    #[derive(Debug)]
    pub struct EmptyDuplex;

    impl AsyncRead for EmptyDuplex {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for EmptyDuplex {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

/// Splits `NNN-text` / `NNN text` / `NNN` into (code, more follows, text).
fn parse_line(line: &str) -> Result<(u16, bool, &str), SmtpError> {
    let bad = || SmtpError::Malformed(line.to_owned());
    let code_part = line.get(..3).ok_or_else(bad)?;
    if !code_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let code: u16 = code_part.parse().map_err(|_| bad())?;
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    match line.as_bytes().get(3) {
        None => Ok((code, false, "")),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(bad()),
    }
}

/// A failed handshake in words an admin can act on: what is wrong with the
/// server's certificate and what to change.
fn explain_tls(e: &std::io::Error, name: &str) -> String {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    let fix = match cert {
        C::UnknownIssuer | C::BadSignature => {
            "it is not signed by a CA this host trusts: give the CA with --ca-file, \
             or make the server send its full chain (with the intermediates)"
                .to_owned()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "it does not name {name}: set --tls-name to a name it carries, \
             or give the server a certificate for {name}"
        ),
        C::Expired | C::ExpiredContext { .. } => "it has expired: renew it".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "it is not valid yet: check the clocks of both hosts".to_owned()
        }
        _ => return e.to_string(),
    };
    format!("the server's certificate was refused ({e}); {fix}")
}

/// A TLS client configuration trusting `ca_file` (PEM), or the system's CA
/// bundle (`SSL_CERT_FILE`, else [`SYSTEM_CA_BUNDLE`]).
pub fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, SmtpError> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(Into::into)
            .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into()),
    };
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        SmtpError::Tls(format!(
            "cannot read the CA certificates in {}: {e} (give --ca-file)",
            path.display()
        ))
    })?;
    tls_connector_from_pem(&pem).map_err(|e| match e {
        SmtpError::Tls(m) => SmtpError::Tls(format!("{m} in {}", path.display())),
        other => other,
    })
}

/// A TLS client configuration trusting the CA certificates in `pem`.
pub fn tls_connector_from_pem(pem: &str) -> Result<TlsConnector, SmtpError> {
    let certs = ceres_pki::tls::certs_from_pem(pem)
        .map_err(|e| SmtpError::Tls(format!("bad CA certificates: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SmtpError::Tls("no usable CA certificate".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SmtpError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refused_certificates_are_explained_with_the_fix() {
        let io = |c: rustls::CertificateError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(c),
            )
        };
        let unknown = explain_tls(
            &io(rustls::CertificateError::UnknownIssuer),
            "mail.example.com",
        );
        assert!(unknown.contains("--ca-file"), "{unknown}");
        let name = explain_tls(
            &io(rustls::CertificateError::NotValidForName),
            "mail.example.com",
        );
        assert!(
            name.contains("--tls-name") && name.contains("mail.example.com"),
            "{name}"
        );
        let expired = explain_tls(&io(rustls::CertificateError::Expired), "mail.example.com");
        assert!(expired.contains("expired"), "{expired}");
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(explain_tls(&other, "mail.example.com"), "reset");
    }

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_line("250-PIPELINING").unwrap(),
            (250, true, "PIPELINING")
        );
        assert_eq!(parse_line("250 OK").unwrap(), (250, false, "OK"));
        assert_eq!(parse_line("354").unwrap(), (354, false, ""));
        for bad in ["", "25", "abc def", "250xOK", "999 no", "100 no"] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ehlo_reply_helpers() {
        let r = Reply {
            code: 250,
            lines: vec![
                "mail.example.com".into(),
                "PIPELINING".into(),
                "STARTTLS".into(),
                "AUTH PLAIN LOGIN".into(),
            ],
        };
        assert!(r.has_extension("STARTTLS"));
        assert!(!r.has_extension("SMTPUTF8"));
        assert_eq!(r.auth_mechanisms(), vec!["PLAIN", "LOGIN"]);
        let q = Reply {
            code: 250,
            lines: vec!["2.0.0 Ok: queued as 4bQ1xY2Zz".into()],
        };
        assert_eq!(q.queue_id().as_deref(), Some("4bQ1xY2Zz"));
        assert_eq!(q.first_line(), "250 2.0.0 Ok: queued as 4bQ1xY2Zz");
    }

    #[tokio::test]
    async fn multi_line_replies_and_dot_stuffing_over_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220-first\r\n220 second\r\n").await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !got.ends_with(b"\r\n.\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"250 ok\r\n").await.unwrap();
            got
        });
        let mut c = SmtpConn::connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        let banner = c.read_reply().await.unwrap();
        assert_eq!(banner.code, 220);
        assert_eq!(banner.lines, vec!["first", "second"]);
        let r = c.send_data("a\n.b\nc").await.unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(server.await.unwrap(), b"a\r\n..b\r\nc\r\n.\r\n");
    }

    #[tokio::test]
    async fn the_connection_leaves_from_the_address_asked_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let from: IpAddr = "127.0.0.7".parse().unwrap();
        let (c, accepted) = tokio::join!(
            SmtpConn::connect_from(addr, Some(from), Duration::from_secs(5)),
            listener.accept()
        );
        assert_eq!(c.unwrap().local().ip(), from);
        assert_eq!(accepted.unwrap().1.ip(), from);
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let mut c = SmtpConn::connect(addr, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(matches!(c.read_reply().await, Err(SmtpError::Timeout(_))));
        drop(hold);
        // Bound but not listening: the port is ours and refuses connections.
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = reserved.local_addr().unwrap();
        assert!(matches!(
            SmtpConn::connect(closed, Duration::from_secs(2)).await,
            Err(SmtpError::Connect { .. })
        ));
    }
}
