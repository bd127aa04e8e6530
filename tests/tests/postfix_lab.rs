//! The Postfix harness on its own, before CERES sits in the middle: a real
//! Postfix at home with postscreen reading PROXY (v1/v2, IPv4/IPv6 clients)
//! on its loopback PROXY port only, port 25 plain for everyone else, the
//! submission PROXY port driven by swaks, and outbound mail from home
//! to a second real Postfix on the internet side that logs which client it
//! saw.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_tests::postfix::smtp::{
    self, SmtpClient, Swaks, SwaksProxy, compose, proxy_v1, proxy_v2,
};
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Lab, Netns, addr, require_root, unique_id};

const WAIT: Duration = Duration::from_secs(20);
const IO: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(ip_: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(ip_), port)
}

#[test]
fn postscreen_takes_proxy_headers_and_delivers_to_the_maildir() {
    if !require_root("postscreen_takes_proxy_headers_and_delivers_to_the_maildir") {
        return;
    }
    let lab = Lab::new().unwrap();
    let home = Postfix::start(
        &lab.home,
        PostfixOptions::home(vec![ip(addr::HOME), ip(addr::HOME6)]),
    )
    .unwrap();
    // The PROXY port, as the home agent's forwarder reaches it: loopback.
    let home25 = sock("127.0.0.1", 10025);

    // IPv4, PROXY v2, a raw SMTP session from the internet namespace.
    let id4 = format!("{}.v4@lab.example.org", unique_id());
    let header = proxy_v2(sock(addr::CLIENT, 40000), home25);
    let delivery = smtp::deliver(
        &lab.home,
        home25,
        Some(&header),
        "sender@example.org",
        &["postmaster@example.com"],
        &compose(
            "sender@example.org",
            "postmaster@example.com",
            "over PROXY v2",
            &id4,
            "Hello over IPv4.\r\n.a line starting with a dot",
        ),
        IO,
    )
    .unwrap();
    assert!(delivery.accepted, "not accepted:\n{}", delivery.transcript);
    let msg = home.wait_for_message_id(&id4, WAIT).unwrap();
    assert!(
        msg.content.contains("\n.a line starting with a dot"),
        "dot-stuffing lost: {}",
        msg.content
    );
    assert!(
        msg.content.contains(&format!("[{}]", addr::CLIENT)),
        "Received: should name the real client: {}",
        msg.content
    );
    home.wait_log(&format!("CONNECT from [{}]:40000", addr::CLIENT), WAIT)
        .unwrap();

    // IPv6, PROXY v2 with a TCP6 address block.
    let home25v6 = sock(addr::HOME6, 25);
    // (The header names the IPv6 client and destination; it travels over
    // loopback IPv4 like every forwarded connection.)
    let id6 = format!("{}.v6@lab.example.org", unique_id());
    let header = proxy_v2(sock(addr::CLIENT6, 40001), home25v6);
    let mut client = SmtpClient::connect(&lab.home, home25, Some(&header), IO).unwrap();
    let reply = client
        .send_mail(
            "client6.example.org",
            "sender@example.org",
            &["someone@example.com"],
            &compose(
                "sender@example.org",
                "someone@example.com",
                "over IPv6",
                &id6,
                "Hello over IPv6.",
            ),
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{}", client.transcript());
    client.quit().unwrap();
    home.wait_for_message_id(&id6, WAIT).unwrap();
    home.wait_log(&format!("CONNECT from [{}]:40001", addr::CLIENT6), WAIT)
        .unwrap();

    // PROXY v1 works as well.
    let banner = smtp::read_banner(
        &lab.home,
        home25,
        &proxy_v1(sock("192.0.2.99", 40002), home25),
        IO,
    )
    .unwrap()
    .expect("a banner after a PROXY v1 line");
    assert_eq!(banner.code, 220);
    assert!(banner.text().contains("mail.example.com"), "{banner:?}");

    // The latency probe works through postscreen, from the client's own
    // source address (postscreen's `220-` teaser ends the measurement).
    smtp::time_to_banner(
        &lab.home,
        None,
        home25,
        &proxy_v2(sock(addr::CLIENT, 40003), home25),
        IO,
    )
    .unwrap();
    home.wait_log(&format!("CONNECT from [{}]:40003", addr::CLIENT), WAIT)
        .unwrap();

    // Without a PROXY header postscreen greets nobody: it answers 421 (or
    // just closes), never 220.
    let reply = smtp::read_banner(&lab.home, home25, b"EHLO sneaky.example.org\r\n", IO).unwrap();
    assert!(
        reply.as_ref().is_none_or(|r| r.code != 220),
        "postscreen greeted a client without PROXY: {reply:?}"
    );
    home.wait_log("haproxy read: unrecognized protocol header", WAIT)
        .unwrap();

    // From the internet (or the LAN), port 25 is plain: a banner without a
    // header, and a forged header is just a bad command, never an address.
    let public25 = sock(addr::HOME, 25);
    let banner = smtp::read_banner(&lab.internet, public25, b"", IO)
        .unwrap()
        .expect("a banner on plain 25");
    assert_eq!(banner.code, 220);
    let forged = proxy_v1(sock("127.0.0.1", 40009), public25);
    let _ = smtp::read_banner(&lab.internet, public25, &forged, IO).unwrap();
    // The PROXY port is not reachable from outside the host.
    assert!(
        smtp::read_banner(
            &lab.internet,
            sock(addr::HOME, 10025),
            b"",
            Duration::from_secs(2)
        )
        .is_err(),
        "the PROXY port answered on a non-loopback address"
    );

    // smtpd saw the clients from the headers, never the router's address.
    home.wait_log("connect from unknown[192.0.2.99]", WAIT)
        .unwrap();
    let seen = home.remote_clients_seen();
    // The header clients, and the router (the plain-25 checks above come
    // from its address on the home link) — never the forged 127.0.0.1.
    let want: BTreeSet<IpAddr> = [
        ip(addr::CLIENT),
        ip(addr::CLIENT6),
        ip("192.0.2.99"),
        ip(addr::HOME_GW),
    ]
    .into();
    assert_eq!(seen, want, "log:\n{}", home.log());
    assert_eq!(home.maildir_messages().len(), 2);
}

#[test]
fn home_sends_outbound_mail_to_an_internet_side_postfix() {
    if !require_root("home_sends_outbound_mail_to_an_internet_side_postfix") {
        return;
    }
    let lab = Lab::new().unwrap();
    let sink = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(vec![ip(addr::CLIENT)], "mx.example.net", &["example.net"]),
    )
    .unwrap();
    let home = Postfix::start(
        &lab.home,
        PostfixOptions {
            inet_interfaces: vec![ip(addr::HOME)],
            transport: vec![("example.net".to_owned(), format!("[{}]:25", addr::CLIENT))],
            smtp_bind_address: Some(addr::HOME.parse().unwrap()),
            ..PostfixOptions::default()
        },
    )
    .unwrap();

    let id = format!("{}.out@example.com", unique_id());
    home.sendmail(
        "alice@example.com",
        "bob@example.net",
        &compose(
            "alice@example.com",
            "bob@example.net",
            "outbound",
            &id,
            "From home to the internet.",
        ),
    )
    .unwrap();
    let msg = sink.wait_for_message_id(&id, WAIT).unwrap();
    assert!(
        msg.content
            .contains(&format!("from mail.example.com (unknown [{}])", addr::HOME)),
        "sink's Received: line should show home: {}",
        msg.content
    );
    let seen = sink.remote_clients_seen();
    assert_eq!(
        seen,
        BTreeSet::from([ip(addr::HOME)]),
        "log:\n{}",
        sink.log()
    );
    home.wait_log(
        "to=<bob@example.net>, relay=192.0.2.10[192.0.2.10]:25",
        WAIT,
    )
    .unwrap();
    home.wait_queue_empty(WAIT).unwrap();
    sink.wait_queue_empty(WAIT).unwrap();
}

#[test]
fn swaks_on_plain_25_and_proxied_submission() {
    if !require_root("swaks_on_plain_25_and_proxied_submission") {
        return;
    }
    let lab = Lab::new().unwrap();
    let home = Postfix::start(
        &lab.home,
        PostfixOptions {
            inet_interfaces: vec![ip(addr::HOME)],
            submission_proxy: true,
            ..PostfixOptions::default()
        },
    )
    .unwrap();

    // Port 25 without PROXY: swaks straight from the internet namespace.
    let id25 = format!("{}.swaks25@lab.example.org", unique_id());
    let run = Swaks::new(sock(addr::HOME, 25), "postmaster@example.com", &id25)
        .run(&lab.internet)
        .unwrap();
    assert!(run.accepted, "{}", run.transcript);
    home.wait_for_message_id(&id25, WAIT).unwrap();

    // The submission PROXY port (loopback) expects PROXY: swaks writes a v1
    // header, from the home host like the forwarder.
    let id587 = format!("{}.swaks587@lab.example.org", unique_id());
    let proxy587 = sock("127.0.0.1", 10587);
    let mut swaks = Swaks::new(proxy587, "postmaster@example.com", &id587);
    swaks.proxy = Some(SwaksProxy {
        version: 1,
        source: sock("192.0.2.77", 50000),
        dest: sock(addr::HOME, 587),
    });
    let run = swaks.run(&lab.home).unwrap();
    assert!(run.accepted, "{}", run.transcript);
    home.wait_for_message_id(&id587, WAIT).unwrap();
    home.wait_log("submission/smtpd", WAIT).unwrap();
    let line = home
        .wait_log("connect from unknown[192.0.2.77]", WAIT)
        .unwrap();
    assert!(line.contains("postfix/submission/smtpd"), "{line}");

    // A swaks run that is refused reports it: unknown domain, no relaying.
    let refused = Swaks::new(sock(addr::HOME, 25), "someone@example.org", "x@y")
        .run(&lab.internet)
        .unwrap();
    assert!(!refused.accepted, "{}", refused.transcript);
    assert!(
        refused.transcript.contains("Relay access denied"),
        "{}",
        refused.transcript
    );
}

#[test]
fn a_failed_start_says_why() {
    if !require_root("a_failed_start_says_why") {
        return;
    }
    let ns = Netns::new(format!("ceres-{}-pf", unique_id())).unwrap();
    // 198.51.100.10 does not exist in this namespace.
    let err = Postfix::start(
        &ns,
        PostfixOptions {
            inet_interfaces: vec![ip(addr::HOME)],
            ..PostfixOptions::default()
        },
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("no local interface found for 198.51.100.10"),
        "{text}"
    );
}
