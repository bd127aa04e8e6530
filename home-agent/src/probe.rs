//! Probes of the home mail server, as the home agent sees it: per forwarded
//! port, is something listening, what does it say first, and does it seem to
//! wait for a PROXY header — so `cerectl status` and `doctor` can show a
//! PROXY mismatch between the relay and the server before mail bounces.
//!
//! How "expects PROXY" is told apart, by protocol:
//! - Server-first ports (SMTP, submission, IMAP, POP3, ManageSieve): a server
//!   not expecting PROXY greets at once; one expecting it (postscreen with
//!   `postscreen_upstream_proxy_protocol`, Dovecot `haproxy = yes`) waits in
//!   silence for the header.
//! - Client-first ports (implicit TLS: 465, 993, 995, 443; HTTP: 80): silence
//!   means nothing, so the probe speaks first (a TLS ClientHello, an HTTP
//!   HEAD). A server answering it takes no PROXY header; one that closes on
//!   it without a word was waiting for a header and got garbage.
//!
//! Each probe holds its connection for at most [`BANNER_WAIT`] and then
//! closes: postscreen keeps a silent client until its own PROXY timeout, and
//! the probe must not hold a slot that long. It is one short connection per
//! port from the agent's host, so the mail server logs it (from 127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_proto::MailProbe;
use ceres_relay::{ProxyMode, RelaySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a TCP connect may take: the mail server is local or on the LAN.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the first line (or an answer to our first bytes).
pub const BANNER_WAIT: Duration = Duration::from_secs(2);
/// Banners are cut to this many characters in reports.
const MAX_BANNER: usize = 200;

/// How a port's protocol starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// The server speaks first (SMTP 220, IMAP * OK, POP3 +OK, Sieve).
    ServerFirst,
    /// TLS from the first byte: the client sends a ClientHello.
    ImplicitTls,
    /// HTTP: the client sends a request.
    Http,
}

/// By the well-known port (public first: the home port may be remapped).
fn opening(spec: &RelaySpec) -> Opening {
    let by_port = |p: u16| match p {
        465 | 993 | 995 | 443 | 8443 => Some(Opening::ImplicitTls),
        80 | 8080 => Some(Opening::Http),
        25 | 587 | 143 | 110 | 4190 | 2525 => Some(Opening::ServerFirst),
        _ => None,
    };
    by_port(spec.public_port)
        .or_else(|| by_port(spec.home_port))
        .unwrap_or(Opening::ServerFirst)
}

/// Probes the mail server on each relay's home port, all at once; one
/// [`MailProbe`] per relay, in the relays' order (`port` is the home port).
pub async fn probe(mail_server: IpAddr, ports: &[RelaySpec]) -> Vec<MailProbe> {
    probe_with(mail_server, ports, CONNECT_TIMEOUT, BANNER_WAIT).await
}

/// [`probe`] with explicit waits (tests use short ones).
pub async fn probe_with(
    mail_server: IpAddr,
    ports: &[RelaySpec],
    connect_timeout: Duration,
    wait: Duration,
) -> Vec<MailProbe> {
    // All ports at once: a JoinSet owns the tasks and aborts them if the
    // caller's future is dropped (e.g. the session ends mid-probe). Each is
    // bounded by the two waits, so the whole costs the slowest port.
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in ports.iter().copied().enumerate() {
        let addr = SocketAddr::new(mail_server, spec.home_port);
        set.spawn(async move { (i, probe_port(addr, spec, connect_timeout, wait).await) });
    }
    let mut out: Vec<(usize, MailProbe)> = Vec::with_capacity(ports.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "a mail-server probe task failed"),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, p)| p).collect()
}

async fn probe_port(
    addr: SocketAddr,
    spec: RelaySpec,
    connect_timeout: Duration,
    wait: Duration,
) -> MailProbe {
    let mut p = MailProbe {
        port: u32::from(spec.home_port),
        ..Default::default()
    };
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            p.error = format!(
                "no answer from {addr} within {} s",
                connect_timeout.as_secs_f32()
            );
            return p;
        }
        Ok(Err(e)) => {
            p.error = format!("{addr}: {e}");
            return p;
        }
        Ok(Ok(s)) => s,
    };
    p.reachable = true;
    let opening = opening(&spec);
    let hello: &[u8] = match opening {
        Opening::ServerFirst => &[],
        Opening::ImplicitTls => &CLIENT_HELLO,
        Opening::Http => b"HEAD / HTTP/1.0\r\n\r\n",
    };
    if !hello.is_empty() {
        if let Err(e) = stream.write_all(hello).await {
            p.error = format!("closed at once: {e}");
            p.expects_proxy = true;
            return finish(p, spec);
        }
    }
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let outcome = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break Read::Silent,
            Ok(Ok(0)) => break Read::Closed,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if opening != Opening::ServerFirst || got.contains(&b'\n') || got.len() >= 512 {
                    break Read::Data;
                }
            }
            Ok(Err(_)) if got.is_empty() => break Read::Closed,
            Ok(Err(_)) => break Read::Data,
        }
    };
    match (opening, outcome) {
        // A TLS server answers a client hello in TLS. An SMTP reply in plain
        // text instead (Postfix's `421 ... Server local error`) means the
        // hello was read as a bad PROXY header.
        (Opening::ImplicitTls, Read::Data)
            if got.len() >= 4 && got[..3].iter().all(u8::is_ascii_digit) =>
        {
            p.banner = describe(opening, &got);
            p.expects_proxy = true;
            p.error = format!(
                "answered a TLS client hello in plain text ({:?}): the server seems to expect a PROXY header",
                String::from_utf8_lossy(&got[..got.len().min(40)]).trim_end()
            );
        }
        (_, Read::Data) => {
            p.banner = describe(opening, &got);
            if opening == Opening::ServerFirst && got.starts_with(b"220") {
                // Polite: say goodbye so the server logs no lost connection.
                let _ = stream.write_all(b"QUIT\r\n").await;
            }
        }
        (Opening::ServerFirst, Read::Silent) => {
            p.expects_proxy = true;
            p.error = format!(
                "no banner within {} s: the server seems to wait for a PROXY header",
                wait.as_secs_f32()
            );
        }
        (Opening::ServerFirst, Read::Closed) => {
            p.error = "closed the connection without a banner".into();
        }
        (_, Read::Closed) => {
            p.expects_proxy = true;
            p.error = "closed the connection on a plain client hello: the server seems to expect a PROXY header".into();
        }
        (_, Read::Silent) => {
            p.error = format!(
                "no answer to a client hello within {} s: cannot tell whether it expects PROXY",
                wait.as_secs_f32()
            );
        }
    }
    let _ = stream.shutdown().await;
    finish(p, spec)
}

/// What the first read brought.
enum Read {
    Data,
    Silent,
    Closed,
}

/// Adds the mismatch, if any, to the error text.
fn finish(mut p: MailProbe, spec: RelaySpec) -> MailProbe {
    let sends = spec.proxy != ProxyMode::None;
    if p.reachable && sends && !p.expects_proxy && !p.banner.is_empty() {
        p.error = format!(
            "the relay sends a PROXY header, but the server does not expect one (it answered {:?})",
            p.banner
        );
    } else if p.reachable && !sends && p.expects_proxy {
        p.error = format!(
            "the server seems to expect a PROXY header, but the relay sends none ({})",
            p.error
        );
    }
    p
}

/// The first line of text, or a word on what binary answer came back.
fn describe(opening: Opening, got: &[u8]) -> String {
    if opening == Opening::ImplicitTls {
        return match got.first() {
            Some(0x16) => "TLS handshake".into(),
            Some(0x15) => "TLS alert".into(),
            _ => "non-TLS answer".into(),
        };
    }
    let text = String::from_utf8_lossy(got);
    let line = text.lines().next().unwrap_or("").trim();
    line.chars()
        .filter(|c| !c.is_control())
        .take(MAX_BANNER)
        .collect()
}

/// A TLS 1.2 ClientHello (TLS 1.3 capable servers answer it too): enough for
/// any TLS server to answer with a ServerHello or an alert.
pub(crate) const CLIENT_HELLO: [u8; 82] = [
    // Record: handshake, TLS 1.0 record version, length 77.
    0x16, 0x03, 0x01, 0x00, 0x4d, // Handshake: ClientHello, length 73.
    0x01, 0x00, 0x00, 0x49, // client_version TLS 1.2, 32 bytes of random.
    0x03, 0x03, 0x43, 0x45, 0x52, 0x45, 0x53, 0x2d, 0x70, 0x72, 0x6f, 0x62, 0x65, 0x2d, 0x68, 0x65,
    0x6c, 0x6c, 0x6f, 0x2d, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x61, 0x62,
    0x63, 0x64, // No session id.
    0x00,
    // Cipher suites (6 bytes): ECDHE-RSA-AES128-GCM, ECDHE-ECDSA-AES128-GCM, RSA-AES128-GCM.
    0x00, 0x06, 0xc0, 0x2f, 0xc0, 0x2b, 0x00, 0x9c, // Compression: null.
    0x01, 0x00,
    // Extensions (26 bytes): supported_groups x25519+P-256, ec_point_formats,
    // signature_algorithms rsa_pkcs1_sha256 + ecdsa_secp256r1_sha256.
    0x00, 0x1a, 0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x0b, 0x00, 0x02,
    0x01, 0x00, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x01, 0x04, 0x03,
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_millis(400);

    fn spec(port: u16, proxy: ProxyMode) -> RelaySpec {
        RelaySpec::new(port, proxy)
    }

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

    async fn one(port: u16, public: u16, proxy: ProxyMode) -> MailProbe {
        let s = RelaySpec {
            public_port: public,
            home_port: port,
            proxy,
            smtp_banner: false,
        };
        probe_with(
            "127.0.0.1".parse().unwrap(),
            &[s],
            Duration::from_secs(2),
            WAIT,
        )
        .await
        .remove(0)
    }

    #[test]
    fn client_hello_lengths_add_up() {
        assert_eq!(usize::from(CLIENT_HELLO[4]) + 5, CLIENT_HELLO.len());
        assert_eq!(usize::from(CLIENT_HELLO[8]) + 9, CLIENT_HELLO.len());
        let ext_len = usize::from(CLIENT_HELLO[55]);
        assert_eq!(56 + ext_len, CLIENT_HELLO.len());
        assert_eq!(opening(&spec(993, ProxyMode::V2)), Opening::ImplicitTls);
        assert_eq!(opening(&spec(80, ProxyMode::None)), Opening::Http);
        assert_eq!(opening(&spec(25, ProxyMode::V2)), Opening::ServerFirst);
    }

    #[tokio::test]
    async fn a_greeting_server_is_reachable_and_a_proxy_relay_is_a_mismatch() {
        let port = server(|mut s| async move {
            let _ = s.write_all(b"220 mail.example.com ESMTP\r\n").await;
            let mut b = [0u8; 64];
            let _ = s.read(&mut b).await;
        })
        .await;
        let p = one(port, 25, ProxyMode::None).await;
        assert!(p.reachable && !p.expects_proxy, "{p:?}");
        assert_eq!(p.banner, "220 mail.example.com ESMTP");
        assert_eq!(p.port, u32::from(port));
        assert!(p.error.is_empty(), "{p:?}");
        let p = one(port, 25, ProxyMode::V2).await;
        assert!(!p.expects_proxy);
        assert!(p.error.contains("does not expect"), "{p:?}");
    }

    #[tokio::test]
    async fn a_silent_server_expects_proxy_and_the_probe_lets_go_after_the_wait() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let port = server(move |mut s| {
            let tx = tx.clone();
            async move {
                // Like postscreen waiting for the header: say nothing, and
                // report when the client hangs up.
                let mut b = [0u8; 64];
                let n = s.read(&mut b).await.unwrap_or(0);
                let _ = tx.send(n);
            }
        })
        .await;
        let p = one(port, 25, ProxyMode::V2).await;
        assert!(p.reachable && p.expects_proxy, "{p:?}");
        assert!(p.banner.is_empty() && p.error.contains("PROXY"), "{p:?}");
        // The probe closed its side: the server saw EOF, nothing sent.
        assert_eq!(rx.recv().await, Some(0));
        let p = one(port, 25, ProxyMode::None).await;
        assert!(p.error.contains("relay sends none"), "{p:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_not_reachable() {
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = reserved.local_addr().unwrap().port();
        let p = one(port, 25, ProxyMode::V2).await;
        assert!(!p.reachable && !p.expects_proxy, "{p:?}");
        assert!(p.error.contains("refused"), "{p:?}");
    }

    #[tokio::test]
    async fn implicit_tls_ports_are_told_apart_by_their_answer_to_a_hello() {
        // A TLS server answers the hello (here: an alert record).
        let tls = server(|mut s| async move {
            let mut b = [0u8; 128];
            if s.read(&mut b).await.unwrap_or(0) > 0 && b[0] == 0x16 {
                let _ = s
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
                    .await;
            }
        })
        .await;
        let p = one(tls, 993, ProxyMode::None).await;
        assert!(
            p.reachable && !p.expects_proxy && p.error.is_empty(),
            "{p:?}"
        );
        assert_eq!(p.banner, "TLS alert");
        // One expecting PROXY drops the connection on the hello.
        let strict = server(|mut s| async move {
            let mut b = [0u8; 128];
            let _ = s.read(&mut b).await;
        })
        .await;
        let p = one(strict, 993, ProxyMode::V2).await;
        assert!(
            p.reachable && p.expects_proxy && p.error.contains("PROXY"),
            "{p:?}"
        );
        // Postfix's smtps with PROXY answers the hello, read as a bad
        // header, with a plain-text refusal.
        let postfix = server(|mut s| async move {
            let mut b = [0u8; 128];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(b"421 4.3.0 mail.example.com Server local error\r\n")
                .await;
        })
        .await;
        let p = one(postfix, 465, ProxyMode::V2).await;
        assert!(
            p.reachable && p.expects_proxy && p.error.contains("plain text"),
            "{p:?}"
        );
        // HTTP: a plain server answers the request.
        let http = server(|mut s| async move {
            let mut b = [0u8; 128];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        })
        .await;
        let p = one(http, 80, ProxyMode::None).await;
        assert_eq!(p.banner, "HTTP/1.1 200 OK");
        assert!(!p.expects_proxy);
    }

    #[tokio::test]
    async fn every_port_gets_a_probe_in_order() {
        let silent = server(|mut s| async move {
            let mut b = [0u8; 8];
            let _ = s.read(&mut b).await;
        })
        .await;
        let specs: Vec<RelaySpec> = (0..4)
            .map(|_| RelaySpec {
                public_port: 25,
                home_port: silent,
                proxy: ProxyMode::V2,
                smtp_banner: true,
            })
            .collect();
        let probes = probe_with(
            "127.0.0.1".parse().unwrap(),
            &specs,
            Duration::from_secs(2),
            WAIT,
        )
        .await;
        assert_eq!(probes.len(), 4);
        assert!(probes.iter().all(|p| p.expects_proxy));
    }
}
