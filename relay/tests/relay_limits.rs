//! The VPS relay's limits against floods: per-network caps (IPv6 /56 and /48,
//! IPv4 /24), the rate limit on new connections, slots kept for sources seen
//! delivering, and the SMTP-sized idle timeout. Loopback (no root), except the
//! IPv6 flood, which binds many source addresses on `lo` in a namespace.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ceres_relay::{
    DELIVERING_MIN_BYTES, HomeReach, Limits, Listener, ListenerConfig, ProxyMode, Refusal,
    RelaySpec, StatsHandle,
};
use ceres_testkit::{require_root, wait_until_async};
use common::{Netns, connect_from, sh, unique_ip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Hang guard for reads; every expected event happens long before this.
const GUARD: Duration = Duration::from_secs(10);
const BANNER: &[u8] = b"220 home ESMTP\r\n";
const REFUSED_PREFIX: &[u8] = b"421 4.7.0 mx.example.test too many";

/// A relay under test; stops on drop (also on panic).
struct Running {
    stats: StatsHandle,
    shutdown: CancellationToken,
    _home: watch::Sender<HomeReach>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start(config: ListenerConfig) -> Running {
    let reach = HomeReach::up(config.relays.iter().map(|r| (r.home_port, r.home_port)));
    let listener = Listener::bind(config).expect("bind relay");
    let (home, rx) = watch::channel(reach);
    let shutdown = CancellationToken::new();
    let stats = listener.stats();
    let token = shutdown.clone();
    tokio::spawn(async move {
        listener.run(rx, token).await.expect("relay run");
    });
    Running {
        stats,
        shutdown,
        _home: home,
    }
}

/// A fake mail server at "home": sends a banner, then echoes what it gets.
async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind fake server");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(BANNER).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn smtp_spec(public_port: u16, home_port: u16) -> RelaySpec {
    RelaySpec {
        public_port,
        home_port,
        proxy: ProxyMode::None,
        smtp_banner: true,
    }
}

/// Connects from `from` and reads the first line: `Ok` with the banner when
/// relayed, `Err` with the refusal otherwise.
async fn banner_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream, Vec<u8>> {
    let mut s = connect_from(from, to).await.expect("connect");
    let mut got = vec![0u8; BANNER.len()];
    match tokio::time::timeout(GUARD, s.read_exact(&mut got)).await {
        Ok(Ok(_)) if got == BANNER => Ok(s),
        Ok(Ok(_)) => {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut rest)).await;
            got.extend(rest);
            Err(got)
        }
        Ok(Err(_)) => Err(got),
        Err(_) => panic!("no answer from the relay within {GUARD:?}"),
    }
}

fn assert_refused(r: Result<TcpStream, Vec<u8>>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: relayed, expected a refusal"),
        Err(got) => assert!(
            got.starts_with(REFUSED_PREFIX),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

#[test]
fn a_flood_from_many_64s_of_one_56_leaves_a_fresh_48_the_banner() {
    if !require_root("a_flood_from_many_64s_of_one_56_leaves_a_fresh_48_the_banner") {
        return;
    }
    let ns = Netns::new();
    // 64 /64s of one /56, a fresh source in another /48, the relay, home.
    let flood: Vec<IpAddr> = (0..64)
        .map(|i| format!("2001:db8:aa00:{i:x}::1").parse().unwrap())
        .collect();
    let fresh: IpAddr = "2001:db8:bb00::1".parse().unwrap();
    let (public, home): (IpAddr, IpAddr) = (
        "2001:db8:ff::1".parse().unwrap(),
        "2001:db8:ff::2".parse().unwrap(),
    );
    for ip in flood.iter().chain([&fresh, &public, &home]) {
        sh(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
    }
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            echo_server(SocketAddr::new(home, 2500)).await;
            let mut config = ListenerConfig::new(
                vec![public],
                home,
                vec![smtp_spec(2525, 2500)],
                "mx.example.test",
            );
            // A port of 100 with 4 per /64: 64 /64s could hold it 2.5 times over.
            config.limits = Limits::scaled(100, 4);
            let relay = start(config);
            let to = SocketAddr::new(public, 2525);
            let mut held = Vec::new();
            let mut refused = 0;
            for from in &flood {
                for _ in 0..4 {
                    match banner_from(*from, to).await {
                        Ok(s) => held.push(s),
                        Err(_) => refused += 1,
                    }
                }
            }
            let snap = &relay.stats.snapshot()[0];
            eprintln!(
                "flood: {} held, {refused} refused, by reason {:?}",
                held.len(),
                snap.refused_by
            );
            assert_eq!(held.len(), 10, "one /56 holds a tenth of the port");
            assert_eq!(snap.refused_by.get(&Refusal::V6Net56), Some(&246));
            // A fresh source gets its banner while the flood holds on.
            let fresh_conn = banner_from(fresh, to).await;
            assert!(
                fresh_conn.is_ok(),
                "fresh /48 refused: {:?}",
                fresh_conn
                    .err()
                    .map(|e| String::from_utf8_lossy(&e).into_owned())
            );
        });
    });
}

#[tokio::test]
async fn one_ipv4_24_cannot_fill_the_port() {
    let (public, home) = (unique_ip(), unique_ip());
    echo_server(SocketAddr::new(home, 2500)).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![smtp_spec(2525, 2500)],
        "mx.example.test",
    );
    config.limits = Limits::scaled(50, 2);
    let relay = start(config);
    let to = SocketAddr::new(public, 2525);
    // Sources across one /24 (not this test's relay address).
    let IpAddr::V4(base) = unique_ip() else {
        unreachable!()
    };
    let net = u32::from(base) & 0xffff_ff00;
    let mut held = Vec::new();
    for host in 1..=30u32 {
        let from = IpAddr::V4((net | host).into());
        if let Ok(s) = banner_from(from, to).await {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 5, "a /24 holds a tenth of the port");
    assert_refused(
        banner_from(IpAddr::V4((net | 200).into()), to).await,
        "sixth of the /24",
    );
    let snap = &relay.stats.snapshot()[0];
    assert_eq!(snap.refused_by.get(&Refusal::V4Net24), Some(&26));
    // Another /24 still gets in.
    let other = IpAddr::V4((net ^ 0x100 | 1).into());
    assert!(banner_from(other, to).await.is_ok());
}

#[tokio::test]
async fn the_rate_limit_refuses_the_burst_beyond_the_bucket() {
    let (public, home, burster, other) = (unique_ip(), unique_ip(), unique_ip(), unique_ip());
    echo_server(SocketAddr::new(home, 2500)).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![smtp_spec(2525, 2500)],
        "mx.example.test",
    );
    config.limits = Limits {
        rate_per_minute: 1,
        burst: 5,
        ..Limits::port_only(100)
    };
    let relay = start(config);
    let to = SocketAddr::new(public, 2525);
    // Opened and closed one after another: no concurrency cap is near.
    for i in 0..5 {
        assert!(banner_from(burster, to).await.is_ok(), "connection {i}");
    }
    for _ in 0..3 {
        assert_refused(banner_from(burster, to).await, "beyond the burst");
    }
    let snap = &relay.stats.snapshot()[0];
    assert_eq!(snap.refused_by.get(&Refusal::Rate), Some(&3));
    // The bucket is per source.
    assert!(banner_from(other, to).await.is_ok());
}

#[tokio::test]
async fn a_source_seen_delivering_gets_in_when_the_port_is_full_of_flood() {
    let (public, home, good) = (unique_ip(), unique_ip(), unique_ip());
    let flooders: Vec<IpAddr> = (0..4).map(|_| unique_ip()).collect();
    echo_server(SocketAddr::new(home, 2500)).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![smtp_spec(2525, 2500)],
        "mx.example.test",
    );
    // 20 slots, 2 kept for known senders; no per-source or network caps in the way.
    config.limits = Limits {
        reserved_for_known: 2,
        ..Limits::port_only(20)
    };
    let relay = start(config);
    let to = SocketAddr::new(public, 2525);

    // `good` delivers: more than DELIVERING_MIN_BYTES each way, then closes.
    let mut s = banner_from(good, to)
        .await
        .expect("good sender's first session");
    let message = vec![b'x'; DELIVERING_MIN_BYTES as usize + 1];
    s.write_all(&message).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(GUARD, s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    drop(s);
    wait_until_async("the good session to end", GUARD, || {
        Ok(relay.stats.snapshot()[0].active == 0)
    })
    .await
    .unwrap();

    // The flood takes every slot it can.
    let mut held = Vec::new();
    for from in flooders.iter().cycle().take(40) {
        if let Ok(s) = banner_from(*from, to).await {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 18, "the flood gets all but the reserve");
    let snap = &relay.stats.snapshot()[0];
    assert_eq!(snap.refused_by.get(&Refusal::ReservedForKnown), Some(&22));
    // The known sender still gets its banner, and a stranger does not.
    assert!(banner_from(good, to).await.is_ok(), "known sender refused");
    assert_refused(banner_from(unique_ip(), to).await, "stranger");
}

#[tokio::test]
async fn an_idle_smtp_connection_is_closed_after_the_smtp_timeout_and_imap_is_not() {
    let (public, home, client) = (unique_ip(), unique_ip(), unique_ip());
    echo_server(SocketAddr::new(home, 2500)).await;
    echo_server(SocketAddr::new(home, 2143)).await;
    let mut config = ListenerConfig::new(
        vec![public],
        home,
        vec![
            smtp_spec(2525, 2500),
            RelaySpec {
                public_port: 2143,
                home_port: 2143,
                proxy: ProxyMode::None,
                smtp_banner: false,
            },
        ],
        "mx.example.test",
    );
    config.smtp_idle_timeout = Duration::from_millis(400);
    config.idle_timeout = Duration::from_secs(600);
    let relay = start(config);
    let imap_started = Instant::now();
    let mut imap = banner_from(client, SocketAddr::new(public, 2143))
        .await
        .unwrap();
    let mut smtp = banner_from(client, SocketAddr::new(public, 2525))
        .await
        .unwrap();
    // The SMTP connection says nothing: the relay ends it by itself.
    let mut rest = Vec::new();
    tokio::time::timeout(GUARD, smtp.read_to_end(&mut rest))
        .await
        .expect("SMTP connection not closed")
        .unwrap();
    wait_until_async("the SMTP slot to be freed", GUARD, || {
        Ok(relay.stats.snapshot()[0].active == 0)
    })
    .await
    .unwrap();
    // The IMAP connection, idle for longer than that, still relays.
    assert!(imap_started.elapsed() > Duration::from_millis(400));
    imap.write_all(b"a NOOP\r\n").await.unwrap();
    let mut echoed = [0u8; 8];
    tokio::time::timeout(GUARD, imap.read_exact(&mut echoed))
        .await
        .expect("IMAP connection closed")
        .unwrap();
    assert_eq!(&echoed, b"a NOOP\r\n");
    assert_eq!(relay.stats.snapshot()[1].active, 1);
}
