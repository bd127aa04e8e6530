//! The Postfix harness on its own, before CERES sits in the middle: a real
//! Postfix at home behind postscreen with PROXY (v1/v2, IPv4/IPv6), the
//! submission port with PROXY driven by swaks, and outbound mail from home
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
    let home25 = sock(addr::HOME, 25);

    // IPv4, PROXY v2, a raw SMTP session from the internet namespace.
    let id4 = format!("{}.v4@lab.example.org", unique_id());
    let header = proxy_v2(sock(addr::CLIENT, 40000), home25);
    let delivery = smtp::deliver(
        &lab.internet,
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
    let id6 = format!("{}.v6@lab.example.org", unique_id());
    let header = proxy_v2(sock(addr::CLIENT6, 40001), home25v6);
    let mut client = SmtpClient::connect(&lab.internet, home25v6, Some(&header), IO).unwrap();
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
        &lab.internet,
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
        &lab.internet,
        Some(ip(addr::CLIENT)),
        home25,
        &proxy_v2(sock(addr::CLIENT, 40003), home25),
        IO,
    )
    .unwrap();
    home.wait_log(&format!("CONNECT from [{}]:40003", addr::CLIENT), WAIT)
        .unwrap();

    // Without a PROXY header postscreen greets nobody: it answers 421 (or
    // just closes), never 220.
    let reply =
        smtp::read_banner(&lab.internet, home25, b"EHLO sneaky.example.org\r\n", IO).unwrap();
    assert!(
        reply.as_ref().is_none_or(|r| r.code != 220),
        "postscreen greeted a client without PROXY: {reply:?}"
    );
    home.wait_log("haproxy read: unrecognized protocol header", WAIT)
        .unwrap();

    // smtpd saw the clients from the headers, never the router's address.
    home.wait_log("connect from unknown[192.0.2.99]", WAIT)
        .unwrap();
    let seen = home.remote_clients_seen();
    let want: BTreeSet<IpAddr> = [ip(addr::CLIENT), ip(addr::CLIENT6), ip("192.0.2.99")].into();
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

    // 587 expects PROXY: swaks writes a v1 header.
    let id587 = format!("{}.swaks587@lab.example.org", unique_id());
    let mut swaks = Swaks::new(sock(addr::HOME, 587), "postmaster@example.com", &id587);
    swaks.proxy = Some(SwaksProxy {
        version: 1,
        source: sock("192.0.2.77", 50000),
        dest: sock(addr::HOME, 587),
    });
    let run = swaks.run(&lab.internet).unwrap();
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
