//! Talking SMTP from inside a lab namespace: a small blocking client (with an
//! optional PROXY header in front, as the VPS relay would send), PROXY v1/v2
//! encoders written independently of the relay's so each checks the other,
//! and a `swaks` wrapper for sessions driven by a real third-party client.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Netns;

/// Runs `f` on a fresh thread that has joined `ns`'s network namespace.
///
/// Sockets keep the namespace they were created in, so a `TcpStream`
/// connected inside `f` can be returned and used from any thread. A panic in
/// `f` is re-raised here, so assertions inside it fail the test normally.
pub fn in_netns<T, F>(ns: &Netns, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    in_netns_named(&ns.name, f)
}

/// `in_netns` by namespace name (for holders of a name, not a `Netns`).
pub fn in_netns_named<T, F>(name: &str, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = Path::new("/run/netns").join(name);
    let handle =
        File::open(&path).with_context(|| format!("opening namespace {}", path.display()))?;
    std::thread::scope(|s| {
        let thread = s.spawn(|| -> anyhow::Result<T> {
            // SAFETY: `handle` is an open namespace file for the whole call;
            // setns only changes this (short-lived, scoped) thread.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("setns into {name}"));
            }
            Ok(f())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Waits until `to` answers with a `220` banner when dialled from inside
/// `ns` — for the VPS's address: until the relay, the tunnel and home's
/// forwarder carry a session to home's mail server.
pub fn wait_banner(ns: &Netns, to: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    crate::wait_until(&format!("a 220 banner from {to}"), timeout, || {
        let stream = connect(ns, to, Duration::from_secs(5))?;
        let mut c = SmtpClient::new(stream, Duration::from_secs(10))?;
        Ok(c.read_reply()?.code == 220)
    })
}

/// Opens a TCP connection to `addr` from inside `ns`.
pub fn connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    connect_in(&ns.name, None, addr, timeout)
}

/// Opens a TCP connection to `addr` from inside `ns`, from source address
/// `local` (any port): e.g. the outside client's own address rather than
/// the one the routing table would pick. The socket keeps `timeout` as
/// its send timeout.
pub fn connect_from(
    ns: &Netns,
    local: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    connect_in(&ns.name, Some(local), addr, timeout)
}

pub(crate) fn connect_in(
    name: &str,
    local: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    in_netns_named(name, || match local {
        None => TcpStream::connect_timeout(&addr, timeout),
        Some(local) => tcp_connect_bound(local, addr, timeout),
    })?
    .with_context(|| match local {
        None => format!("connecting to {addr} from namespace {name}"),
        Some(l) => format!("connecting from {l} to {addr} in namespace {name}"),
    })
}

/// Calls `f` with `addr` as a C socket address.
fn with_sockaddr<R>(addr: SocketAddr, f: impl FnOnce(*const libc::sockaddr, u32) -> R) -> R {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in; the fields are set below.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            f((&raw const sa).cast(), len)
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6; the fields are set below.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            let len = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            f((&raw const sa).cast(), len)
        }
    }
}

/// bind(local:0) then connect(addr) — std has no bind-before-connect.
fn tcp_connect_bound(local: IpAddr, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Linux bounds a blocking connect(2) by the send timeout.
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().min(999_999) as i32),
    };
    // SAFETY: tv is a valid timeval for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the pointer and length describe a live sockaddr.
    let rc = with_sockaddr(SocketAddr::new(local, 0), |sa, len| unsafe {
        libc::bind(sock.as_raw_fd(), sa, len)
    });
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = with_sockaddr(addr, |sa, len| unsafe {
        libc::connect(sock.as_raw_fd(), sa, len)
    });
    if rc != 0 {
        let e = io::Error::last_os_error();
        // EAGAIN/EINPROGRESS here means the send timeout ran out.
        if matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS)
        ) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        return Err(e);
    }
    Ok(TcpStream::from(sock))
}

/// Both ends as one family: IPv4 only when both are IPv4, otherwise IPv6
/// with IPv4 mapped, because a PROXY header has one family for both.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    fn v6(a: SocketAddr) -> SocketAddr {
        match a.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        }
    }
    if src.is_ipv4() && dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// A PROXY protocol v1 line (`PROXY TCP4 src dst sport dport\r\n`) saying
/// the connection came from `src` to `dst`.
pub fn proxy_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The 12-byte signature that starts every PROXY v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// A binary PROXY protocol v2 header (command PROXY, TCP over IPv4 or IPv6)
/// saying the connection came from `src` to `dst`.
pub fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = PROXY_V2_SIGNATURE.to_vec();
    // Version 2 in the high nibble, command PROXY (1) in the low one.
    out.push(0x21);
    let addrs: Vec<u8> = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            [s.octets(), d.octets()].concat()
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            let as6 = |ip: IpAddr| match ip {
                IpAddr::V6(ip) => ip,
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            };
            [as6(s).octets(), as6(d).octets()].concat()
        }
    };
    let len = u16::try_from(addrs.len() + 4).expect("address block fits u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// One SMTP reply: its code and the text of each line (without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, e.g. 250.
    pub code: u16,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether the code is 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// All lines joined, for messages.
    pub fn text(&self) -> String {
        self.lines.join(" / ")
    }
}

/// Why a reply could not be read.
#[derive(Debug)]
enum ReadError {
    /// The peer closed (or reset) the connection before a complete reply.
    Closed,
    /// Anything else, including timeouts and malformed lines.
    Other(anyhow::Error),
}

/// A blocking SMTP client session with a transcript (`-> ` what we sent,
/// `<- ` what we got), for test failure messages.
#[derive(Debug)]
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    transcript: String,
}

impl SmtpClient {
    /// Wraps a connected stream; every read and write times out after `timeout`.
    pub fn new(stream: TcpStream, timeout: Duration) -> anyhow::Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            transcript: String::new(),
        })
    }

    /// Connects from inside `ns`, sends `proxy_header` first if given, and
    /// reads the banner (which must be 220).
    pub fn connect(
        ns: &Netns,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::connect_in(&ns.name, None, addr, proxy_header, timeout)
    }

    /// `connect`, with the connection's source address set to `local`.
    pub fn connect_from(
        ns: &Netns,
        local: IpAddr,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::connect_in(&ns.name, Some(local), addr, proxy_header, timeout)
    }

    fn connect_in(
        name: &str,
        local: Option<IpAddr>,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut client = Self::new(connect_in(name, local, addr, timeout)?, timeout)?;
        if let Some(header) = proxy_header {
            client.send_raw(header)?;
        }
        let banner = client.read_reply()?;
        if banner.code != 220 {
            bail!(
                "banner from {addr} was {} {}; transcript:\n{}",
                banner.code,
                banner.text(),
                client.transcript
            );
        }
        Ok(client)
    }

    /// Everything sent and received so far.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Sends raw bytes (a PROXY header, a pipelined burst, garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).context("sending to server")?;
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => {
                for line in text.lines() {
                    self.transcript.push_str(&format!("-> {line}\n"));
                }
            }
            _ => self
                .transcript
                .push_str(&format!("-> <{} binary bytes>\n", bytes.len())),
        }
        Ok(())
    }

    fn read_reply_inner(&mut self) -> Result<Reply, ReadError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err(ReadError::Closed);
                }
                Err(e) => {
                    return Err(ReadError::Other(
                        anyhow::Error::new(e).context("reading an SMTP reply"),
                    ));
                }
            }
            if !line.ends_with('\n') {
                // read_line only stops early at EOF.
                return Err(ReadError::Closed);
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            self.transcript.push_str(&format!("<- {line}\n"));
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| ReadError::Other(anyhow::anyhow!("not an SMTP reply: {line:?}")))?;
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.get(4..).unwrap_or("").to_owned());
            match sep {
                Some(b'-') => continue,
                Some(b' ') | None => return Ok(Reply { code, lines }),
                Some(_) => {
                    return Err(ReadError::Other(anyhow::anyhow!(
                        "bad SMTP reply separator: {line:?}"
                    )));
                }
            }
        }
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> anyhow::Result<Reply> {
        match self.read_reply_inner() {
            Ok(reply) => Ok(reply),
            Err(ReadError::Closed) => bail!(
                "connection closed before a complete reply; transcript:\n{}",
                self.transcript
            ),
            Err(ReadError::Other(e)) => Err(e.context(format!("transcript:\n{}", self.transcript))),
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn command(&mut self, line: &str) -> anyhow::Result<Reply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Sends a command that must get a reply with `code`.
    pub fn expect(&mut self, line: &str, code: u16) -> anyhow::Result<Reply> {
        let reply = self.command(line)?;
        if reply.code != code {
            bail!(
                "{line:?} got {} {} (wanted {code}); transcript:\n{}",
                reply.code,
                reply.text(),
                self.transcript
            );
        }
        Ok(reply)
    }

    /// EHLO, MAIL FROM, RCPT TO for each recipient, DATA and the message
    /// (dot-stuffed, CRLF line ends). Returns the reply to the final dot —
    /// 250 when the server took responsibility for the message. Any earlier
    /// refusal is an error with the transcript.
    pub fn send_mail(
        &mut self,
        helo: &str,
        from: &str,
        to: &[&str],
        message: &str,
    ) -> anyhow::Result<Reply> {
        self.expect(&format!("EHLO {helo}"), 250)?;
        self.expect(&format!("MAIL FROM:<{from}>"), 250)?;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250)?;
        }
        self.expect("DATA", 354)?;
        let mut data = String::with_capacity(message.len() + 16);
        for line in message.lines() {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.writer
            .write_all(data.as_bytes())
            .context("sending message data")?;
        self.transcript
            .push_str(&format!("-> <{} bytes of message>\n-> .\n", data.len()));
        self.read_reply()
    }

    /// Sends QUIT and reads the 221 (a server that already closed is fine).
    pub fn quit(mut self) -> anyhow::Result<()> {
        if self.send_raw(b"QUIT\r\n").is_err() {
            return Ok(());
        }
        match self.read_reply_inner() {
            Ok(_) | Err(ReadError::Closed) => Ok(()),
            Err(ReadError::Other(e)) => Err(e),
        }
    }
}

/// Connects from `ns` to `addr`, sends `send_first` (e.g. a PROXY header,
/// or nothing) and reads the first reply.
///
/// `Ok(None)` means the server closed the connection without replying —
/// what postscreen does with a connection that lacks a valid PROXY header.
/// A timeout or connect failure is an error. This reads the whole
/// (multi-line) reply: behind postscreen a new client's banner completes
/// only after `postscreen_greet_wait`; `time_to_banner` stops at the first line.
pub fn read_banner(
    ns: &Netns,
    addr: SocketAddr,
    send_first: &[u8],
    timeout: Duration,
) -> anyhow::Result<Option<Reply>> {
    read_banner_in(&ns.name, None, addr, send_first, timeout)
}

/// `read_banner` by namespace name, optionally from source address `local`.
pub(crate) fn read_banner_in(
    name: &str,
    local: Option<IpAddr>,
    addr: SocketAddr,
    send_first: &[u8],
    timeout: Duration,
) -> anyhow::Result<Option<Reply>> {
    let mut client = SmtpClient::new(connect_in(name, local, addr, timeout)?, timeout)?;
    if !send_first.is_empty() {
        client.send_raw(send_first)?;
    }
    match client.read_reply_inner() {
        Ok(reply) => {
            let _ = client.quit();
            Ok(Some(reply))
        }
        Err(ReadError::Closed) => Ok(None),
        Err(ReadError::Other(e)) => Err(e.context(format!("transcript:\n{}", client.transcript))),
    }
}

/// Time from the start of the TCP connect to the end of the first line of
/// the greeting (postscreen's `220-` teaser counts), measured inside `ns`
/// on the connecting thread; `send_first` (e.g. a PROXY header) is sent
/// right after connecting. For latency benchmarks, straight vs relayed.
pub fn time_to_banner(
    ns: &Netns,
    local: Option<IpAddr>,
    addr: SocketAddr,
    send_first: &[u8],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    in_netns(ns, || -> anyhow::Result<Duration> {
        let start = std::time::Instant::now();
        let mut stream = match local {
            None => TcpStream::connect_timeout(&addr, timeout)?,
            Some(local) => tcp_connect_bound(local, addr, timeout)?,
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        if !send_first.is_empty() {
            stream.write_all(send_first)?;
        }
        let mut line = Vec::with_capacity(128);
        let mut byte = [0u8; 256];
        loop {
            let n = io::Read::read(&mut stream, &mut byte)?;
            if n == 0 {
                bail!("{addr} closed before a greeting line");
            }
            line.extend_from_slice(&byte[..n]);
            if line.contains(&b'\n') {
                let elapsed = start.elapsed();
                // Just hang up: a QUIT sent before postscreen's final 220
                // would count as pregreeting (a spam-bot sign).
                if !line.starts_with(b"220") {
                    bail!(
                        "greeting from {addr}: {}",
                        String::from_utf8_lossy(&line).trim()
                    );
                }
                return Ok(elapsed);
            }
        }
    })?
    .with_context(|| format!("time to banner from namespace {} to {addr}", ns.name))
}

/// A minimal RFC 5322 message with a Message-ID the test can look for.
/// `message_id` is without angle brackets.
pub fn compose(from: &str, to: &str, subject: &str, message_id: &str, body: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n{body}\r\n"
    )
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Whether the server answered 250 to the end of DATA.
    pub accepted: bool,
    /// The session, both directions.
    pub transcript: String,
}

/// One whole SMTP session from `ns` to `addr`: optional PROXY header,
/// banner, EHLO, envelope, the message, QUIT.
pub fn deliver(
    ns: &Netns,
    addr: SocketAddr,
    proxy_header: Option<&[u8]>,
    from: &str,
    to: &[&str],
    message: &str,
    timeout: Duration,
) -> anyhow::Result<Delivery> {
    let mut client = SmtpClient::connect(ns, addr, proxy_header, timeout)?;
    let reply = client.send_mail("client.example.org", from, to, message)?;
    let accepted = reply.code == 250;
    let transcript = client.transcript().to_owned();
    client.quit()?;
    Ok(Delivery {
        accepted,
        transcript,
    })
}

/// PROXY header options for `swaks` (it writes the header itself).
#[derive(Debug, Clone)]
pub struct SwaksProxy {
    /// 1 or 2.
    pub version: u8,
    /// The client address the header claims.
    pub source: SocketAddr,
    /// The server address the header claims.
    pub dest: SocketAddr,
}

/// One `swaks` run: a real, independent SMTP client.
#[derive(Debug, Clone)]
pub struct Swaks {
    /// Server address.
    pub server: SocketAddr,
    /// Envelope sender.
    pub from: String,
    /// Envelope recipient.
    pub to: String,
    /// Message-ID header value, without angle brackets.
    pub message_id: String,
    /// Body text.
    pub body: String,
    /// Send a PROXY header first.
    pub proxy: Option<SwaksProxy>,
    /// Per-step timeout.
    pub timeout: Duration,
}

impl Swaks {
    /// A run to `server` with defaults for the rest (from
    /// `sender@example.org`, a 10 s timeout, no PROXY header).
    pub fn new(server: SocketAddr, to: &str, message_id: &str) -> Self {
        Self {
            server,
            from: "sender@example.org".to_owned(),
            to: to.to_owned(),
            message_id: message_id.to_owned(),
            body: "Sent by the CERES lab.".to_owned(),
            proxy: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Runs it from inside `ns`. `accepted` is true when the reply to the
    /// end of DATA was 250.
    pub fn run(&self, ns: &Netns) -> anyhow::Result<Delivery> {
        let mut cmd = ns.command("swaks");
        cmd.args(["--server", &self.server.ip().to_string()])
            .args(["--port", &self.server.port().to_string()])
            .args(["--from", &self.from, "--to", &self.to])
            .args(["--helo", "client.example.org"])
            .args(["--header", &format!("Message-Id: <{}>", self.message_id)])
            .args(["--body", &self.body])
            .args(["--timeout", &format!("{}s", self.timeout.as_secs().max(1))]);
        if self.server.is_ipv6() {
            cmd.arg("-6");
        }
        if let Some(p) = &self.proxy {
            let (src, dst) = same_family(p.source, p.dest);
            let family = match (p.version, src.is_ipv4()) {
                (1, true) => "TCP4",
                (1, false) => "TCP6",
                (_, true) => "AF_INET",
                (_, false) => "AF_INET6",
            };
            cmd.args(["--proxy-version", &p.version.to_string()])
                .args(["--proxy-family", family])
                .args(["--proxy-source", &src.ip().to_string()])
                .args(["--proxy-source-port", &src.port().to_string()])
                .args(["--proxy-dest", &dst.ip().to_string()])
                .args(["--proxy-dest-port", &dst.port().to_string()]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        let transcript = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Delivery {
            accepted: swaks_accepted(&transcript),
            transcript,
        })
    }
}

/// Whether a swaks transcript shows 250 as the reply to the lone dot that
/// ends DATA.
fn swaks_accepted(transcript: &str) -> bool {
    let mut after_dot = false;
    for line in transcript.lines() {
        let line = line.trim_start();
        if line == "-> ." {
            after_dot = true;
        } else if after_dot && line.starts_with("<") {
            return line
                .trim_start_matches(['<', '-', '*', '~', ' '])
                .starts_with("250");
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn proxy_v1_lines() {
        let src: SocketAddr = "192.0.2.10:40000".parse().expect("addr");
        let dst: SocketAddr = "198.51.100.10:25".parse().expect("addr");
        assert_eq!(
            proxy_v1(src, dst),
            b"PROXY TCP4 192.0.2.10 198.51.100.10 40000 25\r\n"
        );
        let src6: SocketAddr = "[2001:db8::10]:1".parse().expect("addr");
        assert_eq!(
            proxy_v1(src6, dst),
            b"PROXY TCP6 2001:db8::10 ::ffff:198.51.100.10 1 25\r\n"
        );
    }

    #[test]
    fn proxy_v2_layout() {
        let src: SocketAddr = "192.0.2.10:258".parse().expect("addr");
        let dst: SocketAddr = "198.51.100.10:25".parse().expect("addr");
        let h = proxy_v2(src, dst);
        assert_eq!(&h[..12], &PROXY_V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 10]);
        assert_eq!(&h[20..24], &[198, 51, 100, 10]);
        assert_eq!(&h[24..28], &[1, 2, 0, 25]);
        assert_eq!(h.len(), 28);

        let src6: SocketAddr = "[2001:db8::10]:1".parse().expect("addr");
        let dst6: SocketAddr = "[2001:db8::20]:25".parse().expect("addr");
        let h = proxy_v2(src6, dst6);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            &h[16..32],
            &"2001:db8::10".parse::<Ipv6Addr>().expect("ip").octets()
        );
        assert_eq!(&h[48..52], &[0, 1, 0, 25]);
    }

    #[test]
    fn swaks_transcript_verdict() {
        let ok = " -> DATA\n<-  354 End data\n -> Subject: x\n -> .\n<-  250 2.0.0 Ok: queued as 1\n -> QUIT\n";
        assert!(swaks_accepted(ok));
        let refused = " -> .\n<** 554 5.7.1 no\n";
        assert!(!swaks_accepted(refused));
        let early = "<** 421 4.4.2 go away\n";
        assert!(!swaks_accepted(early));
    }
}
