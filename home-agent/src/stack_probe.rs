//! The stack probe (`CERES_MAIL_STACK`): each PROXY listener of the stack's
//! table ([`ceres_relay::stack`]) is asked two things — does it wait for a
//! PROXY header (a plain connection gets no answer in its protocol), and
//! does it answer after one. The header is PROXY v2 `LOCAL`, the command a
//! proxy uses for its own health checks: it claims no client address, so
//! the mail server logs the probe as what it is, a connection from the
//! address the agent reaches it from.
//!
//! Per listener:
//! 1. connect and say nothing for [`BANNER_WAIT`]: a PROXY listener waits
//!    in silence for the header; a greeting means it takes none; a close at
//!    once means nothing serves the port behind a forwarder (Docker's
//!    published port to a missing container listener) or the listener takes
//!    headers from other addresses only (Dovecot outside
//!    `haproxy_trusted_networks` drops the connection unread).
//! 2. server first (SMTP, IMAP, POP3, ManageSieve): the header on the same
//!    connection, then the greeting must come. Client first (implicit TLS,
//!    HTTP): a ClientHello (or `HEAD`) alone must get no answer in the
//!    protocol, and on a new connection, with the header before it, must.
//!
//! [`BANNER_WAIT`] (2 s) stays below the servers' own waits for a header
//! (Dovecot's `haproxy_timeout` 3 s, Postfix's 5 s), so a silent probe is
//! never timed out by the server. Connections are short, one or two per
//! listener.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_control::stack_report::ListenerResult;
use ceres_relay::stack::advice::ListenerState;
use ceres_relay::stack::{MailStack, Opening, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::probe::{BANNER_WAIT, CLIENT_HELLO, CONNECT_TIMEOUT};

/// Evidence is cut to this many characters.
const MAX_DETAIL: usize = 200;

/// Probes every PROXY listener of `stack` on `mail_server`, all at once;
/// results in the table's order.
pub async fn probe(mail_server: IpAddr, stack: MailStack) -> Vec<ListenerResult> {
    probe_with(mail_server, stack, CONNECT_TIMEOUT, BANNER_WAIT).await
}

/// [`probe`] with explicit waits (tests use short ones).
pub async fn probe_with(
    mail_server: IpAddr,
    stack: MailStack,
    connect_timeout: Duration,
    wait: Duration,
) -> Vec<ListenerResult> {
    let mut set = tokio::task::JoinSet::new();
    for (i, l) in stack.facts().listeners().enumerate() {
        let addr = SocketAddr::new(mail_server, l.port);
        set.spawn(async move {
            let (state, detail) = probe_listener(addr, l.protocol, connect_timeout, wait).await;
            (
                i,
                ListenerResult {
                    listener: l,
                    state,
                    detail,
                },
            )
        });
    }
    let mut out = Vec::with_capacity(set.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "a stack probe task failed"),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// What one read brought.
enum Read {
    Data(Vec<u8>),
    Silent,
    Closed,
}

/// Reads until a line (server-first protocols) or any bytes arrive, the
/// peer closes, or `wait` passes.
async fn read_first(stream: &mut TcpStream, wait: Duration, whole_line: bool) -> Read {
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) if got.is_empty() => return Read::Silent,
            Err(_) => return Read::Data(got),
            Ok(Ok(0)) | Ok(Err(_)) if got.is_empty() => return Read::Closed,
            Ok(Ok(0)) | Ok(Err(_)) => return Read::Data(got),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if !whole_line || got.contains(&b'\n') || got.len() >= buf.len() {
                    return Read::Data(got);
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(format!(
            "no answer from {addr} within {} s",
            timeout.as_secs_f32()
        )),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Ok(Ok(s)) => Ok(s),
    }
}

fn first_line(got: &[u8]) -> String {
    let text = String::from_utf8_lossy(got);
    text.lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL)
        .collect()
}

fn is_tls_record(got: &[u8]) -> bool {
    matches!(got.first(), Some(0x16 | 0x15))
}

/// What the client sends after the header (or alone, to see whether the
/// listener answers without one).
fn client_opening(opening: Opening) -> &'static [u8] {
    match opening {
        Opening::ServerFirst => &[],
        Opening::ImplicitTls => &CLIENT_HELLO,
        Opening::Http => b"HEAD / HTTP/1.0\r\n\r\n",
    }
}

/// Whether `got` is the listener's protocol answering.
fn answers_in(protocol: Protocol, got: &[u8]) -> bool {
    match protocol.opening() {
        Opening::ImplicitTls => is_tls_record(got),
        _ => protocol.greets_with(&first_line(got)),
    }
}

fn describe(protocol: Protocol, got: &[u8]) -> String {
    match (protocol.opening(), got.first()) {
        (Opening::ImplicitTls, Some(0x16)) => "TLS handshake".into(),
        (Opening::ImplicitTls, Some(0x15)) => "TLS alert".into(),
        _ => first_line(got),
    }
}

async fn probe_listener(
    addr: SocketAddr,
    protocol: Protocol,
    connect_timeout: Duration,
    wait: Duration,
) -> (ListenerState, String) {
    let opening = protocol.opening();
    let server_first = opening == Opening::ServerFirst;
    // 1. Connect and say nothing: a PROXY listener waits for the header.
    let mut first = match connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return (ListenerState::NotListening, e),
    };
    match read_first(&mut first, wait, server_first).await {
        Read::Silent => {}
        Read::Closed => {
            return (
                ListenerState::ClosesAtOnce,
                "closed the connection before anything was sent".into(),
            );
        }
        Read::Data(got) => {
            if server_first && first_line(&got).starts_with("220 ") {
                let _ = first.write_all(b"QUIT\r\n").await;
            }
            return (ListenerState::NoProxy, describe(protocol, &got));
        }
    }
    let hello = client_opening(opening);
    let mut stream = if server_first {
        // 2. Server first: the header on the same, silent connection.
        first
    } else {
        // 2. Client first: its opening without a header must get no answer
        // in the protocol (a TLS server answers any ClientHello)...
        if first.write_all(hello).await.is_ok() {
            if let Read::Data(got) = read_first(&mut first, wait, false).await {
                if answers_in(protocol, &got) {
                    return (ListenerState::NoProxy, describe(protocol, &got));
                }
            }
        }
        let _ = first.shutdown().await;
        // ...and one with the header must, on a new connection.
        match connect(addr, connect_timeout).await {
            Ok(s) => s,
            Err(e) => return (ListenerState::NotListening, e),
        }
    };
    let mut request = ceres_relay::proxy::encode_v2_local();
    request.extend_from_slice(hello);
    if let Err(e) = stream.write_all(&request).await {
        return (ListenerState::RefusesHeader, format!("closed at once: {e}"));
    }
    let result = match read_first(&mut stream, wait, server_first).await {
        Read::Data(got) if answers_in(protocol, &got) => {
            // Polite to a final greeting; never to postscreen's `220-`
            // teaser, where an early command counts against the client.
            if server_first && first_line(&got).starts_with("220 ") {
                let _ = stream.write_all(b"QUIT\r\n").await;
            }
            (ListenerState::Ready, describe(protocol, &got))
        }
        // Postfix refuses a header it cannot use with a plain 421.
        Read::Data(got) if first_line(&got).starts_with("421") => {
            (ListenerState::RefusesHeader, first_line(&got))
        }
        Read::Data(got) => (ListenerState::UnexpectedAnswer, describe(protocol, &got)),
        Read::Closed => (
            ListenerState::RefusesHeader,
            "closed the connection after the header".into(),
        ),
        Read::Silent => (
            ListenerState::SilentAfterHeader,
            format!("no answer within {} s of the header", wait.as_secs_f32()),
        ),
    };
    let _ = stream.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::net::TcpListener;

    use super::*;

    const WAIT: Duration = Duration::from_millis(300);

    /// A listener on 127.0.0.1 whose accepted connections get `handler`.
    async fn server<F, Fut>(handler: F) -> u16
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(handler(s));
            }
        });
        port
    }

    /// Reads a whole PROXY header; false when the bytes are not one.
    async fn take_header(s: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut b = [0u8; 64];
        loop {
            match ceres_relay::proxy::parse(&buf) {
                Ok(Some((h, n))) => {
                    // The probe claims no client: a LOCAL header, exactly.
                    assert_eq!(h.source, None);
                    buf.drain(..n);
                    return true;
                }
                Ok(None) => {}
                Err(_) => return false,
            }
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        }
    }

    async fn one(port: u16, protocol: Protocol) -> (ListenerState, String) {
        probe_listener(
            SocketAddr::from(([127, 0, 0, 1], port)),
            protocol,
            Duration::from_secs(2),
            WAIT,
        )
        .await
    }

    #[tokio::test]
    async fn a_proxy_smtp_listener_is_ready_and_a_plain_one_is_not() {
        let proxy = server(|mut s| async move {
            if take_header(&mut s).await {
                let _ = s.write_all(b"220-mail.example.com ESMTP\r\n").await;
            }
        })
        .await;
        let (state, detail) = one(proxy, Protocol::Smtp).await;
        assert_eq!(state, ListenerState::Ready, "{detail}");
        assert_eq!(detail, "220-mail.example.com ESMTP");
        let plain = server(|mut s| async move {
            let _ = s.write_all(b"220 mail.example.com ESMTP\r\n").await;
            let mut b = [0u8; 16];
            let _ = s.read(&mut b).await;
        })
        .await;
        assert_eq!(one(plain, Protocol::Smtp).await.0, ListenerState::NoProxy);
    }

    #[tokio::test]
    async fn untrusted_silent_and_wrong_answers_are_told_apart() {
        // Dovecot from an address outside haproxy_trusted_networks, or a
        // published Docker port with no container listener: closes unread.
        let closes = server(|s| async move { drop(s) }).await;
        for protocol in [Protocol::Imap, Protocol::Imaps] {
            assert_eq!(one(closes, protocol).await.0, ListenerState::ClosesAtOnce);
        }
        // Reads the header, then drops the connection.
        let drops = server(|mut s| async move {
            take_header(&mut s).await;
        })
        .await;
        assert_eq!(
            one(drops, Protocol::Imap).await.0,
            ListenerState::RefusesHeader
        );
        let silent = server(|mut s| async move {
            let mut b = [0u8; 64];
            while s.read(&mut b).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        assert_eq!(
            one(silent, Protocol::Imap).await.0,
            ListenerState::SilentAfterHeader
        );
        let pop3 = server(|mut s| async move {
            if take_header(&mut s).await {
                let _ = s.write_all(b"+OK Dovecot ready.\r\n").await;
            }
        })
        .await;
        let (state, detail) = one(pop3, Protocol::Imap).await;
        assert_eq!(state, ListenerState::UnexpectedAnswer);
        assert_eq!(detail, "+OK Dovecot ready.");
        assert_eq!(one(pop3, Protocol::Pop3).await.0, ListenerState::Ready);
        // Postfix refusing a header it cannot use.
        let refuses = server(|mut s| async move {
            let mut b = [0u8; 64];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(b"421 4.3.0 mail.example.com Server local error\r\n")
                .await;
        })
        .await;
        assert_eq!(
            one(refuses, Protocol::Submission).await.0,
            ListenerState::RefusesHeader
        );
    }

    #[tokio::test]
    async fn implicit_tls_needs_a_header_before_the_hello() {
        // Answers a hello only after a header.
        let proxy_tls = server(|mut s| async move {
            if take_header(&mut s).await {
                let _ = s.write_all(&[0x16, 0x03, 0x03, 0x00, 0x00]).await;
            }
        })
        .await;
        let (state, detail) = one(proxy_tls, Protocol::Imaps).await;
        assert_eq!(state, ListenerState::Ready, "{detail}");
        assert_eq!(detail, "TLS handshake");
        // Answers any hello: no PROXY there.
        let plain_tls = server(|mut s| async move {
            let mut b = [0u8; 128];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(&[0x16, 0x03, 0x03, 0x00, 0x00]).await;
        })
        .await;
        assert_eq!(
            one(plain_tls, Protocol::Submissions).await.0,
            ListenerState::NoProxy
        );
    }

    #[tokio::test]
    async fn nothing_listening_and_every_listener_in_order() {
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = reserved.local_addr().unwrap().port();
        let (state, detail) = one(port, Protocol::Smtp).await;
        assert_eq!(state, ListenerState::NotListening);
        assert!(detail.contains("refused"), "{detail}");
        // A whole stack on an address where nothing listens (127.0.0.2 is
        // loopback too): one result per listener, in table order.
        let r = probe_with(
            "127.0.0.2".parse().unwrap(),
            MailStack::DockerMailserver,
            Duration::from_secs(1),
            WAIT,
        )
        .await;
        let ports: Vec<u16> = r.iter().map(|x| x.listener.port).collect();
        let want: Vec<u16> = MailStack::DockerMailserver
            .facts()
            .listeners()
            .map(|l| l.port)
            .collect();
        assert_eq!(ports, want);
        assert!(r.iter().all(|x| x.state == ListenerState::NotListening));
    }
}
