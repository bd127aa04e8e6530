//! Issue 13, end to end with the real agents and a real Postfix at home: a
//! connection flood on port 25 from many /64s of one IPv6 /56, held open,
//! leaves a fresh sender in another /48 able to deliver a whole message —
//! and, with the same flood and the /56 and /48 caps raised to the port cap,
//! it does not (the proof that the per-network cap is what helps).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use ceres_tests::postfix::smtp::{SmtpClient, compose, connect_from, wait_banner};
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Ceres, Daemon, Lab, addr, require_root, sh, unique_id, wait_until};

/// Concurrent connections on port 25, small so the flood is quick.
const PORT_CAP: u32 = 40;
/// Per source (IPv6 /64): above what the flood holds from one /64, so the
/// per-source cap never decides here.
const SOURCE_CAP: u32 = 4;
/// Per IPv6 /56 with the network caps on.
const NET56_CAP: u32 = 8;
/// Per IPv6 /48 with the network caps on.
const NET48_CAP: u32 = 16;
/// The last slots of the port kept for sources seen delivering (the default,
/// a tenth of the port, written out so the expected counts are plain). The
/// fresh sender has never delivered, so these do not help it.
const RESERVED: u32 = 4;
/// The flooding /64s, all in 2001:db8:5600::/56 (and so in the /48
/// 2001:db8:5600::/48); the fresh sender, addr::CLIENT6, is in 2001:db8:2::/48.
const FLOOD_64S: u32 = 64;
/// Connections opened from each flooding /64.
const PER_64: u32 = 3;
/// Bound on any single read: every expected answer comes long before.
const GUARD: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The flood's source addresses: one per /64, the /64s
/// 2001:db8:5600:0::/64 … 2001:db8:5600:3f::/64 (bits 56–63 vary, so all
/// share the /56).
fn flood_sources() -> Vec<IpAddr> {
    (0..FLOOD_64S)
        .map(|i| ip(&format!("2001:db8:5600:{i:x}::10")))
        .collect()
}

/// The relay settings of a run: the port and source caps, and the /56 and
/// /48 caps given.
fn vps_lines(net56: u32, net48: u32) -> Vec<String> {
    vec![
        "CERES_RELAYS=25/proxy-v2".into(),
        format!("CERES_RELAY_MAX_PER_PORT={PORT_CAP}"),
        format!("CERES_RELAY_MAX_PER_SOURCE={SOURCE_CAP}"),
        format!("CERES_RELAY_MAX_PER_V6_56={net56}"),
        format!("CERES_RELAY_MAX_PER_V6_48={net48}"),
        format!("CERES_RELAY_RESERVED_FOR_KNOWN={RESERVED}"),
    ]
}

/// The gateway up with home's Postfix behind it, relaying port 25 (checked
/// with a banner through the VPS, and that connection gone again so the
/// flood starts on an empty port).
struct Gateway<'a> {
    ceres: Ceres<'a>,
    vps: Daemon,
    _home: Daemon,
    mx: Postfix,
}

fn gateway<'a>(lab: &'a Lab, net56: u32, net48: u32) -> Gateway<'a> {
    let lines = vps_lines(net56, net48);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let ceres = Ceres::init(lab, &lines, &[]).unwrap();
    let (vps, home) = ceres.up().unwrap();
    let mx = Postfix::start(
        &lab.home,
        PostfixOptions::home(vec![ip("127.0.0.1"), ip("::1")]),
    )
    .unwrap();
    wait_banner(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS6), 25),
        Duration::from_secs(30),
    )
    .unwrap();
    wait_port25(&ceres, "the probe connection to close", |p| {
        p["active"] == 0
    });
    Gateway {
        ceres,
        vps,
        _home: home,
        mx,
    }
}

/// Port 25's entry in `cerectl status --json`.
fn port25(ceres: &Ceres<'_>) -> anyhow::Result<serde_json::Value> {
    let (_, j) = ceres.status_json()?;
    j["relays"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["port"] == 25))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no port 25 in status: {j}"))
}

/// Waits until port 25's status entry satisfies `cond`; returns it.
fn wait_port25(
    ceres: &Ceres<'_>,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(what, Duration::from_secs(10), || {
        last = port25(ceres)?;
        Ok(cond(&last))
    })
    .unwrap_or_else(|e| panic!("{e}; port 25: {last}"));
    last
}

/// Adds the flood's addresses to the internet namespace's loopback
/// (`nodad`: usable at once); the internet namespace routes to the VPS.
fn add_flood_addresses(lab: &Lab) {
    let batch: String = flood_sources()
        .iter()
        .map(|a| format!("address add {a}/128 dev lo nodad\n"))
        .collect();
    let file = lab.path("flood-addresses.batch");
    std::fs::write(&file, batch).unwrap();
    sh(std::process::Command::new("ip")
        .args(["-n", &lab.internet.name, "-batch"])
        .arg(&file))
    .unwrap();
}

/// What the flood got.
#[derive(Debug, Default)]
struct Flood {
    /// Connections the relay took (home's Postfix greeted them): held open.
    held: Vec<TcpStream>,
    /// Refused with a `421` reply (the first such line kept).
    refused_421: u32,
    first_421: Option<String>,
    /// Closed without a reply.
    closed: u32,
}

impl Flood {
    fn refused(&self) -> u32 {
        self.refused_421 + self.closed
    }
}

/// The first line the server sends, `None` when it closes without one.
fn first_line(stream: &TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => None,
        Err(e) => panic!("no answer within {GUARD:?} (the relay hung?): {e}"),
    }
}

/// Opens `PER_64` connections from each flooding /64 to the VPS's public
/// IPv6 port 25, all before reading any answer (the relay decides at
/// accept; home's postscreen greets a new client only after its greet
/// wait), then sorts them into held and refused.
fn flood(lab: &Lab) -> Flood {
    let to = SocketAddr::new(ip(addr::VPS6), 25);
    let mut opened = Vec::new();
    for _ in 0..PER_64 {
        for from in flood_sources() {
            opened.push(connect_from(&lab.internet, from, to, GUARD).unwrap());
        }
    }
    let mut f = Flood::default();
    for s in opened {
        match first_line(&s) {
            Some(l) if l.starts_with("220") => f.held.push(s),
            Some(l) if l.starts_with("421") => {
                f.refused_421 += 1;
                f.first_421.get_or_insert(l);
            }
            Some(l) => panic!("unexpected first line from the relay: {l:?}"),
            None => f.closed += 1,
        }
    }
    eprintln!(
        "flood of {} from {FLOOD_64S} /64s of one /56: {} held, {} refused with 421, {} closed; first 421: {:?}",
        FLOOD_64S * PER_64,
        f.held.len(),
        f.refused_421,
        f.closed,
        f.first_421
    );
    f
}

/// Refusals by reason, once status has counted `total` of them.
fn refused_by(ceres: &Ceres<'_>, total: u32) -> serde_json::Map<String, serde_json::Value> {
    let p = wait_port25(ceres, &format!("{total} refusals counted"), |p| {
        p["refused"] == total
    });
    eprintln!("cerectl status: port 25 {p}");
    p["refused_by"].as_object().cloned().unwrap_or_default()
}

/// Closes the flood's connections; the relay gives every slot back.
fn release(ceres: &Ceres<'_>, f: Flood) {
    drop(f.held);
    wait_port25(ceres, "the relay to release every slot", |p| {
        p["active"] == 0
    });
}

#[test]
fn a_flood_from_many_64s_of_one_56_leaves_a_fresh_sender_able_to_deliver_through_the_vps() {
    if !require_root(
        "a_flood_from_many_64s_of_one_56_leaves_a_fresh_sender_able_to_deliver_through_the_vps",
    ) {
        return;
    }
    let lab = Lab::new().unwrap();
    let gw = gateway(&lab, NET56_CAP, NET48_CAP);
    add_flood_addresses(&lab);

    let f = flood(&lab);
    assert_eq!(
        f.held.len() as u32,
        NET56_CAP,
        "one /56 holds its cap and no more"
    );
    assert_eq!(f.refused(), FLOOD_64S * PER_64 - NET56_CAP);
    assert_eq!(f.closed, 0, "SMTP refusals say 421 before closing");
    let line = f.first_421.clone().unwrap();
    assert!(
        line.starts_with("421 4.7.0 mail.example.com too many connections from your network"),
        "{line}"
    );
    let by = refused_by(&gw.ceres, f.refused());
    assert_eq!(
        by.get("v6_net56").and_then(|v| v.as_u64()),
        Some(u64::from(f.refused())),
        "every refusal is the /56 cap: {by:?}"
    );
    assert_eq!(by.len(), 1, "no other reason: {by:?}");

    // While the flood holds on: a fresh source in another /48 delivers a
    // whole message through the VPS to home's Maildir.
    let id = format!("{}@client.example", unique_id());
    let mut client = SmtpClient::connect_from(
        &lab.internet,
        ip(addr::CLIENT6),
        SocketAddr::new(ip(addr::VPS6), 25),
        None,
        GUARD,
    )
    .unwrap_or_else(|e| {
        panic!(
            "fresh sender refused: {e:#}\nvps log:\n{}",
            gw.vps.log_text()
        )
    });
    let reply = client
        .send_mail(
            "client.example",
            "alice@client.example",
            &["postmaster@example.com"],
            &compose(
                "alice@client.example",
                "postmaster@example.com",
                "through the flood",
                &id,
                "one line\n",
            ),
        )
        .unwrap();
    assert_eq!(reply.code, 250, "{}", client.transcript());
    client.quit().unwrap();
    let msg = gw
        .mx
        .wait_for_message_id(&id, Duration::from_secs(30))
        .unwrap();
    assert!(msg.content.contains("through the flood"));
    gw.mx
        .wait_log(
            &format!("CONNECT from [{}]", addr::CLIENT6),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        port25(&gw.ceres).unwrap()["refused"],
        f.refused(),
        "the fresh sender was not refused"
    );

    release(&gw.ceres, f);
}

/// The same flood with the /56 and /48 caps raised to the port cap (only the
/// per-/64 cap left, as before issue 13): it takes every slot a stranger
/// may use, and the fresh sender gets `421`.
#[test]
fn without_the_56_cap_the_same_flood_fills_port_25_and_a_fresh_sender_gets_421() {
    if !require_root("without_the_56_cap_the_same_flood_fills_port_25_and_a_fresh_sender_gets_421")
    {
        return;
    }
    let lab = Lab::new().unwrap();
    let gw = gateway(&lab, PORT_CAP, PORT_CAP);
    add_flood_addresses(&lab);

    let f = flood(&lab);
    let open_to_strangers = PORT_CAP - RESERVED;
    assert_eq!(f.held.len() as u32, open_to_strangers, "{f:?}");
    assert_eq!(f.refused(), FLOOD_64S * PER_64 - open_to_strangers);
    let by = refused_by(&gw.ceres, f.refused());
    assert!(!by.contains_key("v6_net56"), "{by:?}");
    assert!(!by.contains_key("v6_net48"), "{by:?}");

    let stream = connect_from(
        &lab.internet,
        ip(addr::CLIENT6),
        SocketAddr::new(ip(addr::VPS6), 25),
        GUARD,
    )
    .unwrap();
    let mut client = SmtpClient::new(stream, GUARD).unwrap();
    let reply = client.read_reply().unwrap();
    eprintln!("fresh sender: {}", client.transcript().trim());
    assert_eq!(reply.code, 421, "{}", client.transcript());
    assert!(
        reply.text().contains("too many connections"),
        "{}",
        reply.text()
    );
    // Refused as a stranger on a port the flood filled: the slots left are
    // kept for known senders (or there are none).
    let by = refused_by(&gw.ceres, f.refused() + 1);
    let full = ["reserved_for_known", "port_full"]
        .iter()
        .filter_map(|r| by.get(*r)?.as_u64())
        .sum::<u64>();
    assert_eq!(full, u64::from(f.refused() + 1), "{by:?}");

    release(&gw.ceres, f);
}
