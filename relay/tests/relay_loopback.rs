//! Relay and forwarder behaviour over loopback, no root needed: PROXY headers with the
//! real client address, the home-down answer, half-close, limits, trust, idle timeout.

mod common;

use ceres_sync::Unpoison;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_relay::proxy::{self, ProxyHeader};
use ceres_relay::{
    ForwardRoute, Forwarder, ForwarderConfig, HomeReach, Limits, Listener, ListenerConfig,
    ProxyMode, Refusal, RelaySpec, StatsHandle, parse_relays,
};
use ceres_testkit::{require_root, wait_until_async};
use common::{connect_from, unique_ip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Hang guard for reads; every expected event happens long before this.
const GUARD: Duration = Duration::from_secs(10);

/// A relay under test; cancels and joins the relay task on drop (also on panic).
struct Running {
    stats: StatsHandle,
    addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    home: watch::Sender<HomeReach>,
    /// Home up, with a forwarder on each relay's home port itself (the fake
    /// servers of these tests stand in for home's forwarders).
    home_reach: HomeReach,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn start_listener(config: ListenerConfig, up: bool) -> Running {
    let home_reach = HomeReach::up(config.relays.iter().map(|r| (r.home_port, r.home_port)));
    let listener = Listener::bind(config).expect("bind relay");
    let (home, rx) = watch::channel(if up {
        home_reach.clone()
    } else {
        HomeReach::default()
    });
    let shutdown = CancellationToken::new();
    let stats = listener.stats();
    let addrs = listener.local_addrs();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        listener.run(rx, token).await.expect("relay run");
    });
    Running {
        stats,
        addrs,
        shutdown,
        task: Some(task),
        home,
        home_reach,
    }
}

/// What a fake server saw on one connection.
#[derive(Debug)]
struct Seen {
    header: Option<ProxyHeader>,
    /// Bytes after the header, up to the client's EOF.
    rest: Vec<u8>,
}

/// A fake mail server: sends `banner`, optionally parses a PROXY header, reads until
/// EOF, replies with how many bytes it got after the header, closes, and reports.
async fn fake_server(
    addr: SocketAddr,
    banner: &'static [u8],
    expect_proxy: bool,
) -> mpsc::UnboundedReceiver<Seen> {
    let listener = TcpListener::bind(addr).await.expect("bind fake server");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                let (header, rest) = if expect_proxy {
                    let (h, n) = proxy::parse(&buf)
                        .expect("valid header")
                        .expect("whole header");
                    (Some(h), buf[n..].to_vec())
                } else {
                    (None, buf)
                };
                let _ = s
                    .write_all(format!("got {}\r\n", rest.len()).as_bytes())
                    .await;
                let _ = tx.send(Seen { header, rest });
            });
        }
    });
    rx
}

async fn read_exact_guarded(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(GUARD, s.read_exact(&mut buf))
        .await
        .expect("read timed out")
        .expect("read");
    buf
}

async fn read_to_end_guarded(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut buf))
        .await
        .expect("read timed out")?;
    Ok(buf)
}

fn spec(public_port: u16, home_port: u16, proxy: ProxyMode, smtp: bool) -> RelaySpec {
    RelaySpec {
        public_port,
        home_port,
        proxy,
        smtp_banner: smtp,
    }
}

#[tokio::test]
async fn proxy_v1_and_v2_carry_the_real_client_address() {
    let (public, home, client_ip) = (unique_ip(), unique_ip(), unique_ip());
    let mut seen_v2 = fake_server(SocketAddr::new(home, 2500), b"220 home ESMTP\r\n", true).await;
    let mut seen_v1 = fake_server(SocketAddr::new(home, 2501), b"220 home ESMTP\r\n", true).await;
    let relays = vec![
        spec(2525, 2500, ProxyMode::V2, true),
        spec(2526, 2501, ProxyMode::V1, true),
    ];
    let relay = start_listener(
        ListenerConfig::new(vec![public], home, relays, "mail.example.test"),
        true,
    );

    for (port, seen) in [(2525, &mut seen_v2), (2526, &mut seen_v1)] {
        let to = SocketAddr::new(public, port);
        let mut c = connect_from(client_ip, to).await.unwrap();
        let me = c.local_addr().unwrap();
        assert_eq!(read_exact_guarded(&mut c, 16).await, b"220 home ESMTP\r\n");
        c.write_all(b"QUIT\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(read_to_end_guarded(&mut c).await.unwrap(), b"got 6\r\n");
        let s = seen.recv().await.unwrap();
        let h = s.header.unwrap();
        assert_eq!(h.source, Some(me), "port {port}");
        assert_eq!(h.destination, Some(to));
        assert_eq!(h.version, if port == 2525 { 2 } else { 1 });
        assert_eq!(s.rest, b"QUIT\r\n");
    }
    wait_until_async("connections to finish", GUARD, || {
        Ok(relay.stats.snapshot().iter().all(|p| p.active == 0))
    })
    .await
    .unwrap();
    let snap = relay.stats.snapshot();
    assert_eq!(
        (snap[0].port, snap[0].target_port, snap[0].total),
        (2525, 2500, 1)
    );
    assert_eq!((snap[0].bytes_in, snap[0].bytes_out), (6, 16 + 7));
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json[1]["port"], 2526);
    assert_eq!(json[1]["refused"], 0);
    assert!(json[1]["last_error"].is_null());
}

#[tokio::test]
async fn ipv6_client_gets_tcp6_header() {
    let home = unique_ip();
    let mut seen = fake_server(SocketAddr::new(home, 2500), b"220 v6\r\n", true).await;
    let v6: IpAddr = "::1".parse().unwrap();
    // Port 0: ::1 is shared by all tests, so let the kernel pick.
    let relay = start_listener(
        ListenerConfig::new(
            vec![v6],
            home,
            vec![spec(0, 2500, ProxyMode::V1, false)],
            "mx",
        ),
        true,
    );
    let to = relay.addrs[0];
    let mut c = TcpStream::connect(to).await.unwrap();
    let me = c.local_addr().unwrap();
    assert_eq!(read_exact_guarded(&mut c, 8).await, b"220 v6\r\n");
    c.shutdown().await.unwrap();
    read_to_end_guarded(&mut c).await.unwrap();
    let s = seen.recv().await.unwrap();
    let h = s.header.unwrap();
    assert_eq!(h.source, Some(me));
    assert!(h.source.unwrap().is_ipv6() && h.destination.unwrap().is_ipv6());
}

#[tokio::test]
async fn ipv6_listener_leaves_the_ipv4_port_free() {
    // Without IPV6_V6ONLY, [::]:P would also hold every IPv4 address on P.
    let relay = Listener::bind(ListenerConfig::new(
        vec!["::".parse().unwrap()],
        unique_ip(),
        vec![spec(0, 25, ProxyMode::None, false)],
        "mx",
    ))
    .unwrap();
    let port = relay.local_addrs()[0].port();
    std::net::TcpListener::bind(SocketAddr::new(unique_ip(), port))
        .expect("v4 bind on the v6 port");
}

/// Reads the `421` line with a hang guard; the relay's connect timeout is set to a
/// minute, so receiving it at all shows the answer did not wait for a timeout.
async fn expect_421(to: SocketAddr, from: IpAddr) {
    let started = std::time::Instant::now();
    let mut c = connect_from(from, to).await.expect("connect to relay");
    let got = read_to_end_guarded(&mut c).await.expect("read 421");
    eprintln!("421 from {to} after {:?}", started.elapsed());
    assert_eq!(
        String::from_utf8_lossy(&got),
        "421 4.4.2 mail.example.test temporarily unavailable, try again later\r\n"
    );
}

async fn expect_close_without_data(to: SocketAddr, from: IpAddr) {
    let mut c = connect_from(from, to).await.expect("connect to relay");
    match read_to_end_guarded(&mut c).await {
        Ok(data) => assert!(data.is_empty(), "got {data:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test]
async fn target_down_smtp_ports_say_421_others_close() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    // Nothing listens at `home`: every connect is refused.
    let mut relays = vec![
        spec(2525, 25, ProxyMode::V2, true),
        spec(2993, 993, ProxyMode::V2, false),
    ];
    if require_root("target_down_smtp_ports_say_421_others_close (ports 25/587/993)") {
        // The real port numbers, with smtp_banner derived from them.
        relays.extend(parse_relays("25/proxy-v2,587/proxy-v2,993/proxy-v2").unwrap());
    }
    let mut config = ListenerConfig::new(vec![public], home, relays.clone(), "mail.example.test");
    config.connect_timeout = Duration::from_secs(60);
    let relay = start_listener(config, true);
    for r in &relays {
        let to = SocketAddr::new(public, r.public_port);
        if r.smtp_banner {
            expect_421(to, client).await;
        } else {
            expect_close_without_data(to, client).await;
        }
    }
    let snap = relay.stats.snapshot();
    for p in &snap {
        assert_eq!((p.unavailable, p.active), (1, 0), "port {}", p.port);
        let err = p.last_error.as_ref().expect("last error recorded");
        assert!(err.message.contains("connect to"), "{}", err.message);
        assert!(err.at_unix_secs > 0);
    }
}

#[tokio::test]
async fn home_marked_down_answers_without_connecting() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    let mut seen = fake_server(SocketAddr::new(home, 2500), b"220 home\r\n", false).await;
    let relays = vec![
        spec(2587, 2500, ProxyMode::None, true),
        spec(2993, 2500, ProxyMode::None, false),
    ];
    let relay = start_listener(
        ListenerConfig::new(vec![public], home, relays, "mail.example.test"),
        false,
    );
    expect_421(SocketAddr::new(public, 2587), client).await;
    expect_close_without_data(SocketAddr::new(public, 2993), client).await;
    // Home comes back: the very next connection is relayed to the real server.
    relay.home.send(relay.home_reach.clone()).unwrap();
    let mut c = connect_from(client, SocketAddr::new(public, 2587))
        .await
        .unwrap();
    assert_eq!(read_exact_guarded(&mut c, 10).await, b"220 home\r\n");
    c.shutdown().await.unwrap();
    read_to_end_guarded(&mut c).await.unwrap();
    // Exactly one connection ever reached the server: the one after home came back.
    assert_eq!(seen.recv().await.unwrap().rest, b"");
    assert!(seen.try_recv().is_err());
    let snap = relay.stats.snapshot();
    assert_eq!((snap[0].unavailable, snap[0].total), (1, 2));
    assert_eq!(snap[1].unavailable, 1);
}

#[tokio::test]
async fn half_close_in_both_directions() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    // Server that closes its side first (banner, then EOF) but keeps reading.
    let server = TcpListener::bind(SocketAddr::new(home, 2500))
        .await
        .unwrap();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        s.write_all(b"bye-first\r\n").await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        done_tx.send(buf).unwrap();
    });
    let mut seen = fake_server(SocketAddr::new(home, 2501), b"", false).await;
    let relays = vec![
        spec(2600, 2500, ProxyMode::None, false),
        spec(2601, 2501, ProxyMode::None, false),
    ];
    let relay = start_listener(ListenerConfig::new(vec![public], home, relays, "mx"), true);

    // Client shuts down writing first; the server's reply still comes back.
    let mut c = connect_from(client, SocketAddr::new(public, 2601))
        .await
        .unwrap();
    let payload = vec![b'x'; 300_000];
    c.write_all(&payload).await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(
        read_to_end_guarded(&mut c).await.unwrap(),
        b"got 300000\r\n"
    );
    assert_eq!(seen.recv().await.unwrap().rest, payload);

    // Server shuts down first; the client can still send and the server gets it all.
    let mut c = connect_from(client, SocketAddr::new(public, 2600))
        .await
        .unwrap();
    assert_eq!(read_to_end_guarded(&mut c).await.unwrap(), b"bye-first\r\n");
    c.write_all(b"late data after server EOF").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(done_rx.recv().await.unwrap(), b"late data after server EOF");
    wait_until_async("connections to finish", GUARD, || {
        Ok(relay.stats.snapshot().iter().all(|p| p.active == 0))
    })
    .await
    .unwrap();
    assert_eq!(relay.stats.snapshot()[1].bytes_in, 300_000);
}

#[tokio::test]
async fn limits_refuse_and_count() {
    let (public, home) = (unique_ip(), unique_ip());
    let (a, b, c) = (unique_ip(), unique_ip(), unique_ip());
    let _seen = fake_server(SocketAddr::new(home, 2500), b"220 hi\r\n", false).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![spec(2525, 2500, ProxyMode::None, true)],
        "mail.example.test",
    );
    // Only the port and source caps (the loopback sources share a /24).
    config.limits = Limits {
        per_source: 2,
        ..Limits::port_only(3)
    };
    let relay = start_listener(config, true);
    let to = SocketAddr::new(public, 2525);
    let mut held = Vec::new();
    for from in [a, a, b] {
        let mut s = connect_from(from, to).await.unwrap();
        assert_eq!(read_exact_guarded(&mut s, 8).await, b"220 hi\r\n");
        held.push(s);
    }
    // The port is full (checked first): a third from `a`, and `c`, are refused.
    for (from, why) in [(a, "too many connections"), (c, "too many connections")] {
        let mut s = connect_from(from, to).await.unwrap();
        let got = String::from_utf8(read_to_end_guarded(&mut s).await.unwrap()).unwrap();
        assert_eq!(
            got,
            format!("421 4.7.0 mail.example.test {why}, try again later\r\n")
        );
    }
    let snap = &relay.stats.snapshot()[0];
    assert_eq!((snap.active, snap.total, snap.refused), (3, 3, 2));
    assert_eq!(snap.refused_by, [(Refusal::PortFull, 2)].into());
    // Freeing a slot lets `c` in.
    drop(held.remove(0));
    wait_until_async("slot release", GUARD, || {
        Ok(relay.stats.snapshot()[0].active == 2)
    })
    .await
    .unwrap();
    let mut s = connect_from(c, to).await.unwrap();
    assert_eq!(read_exact_guarded(&mut s, 8).await, b"220 hi\r\n");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    let _seen = fake_server(SocketAddr::new(home, 2500), b"* OK\r\n", false).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![spec(2143, 2500, ProxyMode::None, false)],
        "mx",
    );
    config.idle_timeout = Duration::from_millis(300);
    let relay = start_listener(config, true);
    let mut c = connect_from(client, SocketAddr::new(public, 2143))
        .await
        .unwrap();
    assert_eq!(read_exact_guarded(&mut c, 6).await, b"* OK\r\n");
    // Nothing more is sent: the relay must end the connection by itself.
    assert_eq!(read_to_end_guarded(&mut c).await.unwrap(), b"");
    wait_until_async("idle close", GUARD, || {
        Ok(relay.stats.snapshot()[0].active == 0)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    let _seen = fake_server(SocketAddr::new(home, 2500), b"* OK\r\n", false).await;
    let mut relay = start_listener(
        ListenerConfig::new(
            vec![public],
            home,
            vec![spec(2143, 2500, ProxyMode::None, false)],
            "mx",
        ),
        true,
    );
    let mut c = connect_from(client, SocketAddr::new(public, 2143))
        .await
        .unwrap();
    assert_eq!(read_exact_guarded(&mut c, 6).await, b"* OK\r\n");
    relay.shutdown.cancel();
    tokio::time::timeout(GUARD, relay.task.take().unwrap())
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert_eq!(read_to_end_guarded(&mut c).await.unwrap(), b"");
    // The port is closed too.
    assert!(
        connect_from(client, SocketAddr::new(public, 2143))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn forwarder_passes_bytes_and_trusts_only_the_peer() {
    let (tunnel_home, vps, stranger, mail) = (unique_ip(), unique_ip(), unique_ip(), unique_ip());
    let mut seen = fake_server(SocketAddr::new(mail, 2525), b"220 mail\r\n", true).await;
    let mut config = ForwarderConfig::new(tunnel_home, vps, &[]);
    config.mail_server = mail;
    config.routes = vec![ForwardRoute {
        listen_port: 2500,
        target_port: 2525,
        proxy: true,
    }];
    let fwd = Forwarder::bind(config).unwrap();
    let stats = fwd.stats();
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(fwd.run(shutdown.clone()));
    let to = SocketAddr::new(tunnel_home, 2500);

    // From the VPS tunnel address: header and payload arrive byte for byte
    // (the header first, as the VPS relay writes it).
    let header = proxy::encode_v2(
        "203.0.113.9:40000".parse().unwrap(),
        "198.51.100.1:25".parse().unwrap(),
    );
    let mut c = connect_from(vps, to).await.unwrap();
    c.write_all(&header).await.unwrap();
    assert_eq!(read_exact_guarded(&mut c, 10).await, b"220 mail\r\n");
    c.write_all(b"EHLO x\r\n").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_to_end_guarded(&mut c).await.unwrap(), b"got 8\r\n");
    let s = seen.recv().await.unwrap();
    assert_eq!(
        s.header.unwrap().source,
        Some("203.0.113.9:40000".parse().unwrap())
    );
    assert_eq!(s.rest, b"EHLO x\r\n");

    // From anyone else: closed before anything reaches the mail server.
    let mut c = connect_from(stranger, to).await.unwrap();
    let _ = c.write_all(&header).await;
    match read_to_end_guarded(&mut c).await {
        Ok(d) => assert!(d.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    wait_until_async("refusal counted", GUARD, || {
        Ok(stats.snapshot()[0].refused == 1)
    })
    .await
    .unwrap();
    assert_eq!(stats.snapshot()[0].total, 1);
    assert!(seen.try_recv().is_err());
}

/// A compromised VPS cannot make a client look local at home: a header that
/// claims loopback (v1 or v2, IPv4, IPv6 or IPv4-mapped), names no client
/// (v2 LOCAL, v1 UNKNOWN), or is garbage is refused before the mail server
/// is dialled.
#[tokio::test]
async fn forwarder_refuses_headers_that_would_look_local() {
    let (tunnel_home, vps, mail) = (unique_ip(), unique_ip(), unique_ip());
    let mut seen = fake_server(SocketAddr::new(mail, 2525), b"220 mail\r\n", true).await;
    let mut config = ForwarderConfig::new(tunnel_home, vps, &[]);
    config.mail_server = mail;
    config.connect_timeout = Duration::from_millis(500);
    config.routes = vec![ForwardRoute {
        listen_port: 2501,
        target_port: 2525,
        proxy: true,
    }];
    let fwd = Forwarder::bind(config).unwrap();
    let stats = fwd.stats();
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(fwd.run(shutdown.clone()));
    let to = SocketAddr::new(tunnel_home, 2501);
    let dst: SocketAddr = "198.51.100.1:25".parse().unwrap();
    let local_v2 = {
        // v2 signature, version 2 / command LOCAL, family unspecified, length 0.
        let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        h
    };
    let forged: Vec<Vec<u8>> = vec![
        proxy::encode_v1("127.0.0.1:1234".parse().unwrap(), dst),
        proxy::encode_v2("127.0.0.1:1234".parse().unwrap(), dst),
        proxy::encode_v2(
            "[::1]:1234".parse().unwrap(),
            "[2001:db8::1]:25".parse().unwrap(),
        ),
        proxy::encode_v2(
            "[::ffff:127.0.0.9]:1".parse().unwrap(),
            "[::ffff:198.51.100.1]:25".parse().unwrap(),
        ),
        proxy::encode_v1("0.0.0.0:1".parse().unwrap(), dst),
        b"PROXY UNKNOWN\r\n".to_vec(),
        local_v2,
        b"EHLO no header at all\r\n".to_vec(),
    ];
    for (i, bytes) in forged.iter().enumerate() {
        let mut c = connect_from(vps, to).await.unwrap();
        c.write_all(bytes).await.unwrap();
        match read_to_end_guarded(&mut c).await {
            Ok(d) => assert!(d.is_empty(), "case {i}: got {d:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "case {i}"),
        }
    }
    // A header that never completes is given up after the connect timeout.
    let mut c = connect_from(vps, to).await.unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.9").await.unwrap();
    match read_to_end_guarded(&mut c).await {
        Ok(d) => assert!(d.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    let n = forged.len() as u64 + 1;
    wait_until_async("refusals counted", GUARD, || {
        Ok(stats.snapshot()[0].refused == n)
    })
    .await
    .unwrap();
    assert!(
        seen.try_recv().is_err(),
        "the mail server saw a forged client"
    );
    assert!(
        stats.snapshot()[0]
            .last_error
            .as_ref()
            .is_some_and(|e| e.message.contains("PROXY header")),
        "{:?}",
        stats.snapshot()[0].last_error
    );
}

#[tokio::test]
async fn forwarder_closes_when_mail_server_is_down() {
    let (tunnel_home, vps, mail) = (unique_ip(), unique_ip(), unique_ip());
    let mut config =
        ForwarderConfig::new(tunnel_home, vps, &[spec(2500, 2500, ProxyMode::V2, true)]);
    config.mail_server = mail;
    let fwd = Forwarder::bind(config).unwrap();
    let stats = fwd.stats();
    let to = fwd.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(fwd.run(shutdown.clone()));
    // The home side never answers for the mail server, not even on SMTP ports
    // (the VPS sends its header first, as always).
    let mut c = connect_from(vps, to)
        .await
        .expect("connect to the forwarder");
    c.write_all(&proxy::encode_v2(
        "203.0.113.9:40000".parse().unwrap(),
        "198.51.100.1:25".parse().unwrap(),
    ))
    .await
    .unwrap();
    match read_to_end_guarded(&mut c).await {
        Ok(data) => assert!(data.is_empty(), "got {data:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    wait_until_async("unavailable counted", GUARD, || {
        Ok(stats.snapshot()[0].unavailable == 1)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn server_reset_mid_stream_ends_only_that_connection() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    let server = TcpListener::bind(SocketAddr::new(home, 2500))
        .await
        .unwrap();
    let relay = start_listener(
        ListenerConfig::new(
            vec![public],
            home,
            vec![spec(2465, 2500, ProxyMode::None, false)],
            "mx",
        ),
        true,
    );
    let to = SocketAddr::new(public, 2465);
    let mut c = connect_from(client, to).await.unwrap();
    let (s, _) = server.accept().await.unwrap();
    // Close with RST (linger 0) while the client keeps sending.
    s.set_zero_linger().unwrap();
    drop(s);
    let chunk = vec![0u8; 64 * 1024];
    let write_failed = tokio::time::timeout(GUARD, async {
        loop {
            if c.write_all(&chunk).await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        write_failed.is_ok(),
        "relay kept accepting data for a dead server"
    );
    wait_until_async("connection cleanup", GUARD, || {
        Ok(relay.stats.snapshot()[0].active == 0)
    })
    .await
    .unwrap();
    // The relay still works for the next client.
    let mut c2 = connect_from(client, to).await.unwrap();
    let (mut s2, _) = server.accept().await.unwrap();
    s2.write_all(b"ok").await.unwrap();
    assert_eq!(read_exact_guarded(&mut c2, 2).await, b"ok");
}

#[tokio::test]
async fn relay_dials_the_forwarder_port_home_reports() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    // Home's forwarder for mail port 25 listens on 41025; nothing on 25.
    let mut seen = fake_server(SocketAddr::new(home, 41025), b"220 fwd\r\n", true).await;
    let listener = Listener::bind(ListenerConfig::new(
        vec![public],
        home,
        vec![spec(2525, 25, ProxyMode::V2, true)],
        "mail.example.test",
    ))
    .unwrap();
    let stats = listener.stats();
    let (home_tx, rx) = watch::channel(HomeReach::up([]));
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(listener.run(rx, shutdown.clone()));
    let to = SocketAddr::new(public, 2525);

    // Connected, but no forwarder reported for 25 yet: 421, and the reason is
    // kept for `cerectl status`.
    expect_421(to, client).await;
    let snap = &stats.snapshot()[0];
    assert_eq!(snap.unavailable, 1);
    let why = snap.last_error.as_ref().map(|e| e.message.clone()).unwrap();
    assert!(why.contains("no forwarder for its port 25"), "{why}");

    // Reported: relayed to 41025 with the PROXY header.
    home_tx.send(HomeReach::up([(25, 41025)])).unwrap();
    let mut c = connect_from(client, to).await.unwrap();
    assert_eq!(read_exact_guarded(&mut c, 9).await, b"220 fwd\r\n");
    c.shutdown().await.unwrap();
    read_to_end_guarded(&mut c).await.unwrap();
    let s = seen.recv().await.unwrap();
    assert_eq!(s.header.unwrap().source.map(|a| a.ip()), Some(client));
}

#[tokio::test]
async fn forwarder_coexists_with_a_mail_server_on_the_wildcard_address() {
    let (tunnel_home, vps) = (unique_ip(), unique_ip());
    // The mail server listens on 0.0.0.0 (Postfix `inet_interfaces = all`).
    let mail = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mail_port = mail.local_addr().unwrap().port();
    let mail = TcpListener::from_std({
        mail.set_nonblocking(true).unwrap();
        mail
    })
    .unwrap();
    let fwd = Forwarder::bind(ForwarderConfig::new(
        tunnel_home,
        vps,
        &[
            spec(25, mail_port, ProxyMode::V2, true),
            // Two relays to one home port share one forwarder.
            spec(2525, mail_port, ProxyMode::None, true),
        ],
    ))
    .expect("the forwarder must not need the mail port");
    let routes = fwd.routes().to_vec();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].target_port, mail_port);
    assert_ne!(routes[0].listen_port, mail_port);
    assert_ne!(routes[0].listen_port, 0);
    let to = fwd.local_addrs()[0];
    assert_eq!(to, SocketAddr::new(tunnel_home, routes[0].listen_port));
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(fwd.run(shutdown.clone()));
    let mut c = connect_from(vps, to).await.unwrap();
    c.write_all(&proxy::encode_v2(
        "203.0.113.9:40000".parse().unwrap(),
        "198.51.100.1:25".parse().unwrap(),
    ))
    .await
    .unwrap();
    let (mut s, _) = tokio::time::timeout(GUARD, mail.accept())
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"220 wildcard\r\n").await.unwrap();
    assert_eq!(read_exact_guarded(&mut c, 14).await, b"220 wildcard\r\n");
}

/// Log lines captured from the current thread's tracing events.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.locked().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.locked()).into_owned()
    }
}

#[tokio::test]
async fn a_flood_against_a_limit_is_logged_once_and_counted_exactly() {
    // The relay's tasks run on this test's single thread, under this subscriber.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let (public, home, flooder) = (unique_ip(), unique_ip(), unique_ip());
    let _seen = fake_server(SocketAddr::new(home, 2500), b"220 hi\r\n", false).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![spec(2525, 2500, ProxyMode::None, true)],
        "mail.example.test",
    );
    config.limits = Limits {
        per_source: 1,
        ..Limits::port_only(1000)
    };
    let relay = start_listener(config, true);
    let to = SocketAddr::new(public, 2525);
    let mut first = connect_from(flooder, to).await.unwrap();
    assert_eq!(read_exact_guarded(&mut first, 8).await, b"220 hi\r\n");
    for _ in 0..20 {
        let mut s = connect_from(flooder, to).await.unwrap();
        let got = read_to_end_guarded(&mut s).await.unwrap();
        assert!(got.starts_with(b"421 4.7.0"), "{got:?}");
    }
    assert_eq!(relay.stats.snapshot()[0].refused, 20);
    let log = captured.text();
    let lines = log
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(
        log.contains("reason=\"source\"") || log.contains("reason=source"),
        "{log}"
    );
}
