//! `ceres-bench`: the end-to-end gateway benchmark of issue 4 — the real
//! agents (release build) in the lab namespaces, relay + tunnel measured
//! against the direct path, the tunnel alone and HAProxy, in one run.
//!
//! Usage (needs root; `bench/gateway` builds the binaries and runs this):
//!
//! - `ceres-bench gateway [--samples N] [--runs N] [--conns N] [--seconds N] [--shape-mbit N]`
//! - `ceres-bench banner-server ADDR...` — the tiny banner server the
//!   benchmark starts inside the home namespace for the idle connections.
//! - `ceres-bench load [--sessions N]` — issue 7's load figure: N concurrent
//!   SMTP sessions through the VPS relay, each delivering one message to an
//!   SMTP sink at home, with the VPS agent's memory and CPU meanwhile.
//! - `ceres-bench smtp-sink COUNT_FILE ADDR...` — that sink (home namespace).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ceres_tests::postfix::smtp::{in_netns, time_to_banner};
use ceres_tests::postfix::{Postfix, PostfixOptions};
use ceres_tests::{Ceres, Daemon, Lab, Netns, addr, sh, wait_until};

const USAGE: &str = "usage:
  ceres-bench gateway [--samples N] [--runs N] [--conns N] [--seconds N] [--shape-mbit N]
      End-to-end gateway benchmark in the lab namespaces (needs root):
      SMTP time to banner relay+tunnel vs direct (N samples per path and run),
      one iperf3 stream relay+tunnel vs tunnel alone (S seconds per run),
      unshaped and again with the home line shaped to N Mbit/s (0: skip),
      VPS agent RSS per idle relayed connection (N connections) vs HAProxy.
      Defaults: --samples 1000 --runs 3 --conns 5000 --seconds 10 --shape-mbit 500.
  ceres-bench banner-server ADDR...
      Accepts on each ADDR, sends an SMTP-like banner, holds connections until
      the client closes (used by `gateway` inside the home namespace).
  ceres-bench load [--sessions N]
      N concurrent SMTP sessions (default 1000) from the internet client
      through the VPS relay and the tunnel to an SMTP sink at home, each
      delivering one message; prints completed/failed and the VPS agent's
      RSS and CPU before, at peak and after (needs root).
  ceres-bench failover [--runs N] [--pace-ms N] [--holddown-secs N]
      Issue 16: a home behind VPS A (priority 10) and B (20), home's Postfix
      sending one message every PACE to an outside server; N times A's link
      is cut: the outbound failover time (last message through A -> first
      through B) and the time until `cerectl status` shows A down, then the
      link back and the stream on A again (after the hold-down). Prints
      medians. Defaults: --runs 5 --pace-ms 200 --holddown-secs 10.
  ceres-bench smtp-sink COUNT_FILE ADDR...
      Minimal SMTP server (EHLO/MAIL/RCPT/DATA/QUIT, PROXY v2 header skipped)
      writing the number of accepted messages to COUNT_FILE (used by `load`).";

/// Home's tunnel address (the VPS agent's default).
const HOME_TUN: &str = "10.77.77.2";
/// Relayed iperf3 port: the VPS relays it to home, home's forwarder to 127.0.0.1.
const IPERF_RELAYED: u16 = 5201;
/// iperf3 on home's tunnel address itself, for "the tunnel alone".
const IPERF_TUNNEL: u16 = 5202;
/// First of the relayed ports carrying the idle connections.
const IDLE_BASE_PORT: u16 = 30025;
/// HAProxy's listening port on the VPS for the idle connections.
const HAPROXY_PORT: u16 = 10125;
/// HAProxy's listening port on the VPS in front of home's submission (587).
const HAPROXY_SUBMISSION_PORT: u16 = 10587;
/// Idle connections per relayed port. Home's forwarder admits at most 1,000
/// per port (`ceres_relay::DEFAULT_MAX_PER_PORT`, not configurable at home),
/// so the idle connections are spread over several relayed ports.
const IDLE_PER_PORT: usize = 900;
/// Connections opened and closed before a measurement: one-time start-up
/// allocations (first task, first pipe, thread-local caches) are not
/// charged to the connections being measured.
const WARMUP: usize = 50;
/// What the idle-connection banner server sends on accept.
const BANNER: &[u8] = b"220 bench.example ESMTP ceres-bench\r\n";

/// Command-line options of `gateway`.
#[derive(Debug, Clone, Copy)]
struct Options {
    samples: usize,
    runs: usize,
    conns: usize,
    seconds: u32,
    /// Rate of the home line for the second bulk pass (0: no such pass).
    shape_mbit: u32,
}

fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        samples: 1000,
        runs: 3,
        conns: 5000,
        seconds: 10,
        shape_mbit: 500,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("{flag} {value}: not a positive number");
        match flag.as_str() {
            "--samples" => o.samples = value.parse().with_context(bad)?,
            "--runs" => o.runs = value.parse().with_context(bad)?,
            "--conns" => o.conns = value.parse().with_context(bad)?,
            "--seconds" => o.seconds = value.parse().with_context(bad)?,
            "--shape-mbit" => o.shape_mbit = value.parse().with_context(bad)?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    ensure!(
        o.samples > 0 && o.runs > 0 && o.conns > 0 && o.seconds > 0,
        "every option must be at least 1"
    );
    // Two sockets per connection in the relay, 20,000 open files per process.
    ensure!(
        o.conns <= 8000,
        "--conns {} is over 8,000: the relay needs two sockets per connection and the hard limit here is 20,000 open files",
        o.conns
    );
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gateway") => gateway(parse_options(&args[1..])?),
        Some("banner-server") => banner_server(&args[1..]),
        Some("load") => load(parse_load_options(&args[1..])?),
        Some("smtp-sink") => smtp_sink(&args[1..]),
        Some("failover") => failover(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// `ceres-bench failover`: runs [`ceres_tests::failover::bench`] and prints
/// each run and the medians.
fn failover(args: &[String]) -> anyhow::Result<()> {
    let (mut runs, mut pace_ms, mut holddown) = (5usize, 200u64, 10u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("{flag} {value}: not a positive number");
        match flag.as_str() {
            "--runs" => runs = value.parse().with_context(bad)?,
            "--pace-ms" => pace_ms = value.parse().with_context(bad)?,
            "--holddown-secs" => holddown = value.parse().with_context(bad)?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    ensure!(
        runs > 0 && pace_ms > 0 && holddown > 0,
        "every option must be at least 1"
    );
    let results = ceres_tests::failover::bench(
        runs,
        Duration::from_millis(pace_ms),
        Duration::from_secs(holddown),
    )?;
    let secs = |f: fn(&ceres_tests::failover::FailoverRun) -> Duration| -> Vec<f64> {
        results.iter().map(|r| f(r).as_secs_f64()).collect()
    };
    let (out, down, back) = (
        secs(|r| r.outbound),
        secs(|r| r.status_down),
        secs(|r| r.back),
    );
    println!(
        "failover, {runs} runs, one outbound message every {pace_ms} ms, hold-down {holddown} s"
    );
    println!(
        "  outbound failover (last out through A -> first through B)  median {:.2} s  (runs: {})",
        median(&out),
        list(&out, 2)
    );
    println!(
        "  cut -> cerectl status shows A down                         median {:.2} s  (runs: {})",
        median(&down),
        list(&down, 2)
    );
    println!(
        "  link back -> first out through A again (with hold-down)    median {:.2} s  (runs: {})",
        median(&back),
        list(&back, 2)
    );
    Ok(())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The relayed ports the idle connections are spread over.
fn idle_ports(conns: usize) -> Vec<u16> {
    let n = conns.div_ceil(IDLE_PER_PORT);
    (0..n).map(|i| IDLE_BASE_PORT + i as u16).collect()
}

/// Raises this process's soft open-files limit to the hard limit: the
/// benchmark client and the banner server each hold one socket per idle
/// connection.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill, then to pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------
// The whole run.
// ---------------------------------------------------------------------------

fn gateway(o: Options) -> anyhow::Result<()> {
    ensure!(
        ceres_tests::require_root("ceres-bench"),
        "ceres-bench needs root (network namespaces, TUN devices, nftables)"
    );
    for tool in ["iperf3", "haproxy", "ss", "postfix"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|out| out.status.success()),
            "{tool} is not installed (apt-get install -y iperf3 haproxy iproute2 postfix)"
        );
    }
    raise_nofile();
    let load_start = loadavg();
    let started = Instant::now();

    // Relays: 25 without PROXY (a plain smtpd at home), 587 with PROXY v2
    // (smtpd with smtpd_upstream_proxy_protocol, the production setting),
    // iperf3, and the idle-connection ports with PROXY v2 (as HAProxy's
    // send-proxy-v2, the baseline).
    let idle = idle_ports(o.conns);
    let mut relays = format!("25,587/proxy-v2,{IPERF_RELAYED}");
    for p in &idle {
        // Home port written out: the banner server listens on the port itself
        // (a PROXY relay's default would be 10000 + port).
        relays.push_str(&format!(",{p}:{p}/proxy-v2"));
    }
    let limit = (o.conns + 1000).to_string();
    let vps_lines = [
        format!("CERES_RELAYS={relays}"),
        format!("CERES_RELAY_MAX_PER_PORT={limit}"),
        format!("CERES_RELAY_MAX_PER_SOURCE={limit}"),
        // One load generator stands in for many senders: no network caps,
        // rate limit or reserve in the way of the measurement.
        format!("CERES_RELAY_MAX_PER_V4_24={limit}"),
        format!("CERES_RELAY_MAX_PER_V6_56={limit}"),
        format!("CERES_RELAY_MAX_PER_V6_48={limit}"),
        "CERES_RELAY_RATE_PER_SOURCE=0".to_owned(),
        "CERES_RELAY_RESERVED_FOR_KNOWN=0".to_owned(),
    ];
    let vps_lines: Vec<&str> = vps_lines.iter().map(String::as_str).collect();

    let lab = Lab::new().context("building the lab namespaces")?;
    let ceres = Ceres::init(&lab, &vps_lines, &[])?;
    let vps = ceres.start_vps()?;
    ceres.join_home()?;
    let home = ceres.start_home()?;
    ceres.enroll_ctl()?;
    ceres.wait_home_connected(true, Duration::from_secs(30))?;
    let vps_pid = pid_of(&vps, "ceres-vps")?;
    let home_pid = pid_of(&home, "ceres-home")?;

    // Home's Postfix: a plain smtpd on 25, submission on 587 expecting
    // PROXY. No postscreen: a client it has not seen gets a `220-` teaser
    // and the rest of the banner only after postscreen_greet_wait, and a
    // known one goes through postscreen's hand-off to smtpd — either way
    // the timing would be postscreen's policy, not the path's. It listens on loopback (the forwarder's target) and
    // on home's own address (the direct path from the internet).
    let postfix = Postfix::start(
        &lab.home,
        PostfixOptions {
            inet_interfaces: vec![ip("127.0.0.1"), ip(addr::HOME)],
            postscreen_proxy_on_25: false,
            submission: true,
            submission_proxy: true,
            ..PostfixOptions::default()
        },
    )
    .context("starting Postfix at home")?;

    let mut banner_cmd = lab.home.command(std::env::current_exe()?);
    banner_cmd.arg("banner-server");
    for p in &idle {
        banner_cmd.arg(format!("127.0.0.1:{p}"));
    }
    let mut banner = Daemon::spawn("banner", banner_cmd, lab.dir.path())?;
    banner.wait_ready(Duration::from_secs(10))?;

    let vps25 = SocketAddr::new(ip(addr::VPS), 25);
    let vps587 = SocketAddr::new(ip(addr::VPS), 587);
    for (what, to) in [("25", vps25), ("587", vps587)] {
        wait_until(
            &format!("a banner from home's Postfix through VPS:{what}"),
            Duration::from_secs(30),
            || time_to_banner(&lab.internet, None, to, &[], Duration::from_secs(5)).map(|_| true),
        )?;
    }

    let mut iperf_cmd = lab.home.command("iperf3");
    iperf_cmd.args(["-s", "-B", "127.0.0.1", "-p", &IPERF_RELAYED.to_string()]);
    let _iperf_relayed = Daemon::spawn("iperf3-relayed", iperf_cmd, lab.dir.path())?;
    let mut iperf_cmd = lab.home.command("iperf3");
    iperf_cmd.args(["-s", "-B", HOME_TUN, "-p", &IPERF_TUNNEL.to_string()]);
    let _iperf_tunnel = Daemon::spawn("iperf3-tunnel", iperf_cmd, lab.dir.path())?;
    wait_listening(&lab.home, IPERF_RELAYED)?;
    wait_listening(&lab.home, IPERF_TUNNEL)?;
    // Home's input filter admits only the VPS to the forwarders from the
    // tunnel; the tunnel-alone baseline dials iperf3 on the tunnel address,
    // so open that one port for the benchmark (the agent installed the
    // table at start and keeps it while the forwarders stay up).
    ceres_tests::sh(lab.home.command("nft").args([
        "insert",
        "rule",
        "inet",
        "ceres_tunnel",
        "input",
        "iifname",
        &lab.home_tun,
        "tcp",
        "dport",
        &IPERF_TUNNEL.to_string(),
        "accept",
    ]))?;

    println!(
        "ceres-bench gateway: kernel {}, {} CPUs, load average at start {load_start}; lab {} ready in {:.1} s",
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        lab.id,
        started.elapsed().as_secs_f64()
    );

    // HAProxy runs for the whole measurement, like the VPS agent, so both
    // have served the banner connections before their idle measurement.
    // HAProxy dials home's forwarders where home reported them.
    let forwarders = ceres.forwarder_ports(idle.len() + 3, Duration::from_secs(30))?;
    let haproxy = start_haproxy(&lab, &forwarders, &idle, o.conns)?;
    let haproxy_pid = pid_of(&haproxy, "haproxy")?;
    let banners = bench_banners(&lab, o)?;
    let bulk = bench_bulk(&lab, o, vps_pid, home_pid).map_err(|e| {
        // The agents' logs go with the lab: say what they saw.
        let tail = |d: &Daemon| {
            let text = d.log_text();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        e.context(format!(
            "VPS agent log (end):\n{}\nhome agent log (end):\n{}",
            tail(&vps),
            tail(&home)
        ))
    })?;
    let shaped = if o.shape_mbit > 0 {
        Some(bench_bulk_shaped(&lab, o, vps_pid, home_pid)?)
    } else {
        None
    };
    let idle_results = bench_idle(&lab, o, &idle, vps_pid, home_pid, haproxy_pid)?;

    println!();
    report_banners(&banners, o);
    report_bulk(&bulk, o, None);
    if let Some(shaped) = &shaped {
        report_bulk(shaped, o, Some(o.shape_mbit));
    }
    report_idle(&idle_results, o);
    // A session that ended mid-run means the relays turned clients away for
    // a moment (home looked away): worth knowing next to the numbers.
    let ended = vps
        .log_text()
        .lines()
        .filter(|l| l.contains("home agent session ended"))
        .count();
    println!(
        "\nload average at end {}; whole run {:.0} s; home sessions ended during the run: {ended}",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    drop(haproxy);
    drop(banner);
    drop(postfix);
    Ok(())
}

/// The pid of a daemon started with `ip netns exec` (which execs the
/// program, so the pid is the program's), checked against its name.
fn pid_of(d: &Daemon, comm: &str) -> anyhow::Result<u32> {
    let pid = d.pid().context("daemon not running")?;
    let seen = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    ensure!(
        seen.trim() == comm,
        "pid {pid} is {:?}, not {comm}",
        seen.trim()
    );
    Ok(pid)
}

/// Waits until something listens on TCP `port` inside `ns` (by `ss`, so no
/// probe connection disturbs the server).
fn wait_listening(ns: &Netns, port: u16) -> anyhow::Result<()> {
    wait_until(
        &format!("a listener on port {port} in {}", ns.name),
        Duration::from_secs(10),
        || {
            let out = sh(ns
                .command("ss")
                .args(["-Hltn", "sport", "=", &format!(":{port}")]))?;
            Ok(!out.trim().is_empty())
        },
    )
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of sorted durations, in µs.
fn pct_us(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn list(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

// ---------------------------------------------------------------------------
// 1. SMTP time to banner.
// ---------------------------------------------------------------------------

/// One way to reach home's Postfix from the internet client.
struct BannerPath {
    name: &'static str,
    to: SocketAddr,
    /// Sent right after connecting (the PROXY header the relay would add).
    send_first: Vec<u8>,
}

/// Per path, per run: (p50 µs, p90 µs).
struct Banners {
    paths: Vec<&'static str>,
    runs: Vec<Vec<(f64, f64)>>,
}

fn bench_banners(lab: &Lab, o: Options) -> anyhow::Result<Banners> {
    let client = ip(addr::CLIENT);
    let home = ip(addr::HOME);
    let paths = [
        BannerPath {
            name: "direct :25 (internet -> home Postfix)",
            to: SocketAddr::new(home, 25),
            send_first: Vec::new(),
        },
        BannerPath {
            name: "relay+tunnel :25 (plain)",
            to: SocketAddr::new(ip(addr::VPS), 25),
            send_first: Vec::new(),
        },
        BannerPath {
            // Home's PROXY submission port is on loopback only (nothing but
            // the forwarder may send a header), so the direct path is the
            // plain submission service: the relayed path's header parsing
            // is charged to the relay, not hidden.
            name: "direct :587 (plain submission)",
            to: SocketAddr::new(home, 587),
            send_first: Vec::new(),
        },
        BannerPath {
            name: "relay+tunnel :587/proxy-v2",
            to: SocketAddr::new(ip(addr::VPS), 587),
            send_first: Vec::new(),
        },
        BannerPath {
            name: "HAProxy send-proxy-v2 + tunnel -> :587",
            to: SocketAddr::new(ip(addr::VPS), HAPROXY_SUBMISSION_PORT),
            send_first: Vec::new(),
        },
    ];
    let mut runs = Vec::new();
    for run in 1..=o.runs {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(o.samples); paths.len()];
        // Interleaved per connection, so load drift from the other tenants
        // of this machine hits every path alike; the first rounds warm up.
        for round in 0..(WARMUP + o.samples) {
            for (i, p) in paths.iter().enumerate() {
                let t = time_to_banner(
                    &lab.internet,
                    Some(client),
                    p.to,
                    &p.send_first,
                    Duration::from_secs(5),
                )
                .with_context(|| format!("{} (run {run}, round {round})", p.name))?;
                if round >= WARMUP {
                    samples[i].push(t);
                }
            }
        }
        let per_path: Vec<(f64, f64)> = samples
            .iter_mut()
            .map(|s| {
                s.sort();
                (pct_us(s, 0.5), pct_us(s, 0.9))
            })
            .collect();
        eprintln!(
            "  banners run {run}: p50 µs {}",
            list(&per_path.iter().map(|x| x.0).collect::<Vec<_>>(), 0)
        );
        runs.push(per_path);
    }
    Ok(Banners {
        paths: paths.iter().map(|p| p.name).collect(),
        runs,
    })
}

fn report_banners(b: &Banners, o: Options) {
    println!(
        "1. SMTP time to banner, {} sequential connections per path and run, {} runs, from the internet client {}",
        o.samples,
        o.runs,
        addr::CLIENT
    );
    println!(
        "   {:<40} {:>9} {:>9}   p50 of each run (µs)",
        "path", "p50 µs", "p90 µs"
    );
    let col = |i: usize, p90: bool| -> Vec<f64> {
        b.runs
            .iter()
            .map(|r| if p90 { r[i].1 } else { r[i].0 })
            .collect()
    };
    for (i, name) in b.paths.iter().enumerate() {
        println!(
            "   {:<40} {:>9.0} {:>9.0}   {}",
            name,
            median(&col(i, false)),
            median(&col(i, true)),
            list(&col(i, false), 0)
        );
    }
    // (what, direct path, relayed path) by index in `bench_banners`.
    for (what, d, r, ours) in [
        ("relay+tunnel on :25", 0, 1, true),
        ("relay+tunnel on :587/proxy-v2", 2, 3, true),
        ("HAProxy+tunnel on :587 (baseline)", 2, 4, false),
    ] {
        let added: Vec<f64> = b.runs.iter().map(|run| run[r].0 - run[d].0).collect();
        let added90: Vec<f64> = b.runs.iter().map(|run| run[r].1 - run[d].1).collect();
        let ratio: Vec<f64> = b.runs.iter().map(|run| run[r].0 / run[d].0).collect();
        let m = median(&added);
        println!(
            "   added by {what}: p50 {:.0} µs (runs {}), p90 {:.0} µs, relayed/direct p50 {:.2}{}",
            m,
            list(&added, 0),
            median(&added90),
            median(&ratio),
            match (ours, m <= 1000.0) {
                (false, _) => "",
                (true, true) => " — goal <= 1000 µs p50: met",
                (true, false) => " — goal <= 1000 µs p50: NOT met",
            }
        );
    }
}

// ---------------------------------------------------------------------------
// 2. One bulk TCP stream.
// ---------------------------------------------------------------------------

/// Per run: (Mbit/s, CPU seconds of both agents) for the tunnel alone and
/// for relay + tunnel.
struct Bulk {
    tunnel: Vec<(f64, f64)>,
    relay: Vec<(f64, f64)>,
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the parenthesized name; utime and stime are the
            // 14th and 15th fields of the whole line.
            let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            get(11) + get(12)
        })
        .sum()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// One iperf3 TCP stream from `ns` to `host:port` (first second omitted);
/// returns (Mbit/s received, CPU seconds the agents used meanwhile).
fn iperf(
    ns: &Netns,
    host: &str,
    port: u16,
    seconds: u32,
    agents: &[u32],
) -> anyhow::Result<(f64, f64)> {
    let c0 = cpu_ticks(agents);
    let out = sh(ns.command("timeout").args([
        &(seconds + 30).to_string(),
        "iperf3",
        "-c",
        host,
        "-p",
        &port.to_string(),
        "-t",
        &seconds.to_string(),
        "-O",
        "1",
        "-J",
    ]))
    .with_context(|| format!("iperf3 to {host}:{port} from {}", ns.name))?;
    let c1 = cpu_ticks(agents);
    let json: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("iperf3 output: {out}"))?;
    if let Some(err) = json["error"].as_str() {
        bail!("iperf3 to {host}:{port}: {err}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in iperf3 output: {out}"))?;
    Ok((bps / 1e6, (c1 - c0) as f64 / clock_ticks()))
}

fn bench_bulk(lab: &Lab, o: Options, vps_pid: u32, home_pid: u32) -> anyhow::Result<Bulk> {
    let agents = [vps_pid, home_pid];
    let mut b = Bulk {
        tunnel: Vec::new(),
        relay: Vec::new(),
    };
    for run in 1..=o.runs {
        // Tunnel alone: from the VPS host to home's tunnel address.
        let t = iperf(&lab.vps, HOME_TUN, IPERF_TUNNEL, o.seconds, &agents)?;
        // Relay + tunnel: from the internet to the VPS's public address;
        // the VPS relays to home's forwarder, which forwards to 127.0.0.1.
        let r = iperf(&lab.internet, addr::VPS, IPERF_RELAYED, o.seconds, &agents)?;
        eprintln!(
            "  bulk run {run}: tunnel alone {:.0} Mbit/s, relay+tunnel {:.0} Mbit/s",
            t.0, r.0
        );
        b.tunnel.push(t);
        b.relay.push(r);
    }
    Ok(b)
}

/// Shapes the internet router's link towards home to `mbit` (token bucket)
/// for the life of the guard: the tunnel's UDP into home crosses it on both
/// paths, as it would cross the home line.
struct Shaped<'a> {
    lab: &'a Lab,
    dev: String,
}

impl<'a> Shaped<'a> {
    fn new(lab: &'a Lab, mbit: u32) -> anyhow::Result<Self> {
        // The router's end of home's veth pair (`Lab::new` names it so).
        let dev = format!("{}i", lab.home_if);
        // A bucket of 2 ms at line rate (at least 128 KiB): above rate/HZ,
        // so the bucket and not the timer sets the rate.
        let burst = format!("{}kb", (mbit / 4).max(128));
        sh(lab.internet.command("tc").args([
            "qdisc",
            "add",
            "dev",
            &dev,
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            &burst,
            "latency",
            "20ms",
        ]))?;
        Ok(Self { lab, dev })
    }
}

impl Drop for Shaped<'_> {
    fn drop(&mut self) {
        let _ = sh(self
            .lab
            .internet
            .command("tc")
            .args(["qdisc", "del", "dev", &self.dev, "root"]));
    }
}

fn bench_bulk_shaped(lab: &Lab, o: Options, vps_pid: u32, home_pid: u32) -> anyhow::Result<Bulk> {
    let _shaped = Shaped::new(lab, o.shape_mbit)?;
    eprintln!("  home link shaped to {} Mbit/s", o.shape_mbit);
    bench_bulk(lab, o, vps_pid, home_pid)
}

fn report_bulk(b: &Bulk, o: Options, shaped: Option<u32>) {
    match shaped {
        None => println!(
            "2. One TCP stream (iperf3 -t {} -O 1), {} runs, unshaped: CPU-bound, every process of the lab on this machine's CPUs",
            o.seconds, o.runs
        ),
        Some(mbit) => println!(
            "2b. The same with the internet -> home link shaped to {mbit} Mbit/s (tbf), as a home line would be",
        ),
    }
    println!(
        "   {:<52} {:>9} {:>14}   Mbit/s of each run",
        "path", "Mbit/s", "agents CPU s/Gbit"
    );
    let row = |name: &str, v: &[(f64, f64)]| {
        let mbps: Vec<f64> = v.iter().map(|x| x.0).collect();
        let per_gbit: Vec<f64> = v
            .iter()
            .map(|x| x.1 / (x.0 * f64::from(o.seconds) / 1000.0))
            .collect();
        println!(
            "   {:<52} {:>9.0} {:>14.2}   {}",
            name,
            median(&mbps),
            median(&per_gbit),
            list(&mbps, 0)
        );
    };
    row("tunnel alone (VPS -> home tunnel address)", &b.tunnel);
    row(
        "relay+tunnel (internet -> VPS:5201 -> home 127.0.0.1)",
        &b.relay,
    );
    let ratios: Vec<f64> = b
        .tunnel
        .iter()
        .zip(&b.relay)
        .map(|(t, r)| r.0 / t.0)
        .collect();
    let m = median(&ratios);
    println!(
        "   relay+tunnel / tunnel alone: {:.2} (runs {}) — goal >= 0.90: {}",
        m,
        list(&ratios, 2),
        if m >= 0.9 { "met" } else { "NOT met" }
    );
}

// ---------------------------------------------------------------------------
// 3. Idle relayed connections.
// ---------------------------------------------------------------------------

/// One relay's idle-connection measurement.
struct Idle {
    name: &'static str,
    conns: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    fds_before: usize,
    fds_after: usize,
    /// Home agent's RSS growth over the same connections (its forwarder).
    home_kib: i64,
}

impl Idle {
    fn per_conn_kib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.conns as f64
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Opens `n` connections from the internet namespace, round-robin over
/// `targets`, each until its whole banner line arrived; returns them open.
fn open_idle(lab: &Lab, targets: &[SocketAddr], n: usize) -> anyhow::Result<Vec<TcpStream>> {
    in_netns(&lab.internet, || -> anyhow::Result<Vec<TcpStream>> {
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let to = targets[i % targets.len()];
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .with_context(|| format!("connection {i} to {to}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut got = Vec::new();
            let mut buf = [0u8; 128];
            while !got.contains(&b'\n') {
                let k = s
                    .read(&mut buf)
                    .with_context(|| format!("banner of connection {i} via {to}"))?;
                ensure!(k > 0, "connection {i} via {to} closed before its banner");
                got.extend_from_slice(&buf[..k]);
            }
            ensure!(
                got.starts_with(b"220 "),
                "connection {i} via {to}: {:?}",
                String::from_utf8_lossy(&got)
            );
            held.push(s);
        }
        Ok(held)
    })?
}

/// Waits until both relaying processes are back to (about) their fd counts
/// from before, i.e. every closed connection has been torn down.
fn wait_fds_settle(pids: &[(u32, usize)]) -> anyhow::Result<()> {
    wait_until(
        "relayed connections to close",
        Duration::from_secs(30),
        || Ok(pids.iter().all(|(pid, base)| fd_count(*pid) <= base + 2)),
    )
}

fn measure_idle(
    lab: &Lab,
    name: &'static str,
    pid: u32,
    home_pid: u32,
    targets: &[SocketAddr],
    conns: usize,
) -> anyhow::Result<Idle> {
    let base = [(pid, fd_count(pid)), (home_pid, fd_count(home_pid))];
    drop(open_idle(lab, targets, WARMUP)?);
    wait_fds_settle(&base)?;
    let fds_before = fd_count(pid);
    let rss_before_kib = rss_kib(pid)?;
    let home_before = rss_kib(home_pid)?;
    let held = open_idle(lab, targets, conns)?;
    let rss_after_kib = rss_kib(pid)?;
    let home_after = rss_kib(home_pid)?;
    let fds_after = fd_count(pid);
    drop(held);
    wait_fds_settle(&base)?;
    let r = Idle {
        name,
        conns,
        rss_before_kib,
        rss_after_kib,
        fds_before,
        fds_after,
        home_kib: home_after as i64 - home_before as i64,
    };
    eprintln!(
        "  idle {name}: {:.2} KiB per connection ({} -> {} KiB)",
        r.per_conn_kib(),
        r.rss_before_kib,
        r.rss_after_kib
    );
    Ok(r)
}

/// Starts HAProxy 2.6 in the VPS namespace: `mode tcp`, `send-proxy-v2`,
/// through the same tunnel to the same home forwarder ports as the CERES
/// relay: 587 for the banner timing; the idle ports round-robin, so no
/// port gets over home's 1,000 per port.
fn start_haproxy(
    lab: &Lab,
    forwarders: &std::collections::BTreeMap<u16, u16>,
    idle: &[u16],
    conns: usize,
) -> anyhow::Result<Daemon> {
    let fwd = |p: u16| {
        forwarders
            .get(&p)
            .copied()
            .with_context(|| format!("home reported no forwarder for port {p}"))
    };
    let cfg = lab.path("haproxy.cfg");
    let mut text = format!(
        "global\n  maxconn {max}\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30m\n  timeout server 30m\n\n\
         frontend submission\n  bind {vps}:{HAPROXY_SUBMISSION_PORT}\n  default_backend submission\n\n\
         backend submission\n  server home587 {HOME_TUN}:{f587} send-proxy-v2\n\n\
         frontend relay\n  bind {vps}:{HAPROXY_PORT}\n  maxconn {max}\n  default_backend home\n\n\
         backend home\n  balance roundrobin\n",
        max = conns + 1000,
        vps = addr::VPS,
        // The relay's 587/proxy-v2 lands on home's PROXY submission port.
        f587 = fwd(10587)?,
    );
    for p in idle {
        let f = fwd(*p)?;
        text.push_str(&format!("  server home{p} {HOME_TUN}:{f} send-proxy-v2\n"));
    }
    std::fs::write(&cfg, text)?;
    let mut cmd = lab.vps.command("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let d = Daemon::spawn("haproxy", cmd, lab.dir.path())?;
    wait_listening(&lab.vps, HAPROXY_PORT)?;
    wait_listening(&lab.vps, HAPROXY_SUBMISSION_PORT)?;
    Ok(d)
}

fn bench_idle(
    lab: &Lab,
    o: Options,
    idle: &[u16],
    vps_pid: u32,
    home_pid: u32,
    haproxy_pid: u32,
) -> anyhow::Result<Vec<Idle>> {
    let vps = ip(addr::VPS);
    let ceres_targets: Vec<SocketAddr> = idle.iter().map(|p| SocketAddr::new(vps, *p)).collect();
    let ceres = measure_idle(lab, "ceres-vps", vps_pid, home_pid, &ceres_targets, o.conns)?;
    let ha = measure_idle(
        lab,
        "haproxy",
        haproxy_pid,
        home_pid,
        &[SocketAddr::new(vps, HAPROXY_PORT)],
        o.conns,
    )?;
    Ok(vec![ceres, ha])
}

fn report_idle(v: &[Idle], o: Options) {
    println!(
        "3. {} idle relayed connections (PROXY v2, each got its banner), RSS of the relaying process on the VPS",
        o.conns
    );
    println!(
        "   {:<12} {:>11} {:>11} {:>14} {:>10}",
        "relay", "RSS before", "RSS after", "KiB per conn", "fds/conn"
    );
    for r in v {
        println!(
            "   {:<12} {:>8} KiB {:>7} KiB {:>14.2} {:>10.2}",
            r.name,
            r.rss_before_kib,
            r.rss_after_kib,
            r.per_conn_kib(),
            (r.fds_after as f64 - r.fds_before as f64) / r.conns as f64,
        );
    }
    if let [ceres, ha, ..] = v {
        // Only the first pass says what home's forwarder costs: in the
        // second, it reuses memory the first one freed.
        println!(
            "   home agent (forwarder to the mail server), same connections through ceres-vps: {:.2} KiB per connection",
            ceres.home_kib as f64 / ceres.conns as f64
        );
        let c = ceres.per_conn_kib();
        println!(
            "   ceres-vps / haproxy per connection: {:.2} — issue <= 8 KiB: {}, team goal <= 3.5 KiB: {}",
            c / ha.per_conn_kib(),
            if c <= 8.0 { "met" } else { "NOT met" },
            if c <= 3.5 { "met" } else { "NOT met" }
        );
    }
}

// ---------------------------------------------------------------------------
// The idle-connection banner server (runs inside the home namespace).
// ---------------------------------------------------------------------------

/// An epoll instance: one thread holds thousands of idle connections.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event]) -> std::io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        loop {
            // SAFETY: `events` is valid for `max` entries.
            let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, -1) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Tells the parent (`Daemon::wait_ready`) that the listeners are bound.
fn notify_ready() -> anyhow::Result<()> {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        UnixDatagram::unbound()?.send_to(b"READY=1\n", path)?;
    }
    Ok(())
}

/// Accepts on every address, sends [`BANNER`] at once, reads and discards
/// whatever the client sends (the PROXY header) and closes when the client
/// does. Runs until killed.
fn banner_server(addrs: &[String]) -> anyhow::Result<()> {
    ensure!(!addrs.is_empty(), "banner-server needs ADDR...\n{USAGE}");
    raise_nofile();
    let epoll = Epoll::new()?;
    let mut listeners = HashMap::new();
    for a in addrs {
        let sa: SocketAddr = a.parse().with_context(|| format!("address {a}"))?;
        let l = TcpListener::bind(sa).with_context(|| format!("binding {sa}"))?;
        l.set_nonblocking(true)?;
        epoll.ctl(libc::EPOLL_CTL_ADD, l.as_raw_fd(), libc::EPOLLIN as u32)?;
        listeners.insert(l.as_raw_fd(), l);
    }
    notify_ready()?;
    let mut conns: HashMap<RawFd, TcpStream> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut buf = [0u8; 1024];
    loop {
        let n = epoll.wait(&mut events)?;
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            if let Some(l) = listeners.get(&fd) {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            // Best effort: a client gone this soon is simply dropped.
                            let ok = s.set_nodelay(true).is_ok()
                                && s.write_all(BANNER).is_ok()
                                && s.set_nonblocking(true).is_ok()
                                && epoll
                                    .ctl(
                                        libc::EPOLL_CTL_ADD,
                                        s.as_raw_fd(),
                                        (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                                    )
                                    .is_ok();
                            if ok {
                                conns.insert(s.as_raw_fd(), s);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of fds, say: report and retry on the next event.
                            eprintln!("banner-server: accept: {e}");
                            break;
                        }
                    }
                }
            } else if let Some(s) = conns.get_mut(&fd) {
                let closed = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break true,
                    }
                };
                if closed {
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0);
                    conns.remove(&fd);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// `load`: concurrent SMTP sessions through the relay (issue 7).
// ---------------------------------------------------------------------------

/// The relayed port of the load run: the VPS relays it (PROXY v2, as for
/// submission in production) to home's forwarder, which forwards to the
/// sink on 127.0.0.1.
const LOAD_PORT: u16 = 2525;
/// Concurrent sessions of the warm-up round before the measured one, so
/// one-time allocations (runtime workers, buffers) are not charged to it.
const LOAD_WARMUP: usize = 50;
/// Stack of each client and sink thread: a session needs a few KiB, and a
/// thousand default 2 MiB stacks would only cost address space and time.
const SESSION_STACK: usize = 128 * 1024;
/// How often the sampler reads the VPS agent's RSS during the run.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The PROXY v2 signature (the first 12 bytes of every v2 header).
const PROXY_V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn parse_load_options(args: &[String]) -> anyhow::Result<usize> {
    let mut sessions = 1000;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--sessions" => {
                sessions = value
                    .parse()
                    .with_context(|| format!("{flag} {value}: not a positive number"))?;
            }
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    ensure!(sessions > 0, "--sessions must be at least 1");
    // The client holds one socket per session, the relay two, the sink one;
    // the hard limit here is 20,000 open files per process.
    ensure!(
        sessions <= 8000,
        "--sessions {sessions} is over 8,000: the relay needs two sockets per session and the hard limit here is 20,000 open files"
    );
    Ok(sessions)
}

/// CPU seconds of `pid` so far (utime + stime).
fn cpu_secs(pid: u32) -> f64 {
    cpu_ticks(&[pid]) as f64 / clock_ticks()
}

/// Reads `count_file` as written by the sink (0 while it does not exist).
fn sink_count(count_file: &std::path::Path) -> u64 {
    std::fs::read_to_string(count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn load(sessions: usize) -> anyhow::Result<()> {
    ensure!(
        ceres_tests::require_root("ceres-bench"),
        "ceres-bench needs root (network namespaces, TUN devices, nftables)"
    );
    raise_nofile();
    let load_start = loadavg();
    let started = Instant::now();

    // Every session comes from the one internet client address, so the
    // per-source limit (default 50) must admit them all, and both ends'
    // per-port limits the whole run.
    let limit = (sessions + LOAD_WARMUP + 100).to_string();
    let vps_lines = [
        // Home port written out: the load server listens on the port itself.
        format!("CERES_RELAYS={LOAD_PORT}:{LOAD_PORT}/proxy-v2"),
        format!("CERES_RELAY_MAX_PER_PORT={limit}"),
        format!("CERES_RELAY_MAX_PER_SOURCE={limit}"),
        // One load generator stands in for many senders: no network caps,
        // rate limit or reserve in the way of the measurement.
        format!("CERES_RELAY_MAX_PER_V4_24={limit}"),
        format!("CERES_RELAY_MAX_PER_V6_56={limit}"),
        format!("CERES_RELAY_MAX_PER_V6_48={limit}"),
        "CERES_RELAY_RATE_PER_SOURCE=0".to_owned(),
        "CERES_RELAY_RESERVED_FOR_KNOWN=0".to_owned(),
    ];
    let vps_lines: Vec<&str> = vps_lines.iter().map(String::as_str).collect();
    let home_line = format!("CERES_FORWARD_MAX_PER_PORT={limit}");

    let lab = Lab::new().context("building the lab namespaces")?;
    let ceres = Ceres::init(&lab, &vps_lines, &[home_line.as_str()])?;
    let vps = ceres.start_vps()?;
    ceres.join_home()?;
    let home = ceres.start_home()?;
    ceres.enroll_ctl()?;
    ceres.wait_home_connected(true, Duration::from_secs(30))?;
    let vps_pid = pid_of(&vps, "ceres-vps")?;
    let home_pid = pid_of(&home, "ceres-home")?;

    let count_file = lab.path("sink-count");
    let mut sink_cmd = lab.home.command(std::env::current_exe()?);
    sink_cmd
        .arg("smtp-sink")
        .arg(&count_file)
        .arg(format!("127.0.0.1:{LOAD_PORT}"));
    let mut sink = Daemon::spawn("smtp-sink", sink_cmd, lab.dir.path())?;
    sink.wait_ready(Duration::from_secs(10))?;

    let to = SocketAddr::new(ip(addr::VPS), LOAD_PORT);
    wait_until(
        "a banner from the sink through the relay",
        Duration::from_secs(30),
        || time_to_banner(&lab.internet, None, to, &[], Duration::from_secs(5)).map(|_| true),
    )?;
    println!(
        "ceres-bench load: kernel {}, {} CPUs, load average at start {load_start}; lab {} ready in {:.1} s",
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        lab.id,
        started.elapsed().as_secs_f64()
    );

    let base = [(vps_pid, fd_count(vps_pid)), (home_pid, fd_count(home_pid))];
    let warm = run_sessions(&lab, to, LOAD_WARMUP, vps_pid)?;
    ensure!(
        warm.failed.is_empty(),
        "warm-up: {} of {LOAD_WARMUP} sessions failed, first: {}",
        warm.failed.len(),
        warm.failed[0]
    );
    wait_fds_settle(&base)?;
    let delivered_before = sink_count(&count_file);

    let rss_before = rss_kib(vps_pid)?;
    let home_before = rss_kib(home_pid)?;
    let cpu_before = cpu_secs(vps_pid);
    let home_cpu_before = cpu_secs(home_pid);
    let r = run_sessions(&lab, to, sessions, vps_pid)?;
    let cpu_run = cpu_secs(vps_pid) - cpu_before;
    let home_cpu_run = cpu_secs(home_pid) - home_cpu_before;
    let home_peak = rss_kib(home_pid)?;
    // Every session saw its `250` after the dot, so the sink counted it;
    // the file is written just before that reply, this only waits for the
    // write to be visible.
    let want = delivered_before + sessions as u64;
    let delivered = if r.failed.is_empty() {
        wait_until(
            "the sink to count every message",
            Duration::from_secs(10),
            || Ok(sink_count(&count_file) >= want),
        )
        .ok();
        sink_count(&count_file) - delivered_before
    } else {
        sink_count(&count_file).saturating_sub(delivered_before)
    };
    let settle = wait_fds_settle(&base);
    let rss_after = rss_kib(vps_pid)?;
    let cpu_after = cpu_secs(vps_pid) - cpu_before;

    let completed = sessions - r.failed.len();
    println!(
        "\nLoad: {sessions} concurrent SMTP sessions, internet client {} -> VPS {to} (relay, PROXY v2) -> tunnel -> home forwarder -> SMTP sink",
        addr::CLIENT
    );
    println!(
        "   completed {completed}, failed {}; messages counted by the sink {delivered}",
        r.failed.len()
    );
    println!(
        "   {} of {sessions} sessions connected and got their banner before any sent EHLO (relayed connections open at once)",
        r.connected_at_once
    );
    println!(
        "   wall time {:.2} s (connect+banner {:.2} s, transactions {:.2} s), {:.0} sessions/s",
        r.wall.as_secs_f64(),
        r.connect_phase.as_secs_f64(),
        (r.wall - r.connect_phase).as_secs_f64(),
        sessions as f64 / r.wall.as_secs_f64()
    );
    println!(
        "   ceres-vps RSS: before {rss_before} KiB, with all sessions open {} KiB, peak sampled {} KiB, after {rss_after} KiB",
        r.rss_all_open_kib, r.rss_peak_kib
    );
    println!(
        "   ceres-vps RSS per concurrent session: {:.2} KiB (all open - before), {:.2} KiB (peak - before)",
        (r.rss_all_open_kib as f64 - rss_before as f64) / sessions as f64,
        (r.rss_peak_kib as f64 - rss_before as f64) / sessions as f64
    );
    println!(
        "   ceres-vps CPU: {cpu_run:.2} s during the run ({:.2} ms per session), {cpu_after:.2} s including teardown",
        cpu_run * 1000.0 / sessions as f64
    );
    println!(
        "   ceres-home (forwarder): RSS {home_before} -> {home_peak} KiB, CPU {home_cpu_run:.2} s",
    );
    println!(
        "load average at end {}; whole run {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    for e in r.failed.iter().take(10) {
        eprintln!("   failed: {e}");
    }
    drop(sink);
    ensure!(
        r.failed.is_empty(),
        "{} of {sessions} sessions failed",
        r.failed.len()
    );
    ensure!(
        delivered == sessions as u64,
        "the sink counted {delivered} messages for {sessions} sessions"
    );
    settle.context("after the load run")?;
    Ok(())
}

/// What one round of concurrent sessions did.
struct LoadRun {
    /// One message per failed session.
    failed: Vec<String>,
    /// Sessions that had connected and got their banner when they were
    /// released together.
    connected_at_once: usize,
    wall: Duration,
    connect_phase: Duration,
    /// VPS agent RSS while every session was connected and none had
    /// finished.
    rss_all_open_kib: u64,
    /// Highest VPS agent RSS the sampler saw during the round.
    rss_peak_kib: u64,
}

/// Opens `n` SMTP sessions from the internet namespace at once (one
/// thread each), waits until all are connected with their banner read,
/// samples the VPS agent, then lets every session deliver its message.
fn run_sessions(lab: &Lab, to: SocketAddr, n: usize, vps_pid: u32) -> anyhow::Result<LoadRun> {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    // Sessions that have tried to connect (and read the banner), and the
    // gate they then wait at until the VPS agent has been sampled with all
    // of them open. A failed attempt counts too, so one failure cannot keep
    // the others waiting.
    let attempted = AtomicUsize::new(0);
    let connected_ok = AtomicUsize::new(0);
    let gate = (Mutex::new(false), Condvar::new());
    let failed = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(rss_kib(vps_pid)?);
    let t0 = Instant::now();
    let open_gate = || {
        if let Ok(mut g) = gate.0.lock() {
            *g = true;
        }
        gate.1.notify_all();
    };
    let (connect_phase, rss_all_open_kib) = in_netns(&lab.internet, || {
        std::thread::scope(|s| -> anyhow::Result<(Duration, u64)> {
            s.spawn(|| {
                // Sampled, not only read with every session open: the
                // relay's peak can come later (DATA buffers, teardown).
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(kib) = rss_kib(vps_pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
            let mut sessions = Vec::with_capacity(n);
            for i in 0..n {
                let (attempted, connected_ok, gate, failed) =
                    (&attempted, &connected_ok, &gate, &failed);
                let h = std::thread::Builder::new()
                    .stack_size(SESSION_STACK)
                    .spawn_scoped(s, move || {
                        let open = smtp_open(to);
                        if open.is_ok() {
                            connected_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        attempted.fetch_add(1, Ordering::Release);
                        if let Ok(g) = gate.0.lock() {
                            drop(gate.1.wait_while(g, |open| !*open));
                        }
                        if let Err(e) = open.and_then(|c| smtp_deliver(c, i)) {
                            if let Ok(mut f) = failed.lock() {
                                f.push(format!("session {i}: {e:#}"));
                            }
                        }
                    });
                match h {
                    Ok(h) => sessions.push(h),
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.push(format!("session {i}: spawning its thread: {e}"));
                        }
                    }
                }
            }
            let spawned = sessions.len();
            // Bounded: each attempt ends within its connect and read timeouts.
            let all = wait_until(
                "every session to connect and read its banner",
                Duration::from_secs(120),
                || Ok(attempted.load(Ordering::Acquire) >= spawned),
            );
            let connect_phase = t0.elapsed();
            let all_open = rss_kib(vps_pid);
            open_gate();
            // Stops the sampler once the sessions are done, also on error.
            let _stopper = StopOnDrop(&stop);
            for h in sessions {
                let _ = h.join();
            }
            all?;
            let all_open = all_open?;
            peak.fetch_max(all_open, Ordering::Relaxed);
            Ok((connect_phase, all_open))
        })
    })??;
    let wall = t0.elapsed();
    Ok(LoadRun {
        failed: failed.into_inner().unwrap_or_default(),
        connected_at_once: connected_ok.into_inner(),
        wall,
        connect_phase,
        rss_all_open_kib,
        rss_peak_kib: peak.into_inner(),
    })
}

/// Sets its flag when dropped: stops the RSS sampler however the round ends.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client session: the buffered reader and the socket it writes to.
struct SmtpClient {
    r: std::io::BufReader<TcpStream>,
    w: TcpStream,
}

impl SmtpClient {
    /// Reads one (possibly multi-line) reply and checks its code.
    fn expect(&mut self, code: &str, after: &str) -> anyhow::Result<()> {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            let k = self
                .r
                .read_line(&mut line)
                .with_context(|| format!("reading the reply to {after}"))?;
            ensure!(k > 0, "connection closed before the reply to {after}");
            ensure!(
                line.len() >= 4 && line.starts_with(code),
                "reply to {after}: {:?}, expected {code}",
                line.trim_end()
            );
            // "250-..." continues, "250 ..." ends the reply.
            if line.as_bytes()[3] == b' ' || line.trim_end().len() == 3 {
                return Ok(());
            }
        }
    }

    fn command(&mut self, cmd: &str, code: &str) -> anyhow::Result<()> {
        self.w
            .write_all(cmd.as_bytes())
            .with_context(|| format!("sending {}", cmd.trim_end()))?;
        self.expect(code, cmd.split_whitespace().next().unwrap_or(cmd))
    }
}

/// Connects and reads the `220` banner.
fn smtp_open(to: SocketAddr) -> anyhow::Result<SmtpClient> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(30))
        .with_context(|| format!("connecting to {to}"))?;
    // Generous: a thousand sessions share two CPUs with the whole lab.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_nodelay(true)?;
    let w = s.try_clone()?;
    let mut c = SmtpClient {
        r: std::io::BufReader::new(s),
        w,
    };
    c.expect("220", "connect")?;
    Ok(c)
}

/// One small message, every reply checked, then QUIT.
fn smtp_deliver(mut c: SmtpClient, i: usize) -> anyhow::Result<()> {
    c.command("EHLO client.example\r\n", "250")?;
    c.command(&format!("MAIL FROM:<load{i}@client.example>\r\n"), "250")?;
    c.command("RCPT TO:<postmaster@example.com>\r\n", "250")?;
    c.command("DATA\r\n", "354")?;
    c.command(
        &format!(
            "From: <load{i}@client.example>\r\nTo: <postmaster@example.com>\r\n\
             Subject: load {i}\r\nMessage-ID: <load{i}@client.example>\r\n\r\n\
             Message {i} of the ceres-bench load run.\r\n.\r\n"
        ),
        "250",
    )?;
    c.command("QUIT\r\n", "221")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The SMTP sink (runs inside the home namespace).
// ---------------------------------------------------------------------------

/// Accepts on every address; per connection (one thread each) skips a PROXY
/// v2 header if one comes first, speaks just enough SMTP for one client to
/// deliver messages, and after each accepted message writes the running
/// total to `COUNT_FILE`. Runs until killed.
fn smtp_sink(args: &[String]) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};

    let [count_file, addrs @ ..] = args else {
        bail!("smtp-sink needs COUNT_FILE ADDR...\n{USAGE}");
    };
    ensure!(!addrs.is_empty(), "smtp-sink needs ADDR...\n{USAGE}");
    raise_nofile();
    let count = Arc::new(Mutex::new((0u64, std::path::PathBuf::from(count_file))));
    let mut listeners = Vec::new();
    for a in addrs {
        let sa: SocketAddr = a.parse().with_context(|| format!("address {a}"))?;
        listeners.push(TcpListener::bind(sa).with_context(|| format!("binding {sa}"))?);
    }
    notify_ready()?;
    std::thread::scope(|s| {
        for l in &listeners {
            let count = Arc::clone(&count);
            s.spawn(move || {
                loop {
                    match l.accept() {
                        Ok((conn, _)) => {
                            let count = Arc::clone(&count);
                            let spawned = std::thread::Builder::new()
                                .stack_size(SESSION_STACK)
                                .spawn(move || {
                                    if let Err(e) = sink_session(conn, &count) {
                                        eprintln!("smtp-sink: session: {e:#}");
                                    }
                                });
                            if let Err(e) = spawned {
                                eprintln!("smtp-sink: spawning a session thread: {e}");
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of fds, say: report, back off, go on.
                            eprintln!("smtp-sink: accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

/// The running total of messages and the file it is published in.
type SinkCount = std::sync::Mutex<(u64, std::path::PathBuf)>;

fn sink_session(conn: TcpStream, count: &SinkCount) -> anyhow::Result<()> {
    use std::io::BufRead;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut w = conn.try_clone()?;
    let mut r = std::io::BufReader::new(conn);
    // The banner goes out at once (as Postfix without postscreen would);
    // the relay writes its PROXY header before any client byte, so it is
    // at the front of the stream if it comes at all.
    w.write_all(b"220 sink.example ESMTP ceres-bench\r\n")?;
    if r.fill_buf()?.first() == Some(&b'\r') {
        let mut head = [0u8; 16];
        r.read_exact(&mut head)?;
        ensure!(&head[..12] == PROXY_V2_SIG, "bad PROXY v2 signature");
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        let mut rest = vec![0u8; len];
        r.read_exact(&mut rest)?;
    }
    let (mut from, mut rcpt) = (false, false);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(str::to_ascii_uppercase)
            .unwrap_or_default();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "HELO" => b"250 sink.example\r\n",
            "MAIL" => {
                from = true;
                rcpt = false;
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" if from => {
                rcpt = true;
                b"250 2.1.5 Ok\r\n"
            }
            "RCPT" => b"503 5.5.1 Need MAIL first\r\n",
            "DATA" if rcpt => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                loop {
                    line.clear();
                    ensure!(r.read_line(&mut line)? > 0, "closed inside DATA");
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                let n = {
                    let mut c = count
                        .lock()
                        .map_err(|_| anyhow::anyhow!("count poisoned"))?;
                    c.0 += 1;
                    // Written before the 250, so the count is on disk by
                    // the time the client knows its message was taken.
                    let tmp = c.1.with_extension("tmp");
                    std::fs::write(&tmp, c.0.to_string())?;
                    std::fs::rename(&tmp, &c.1)?;
                    c.0
                };
                from = false;
                rcpt = false;
                w.write_all(format!("250 2.0.0 Ok: queued as {n}\r\n").as_bytes())?;
                continue;
            }
            "DATA" => b"503 5.5.1 Need RCPT first\r\n",
            "RSET" => {
                from = false;
                rcpt = false;
                b"250 2.0.0 Ok\r\n"
            }
            "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        w.write_all(reply)?;
    }
}
