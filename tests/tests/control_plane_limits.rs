//! Issue 13, bounded resources on the control port: what an unauthenticated
//! peer can hold is capped per source, certificate-less connections do not
//! live forever, and a flood of bad handshakes cannot flood the log.
//!
//! A real `ceres-vps` on its own loopback address (no root); clients bind
//! other 127.x addresses as their sources.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ceres_pki::tls::ClientIdentity;
use ceres_pki::{Ca, KeyAndCsr, Role};
use ceres_proto::StatusRequest;
use ceres_proto::admin_client::AdminClient;
use ceres_tests::{LoopVps, bin, run, wait_until};

/// Hang guard for reads; every expected event happens long before this.
const GUARD: Duration = Duration::from_secs(10);

fn start(extra: &[&str]) -> LoopVps {
    ceres_pki::tls::install_crypto_provider();
    LoopVps::start(extra).unwrap()
}

fn ca_pem(vps: &LoopVps) -> String {
    std::fs::read_to_string(vps.state_file("ca.pem")).unwrap()
}

/// Another loopback address as a client's source: the VPS's own with the
/// last octet changed.
fn other_source(vps: &LoopVps, last: u8) -> IpAddr {
    let mut octets = vps.ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    octets[3] = if octets[3] == last { last ^ 1 } else { last };
    IpAddr::from(octets)
}

/// A TCP connection from `from` (std sockets cannot bind before connecting:
/// tokio's can, on a thread of its own so async tests may call this too).
fn tcp_from(from: IpAddr, to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().unwrap();
    let s = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let s = tokio::net::TcpSocket::new_v4()?;
                    s.bind(SocketAddr::new(from, 0))?;
                    s.connect(to).await?.into_std()
                })
            })
            .join()
            .unwrap()
    })?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(GUARD))?;
    s.set_write_timeout(Some(GUARD))?;
    Ok(s)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A completed TLS handshake without a client certificate, from `from`.
fn tls_without_cert(vps: &LoopVps, from: IpAddr) -> std::io::Result<Tls> {
    let config = ceres_pki::tls::client_config(&ca_pem(vps), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from(ceres_pki::SERVER_NAME).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = tcp_from(from, &vps.addr)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    // TLS 1.3: the server's verdict on our (absent) certificate comes after
    // the client's Finished; one more read proves the server kept us.
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The HTTP/2 preface and an empty SETTINGS frame, so the connection is a
    // real (idle) gRPC connection; the server answers with its SETTINGS.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")?;
    let mut frame_header = [0u8; 9];
    tls.read_exact(&mut frame_header)?;
    Ok(tls)
}

/// Reads until the server closes; how long that took.
fn wait_closed(tls: &mut Tls) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("connection still open after {GUARD:?}")
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("connection still open after {GUARD:?}")
            }
            Err(_) => return started.elapsed(),
        }
    }
}

/// An admin identity straight from the CA files.
fn admin_identity(vps: &LoopVps) -> ClientIdentity {
    let ca = Ca::from_pem(
        &ca_pem(vps),
        &std::fs::read_to_string(vps.state_file("ca.key")).unwrap(),
    )
    .unwrap();
    let key = KeyAndCsr::generate("tester").unwrap();
    let now = std::time::SystemTime::now();
    let cert_pem = ca
        .sign_client_with_validity(
            key.csr_pem(),
            Role::Admin,
            "tester",
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
    ClientIdentity {
        cert_pem,
        key_pem: key.key_pem(),
    }
}

#[test]
fn certless_connections_are_capped_per_source_and_another_source_still_enrols() {
    let vps = start(&["CERES_CONTROL_MAX_PER_SOURCE=3"]);
    let flooder = other_source(&vps, 201);
    let held: Vec<Tls> = (0..3)
        .map(|i| tls_without_cert(&vps, flooder).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // The fourth from the same source is closed before its handshake.
    let fourth = tls_without_cert(&vps, flooder);
    assert!(
        fourth.is_err(),
        "a fourth connection from one source was served"
    );
    // Another source enrols and gets its status while the three are held.
    let ctl = vps.enroll_ctl().unwrap();
    let out = run(Command::new(bin("cerectl"))
        .arg("--dir")
        .arg(&ctl)
        .args(["status", "--json"]))
    .unwrap();
    // Home never joined: exit 1 with the status printed; 3 would be "could not get it".
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = vps.daemon.log_text();
    assert!(
        log.contains("too many connections from this source"),
        "{log}"
    );
    // A slot comes back when a connection closes.
    drop(held);
    wait_until("a freed slot to be usable", GUARD, || {
        Ok(tls_without_cert(&vps, flooder).is_ok())
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_connection_without_certificate_is_cut_after_its_max_age_and_one_with_is_not() {
    let vps = start(&["CERES_CONTROL_NO_CERT_MAX_AGE=1s"]);
    // An mTLS channel, used before and after the certificate-less one is cut.
    let tls = ceres_pki::tls::client_config(&ca_pem(&vps), Some(&admin_identity(&vps))).unwrap();
    let channel = ceres_control::connect(&vps.addr, tls).await.unwrap();
    let mut admin = AdminClient::new(channel);
    admin.status(StatusRequest {}).await.unwrap();

    let source = other_source(&vps, 202);
    let mut anon = tls_without_cert(&vps, source).unwrap();
    let took = tokio::task::block_in_place(|| wait_closed(&mut anon));
    eprintln!("certificate-less connection closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // The certificate's connection outlived the age and still serves.
    let resp = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(resp.vps.unwrap().domain, "example.com");
}

#[test]
fn a_flood_of_bad_handshakes_is_one_log_line_per_source_with_a_count() {
    let vps = start(&[]);
    let source = other_source(&vps, 203);
    let garbage = |n: usize| {
        for _ in 0..n {
            let mut s = tcp_from(source, &vps.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: vps\r\n\r\n").unwrap();
            let _ = s.shutdown(std::net::Shutdown::Write);
            // The server has logged (or not) by the time it closes.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    };
    garbage(20);
    let lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // The server closes before it logs: wait for the first line.
    wait_until("the first handshake-failure line", GUARD, || {
        Ok(!lines(&vps.daemon.log_text()).is_empty())
    })
    .unwrap();
    let log = vps.daemon.log_text();
    assert_eq!(lines(&log).len(), 1, "{log}");
    // After the window, the next failure is logged with the held-back count.
    wait_until(
        "the next handshake-failure line, with its count",
        ceres_control::server::LOG_WINDOW + GUARD,
        || {
            garbage(1);
            Ok(lines(&vps.daemon.log_text()).len() >= 2)
        },
    )
    .unwrap();
    let log = vps.daemon.log_text();
    let second = lines(&log)[1].clone();
    let held: u64 = second
        .split("more_since_last_line=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {second:?}"));
    assert!(held >= 19, "{second}");
    // Other sources have their own budget: one from the default source is logged at once.
    let mut s = TcpStream::connect(&vps.addr).unwrap();
    s.write_all(b"garbage").unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.read_to_end(&mut Vec::new());
    wait_until("a line for the other source", GUARD, || {
        Ok(lines(&vps.daemon.log_text()).len() >= 3)
    })
    .unwrap();
    let log = vps.daemon.log_text();
    assert_eq!(lines(&log).len(), 3, "{log}");
}
