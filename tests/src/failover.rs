//! Pieces of issue 16's failover lab (a home behind two VPSes), shared by
//! `tests/tests/failover_lab.rs` and `ceres-bench failover`: the lab's DNS
//! (nsd on the internet router, with the MX of both VPSes and of an
//! outside domain, and `resolv.conf` of the namespaces that resolve through
//! it), cutting a VPS's link silently, the outside server that receives
//! home's outbound mail, and reading when and from where that mail arrived.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};

use crate::postfix::{MaildirMessage, Postfix, PostfixOptions};
use crate::{Lab, Netns, addr, sh, wait_until};

/// The second VPS's public address.
pub const VPS_B: &str = "203.0.113.20";
/// VPS b's public IPv6 address (a dual-stack VPS like the first: home's
/// dual-stack Postfix then has IPv6 egress through either).
pub const VPS_B6: &str = "2001:db8:1::20";
/// The lab's DNS server (nsd), on the internet router's loopback.
pub const DNS: &str = "192.0.2.53";
/// The outside mail server home sends to (internet router's loopback).
pub const REMOTE_MX: &str = "192.0.2.25";
/// The outside domain whose MX is [`REMOTE_MX`].
pub const REMOTE_DOMAIN: &str = "remote.example";
/// VPS B's tunnel addresses (other than A's defaults).
pub const VPS_B_TUNNEL: [&str; 4] = [
    "CERES_TUNNEL_VPS_ADDRESS=10.77.78.1/24",
    "CERES_TUNNEL_HOME_ADDRESS=10.77.78.2/24",
    "CERES_TUNNEL_VPS_ADDRESS6=fd77:77:78::1/64",
    "CERES_TUNNEL_HOME_ADDRESS6=fd77:77:78::2/64",
];

/// `/etc/netns/NAME/resolv.conf`, which `ip netns exec NAME` bind-mounts
/// over `/etc/resolv.conf` for what it starts (ip-netns(8)); removed on drop.
#[derive(Debug)]
pub struct NetnsResolver(PathBuf);

impl NetnsResolver {
    /// Points programs started in `ns` from now on at `server`.
    pub fn new(ns: &Netns, server: &str) -> anyhow::Result<Self> {
        let dir = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:2\n"),
        )?;
        Ok(Self(dir))
    }
}

impl Drop for NetnsResolver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nsd serving example.com (MX 10 mx1 -> VPS A, MX 20 mx2 -> VPS B) and
/// remote.example (MX -> [`REMOTE_MX`]), and the namespaces resolving
/// through it.
#[derive(Debug)]
pub struct LabDns {
    /// The server.
    pub nsd: ceres_testkit::Nsd,
    _resolvers: Vec<NetnsResolver>,
}

fn zone(origin: &str, body: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60\n\
         @ IN NS ns1.example.com.\n{body}"
    )
}

/// Starts the lab's DNS on [`DNS`] (internet namespace) and makes the
/// internet and home namespaces resolve through it; waits until the
/// internet side resolves mx2.example.com.
pub fn start_dns(lab: &Lab, nsd_bin: &Path) -> anyhow::Result<LabDns> {
    lab.internet
        .ip(&["addr", "add", &format!("{DNS}/32"), "dev", "lo"])?;
    let example = zone(
        "example.com",
        &format!(
            "ns1 IN A {DNS}\n@ IN MX 10 mx1.example.com.\n@ IN MX 20 mx2.example.com.\n\
             mx1 IN A {}\nmx2 IN A {VPS_B}\n",
            addr::VPS
        ),
    );
    let remote = zone(
        REMOTE_DOMAIN,
        &format!("@ IN MX 10 mx.{REMOTE_DOMAIN}.\nmx IN A {REMOTE_MX}\n"),
    );
    let nsd = ceres_testkit::Nsd::spawn_in(
        Some(&lab.internet.name),
        nsd_bin,
        format!("{DNS}:53").parse()?,
        &[("example.com", &example), (REMOTE_DOMAIN, &remote)],
    )?;
    let resolvers = vec![
        NetnsResolver::new(&lab.internet, DNS)?,
        NetnsResolver::new(&lab.home, DNS)?,
    ];
    wait_until("the lab DNS answering", Duration::from_secs(20), || {
        let out = crate::run(
            lab.internet
                .command("getent")
                .args(["ahostsv4", "mx2.example.com"]),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).contains(VPS_B))
    })
    .map_err(|e| e.context(nsd.log()))?;
    Ok(LabDns {
        nsd,
        _resolvers: resolvers,
    })
}

/// A VPS's link cut silently in both directions, addresses and routes
/// untouched: the router's neighbour entries for the VPS, and the VPS's for
/// the router, point at a MAC address nobody has, so every frame is
/// dropped by the receiving veth (as with a provider outage, senders see
/// timeouts, not refusals). Restored by [`LinkCut::restore`] or on drop.
#[derive(Debug)]
pub struct LinkCut {
    /// (namespace, neighbour address, device) entries replaced.
    entries: Vec<(String, String, String)>,
    restored: bool,
}

const NOBODY_MAC: &str = "02:00:5e:00:53:ff";

impl LinkCut {
    /// Cuts the link of the lab's first VPS (`lab.vps`).
    pub fn vps_a(lab: &Lab) -> anyhow::Result<Self> {
        let router_if = format!("{}i", lab.vps_if);
        let entries = vec![
            (
                lab.internet.name.clone(),
                addr::VPS.to_owned(),
                router_if.clone(),
            ),
            (lab.internet.name.clone(), addr::VPS6.to_owned(), router_if),
            (
                lab.vps.name.clone(),
                addr::VPS_GW.to_owned(),
                lab.vps_if.clone(),
            ),
            (
                lab.vps.name.clone(),
                addr::VPS6_GW.to_owned(),
                lab.vps_if.clone(),
            ),
        ];
        let mut cut = Self {
            entries: Vec::new(),
            restored: false,
        };
        for (ns, ip, dev) in entries {
            sh(std::process::Command::new("ip").args([
                "-n",
                &ns,
                "neigh",
                "replace",
                &ip,
                "lladdr",
                NOBODY_MAC,
                "nud",
                "permanent",
                "dev",
                &dev,
            ]))?;
            cut.entries.push((ns, ip, dev));
        }
        Ok(cut)
    }

    /// Ends the cut: the entries are deleted and learnt again (ARP/ND).
    pub fn restore(&mut self) -> anyhow::Result<()> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        for (ns, ip, dev) in &self.entries {
            sh(std::process::Command::new("ip").args(["-n", ns, "neigh", "del", ip, "dev", dev]))?;
        }
        Ok(())
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// The outside mail server for [`REMOTE_DOMAIN`] on [`REMOTE_MX`]
/// (internet namespace): a plain Postfix that logs each client's address
/// in the `Received:` line it adds.
pub fn start_remote_mx(lab: &Lab) -> anyhow::Result<Postfix> {
    lab.internet
        .ip(&["addr", "add", &format!("{REMOTE_MX}/32"), "dev", "lo"])?;
    Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![REMOTE_MX.parse()?],
            &format!("mx.{REMOTE_DOMAIN}"),
            &[REMOTE_DOMAIN],
        ),
    )
}

/// One message received by the outside server.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it was written into the Maildir (the file's mtime).
    pub at: SystemTime,
    /// The SMTP client the receiving Postfix saw (its `Received:` line).
    pub from: IpAddr,
    /// The Message-ID.
    pub id: String,
}

/// The client address in the first (topmost) `Received:` header:
/// `from HELO (unknown [IP])`.
pub fn received_from(m: &MaildirMessage) -> Option<IpAddr> {
    let line = m.header("Received")?;
    let ip = line.split_once('[')?.1.split_once(']')?.0;
    ip.parse().ok()
}

/// Messages whose Message-ID starts with `prefix` in `sink`'s Maildir,
/// oldest first.
pub fn arrivals(sink: &Postfix, prefix: &str) -> anyhow::Result<Vec<Arrival>> {
    let mut out = Vec::new();
    for m in sink.maildir_messages() {
        let Some(id) = m.message_id() else { continue };
        if !id.starts_with(prefix) {
            continue;
        }
        let at = std::fs::metadata(&m.path)?.modified()?;
        let from = received_from(&m).with_context(|| {
            format!("no client address in {}:\n{}", m.path.display(), m.content)
        })?;
        out.push(Arrival {
            at,
            from,
            id: id.to_owned(),
        });
    }
    out.sort_by_key(|a| a.at);
    Ok(out)
}

/// The longest time between consecutive arrivals, and the arrival that
/// ended it. `None` with fewer than two.
pub fn longest_gap(arrivals: &[Arrival]) -> Option<(Duration, &Arrival)> {
    arrivals
        .windows(2)
        .map(|w| (w[1].at.duration_since(w[0].at).unwrap_or_default(), &w[1]))
        .max_by_key(|(d, _)| *d)
}

/// Waits until every one of `ids` is in `sink`'s Maildir.
pub fn wait_all_arrived(sink: &Postfix, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let mut missing = ids.len();
    let res = wait_until("every message at the outside server", timeout, || {
        let have = sink.maildir_message_ids();
        missing = ids.iter().filter(|id| !have.contains(id)).count();
        Ok(missing == 0)
    });
    ensure!(
        res.is_ok(),
        "{missing} of {} messages never arrived: {res:?}",
        ids.len()
    );
    Ok(())
}

/// One run of the failover benchmark.
#[derive(Debug, Clone, Copy)]
pub struct FailoverRun {
    /// Last outbound message through A before the cut → first through B.
    pub outbound: Duration,
    /// Cut → the first `cerectl status` (started after the cut) that
    /// shows A not ok, returned.
    pub status_down: Duration,
    /// Link back → first outbound message through A again (includes the
    /// hold-down).
    pub back: Duration,
}

/// The failover benchmark (`ceres-bench failover`): a home joined to VPS A
/// (priority 10) and B (20), home's Postfix sending one message every
/// `pace` to an outside server, and `runs` times: A's link cut, the times
/// measured, the link restored and the stream back on A. Hold-down at home:
/// `holddown`.
pub fn bench(runs: usize, pace: Duration, holddown: Duration) -> anyhow::Result<Vec<FailoverRun>> {
    use crate::extra_vps::ExtraVps;
    use crate::postfix::smtp::compose;
    use crate::{Ceres, bin};
    use std::sync::atomic::{AtomicBool, Ordering};

    let lab = Lab::new()?;
    let hd = format!("CERES_UPLINK_HOLDDOWN={}s", holddown.as_secs().max(1));
    // Only the ports the benchmark's home Postfix serves: a relay to
    // nothing is a problem in `cerectl status`, which must be ok first.
    let relays = "CERES_RELAYS=25/proxy-v2,587/proxy-v2";
    let ceres = Ceres::init(&lab, &[relays], &[&hd])?;
    let (_vps_a, _home) = ceres.up()?;
    let b_lines: Vec<&str> = [relays, "CERES_WATCH_DNS=off"]
        .into_iter()
        .chain(VPS_B_TUNNEL)
        .collect();
    let b = ExtraVps::init_dual(&lab, "vps-b", VPS_B, Some(VPS_B6), &b_lines)?;
    let _vps_b = b.start(&lab)?;
    let token = b.token("home")?;
    sh(lab
        .home
        .command(bin("ceres-home"))
        .arg("--config")
        .arg(&ceres.home_config)
        .arg("--state-dir")
        .arg(&ceres.home_state)
        .args(["join", &token, "--vps", "vps-b"]))?;
    let token = b.token("admin")?;
    let (code, out, err) = ceres.ctl(&["enroll", &token, "--vps", "vps-b"])?;
    ensure!(code == 0, "cerectl enroll vps-b: {out}{err}");
    wait_until(
        "cerectl status: both VPSes ok",
        Duration::from_secs(60),
        || Ok(ceres.ctl(&["status"])?.0 == 0),
    )?;
    let remote = start_remote_mx(&lab)?;
    // Home's mail server for the benchmark: the harness's Postfix bound to
    // home's first tunnel address (what `cerectl mailserver-config` sets),
    // the outside domain routed to its MX without DNS.
    let mut opts = PostfixOptions::home(vec!["127.0.0.1".parse()?]);
    opts.smtp_bind_address = Some("10.77.77.2".parse()?);
    opts.transport = vec![(REMOTE_DOMAIN.to_owned(), format!("[{REMOTE_MX}]:25"))];
    let home_pf = Postfix::start(&lab.home, opts)?;

    let to = format!("bob@{REMOTE_DOMAIN}");
    let prefix = format!("bench-{}-", crate::unique_id());
    let stop = AtomicBool::new(false);
    let a_ip: IpAddr = addr::VPS.parse()?;
    let b_ip: IpAddr = VPS_B.parse()?;
    let mut results = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let sender = scope.spawn(|| -> anyhow::Result<()> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{prefix}{n}@example.com");
                n += 1;
                home_pf.sendmail(
                    "alice@example.com",
                    &to,
                    &compose("alice@example.com", &to, "bench", &id, "x\n"),
                )?;
                std::thread::sleep(pace);
            }
            Ok(())
        });
        let result = (|| -> anyhow::Result<()> {
            for run in 1..=runs {
                // Steady state: the stream is arriving through A.
                let since = SystemTime::now();
                wait_until("outbound through A", Duration::from_secs(90), || {
                    Ok(arrivals(&remote, &prefix)?
                        .iter()
                        .any(|a| a.at > since && a.from == a_ip))
                })?;
                std::thread::sleep(Duration::from_secs(2));
                let mut cut = LinkCut::vps_a(&lab)?;
                let cut_at = SystemTime::now();
                let t_cut = std::time::Instant::now();
                // cerectl status until it shows A not ok.
                let mut status_down = None;
                while status_down.is_none() && t_cut.elapsed() < Duration::from_secs(120) {
                    let (_, out, _) = ceres.ctl(&["status", "--json"])?;
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                    if v["vpses"][0]["ok"] == false {
                        status_down = Some(t_cut.elapsed());
                    }
                }
                let status_down = status_down.context("cerectl status never showed A down")?;
                let mut first_b = None;
                wait_until("outbound through B", Duration::from_secs(60), || {
                    first_b = arrivals(&remote, &prefix)?
                        .into_iter()
                        .find(|a| a.at > cut_at && a.from == b_ip);
                    Ok(first_b.is_some())
                })?;
                let first_b = first_b.context("no arrival through B")?;
                let last_a = arrivals(&remote, &prefix)?
                    .into_iter()
                    .rfind(|a| a.from == a_ip && a.at < first_b.at)
                    .context("no arrival through A before the cut")?;
                cut.restore()?;
                let back_at = SystemTime::now();
                let mut first_a = None;
                wait_until("outbound through A again", Duration::from_secs(120), || {
                    first_a = arrivals(&remote, &prefix)?
                        .into_iter()
                        .find(|a| a.at > back_at && a.from == a_ip);
                    Ok(first_a.is_some())
                })?;
                let r = FailoverRun {
                    outbound: first_b.at.duration_since(last_a.at).unwrap_or_default(),
                    status_down,
                    back: first_a
                        .map(|a| a.at.duration_since(back_at).unwrap_or_default())
                        .unwrap_or_default(),
                };
                eprintln!(
                    "run {run}/{runs}: outbound A->B {:.2} s, cerectl status shows A down after {:.2} s, back on A after {:.2} s",
                    r.outbound.as_secs_f64(),
                    r.status_down.as_secs_f64(),
                    r.back.as_secs_f64()
                );
                results.push(r);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let sent = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
        result.and(sent)
    })?;
    Ok(results)
}
