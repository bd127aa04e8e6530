//! One line-oriented client connection from inside a lab namespace, plain
//! or TLS (implicit, or upgraded in place by STARTTLS/STLS), with a
//! transcript for failure messages. Shared by the IMAP and POP3 clients.
//!
//! TLS accepts any server certificate: the servers under test present
//! Debian's self-signed snakeoil certificate, and what the tests check is
//! whether a password may cross the connection, not who the server is.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use crate::postfix::smtp::connect_in;

/// How a connection is secured from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP (143, 110); STARTTLS/STLS may upgrade it.
    Plain,
    /// TLS from the start (993, 995).
    ImplicitTls,
}

/// Accepts every certificate, but still checks the handshake signatures
/// with the provider's algorithms (so the session really is TLS).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config() -> anyhow::Result<Arc<ClientConfig>> {
    // The provider is named, not installed process-wide: other tests in
    // the same binary may install their own.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// A connected client: lines in, lines out, a transcript (`-> ` sent,
/// `<- ` received, `== ` events) with passwords masked.
pub(crate) struct LineConn {
    transport: Option<Transport>,
    buf: Vec<u8>,
    transcript: String,
}

impl std::fmt::Debug for LineConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineConn")
            .field("tls", &self.is_tls())
            .finish_non_exhaustive()
    }
}

impl LineConn {
    /// Connects from inside namespace `ns` (from `local` when given), sends
    /// `proxy_header` first when given, then starts TLS for `ImplicitTls`.
    pub(crate) fn open(
        ns: &str,
        local: Option<IpAddr>,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        security: Security,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut stream = connect_in(ns, local, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut conn = Self {
            transport: None,
            buf: Vec::new(),
            transcript: format!("== connected to {addr} from {}\n", stream.local_addr()?),
        };
        if let Some(header) = proxy_header {
            stream
                .write_all(header)
                .context("sending the PROXY header")?;
            conn.transcript
                .push_str(&format!("-> <PROXY header, {} bytes>\n", header.len()));
        }
        conn.transport = Some(Transport::Plain(stream));
        if security == Security::ImplicitTls {
            conn.start_tls()?;
        }
        Ok(conn)
    }

    /// Whether the connection is TLS now.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.transport, Some(Transport::Tls(_)))
    }

    /// Everything exchanged so far.
    pub(crate) fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Notes an event in the transcript.
    pub(crate) fn note(&mut self, what: &str) {
        self.transcript.push_str(&format!("== {what}\n"));
    }

    /// Replaces the plain stream by a TLS session over it and completes
    /// the handshake. Bytes the server sent before the handshake (none, in
    /// a correct server) would be a protocol error: refused.
    pub(crate) fn start_tls(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            bail!(
                "server sent data before the TLS handshake; transcript:\n{}",
                self.transcript
            );
        }
        let Some(Transport::Plain(mut sock)) = self.transport.take() else {
            bail!("TLS already started");
        };
        let name = ServerName::try_from("mail.example.com")?;
        let mut tls = ClientConnection::new(tls_config()?, name)?;
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut sock) {
                return Err(anyhow::Error::new(e).context(format!(
                    "TLS handshake failed; transcript:\n{}",
                    self.transcript
                )));
            }
        }
        let version = tls
            .protocol_version()
            .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
        self.transport = Some(Transport::Tls(Box::new(StreamOwned::new(tls, sock))));
        self.note(&format!("TLS established ({version})"));
        Ok(())
    }

    /// Sends one line (CRLF added). `shown` is what the transcript gets
    /// instead, e.g. with the password masked.
    pub(crate) fn send_line(&mut self, line: &str, shown: Option<&str>) -> anyhow::Result<()> {
        let transport = self.transport.as_mut().context("connection is closed")?;
        transport
            .write_all(format!("{line}\r\n").as_bytes())
            .and_then(|()| transport.flush())
            .with_context(|| format!("sending a line; transcript:\n{}", self.transcript))?;
        self.transcript
            .push_str(&format!("-> {}\n", shown.unwrap_or(line)));
        Ok(())
    }

    /// Reads one line without its CRLF; `None` when the server closed (or
    /// reset) the connection first.
    pub(crate) fn read_line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let raw = std::mem::replace(&mut self.buf, rest);
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                self.transcript.push_str(&format!("<- {line}\n"));
                return Ok(Some(line));
            }
            let transport = self.transport.as_mut().context("connection is closed")?;
            let mut chunk = [0u8; 4096];
            match transport.read(&mut chunk) {
                Ok(0) => {
                    self.note("closed by the server");
                    return Ok(None);
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    self.note(&format!("closed by the server ({e})"));
                    return Ok(None);
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("reading a line; transcript:\n{}", self.transcript)));
                }
            }
        }
    }

    /// `read_line`, with a closed connection as an error.
    pub(crate) fn expect_line(&mut self) -> anyhow::Result<String> {
        match self.read_line()? {
            Some(line) => Ok(line),
            None => bail!(
                "connection closed before a complete line; transcript:\n{}",
                self.transcript
            ),
        }
    }
}
