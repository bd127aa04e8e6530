//! The stock-server harness on its own: Debian's Postfix, Dovecot and nginx
//! with their packaged configuration (plus only what a private instance
//! needs) in a lab namespace, and the clients the end-to-end tests of
//! `cerectl mailserver-config` use on them. It also pins down what stock
//! does today — including the hole CERES closes: Dovecot takes a plaintext
//! password from a client whose address equals the server's (127.0.0.1 to
//! 127.0.0.1, which is how a local forwarder reaches it).
//!
//! Each test has a namespace of its own with two addresses on a veth pair:
//! the server's (198.51.100.10) and a client's (198.51.100.20), so a client
//! is "remote" to the servers without any routing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ceres_tests::dovecot::login::{
    LoginAttempt, LoginOutcome, LoginPath, LoginTarget, imap_login, pop3_login,
};
use ceres_tests::dovecot::{Dovecot, Security, imap::ImapClient};
use ceres_tests::nginx::{Nginx, http_get};
use ceres_tests::postfix::smtp::{SmtpClient, compose};
use ceres_tests::postfix::{Postfix, StockSite};
use ceres_tests::{Netns, require_root, unique_id};

const WAIT: Duration = Duration::from_secs(20);
const IO: Duration = Duration::from_secs(10);
const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A fresh namespace with the server and client addresses.
fn namespace() -> Netns {
    let ns = Netns::new(format!("ceres-{}-stock", unique_id())).unwrap();
    ns.ip(&[
        "link", "add", "srv0", "type", "veth", "peer", "name", "cli0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "srv0"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "cli0"])
        .unwrap();
    ns.ip(&["link", "set", "srv0", "up"]).unwrap();
    ns.ip(&["link", "set", "cli0", "up"]).unwrap();
    ns
}

#[test]
fn stock_postfix_takes_mail_for_the_site_and_refuses_relay_from_outside() {
    if !require_root("stock_postfix_takes_mail_for_the_site_and_refuses_relay_from_outside") {
        return;
    }
    let ns = namespace();
    let pf = Postfix::start_stock(&ns, StockSite::default()).unwrap();

    // Debian's values, as the postinst wrote them.
    assert_eq!(
        pf.postconf(&["-h", "mynetworks"]).unwrap().trim(),
        "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"
    );
    assert_eq!(
        pf.postconf(&["-h", "smtpd_relay_restrictions"])
            .unwrap()
            .trim(),
        "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
    );
    assert_eq!(
        pf.postconf(&["-h", "inet_interfaces"]).unwrap().trim(),
        "all"
    );
    let chroots = pf.postconf(&["-F", "*/*/chroot"]).unwrap();
    assert!(
        chroots.lines().all(|l| l.ends_with("= n")),
        "a chrooted service is left:\n{chroots}"
    );

    // SMTP from a remote address, plain smtpd on 25, no PROXY header.
    let addr = SocketAddr::new(SERVER, 25);
    let mut client = SmtpClient::connect_from(&ns, CLIENT, addr, None, IO).unwrap();
    let id = format!("{}.stock@lab.example.org", unique_id());
    let reply = client
        .send_mail(
            "client.example.org",
            "sender@example.org",
            &["alice@example.com"],
            &compose(
                "sender@example.org",
                "alice@example.com",
                "stock",
                &id,
                "Hello.",
            ),
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{}", client.transcript());
    // Relay to a foreign domain: refused for a client outside mynetworks.
    client.expect("RSET", 250).unwrap();
    client
        .expect("MAIL FROM:<sender@example.org>", 250)
        .unwrap();
    let relay = client.command("RCPT TO:<someone@example.net>").unwrap();
    assert!(
        relay.code == 454 || relay.code == 554,
        "relay from outside was not refused: {} {}",
        relay.code,
        relay.text()
    );
    client.quit().unwrap();
    let msg = pf.wait_for_message_id(&id, WAIT).unwrap();
    assert!(
        msg.path
            .starts_with(pf.mail_dir().join("alice").join("Maildir")),
        "delivered to {}",
        msg.path.display()
    );
    assert!(pf.clients_seen().contains(&CLIENT), "log:\n{}", pf.log());

    // Local submission through the instance's sendmail.
    let id2 = format!("{}.sendmail@lab.example.org", unique_id());
    pf.sendmail(
        "root@example.com",
        "alice",
        &compose("root@example.com", "alice", "local", &id2, "Hi."),
    )
    .unwrap();
    pf.wait_for_message_id(&id2, WAIT).unwrap();

    pf.reload().unwrap();
    // Still serving after the reload.
    let banner = SmtpClient::connect_from(&ns, CLIENT, addr, None, IO).unwrap();
    banner.quit().unwrap();
}

fn assert_outcome(attempt: &LoginAttempt, want: &LoginOutcome, what: &str) {
    assert_eq!(
        &attempt.outcome, want,
        "{what}; transcript:\n{}",
        attempt.transcript
    );
}

#[test]
fn stock_dovecot_refuses_plaintext_from_outside_but_takes_it_from_its_own_address() {
    if !require_root(
        "stock_dovecot_refuses_plaintext_from_outside_but_takes_it_from_its_own_address",
    ) {
        return;
    }
    let ns = namespace();
    let dv = Dovecot::start_stock(&ns, &[("alice", "correct-horse")]).unwrap();
    assert_eq!(
        dv.doveconf(&["-h", "disable_plaintext_auth"])
            .unwrap()
            .trim(),
        "yes"
    );
    let imap = |local: IpAddr, to: IpAddr, port: u16| {
        LoginTarget::new(&ns, Some(local), SocketAddr::new(to, port))
    };
    let (user, pass) = ("alice", "correct-horse");

    // A remote client: no password in the clear; STARTTLS and 993 work.
    let plain = imap_login(&imap(CLIENT, SERVER, 143), LoginPath::Plaintext, user, pass).unwrap();
    assert_outcome(
        &plain,
        &LoginOutcome::PrivacyRequired,
        "IMAP plaintext from outside",
    );
    let starttls = imap_login(&imap(CLIENT, SERVER, 143), LoginPath::StartTls, user, pass).unwrap();
    assert_outcome(
        &starttls,
        &LoginOutcome::LoggedIn,
        "IMAP STARTTLS from outside",
    );
    let implicit = imap_login(
        &imap(CLIENT, SERVER, 993),
        LoginPath::ImplicitTls,
        user,
        pass,
    )
    .unwrap();
    assert_outcome(&implicit, &LoginOutcome::LoggedIn, "IMAP 993 from outside");
    let wrong = imap_login(
        &imap(CLIENT, SERVER, 993),
        LoginPath::ImplicitTls,
        user,
        "nope",
    )
    .unwrap();
    assert!(
        matches!(wrong.outcome, LoginOutcome::Refused(_)),
        "{:?}",
        wrong.outcome
    );

    // Stock Dovecot counts a connection as secure when the client address
    // equals the local one: 127.0.0.1 -> 127.0.0.1 gets plaintext LOGIN.
    // This is the hole: every connection a local forwarder makes looks so.
    let local = imap_login(
        &imap(LOCALHOST, LOCALHOST, 143),
        LoginPath::Plaintext,
        user,
        pass,
    )
    .unwrap();
    assert_outcome(
        &local,
        &LoginOutcome::LoggedIn,
        "IMAP plaintext 127.0.0.1 -> 127.0.0.1",
    );
    // ...but it is address equality, not "loopback": 127.0.0.1 to the
    // server's other address is refused.
    let cross = imap_login(
        &imap(LOCALHOST, SERVER, 143),
        LoginPath::Plaintext,
        user,
        pass,
    )
    .unwrap();
    assert_outcome(
        &cross,
        &LoginOutcome::PrivacyRequired,
        "IMAP plaintext 127.0.0.1 -> server address",
    );

    // POP3 alike.
    let pop = |local: IpAddr, to: IpAddr, port: u16| {
        LoginTarget::new(&ns, Some(local), SocketAddr::new(to, port))
    };
    let p_plain = pop3_login(&pop(CLIENT, SERVER, 110), LoginPath::Plaintext, user, pass).unwrap();
    assert_outcome(
        &p_plain,
        &LoginOutcome::PrivacyRequired,
        "POP3 plaintext from outside",
    );
    let p_stls = pop3_login(&pop(CLIENT, SERVER, 110), LoginPath::StartTls, user, pass).unwrap();
    assert_outcome(&p_stls, &LoginOutcome::LoggedIn, "POP3 STLS from outside");
    let p_995 = pop3_login(
        &pop(CLIENT, SERVER, 995),
        LoginPath::ImplicitTls,
        user,
        pass,
    )
    .unwrap();
    assert_outcome(&p_995, &LoginOutcome::LoggedIn, "POP3 995 from outside");
    let p_local = pop3_login(
        &pop(LOCALHOST, LOCALHOST, 110),
        LoginPath::Plaintext,
        user,
        pass,
    )
    .unwrap();
    assert_outcome(
        &p_local,
        &LoginOutcome::LoggedIn,
        "POP3 plaintext 127.0.0.1 -> 127.0.0.1",
    );

    // The log says who logged in from where, and how.
    dv.wait_log(&format!("rip={CLIENT}"), WAIT).unwrap();
    let logins = dv.logins();
    let from_client: Vec<_> = logins.iter().filter(|l| l.rip == CLIENT).collect();
    assert_eq!(from_client.len(), 4, "{logins:#?}");
    assert!(
        from_client.iter().all(|l| l.tls && l.user == "alice"),
        "{logins:#?}"
    );
    assert!(
        logins
            .iter()
            .any(|l| l.service == "imap-login" && l.rip == LOCALHOST && !l.tls && l.secured),
        "{logins:#?}"
    );
    assert!(
        logins
            .iter()
            .any(|l| l.service == "pop3-login" && l.rip == LOCALHOST && l.secured),
        "{logins:#?}"
    );

    // The client helpers one level down: greeting, capabilities.
    let mut c = ImapClient::connect(
        &ns,
        Some(CLIENT),
        SocketAddr::new(SERVER, 143),
        None,
        Security::Plain,
        IO,
    )
    .unwrap();
    let caps = c.capabilities().unwrap();
    assert!(caps.iter().any(|c| c == "LOGINDISABLED"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "STARTTLS"), "{caps:?}");
    c.logout().unwrap();

    dv.reload().unwrap();
    let again = imap_login(
        &imap(CLIENT, SERVER, 993),
        LoginPath::ImplicitTls,
        user,
        pass,
    )
    .unwrap();
    assert_outcome(&again, &LoginOutcome::LoggedIn, "IMAP 993 after reload");
}

#[test]
fn stock_nginx_serves_the_default_site_and_logs_the_client() {
    if !require_root("stock_nginx_serves_the_default_site_and_logs_the_client") {
        return;
    }
    let ns = namespace();
    let nginx = Nginx::start_stock(&ns).unwrap();
    let link = std::fs::read_link(nginx.config_dir().join("sites-enabled/default")).unwrap();
    assert_eq!(link, std::path::Path::new("../sites-available/default"));

    let status = http_get(&ns, Some(CLIENT), SocketAddr::new(SERVER, 80), None).unwrap();
    assert_eq!(status, Some(200));
    assert!(
        nginx.access_clients().contains(&CLIENT),
        "access log:\n{}",
        nginx.access_log()
    );
    // A PROXY header on the stock (non-PROXY) listener is a bad request.
    let header = ceres_tests::postfix::smtp::proxy_v1(
        SocketAddr::new("192.0.2.10".parse().unwrap(), 40000),
        SocketAddr::new(SERVER, 80),
    );
    let status = http_get(&ns, Some(CLIENT), SocketAddr::new(SERVER, 80), Some(header)).unwrap();
    assert_eq!(status, Some(400));

    nginx.reload().unwrap();
    let status = http_get(&ns, Some(CLIENT), SocketAddr::new(SERVER, 80), None).unwrap();
    assert_eq!(status, Some(200));
}
