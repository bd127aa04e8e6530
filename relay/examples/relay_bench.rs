//! Relay benchmark (run by `bench/relay`): time-to-banner straight to a server vs
//! through `ceres_relay::Listener` (PROXY v2) and, if installed, HAProxy
//! (`mode tcp`, `send-proxy-v2`); then RSS per idle relayed connection with N
//! connections held open, each having received its server's banner.
//!
//! `relay-bench [--conns N] [--samples N]` runs everything; `relay-bench relay LISTEN
//! TARGET` is the relay-only child process whose memory is measured.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ceres_relay::{Listener, ListenerConfig, ProxyMode, RelaySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Lab address for this benchmark (fixed ports on it are fine: one run at a time).
const HOST: &str = "127.77.0.1";
const BANNER: &[u8] = b"220 bench.example ESMTP\r\n";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Both this driver (clients + servers) and the relay child hold thousands of fds.
    ceres_relay::raise_fd_limit()?;
    let rt = tokio::runtime::Runtime::new()?;
    if args.first().map(String::as_str) == Some("relay") {
        let listen: SocketAddr = args.get(1).context("relay LISTEN TARGET")?.parse()?;
        let target: SocketAddr = args.get(2).context("relay LISTEN TARGET")?.parse()?;
        return rt.block_on(relay_child(listen, target));
    }
    let mut conns = 5000usize;
    let mut samples = 1000usize;
    let mut bulk_mib = 2048usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--conns" => conns = it.next().context("--conns N")?.parse()?,
            "--samples" => samples = it.next().context("--samples N")?.parse()?,
            "--bulk-mib" => bulk_mib = it.next().context("--bulk-mib N")?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    rt.block_on(run(conns, samples, bulk_mib))
}

/// The measured process: just the relay, on a default multi-thread runtime like the
/// agent's. Prints `ready` once bound; exits when stdin closes.
async fn relay_child(listen: SocketAddr, target: SocketAddr) -> Result<()> {
    let spec = RelaySpec {
        public_port: listen.port(),
        home_port: target.port(),
        proxy: ProxyMode::V2,
        smtp_banner: true,
    };
    let mut config =
        ListenerConfig::new(vec![listen.ip()], target.ip(), vec![spec], "bench.example");
    config.limits = ceres_relay::Limits::port_only(100_000);
    let listener = Listener::bind(config)?;
    let (_tx, rx) =
        tokio::sync::watch::channel(ceres_relay::HomeReach::up([(target.port(), target.port())]));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        stop.cancel();
    });
    println!("ready");
    listener.run(rx, shutdown).await?;
    Ok(())
}

/// Banner server: with `proxy`, reads a whole PROXY header first (as postscreen does),
/// then sends the banner and holds the connection until the client closes.
async fn banner_server(addr: SocketAddr, proxy: bool) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = Vec::with_capacity(64);
                if proxy {
                    loop {
                        let mut chunk = [0u8; 64];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        match ceres_relay::proxy::parse(&buf) {
                            Ok(Some(_)) => break,
                            Ok(None) => continue,
                            Err(_) => return,
                        }
                    }
                }
                if s.write_all(BANNER).await.is_err() {
                    return;
                }
                // Small buffer while idle (thousands of these are held); a big one
                // once bulk data arrives.
                let mut sink = vec![0u8; 64];
                loop {
                    match s.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if n == sink.len() && sink.len() < 1 << 18 => sink.resize(1 << 18, 0),
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    Ok(())
}

/// Connects and waits for the whole banner; returns the stream and the time taken.
async fn banner(to: SocketAddr) -> Result<(TcpStream, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(to).await?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; BANNER.len()];
    s.read_exact(&mut buf).await?;
    if buf != BANNER {
        bail!(
            "unexpected banner from {to}: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    Ok((s, start.elapsed()))
}

/// Sends `mib` MiB after the banner, half-closes, and waits for the server's close:
/// every byte has then been read by the server.
async fn bulk(to: SocketAddr, mib: usize) -> Result<f64> {
    let (mut s, _) = banner(to).await?;
    let chunk = vec![0x55u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok((mib as f64 * 8.0 * 1.048_576e6) / start.elapsed().as_secs_f64() / 1e9)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `to` accepts connections (the process behind it is up).
async fn wait_listening(to: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(to).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{to} never came up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Proc {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin stops the relay child; HAProxy needs a signal.
        drop(self.child.stdin.take());
        // SAFETY: sending SIGTERM to our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_relay(addr: SocketAddr, target: SocketAddr) -> Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["relay", &addr.to_string(), &target.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("child stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    if line.trim() != "ready" {
        bail!("relay child did not start: {line:?}");
    }
    Ok(Proc {
        name: "ceres-relay",
        child,
        addr,
    })
}

fn start_haproxy(
    dir: &std::path::Path,
    addr: SocketAddr,
    target: SocketAddr,
    conns: usize,
) -> Result<Option<Proc>> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        return Ok(None);
    }
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn {max}\n\ndefaults\n  mode tcp\n  timeout connect 3s\n  timeout client 30m\n  timeout server 30m\n\n\
             frontend relay\n  bind {addr}\n  maxconn {max}\n  default_backend home\n\n\
             backend home\n  server home {target} send-proxy-v2\n",
            max = conns + 100
        ),
    )?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    Ok(Some(Proc {
        name: "haproxy",
        child,
        addr,
    }))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Opens `n` connections through `p`, each until its banner arrives, and reports the
/// RSS growth per connection.
async fn idle_rss(p: &Proc, n: usize) -> Result<(f64, u64, u64, usize)> {
    let pid = p.child.id();
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    for _ in 0..n {
        if set.len() >= 200 {
            if let Some(r) = set.join_next().await {
                held.push(r??);
            }
        }
        let to = p.addr;
        set.spawn(async move { banner(to).await.map(|(s, _)| s) });
    }
    while let Some(r) = set.join_next().await {
        held.push(r??);
    }
    let after = rss_kib(pid)?;
    let fds = fd_count(pid);
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    drop(held);
    // Let the process close its side before the next phase starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fd_count(pid) > 64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((per_conn, before, after, fds))
}

async fn run(conns: usize, samples: usize, bulk_mib: usize) -> Result<()> {
    let host: std::net::IpAddr = HOST.parse()?;
    let direct = SocketAddr::new(host, 10_027);
    let proxied = SocketAddr::new(host, 10_028);
    banner_server(direct, false).await?;
    banner_server(proxied, true).await?;
    let dir = tempdir()?;
    let relay = start_relay(SocketAddr::new(host, 10_025), proxied)?;
    let haproxy = start_haproxy(&dir, SocketAddr::new(host, 10_026), proxied, conns)?;
    wait_listening(relay.addr).await?;
    if let Some(h) = &haproxy {
        wait_listening(h.addr).await?;
    }

    // Interleaved, so drift (CPU frequency, other load) hits all paths alike.
    let mut targets: Vec<(&str, SocketAddr)> = vec![("direct", direct), (relay.name, relay.addr)];
    if let Some(h) = &haproxy {
        targets.push((h.name, h.addr));
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); targets.len()];
    for round in 0..samples + 50 {
        for (i, (_, to)) in targets.iter().enumerate() {
            let (_s, t) = banner(*to).await?;
            if round >= 50 {
                times[i].push(t);
            }
        }
    }
    println!("time to banner, {samples} sequential connections each (interleaved), loopback:");
    println!(
        "  {:<12} {:>9} {:>9} {:>9}",
        "path", "p50 µs", "p90 µs", "p99 µs"
    );
    let mut p50 = Vec::new();
    for ((name, _), t) in targets.iter().zip(times.iter_mut()) {
        t.sort();
        println!(
            "  {:<12} {:>9.1} {:>9.1} {:>9.1}",
            name,
            us(pct(t, 0.5)),
            us(pct(t, 0.9)),
            us(pct(t, 0.99))
        );
        p50.push(us(pct(t, 0.5)));
    }
    println!("  added p50 by ceres-relay: {:.1} µs", p50[1] - p50[0]);
    if p50.len() > 2 {
        println!(
            "  added p50 by haproxy:     {:.1} µs  (ceres/haproxy added-latency ratio {:.2})",
            p50[2] - p50[0],
            (p50[1] - p50[0]) / (p50[2] - p50[0])
        );
    }

    println!("one bulk TCP stream, {bulk_mib} MiB client -> server, loopback:");
    let mut rates = Vec::new();
    for (name, to) in &targets {
        let gbit = bulk(*to, bulk_mib).await?;
        println!("  {name:<12} {gbit:>7.2} Gbit/s");
        rates.push(gbit);
    }
    println!(
        "  ceres-relay / direct: {:.0}%",
        rates[1] / rates[0] * 100.0
    );
    if rates.len() > 2 {
        println!(
            "  haproxy / direct:     {:.0}%",
            rates[2] / rates[0] * 100.0
        );
    }

    println!("idle relayed connections: {conns}, each after its banner arrived:");
    let mut per = Vec::new();
    for p in std::iter::once(&relay).chain(haproxy.as_ref()) {
        let (per_conn, before, after, fds) = idle_rss(p, conns).await?;
        println!(
            "  {:<12} RSS {before} KiB -> {after} KiB: {:.2} KiB per connection; {fds} open fds ({:.2} per connection)",
            p.name,
            per_conn / 1024.0,
            fds as f64 / conns as f64
        );
        per.push(per_conn);
    }
    if per.len() > 1 {
        println!(
            "  ceres-relay / haproxy RSS per connection: {:.2}",
            per[0] / per[1]
        );
    } else {
        println!("  haproxy not installed: no baseline (apt-get install -y haproxy)");
    }
    drop(haproxy);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ceres-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
