//! `ceres-lab`: the one-machine demo. Builds three network namespaces
//! (internet, vps, home), runs both agents with real keys and certificates,
//! joins them, starts Debian's Postfix at home with its stock configuration
//! and lets `cerectl mailserver-config postfix --apply` configure it (as a
//! user would), starts a Postfix on the internet side, delivers a message in
//! through the VPS and one out, shows `cerectl status` and `cerectl dns`,
//! then tears it all down. Needs root.
//!
//! Usage: `ceres-lab demo [--keep]` — with `--keep` it stays up until Enter.

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use ceres_tests::postfix::smtp::{SmtpClient, compose, wait_banner};
use ceres_tests::postfix::{Postfix, PostfixOptions, StockSite};
use ceres_tests::{Ceres, Lab, addr, unique_id};

fn ip(s: &str) -> anyhow::Result<IpAddr> {
    Ok(s.parse()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("clean") {
        return clean();
    }
    if args.first().map(String::as_str) != Some("demo") {
        eprintln!(
            "usage: ceres-lab demo [--keep] | ceres-lab clean\n\nBuilds the one-machine lab (namespaces internet, vps, home), runs both agents,\n\
             delivers mail in and out through the VPS with real Postfix, shows `cerectl status`\n\
             and `cerectl dns`, and cleans up. Needs root."
        );
        std::process::exit(2);
    }
    let keep = args.iter().any(|a| a == "--keep");
    anyhow::ensure!(
        ceres_tests::require_root("ceres-lab"),
        "ceres-lab needs root"
    );
    let lab = Lab::new().context("building the namespaces")?;
    step(&format!(
        "lab {}: internet (router, client {} / {}), vps {} / {}, home {} behind the router",
        lab.id,
        addr::CLIENT,
        addr::CLIENT6,
        addr::VPS,
        addr::VPS6,
        addr::HOME
    ));
    // The relay the lab's Postfix serves (25, with PROXY to its loopback
    // PROXY port), and home's probes of it every 2 s so the status below
    // shows what they found.
    let ceres = Ceres::init(
        &lab,
        &["CERES_RELAYS=25/proxy-v2"],
        &["CERES_PROBE_INTERVAL=2s"],
    )?;
    step("ceres-vps init: CA, server certificate, config");
    let _vps = ceres.start_vps()?;
    step(
        "ceres-vps run: control plane (mutual TLS gRPC, 203.0.113.10:7443), WireGuard (UDP 51820), mail-port relays",
    );
    ceres.join_home()?;
    step("ceres-home join: one-time home token; key made at home, CSR signed by the VPS");
    let _home = ceres.start_home()?;
    step(
        "ceres-home run: session to the VPS, tunnel, forwarders to the mail server, outbound routing",
    );
    ceres.enroll_ctl()?;
    step("cerectl enroll (from the internet namespace): admin certificate");
    ceres.wait_home_connected(true, Duration::from_secs(20))?;

    let site = StockSite {
        users: vec!["postmaster".into()],
        ..StockSite::default()
    };
    let home_mx = Postfix::start_stock(&lab.home, site).context("starting Postfix at home")?;
    step("Postfix at home: Debian's package, stock main.cf and master.cf");
    let config_dir = home_mx.config_dir();
    let out = ceres_tests::run(
        lab.home
            .command(ceres_tests::bin("cerectl"))
            .arg("--dir")
            .arg(&ceres.ctl_dir)
            .args(["mailserver-config", "postfix", "--apply", "--config-dir"])
            .arg(&config_dir),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "mailserver-config --apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    step("cerectl mailserver-config postfix --apply (at home):");
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    // The lab has no DNS: mail for remote.example goes straight to the
    // internet-side MX (what an MX record would say).
    home_mx.postconf(&[
        "-e",
        &format!(
            "transport_maps = inline:{{ remote.example=smtp:[{}]:25 }}",
            addr::CLIENT
        ),
    ])?;
    home_mx.reload()?;
    let remote_mx = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![ip(addr::CLIENT)?],
            "mx.remote.example",
            &["remote.example"],
        ),
    )
    .context("starting the internet-side Postfix")?;
    step("a remote MX on the internet side");
    wait_banner(
        &lab.internet,
        SocketAddr::new(ip(addr::VPS)?, 25),
        Duration::from_secs(30),
    )?;

    let id = format!("{}@client.example", unique_id());
    let msg = compose(
        "alice@client.example",
        "postmaster@example.com",
        "hello through CERES",
        &id,
        "Delivered via the VPS.\n",
    );
    let mut client = SmtpClient::connect_from(
        &lab.internet,
        ip(addr::CLIENT)?,
        SocketAddr::new(ip(addr::VPS)?, 25),
        None,
        Duration::from_secs(20),
    )?;
    let reply = client.send_mail(
        "client.example",
        "alice@client.example",
        &["postmaster@example.com"],
        &msg,
    )?;
    client.quit()?;
    anyhow::ensure!(
        reply.code == 250,
        "the message was not accepted: {}",
        reply.text()
    );
    let delivered = home_mx.wait_for_message_id(&id, Duration::from_secs(30))?;
    step(&format!(
        "mail in: {} -> {}:25 -> tunnel -> home Postfix; in the Maildir:",
        addr::CLIENT,
        addr::VPS
    ));
    println!("    {}", delivered.path.display());
    for line in home_mx
        .log()
        .lines()
        .filter(|l| l.contains("connect from unknown[192.0.2.10]"))
        .take(1)
    {
        println!("    home Postfix log: {line}");
    }

    let out_id = format!("{}@example.com", unique_id());
    home_mx.sendmail(
        "postmaster@example.com",
        "bob@remote.example",
        &compose(
            "postmaster@example.com",
            "bob@remote.example",
            "out via the VPS",
            &out_id,
            "hi\n",
        ),
    )?;
    remote_mx.wait_for_message_id(&out_id, Duration::from_secs(60))?;
    step("mail out: home Postfix -> tunnel -> VPS NAT -> remote MX, which saw the client:");
    for line in remote_mx
        .log()
        .lines()
        .filter(|l| l.contains("connect from") && l.contains(addr::VPS))
        .take(1)
    {
        println!("    remote MX log: {line}");
    }

    ceres.wait_mail_server_reachable(None, Duration::from_secs(20))?;
    step("cerectl status:");
    let (code, out, _) = ceres.ctl(&["status"])?;
    print!("{out}");
    println!("(exit code {code})");
    step("cerectl dns (what to set at the DNS host and the VPS provider):");
    let (_, out, err) = ceres.ctl(&["dns"])?;
    print!("{out}{err}");
    if keep {
        println!(
            "\nlab is up: try `ip netns exec {} {} --dir {} status`; press Enter to tear down",
            lab.internet.name,
            ceres_tests::bin("cerectl").display(),
            ceres.ctl_dir.display()
        );
        let _ = std::io::stdin().lock().lines().next();
    }
    step("tearing down");
    Ok(())
}

/// Removes what a lab killed mid-run may leave: its namespaces (with the
/// processes in them) and WireGuard API sockets. A finished demo cleans up
/// by itself; this is the second command for when it did not.
fn clean() -> anyhow::Result<()> {
    anyhow::ensure!(
        ceres_tests::require_root("ceres-lab clean"),
        "ceres-lab clean needs root"
    );
    let list = ceres_tests::sh(std::process::Command::new("ip").args(["netns", "list"]))?;
    let mut removed = 0;
    for name in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("ceres-"))
    {
        // Processes first: a namespace lives on while something runs in it.
        let pids =
            ceres_tests::run(std::process::Command::new("ip").args(["netns", "pids", name]))?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
        ceres_tests::sh(std::process::Command::new("ip").args(["netns", "del", name]))?;
        println!("removed namespace {name}");
        removed += 1;
    }
    println!("{removed} lab namespace(s) removed");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn step(msg: &str) {
    println!("==> {msg}");
}
