//! Issue 7, chaos with real mail (the CI version): a Postfix on the internet
//! side queues 500 messages for example.com and delivers them through the
//! VPS to the Postfix at home while the lab injects faults for 60 s — home's
//! link flapping, kill -9 and restart of each agent, forced key rotations,
//! home's address changing. Afterwards every message must be in the home
//! Maildir (by Message-ID, at least once), none bounced, and the sender
//! handed every message to the home server only (never to the VPS itself).
//!
//! `CERESTEST_CHAOS_MESSAGES` and `CERESTEST_CHAOS_SECS` make it longer.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ceres_tests::postfix::smtp::compose;
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Ceres, Lab, addr, require_root, unique_id, wait_until};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn no_mail_lost_under_faults() {
    if !require_root("no_mail_lost_under_faults") {
        return;
    }
    let messages = env_num("CERESTEST_CHAOS_MESSAGES", 500);
    let fault_secs = env_num("CERESTEST_CHAOS_SECS", 60);
    let lab = Lab::new().unwrap();
    // The one sending Postfix stands in for the whole internet: the per-source
    // rate limit (meant for floods) would defer its 500 messages.
    let ceres = Ceres::init(&lab, &["CERES_RELAY_RATE_PER_SOURCE=0"], &[]).unwrap();
    let (mut vps, mut home) = ceres.up().unwrap();

    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let home_mx = Postfix::start(
        &lab.home,
        PostfixOptions::home(vec![ip("127.0.0.1"), ip("::1")]),
    )
    .unwrap();
    // The sender: example.com goes to the VPS's public address, no DNS.
    let mut opts = PostfixOptions::sink(
        vec![ip(addr::CLIENT)],
        "mx.sender.example",
        &["sender.example"],
    );
    opts.transport = vec![("example.com".into(), format!("[{}]:25", addr::VPS))];
    let sender = Postfix::start(&lab.internet, opts).unwrap();

    // Messages are submitted at a steady pace across the whole fault window
    // (on a second thread), so delivery is under way whenever a fault hits.
    let run = unique_id();
    let ids: Vec<String> = (0..messages)
        .map(|i| format!("chaos-{run}-{i}@sender.example"))
        .collect();
    let pace = Duration::from_secs(fault_secs).div_f64(messages as f64 * 1.1);
    let t0 = Instant::now();
    let isp_side = format!("{}i", lab.home_if);
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for (i, id) in ids.iter().enumerate() {
                let msg = compose(
                    "alice@sender.example",
                    "postmaster@example.com",
                    &format!("chaos {i}"),
                    id,
                    "x\n",
                );
                sender
                    .sendmail("alice@sender.example", "postmaster@example.com", &msg)
                    .unwrap();
                std::thread::sleep(pace);
            }
        });
        // Faults, in a fixed rotation, for `fault_secs`.
        let mut home_on_alt = false;
        let mut step = 0u32;
        while t0.elapsed() < Duration::from_secs(fault_secs) {
            let fault = [
                "link flap",
                "kill -9 home",
                "rotate",
                "kill -9 vps",
                "home address change",
            ][step as usize % 5];
            step += 1;
            *counts.entry(fault).or_default() += 1;
            match fault {
                "link flap" => {
                    lab.internet
                        .ip(&["link", "set", &isp_side, "down"])
                        .unwrap();
                    std::thread::sleep(Duration::from_secs(3)); // the outage itself
                    lab.internet.ip(&["link", "set", &isp_side, "up"]).unwrap();
                    lab.internet
                        .ip(&["route", "replace", "198.51.100.0/24", "dev", &isp_side])
                        .unwrap();
                }
                "kill -9 home" => {
                    home.kill9().unwrap();
                    std::thread::sleep(Duration::from_secs(1)); // home stays dead a moment: senders see 421
                    home = ceres.start_home().unwrap();
                }
                "rotate" => {
                    let _ = ceres.ctl(&["rotate"]).unwrap();
                }
                "kill -9 vps" => {
                    vps.kill9().unwrap();
                    std::thread::sleep(Duration::from_secs(1)); // the VPS stays dead a moment: the fault itself
                    vps = ceres.start_vps().unwrap();
                }
                _ => {
                    let (from, to) = if home_on_alt {
                        (addr::HOME_ALT, addr::HOME)
                    } else {
                        (addr::HOME, addr::HOME_ALT)
                    };
                    lab.home
                        .ip(&["addr", "del", &format!("{from}/24"), "dev", &lab.home_if])
                        .unwrap();
                    lab.home
                        .ip(&["addr", "add", &format!("{to}/24"), "dev", &lab.home_if])
                        .unwrap();
                    lab.home
                        .ip(&["route", "replace", "default", "via", addr::HOME_GW])
                        .unwrap();
                    home_on_alt = !home_on_alt;
                }
            }
            std::thread::sleep(Duration::from_secs(2)); // the fault schedule: one every ~2 s
        }
    });
    let faults_end = Instant::now();
    eprintln!("faults for {:?}: {counts:?}", t0.elapsed());

    // Drain: every message at home, the sender's queue empty.
    sender.flush().ok();
    let drain_limit = Duration::from_secs(240.max(messages / 2));
    wait_until("every message in the home Maildir", drain_limit, || {
        let have = home_mx.maildir_message_ids();
        Ok(ids.iter().all(|id| have.iter().any(|h| h == id)))
    })
    .unwrap_or_else(|e| {
        let have = home_mx.maildir_message_ids();
        let missing = ids.iter().filter(|id| !have.contains(id)).count();
        panic!(
            "{e}: {missing} of {messages} missing; sender queue {:?}",
            sender.queue_len()
        )
    });
    let drain = faults_end.elapsed();
    sender.wait_queue_empty(Duration::from_secs(60)).unwrap();

    let have = home_mx.maildir_message_ids();
    let delivered = ids.iter().filter(|id| have.contains(id)).count();
    let duplicates = have.len().saturating_sub(delivered);
    let log = sender.log();
    let bounced = log.lines().filter(|l| l.contains("status=bounced")).count();
    // Every acceptance the sender saw came from the home server (its banner
    // and queue ids), never from the VPS speaking for it.
    let sent: Vec<&str> = log.lines().filter(|l| l.contains("status=sent")).collect();
    eprintln!(
        "chaos: {messages} queued, {delivered} delivered, {duplicates} duplicates, {bounced} bounced, drained {drain:?} after the faults"
    );
    assert_eq!(bounced, 0, "messages bounced:\n{log}");
    assert_eq!(delivered as u64, messages);
    assert!(
        sent.len() as u64 >= messages,
        "only {} status=sent lines",
        sent.len()
    );
    for l in &sent {
        assert!(
            l.contains("relay=203.0.113.10[203.0.113.10]:25"),
            "sent elsewhere: {l}"
        );
        assert!(
            l.contains("queued as"),
            "accepted without a home queue id: {l}"
        );
    }
}
