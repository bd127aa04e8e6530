//! Issue 2, bad input: every case a clear error, and the VPS keeps serving.
//!
//! These run on loopback (no root): each test has its own VPS on a unique
//! 127.x.y.z address, so they run in parallel.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use ceres_pki::tls::ClientIdentity;
use ceres_pki::{Ca, JoinToken, KeyAndCsr, Role};
use ceres_proto::admin_client::AdminClient;
use ceres_proto::agent_client::AgentClient;
use ceres_proto::{Hello, HomeMessage, StatusRequest, home_message};
use ceres_tests::{LoopVps, bin, run, sh, unique_id};

/// What these tests need beyond the shared loopback VPS: certificates made
/// straight from the CA files, as an attacker with a stolen or old key would.
trait LoopVpsExt {
    fn start_vps() -> LoopVps;
    fn ca(&self) -> Ca;
    fn ca_pem(&self) -> String;
    fn identity(
        &self,
        ca: &Ca,
        role: Role,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> ClientIdentity;
    fn valid_identity(&self, role: Role) -> ClientIdentity;
    fn wait_log(&self, a: &str, b: &str);
    async fn assert_still_serving(&self);
    fn token_or_panic(&self, role: &str, ttl: &str) -> String;
}

impl LoopVpsExt for LoopVps {
    fn start_vps() -> LoopVps {
        ceres_pki::tls::install_crypto_provider();
        LoopVps::start(&[]).unwrap()
    }

    fn token_or_panic(&self, role: &str, ttl: &str) -> String {
        self.token(role, ttl).unwrap()
    }

    fn ca(&self) -> Ca {
        Ca::from_pem(
            &std::fs::read_to_string(self.state_file("ca.pem")).unwrap(),
            &std::fs::read_to_string(self.state_file("ca.key")).unwrap(),
        )
        .unwrap()
    }

    fn ca_pem(&self) -> String {
        self.ca().cert_pem().to_owned()
    }

    /// Issues a client certificate straight from the CA files.
    fn identity(
        &self,
        ca: &Ca,
        role: Role,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> ClientIdentity {
        let key = KeyAndCsr::generate("tester").unwrap();
        let cert_pem = ca
            .sign_client_with_validity(key.csr_pem(), role, "tester", not_before, not_after)
            .unwrap();
        ClientIdentity {
            cert_pem,
            key_pem: key.key_pem(),
        }
    }

    fn valid_identity(&self, role: Role) -> ClientIdentity {
        let now = SystemTime::now();
        self.identity(
            &self.ca(),
            role,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    }

    /// Waits until the VPS log has a line containing both `a` and `b`.
    fn wait_log(&self, a: &str, b: &str) {
        ceres_tests::wait_until(
            &format!("VPS log line with {a:?} and {b:?}"),
            Duration::from_secs(10),
            || {
                Ok(self
                    .daemon
                    .log_text()
                    .lines()
                    .any(|l| l.contains(a) && l.contains(b)))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.daemon.log_text()));
    }

    /// Proves the agent still serves: an admin status call succeeds.
    async fn assert_still_serving(&self) {
        let id = self.valid_identity(Role::Admin);
        let tls = ceres_pki::tls::client_config(&self.ca_pem(), Some(&id)).unwrap();
        let channel = ceres_control::connect(&self.addr, tls).await.unwrap();
        let resp = AdminClient::new(channel)
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.vps.unwrap().domain, "example.com");
    }
}

/// `ceres-home join TOKEN` into a fresh state dir: (exit code, stderr).
fn join(token: &str, state: &Path) -> (i32, String) {
    let out = run(Command::new(bin("ceres-home"))
        .arg("--state-dir")
        .arg(state)
        .args(["join", token]))
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fresh_state(vps: &LoopVps) -> PathBuf {
    vps.dir.path().join(format!("home-{}", unique_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_reused_is_refused_and_says_so() {
    let vps = LoopVps::start_vps();
    let token = vps.token_or_panic("home", "1h");
    assert_eq!(join(&token, &fresh_state(&vps)).0, 0);
    let (code, err) = join(&token, &fresh_state(&vps));
    assert_eq!(code, 1);
    assert!(err.contains("already used"), "{err}");
    vps.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_expired_is_refused_and_says_so() {
    let vps = LoopVps::start_vps();
    let token = vps.token_or_panic("home", "0s");
    let (code, err) = join(&token, &fresh_state(&vps));
    assert_eq!(code, 1);
    assert!(err.contains("expired"), "{err}");
    vps.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_forged_is_refused() {
    let vps = LoopVps::start_vps();
    let real = JoinToken::decode(&vps.token_or_panic("home", "1h")).unwrap();
    // Right VPS, right CA pin, a secret the VPS never issued.
    let forged = JoinToken::new(
        Role::Home,
        real.ca_fingerprint,
        real.control_address.clone(),
        Duration::from_secs(60),
    );
    let (code, err) = join(&forged.encode(), &fresh_state(&vps));
    assert_eq!(code, 1);
    assert!(err.contains("not known"), "{err}");
    // The real one still works: a forged attempt burns nothing.
    assert_eq!(join(&real.encode(), &fresh_state(&vps)).0, 0);
    vps.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_truncated_is_refused_before_any_traffic() {
    let vps = LoopVps::start_vps();
    let token = vps.token_or_panic("home", "1h");
    let state = fresh_state(&vps);
    let (code, err) = join(&token[..token.len() - 5], &state);
    assert_eq!(code, 1);
    assert!(err.contains("truncated or damaged"), "{err}");
    let (code, err) = join("hello", &state);
    assert_eq!(code, 1);
    assert!(err.contains("not a CERES join token"), "{err}");
    // The intact token was not spent.
    assert_eq!(join(&token, &state).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_from_another_vps_fails_the_ca_pin() {
    let vps = LoopVps::start_vps();
    let real = JoinToken::decode(&vps.token_or_panic("home", "1h")).unwrap();
    let other_ca = Ca::generate("other.example", Duration::from_secs(3600)).unwrap();
    let mut token = real.clone();
    token.ca_fingerprint = other_ca.fingerprint();
    let (code, err) = join(&token.encode(), &fresh_state(&vps));
    assert_eq!(code, 1);
    assert!(
        err.contains("CA fingerprint mismatch") && err.contains("another VPS"),
        "{err}"
    );
    vps.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_for_the_wrong_program_names_the_right_one() {
    let vps = LoopVps::start_vps();
    let token = vps.token_or_panic("admin", "1h");
    let (code, err) = join(&token, &fresh_state(&vps));
    assert_eq!(code, 1);
    assert!(
        err.contains("admin token") && err.contains("cerectl enroll"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn client_without_certificate_gets_unauthenticated() {
    let vps = LoopVps::start_vps();
    let tls = ceres_pki::tls::client_config(&vps.ca_pem(), None).unwrap();
    let channel = ceres_control::connect(&vps.addr, tls).await.unwrap();
    let err = AdminClient::new(channel)
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("enrol"), "{}", err.message());
    vps.assert_still_serving().await;
}

/// Connect and call status with `id`; returns the error text (must fail).
async fn status_error(vps: &LoopVps, id: &ClientIdentity) -> String {
    let tls = ceres_pki::tls::client_config(&vps.ca_pem(), Some(id)).unwrap();
    match ceres_control::connect(&vps.addr, tls).await {
        Err(e) => e.to_string(),
        Ok(channel) => match AdminClient::new(channel).status(StatusRequest {}).await {
            Ok(_) => panic!("status call with a bad certificate succeeded"),
            Err(s) => format!("{s:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn certificate_from_another_ca_is_refused() {
    let vps = LoopVps::start_vps();
    let rogue = Ca::generate("rogue.example", Duration::from_secs(3600)).unwrap();
    let now = SystemTime::now();
    let id = vps.identity(
        &rogue,
        Role::Admin,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    status_error(&vps, &id).await;
    // TLS 1.3 clients may see only a broken pipe; the VPS must have refused the certificate itself.
    vps.wait_log("handshake failed", "UnknownIssuer");
    vps.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn expired_certificate_is_refused() {
    let vps = LoopVps::start_vps();
    let now = SystemTime::now();
    let id = vps.identity(
        &vps.ca(),
        Role::Admin,
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    );
    status_error(&vps, &id).await;
    vps.wait_log("handshake failed", "certificate expired");
    vps.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn home_certificate_cannot_call_admin_and_admin_cannot_hold_a_session() {
    let vps = LoopVps::start_vps();
    let home = vps.valid_identity(Role::Home);
    let tls = ceres_pki::tls::client_config(&vps.ca_pem(), Some(&home)).unwrap();
    let channel = ceres_control::connect(&vps.addr, tls).await.unwrap();
    let err = AdminClient::new(channel)
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("admin role") && err.message().contains("home role"),
        "{}",
        err.message()
    );

    let admin = vps.valid_identity(Role::Admin);
    let tls = ceres_pki::tls::client_config(&vps.ca_pem(), Some(&admin)).unwrap();
    let channel = ceres_control::connect(&vps.addr, tls).await.unwrap();
    let hello = HomeMessage {
        kind: Some(home_message::Kind::Hello(Hello::default())),
    };
    let err = AgentClient::new(channel)
        .session(tokio_stream_once(hello))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

fn tokio_stream_once(msg: HomeMessage) -> impl futures_like::Stream<Item = HomeMessage> {
    futures_like::once(msg)
}

/// A one-item stream without pulling in another crate.
mod futures_like {
    pub use tonic::codegen::tokio_stream::Stream;
    pub fn once<T: Send + 'static>(item: T) -> impl Stream<Item = T> {
        tonic::codegen::tokio_stream::iter(std::iter::once(item))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn incompatible_protocol_version_is_a_clear_error() {
    let vps = LoopVps::start_vps();
    let home = vps.valid_identity(Role::Home);
    let tls = ceres_pki::tls::client_config(&vps.ca_pem(), Some(&home)).unwrap();
    let channel = ceres_control::connect(&vps.addr, tls).await.unwrap();
    let hello = HomeMessage {
        kind: Some(home_message::Kind::Hello(Hello {
            protocol_version: 99,
            min_protocol_version: 98,
            agent_version: "9.9.9".into(),
            ..Default::default()
        })),
    };
    let err = AgentClient::new(channel)
        .session(tokio_stream_once(hello))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("upgrade this side") && err.message().contains("ceres-vps"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn garbage_and_plain_http_on_the_control_port_are_dropped() {
    let vps = LoopVps::start_vps();
    let payloads: [&[u8]; 4] = [
        b"\x00\x01\x02\x03garbage\xff\xfe",
        b"GET / HTTP/1.1\r\nHost: vps\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01], // a TLS record header claiming a huge hello
    ];
    for payload in payloads {
        let mut s = TcpStream::connect(&vps.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(payload).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        // The server must close the connection (EOF or reset), not hang.
        let r = s.read_to_end(&mut sink);
        assert!(
            r.is_ok()
                || matches!(
                    r.as_ref().unwrap_err().kind(),
                    std::io::ErrorKind::ConnectionReset
                ),
            "connection not closed for {payload:?}: {r:?}"
        );
    }
    vps.assert_still_serving().await;
}

#[test]
fn malformed_config_is_refused_with_key_line_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("CERES_DOMAIN=example.com\nthis is not a line\n", ":2:"),
        (
            "CERES_DOMAIN=example.com\nCERES_PUBLIK_IP=203.0.113.10\n",
            "did you mean CERES_PUBLIC_IP",
        ),
        (
            "CERES_PUBLIC_IP=203.0.113.300\nCERES_DOMAIN=example.com\n",
            "CERES_PUBLIC_IP=\"203.0.113.300\"",
        ),
        (
            "CERES_PUBLIC_IP=203.0.113.10\nCERES_DOMAIN=example.com\nCERES_REPORT_INTERVAL=soon\n",
            "CERES_REPORT_INTERVAL",
        ),
        ("CERES_PUBLIC_IP=203.0.113.10\n", "CERES_DOMAIN is not set"),
    ];
    for (text, expect) in cases {
        let config = dir.path().join(format!("{}.env", unique_id()));
        std::fs::write(&config, text).unwrap();
        let out = run(Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("run"))
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text:?}: {err}");
        assert!(
            err.contains(expect),
            "{text:?}: expected {expect:?} in {err}"
        );
    }
    // The home agent too.
    let config = dir.path().join("home.env");
    std::fs::write(&config, "CERES_RECONECT_MAX=5s\n").unwrap();
    let out = run(Command::new(bin("ceres-home"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("h"))
        .arg("run"))
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("CERES_RECONECT_MAX") && err.contains("home.env:1"),
        "{err}"
    );
}

#[test]
fn state_files_are_private_and_token_secret_is_not_stored() {
    let vps = LoopVps::start_vps();
    use std::os::unix::fs::MetadataExt;
    let state = vps.dir.path().join("state");
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    for f in ["ca.key", "ca.pem", "server.key", "server.pem"] {
        assert_eq!(
            std::fs::metadata(state.join(f)).unwrap().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
    let token = JoinToken::decode(&vps.token_or_panic("home", "1h")).unwrap();
    let secret_hex: String = token
        .secret
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let listing = sh(Command::new("grep")
        .args(["-r", "-l", &secret_hex])
        .arg(&state))
    .unwrap_or_default();
    assert!(listing.is_empty(), "token secret found in {listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn token_guessing_is_rate_limited_per_address_and_logged() {
    let vps = LoopVps::start_vps();
    let real = JoinToken::decode(&vps.token_or_panic("home", "1h")).unwrap();
    for i in 0..5 {
        let forged = JoinToken::new(
            Role::Home,
            real.ca_fingerprint,
            real.control_address.clone(),
            Duration::from_secs(60),
        );
        let (code, err) = join(&forged.encode(), &fresh_state(&vps));
        assert_eq!(code, 1);
        assert!(err.contains("not known"), "attempt {i}: {err}");
    }
    // The sixth attempt from the same address is refused before the token is looked at.
    let (code, err) = join(&real.encode(), &fresh_state(&vps));
    assert_eq!(code, 1);
    assert!(err.contains("too many failed join attempts"), "{err}");
    vps.wait_log("too many failed attempts", "enrolment refused");
    // More attempts in the window: refused too, but logged only the first time.
    for _ in 0..3 {
        let (code, err) = join(&real.encode(), &fresh_state(&vps));
        assert_eq!(code, 1);
        assert!(err.contains("too many failed join attempts"), "{err}");
    }
    vps.assert_still_serving().await;
    let log = vps.daemon.log_text();
    assert_eq!(log.matches("too many failed attempts").count(), 1, "{log}");
}

#[test]
fn revoked_certificate_is_refused_at_the_next_connection() {
    let vps = LoopVps::start_vps();
    let ctl = vps.enroll_ctl().unwrap();
    let status = |ctl: &Path| {
        run(Command::new(bin("cerectl"))
            .arg("--dir")
            .arg(ctl)
            .arg("status"))
        .unwrap()
    };
    // Home never joined: exit 1 ("something is broken"), but the status came.
    assert_eq!(status(&ctl).status.code(), Some(1));
    let list = vps.vps(&["cert", "list"]).unwrap();
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    let serial = ceres_pki::CertificateInfo::from_pem(
        &std::fs::read_to_string(ctl.join("admin.pem")).unwrap(),
    )
    .unwrap()
    .serial;
    assert!(
        listing.contains(&serial) && listing.contains("admin") && listing.contains("valid"),
        "{listing}"
    );

    let out = vps.vps(&["cert", "revoke", &serial]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&vps.vps(&["cert", "list"]).unwrap().stdout).into_owned();
    assert!(listing.contains("REVOKED"), "{listing}");

    // The running agent refuses it from now on, without a restart.
    let out = status(&ctl);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vps.wait_log("revoked certificate refused", &serial);
    // Unknown names are an error that says where to look.
    let out = vps.vps(&["cert", "revoke", "no-such-host"]).unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cert list"));
    // Another admin still works.
    let ctl2 = vps.enroll_ctl().unwrap();
    assert_eq!(status(&ctl2).status.code(), Some(1));
}
