//! The lab: real CERES binaries started in Linux network namespaces (an
//! `internet` router/client, a `vps`, a `home`), shared by the end-to-end
//! tests and by the `ceres-lab` demo.
//!
//! Names (namespaces, interfaces, files) are unique per process and per lab,
//! so tests run in parallel; everything is torn down on drop, also when a
//! test panics. Readiness is waited for on the daemons' sd_notify messages
//! and on observable conditions with deadlines — never with bare sleeps.

use ceres_sync::Unpoison;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod dms;
pub mod dovecot;
pub mod extra_vps;
pub mod failover;
pub mod nginx;
pub mod postfix;
mod procs;
pub mod prometheus;
pub mod walkthrough;

// One of each, shared with the other crates' tests (ceres-testkit); here
// too, so a lab test needs one import.
pub use ceres_testkit::{require_root, unique_id, wait_until};

/// Path of a workspace binary, next to the test executable's directory.
///
/// `cargo nextest run --workspace` does not build other packages' binaries
/// for this package's tests, so the test command builds them first
/// (`cargo build --workspace --bins`); `CERESTEST_BIN_DIR` overrides.
/// Built that way (debug, with this crate in the build) the agents carry the
/// rotation crash points; `cargo build -p ceres-vps` alone leaves them out.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CERESTEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` (same profile)",
        path.display()
    );
    path
}

/// A daemon's log file, read whole (lossy UTF-8; empty while it does not exist).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until a line of the log at `path` contains `needle`; returns that
/// line. A timeout carries the whole log. `who` names the daemon.
pub fn wait_log_line(
    who: &str,
    path: &Path,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut line = None;
    wait_until(&format!("{needle:?} in the {who} log"), timeout, || {
        line = read_log(path)
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned);
        Ok(line.is_some())
    })
    .map_err(|e| e.context(format!("log:\n{}", read_log(path))))?;
    line.context("log line vanished")
}

/// Runs a command, returning its output; fails if it cannot start.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))
}

/// Runs a command that must succeed.
pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    sh(Command::new("ip").args(args))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name (for `ip netns exec`).
    pub name: String,
}

impl Netns {
    /// Creates the namespace with loopback up.
    pub fn new(name: String) -> anyhow::Result<Self> {
        ip(["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(full)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sh(self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A daemon started by the lab; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    /// What it is, for messages.
    pub label: String,
    child: Option<Child>,
    /// Its log (stderr and stdout).
    pub log: PathBuf,
    notify: UnixDatagram,
}

impl Daemon {
    /// Starts `cmd` with `NOTIFY_SOCKET` pointing at a socket of ours and its
    /// output in `log`; does not wait for readiness.
    pub fn spawn(label: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Self> {
        let id = unique_id();
        let sock_path = dir.join(format!("notify-{label}-{id}.sock"));
        let notify = UnixDatagram::bind(&sock_path).context("binding the notify socket")?;
        let log = dir.join(format!("{label}-{id}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {label}: {cmd:?}"))?;
        Ok(Self {
            label: label.to_owned(),
            child: Some(child),
            log,
            notify,
        })
    }

    /// Waits for `READY=1` (or for the daemon to die, which is an error with its log).
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.label,
                    self.log_text()
                );
            }
            // Short receive timeouts so a daemon that dies is noticed promptly.
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        return Ok(());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; log:\n{}",
                    self.label,
                    self.log_text()
                );
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Non-blocking exit check.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// SIGKILL and reap: the agent dies without any chance to clean up.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        Ok(child.wait()?)
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        match ceres_testkit::stop_child(&mut child, false, timeout) {
            Some(status) => Ok(status),
            None => bail!(
                "{} did not stop within {timeout:?} of SIGTERM; log:\n{}",
                self.label,
                self.log_text()
            ),
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate(Duration::from_secs(5));
        }
    }
}

/// The documentation addresses of the lab.
pub mod addr {
    /// The VPS's public address.
    pub const VPS: &str = "203.0.113.10";
    /// The internet router's address on the VPS link.
    pub const VPS_GW: &str = "203.0.113.1";
    /// Home's public address.
    pub const HOME: &str = "198.51.100.10";
    /// Home's second address, for "the home IP changed".
    pub const HOME_ALT: &str = "198.51.100.20";
    /// The internet router's address on the home link.
    pub const HOME_GW: &str = "198.51.100.1";
    /// The outside client's address (on the internet namespace).
    pub const CLIENT: &str = "192.0.2.10";
    /// The VPS's public IPv6 address.
    pub const VPS6: &str = "2001:db8:1::10";
    /// The router on the VPS link, IPv6.
    pub const VPS6_GW: &str = "2001:db8:1::1";
    /// The outside client's IPv6 address.
    pub const CLIENT6: &str = "2001:db8:2::10";
    /// Home's IPv6 address.
    pub const HOME6: &str = "2001:db8:3::10";
    /// The router on the home link, IPv6.
    pub const HOME6_GW: &str = "2001:db8:3::1";
    /// Home's address on its LAN ([`crate::Lab::lan`]).
    pub const HOME_LAN: &str = "192.0.2.129";
    /// A host on the home LAN.
    pub const LAN_HOST: &str = "192.0.2.130";
}

/// Three namespaces joined like the real thing: `internet` routes between
/// `vps` (203.0.113.10) and `home` (198.51.100.10), and hosts the outside
/// client (192.0.2.10).
#[derive(Debug)]
pub struct Lab {
    /// Unique id of this lab.
    pub id: String,
    /// Files of this lab (state dirs, configs, logs).
    pub dir: tempfile::TempDir,
    /// The VPS's own link name inside `vps`.
    pub vps_if: String,
    /// Home's own link name inside `home`.
    pub home_if: String,
    /// Tunnel interface name for the VPS agent.
    pub vps_tun: String,
    /// Tunnel interface name for the home agent.
    pub home_tun: String,
    // Dropped in reverse: namespaces last.
    /// The VPS host.
    pub vps: Netns,
    /// The home host.
    pub home: Netns,
    /// The internet: router and outside client.
    pub internet: Netns,
}

impl Lab {
    /// Builds the three namespaces and their links.
    pub fn new() -> anyhow::Result<Self> {
        let id = unique_id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ceres-lab-{id}-"))
            .tempdir()?;
        let internet = Netns::new(format!("ceres-{id}-inet"))?;
        let vps = Netns::new(format!("ceres-{id}-vps"))?;
        let home = Netns::new(format!("ceres-{id}-home"))?;
        let (vps_if, home_if) = (format!("v{id}"), format!("h{id}"));
        let (vps_peer, home_peer) = (format!("v{id}i"), format!("h{id}i"));
        for (ns, own, peer) in [(&vps, &vps_if, &vps_peer), (&home, &home_if, &home_peer)] {
            ip([
                "link",
                "add",
                own,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                &internet.name,
            ])?;
        }
        internet.ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::VPS_GW),
            "dev",
            &vps_peer,
        ])?;
        internet.ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::HOME_GW),
            "dev",
            &home_peer,
        ])?;
        internet.ip(&["addr", "add", &format!("{}/32", addr::CLIENT), "dev", "lo"])?;
        internet.ip(&["link", "set", &vps_peer, "up"])?;
        internet.ip(&["link", "set", &home_peer, "up"])?;
        internet.sysctl("net.ipv4.ip_forward", "1")?;
        // IPv6 too (nodad: addresses usable at once).
        internet.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        internet.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addr::VPS6_GW),
            "dev",
            &vps_peer,
            "nodad",
        ])?;
        internet.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addr::HOME6_GW),
            "dev",
            &home_peer,
            "nodad",
        ])?;
        internet.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", addr::CLIENT6),
            "dev",
            "lo",
            "nodad",
        ])?;
        vps.ip(&["addr", "add", &format!("{}/24", addr::VPS), "dev", &vps_if])?;
        vps.ip(&["link", "set", &vps_if, "up"])?;
        vps.ip(&["route", "add", "default", "via", addr::VPS_GW])?;
        home.ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::HOME),
            "dev",
            &home_if,
        ])?;
        home.ip(&["link", "set", &home_if, "up"])?;
        home.ip(&["route", "add", "default", "via", addr::HOME_GW])?;
        vps.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addr::VPS6),
            "dev",
            &vps_if,
            "nodad",
        ])?;
        vps.ip(&["-6", "route", "add", "default", "via", addr::VPS6_GW])?;
        home.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addr::HOME6),
            "dev",
            &home_if,
            "nodad",
        ])?;
        home.ip(&["-6", "route", "add", "default", "via", addr::HOME6_GW])?;
        let (vps_tun, home_tun) = (format!("cv{id}"), format!("ch{id}"));
        Ok(Self {
            id,
            dir,
            vps_if,
            home_if,
            vps_tun,
            home_tun,
            vps,
            home,
            internet,
        })
    }

    /// A path inside the lab directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A LAN at home: a namespace on a veth to `home`, home at
    /// [`addr::HOME_LAN`], the LAN host at [`addr::LAN_HOST`] (a /25, so no
    /// route to anything else). Dropped with the namespace.
    pub fn lan(&self) -> anyhow::Result<Netns> {
        let ns = Netns::new(format!("ceres-{}-lan", self.id))?;
        let (h, l) = (format!("l{}", self.id), format!("l{}h", self.id));
        ip([
            "link",
            "add",
            &h,
            "netns",
            &self.home.name,
            "type",
            "veth",
            "peer",
            "name",
            &l,
            "netns",
            &ns.name,
        ])?;
        self.home
            .ip(&["addr", "add", &format!("{}/25", addr::HOME_LAN), "dev", &h])?;
        self.home.ip(&["link", "set", &h, "up"])?;
        ns.ip(&["addr", "add", &format!("{}/25", addr::LAN_HOST), "dev", &l])?;
        ns.ip(&["link", "set", &l, "up"])?;
        Ok(ns)
    }
}

/// The CERES pieces of a lab: configs, state dirs, and how to start each.
#[derive(Debug)]
pub struct Ceres<'a> {
    /// The lab it runs in.
    pub lab: &'a Lab,
    /// VPS config file.
    pub vps_config: PathBuf,
    /// VPS state dir.
    pub vps_state: PathBuf,
    /// Home config file.
    pub home_config: PathBuf,
    /// Home state dir.
    pub home_state: PathBuf,
    /// cerectl credentials dir.
    pub ctl_dir: PathBuf,
    /// Every join token made, for the secrets-in-logs check.
    pub tokens: std::sync::Mutex<Vec<String>>,
}

impl<'a> Ceres<'a> {
    /// `ceres-vps init` for the lab's VPS, with extra `CERES_*` lines for
    /// its config, and a home config with `home_lines`.
    pub fn init(lab: &'a Lab, vps_lines: &[&str], home_lines: &[&str]) -> anyhow::Result<Self> {
        let c = Self {
            lab,
            vps_config: lab.path("vps.env"),
            vps_state: lab.path("vps-state"),
            home_config: lab.path("home.env"),
            home_state: lab.path("home-state"),
            ctl_dir: lab.path("ctl"),
            tokens: std::sync::Mutex::new(Vec::new()),
        };
        // Interface names are unique per lab: the WireGuard API socket
        // directory is shared by every namespace.
        // The watchdog's DNS checks stay off: the lab has no resolver, and
        // nothing may reach a real one (a test turns them on with its own
        // lab DNS server, by environment: it overrides the file).
        let mut vps_text = format!(
            "CERES_REPORT_INTERVAL=1s\nCERES_TUNNEL_IFNAME={}\nCERES_WATCH_DNS=off\n",
            lab.vps_tun
        );
        for l in vps_lines {
            vps_text.push_str(l);
            vps_text.push('\n');
        }
        std::fs::write(&c.vps_config, vps_text)?;
        let mut home_text = format!(
            "CERES_RECONNECT_MAX=2s\nCERES_NAME=lab-home\nCERES_TUNNEL_IFNAME={}\n",
            lab.home_tun
        );
        for l in home_lines {
            home_text.push_str(l);
            home_text.push('\n');
        }
        std::fs::write(&c.home_config, home_text)?;
        sh(Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(&c.vps_config)
            .arg("--state-dir")
            .arg(&c.vps_state)
            .args([
                "init",
                "--public-ip",
                &format!("{},{}", addr::VPS, addr::VPS6),
                "--domain",
                "example.com",
            ]))?;
        Ok(c)
    }

    /// Starts `ceres-vps run` in the VPS namespace and waits until it is ready.
    pub fn start_vps(&self) -> anyhow::Result<Daemon> {
        self.start_vps_env(&[])
    }

    /// `start_vps` with extra environment variables.
    pub fn start_vps_env(&self, env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        let mut cmd = self.lab.vps.command(bin("ceres-vps"));
        cmd.envs(env.iter().copied());
        cmd.arg("--config")
            .arg(&self.vps_config)
            .arg("--state-dir")
            .arg(&self.vps_state)
            .arg("run");
        cmd.env("RUST_LOG", "info");
        let mut d = Daemon::spawn("vps", cmd, self.lab.dir.path())?;
        d.wait_ready(Duration::from_secs(20))?;
        Ok(d)
    }

    /// A fresh one-time token.
    pub fn token(&self, role: &str) -> anyhow::Result<String> {
        let out = sh(Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(&self.vps_config)
            .arg("--state-dir")
            .arg(&self.vps_state)
            .args(["token", "create", "--role", role]))?;
        let token = out.trim().to_owned();
        self.tokens.locked().push(token.clone());
        Ok(token)
    }

    /// `ceres-home join` from the home namespace.
    pub fn join_home(&self) -> anyhow::Result<()> {
        let token = self.token("home")?;
        sh(self
            .lab
            .home
            .command(bin("ceres-home"))
            .arg("--config")
            .arg(&self.home_config)
            .arg("--state-dir")
            .arg(&self.home_state)
            .args(["join", &token]))?;
        Ok(())
    }

    /// Starts `ceres-home run` in the home namespace and waits until it is ready.
    pub fn start_home(&self) -> anyhow::Result<Daemon> {
        self.start_home_env(&[])
    }

    /// `start_home` with extra environment variables.
    pub fn start_home_env(&self, env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        let mut cmd = self.lab.home.command(bin("ceres-home"));
        cmd.envs(env.iter().copied());
        cmd.arg("--config")
            .arg(&self.home_config)
            .arg("--state-dir")
            .arg(&self.home_state)
            .arg("run");
        cmd.env("RUST_LOG", "info");
        let mut d = Daemon::spawn("home", cmd, self.lab.dir.path())?;
        d.wait_ready(Duration::from_secs(20))?;
        Ok(d)
    }

    /// The whole gateway up: the VPS agent started, home joined and started,
    /// cerectl enrolled, and home connected. Returns (vps, home).
    pub fn up(&self) -> anyhow::Result<(Daemon, Daemon)> {
        let vps = self.start_vps()?;
        self.join_home()?;
        let home = self.start_home()?;
        self.enroll_ctl()?;
        self.wait_home_connected(true, Duration::from_secs(20))?;
        Ok((vps, home))
    }

    /// `cerectl enroll` from the internet namespace (the admin is "anywhere").
    pub fn enroll_ctl(&self) -> anyhow::Result<()> {
        let token = self.token("admin")?;
        sh(self
            .lab
            .internet
            .command(bin("cerectl"))
            .arg("--dir")
            .arg(&self.ctl_dir)
            .args(["enroll", &token]))?;
        Ok(())
    }

    /// `cerectl ARGS` from the internet namespace: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = run(self
            .lab
            .internet
            .command(bin("cerectl"))
            .arg("--dir")
            .arg(&self.ctl_dir)
            .args(args))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `cerectl status --json`: (exit code, parsed JSON).
    pub fn status_json(&self) -> anyhow::Result<(i32, serde_json::Value)> {
        let (code, stdout, stderr) = self.ctl(&["status", "--json"])?;
        let json = serde_json::from_str(&stdout)
            .with_context(|| format!("cerectl status --json exited {code}: {stderr}"))?;
        Ok((code, json))
    }

    /// Home's forwarders, from `cerectl status --json`: mail port -> the port
    /// the forwarder listens on at home's tunnel address (the kernel picks
    /// it). Waits until home has reported `count` of them.
    pub fn forwarder_ports(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::collections::BTreeMap<u16, u16>> {
        let mut ports = std::collections::BTreeMap::new();
        wait_until(
            &format!("{count} forwarders in home's report"),
            timeout,
            || {
                let (_, json) = self.status_json()?;
                ports = json["forwards"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| {
                                let port = u16::try_from(f["port"].as_u64()?).ok()?;
                                let target = u16::try_from(f["target_port"].as_u64()?).ok()?;
                                Some((target, port))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(ports.len() >= count)
            },
        )?;
        Ok(ports)
    }

    /// Waits until home's probes (in `cerectl status --json`) reach the mail
    /// server on every relayed port, or on `port` alone when given.
    pub fn wait_mail_server_reachable(
        &self,
        port: Option<u16>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_until("home's probes to reach the mail server", timeout, || {
            let (_, j) = self.status_json()?;
            let probes = j["mail_server"].as_array().cloned().unwrap_or_default();
            let ok = |p: &serde_json::Value| p["reachable"] == true;
            Ok(match port {
                Some(port) => probes.iter().any(|p| p["port"] == port && ok(p)),
                None => !probes.is_empty() && probes.iter().all(ok),
            })
        })
    }

    /// Waits until `cerectl status --json` says home is (or is not) connected.
    pub fn wait_home_connected(
        &self,
        connected: bool,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        wait_until(&format!("home connected={connected}"), timeout, || {
            let (_, json) = self.status_json()?;
            let ok = json["home"]["connected"] == connected;
            last = json;
            Ok(ok)
        })?;
        Ok(last)
    }
}

/// A VPS agent alone on a loopback address of its own (127.x.y.z derived
/// from the process id), for tests that need no namespaces and no root.
/// The tunnel is off: it needs CAP_NET_ADMIN.
#[derive(Debug)]
pub struct LoopVps {
    /// Config, state and logs.
    pub dir: tempfile::TempDir,
    /// The VPS's address (also its "public IP").
    pub ip: String,
    /// Control-plane `ip:port`.
    pub addr: String,
    /// The running agent.
    pub daemon: Daemon,
}

/// A loopback address unique to this process.
pub fn loopback_ip() -> String {
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        1 + (pid >> 16) % 250,
        (pid >> 8) & 0xff,
        pid & 0xff
    )
}

impl LoopVps {
    /// Inits and starts a VPS agent with extra config lines.
    pub fn start(extra_config: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ip = loopback_ip();
        let addr = format!("{ip}:7443");
        let config = dir.path().join("vps.env");
        let mut text = format!(
            "CERES_CONTROL_LISTEN={addr}\nCERES_REPORT_INTERVAL=1s\nCERES_TUNNEL=off\nCERES_METRICS_LISTEN=off\nCERES_WATCH_DNS=off\n"
        );
        for l in extra_config {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&config, text)?;
        sh(Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["init", "--public-ip", &ip, "--domain", "example.com"]))?;
        let mut cmd = Command::new(bin("ceres-vps"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("run");
        let mut daemon = Daemon::spawn("vps", cmd, dir.path())?;
        daemon.wait_ready(Duration::from_secs(20))?;
        Ok(Self {
            dir,
            ip,
            addr,
            daemon,
        })
    }

    /// `ceres-vps ARGS` against this agent's config and state.
    pub fn vps(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(Command::new(bin("ceres-vps"))
            .arg("--config")
            .arg(self.dir.path().join("vps.env"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args))
    }

    /// A fresh token.
    pub fn token(&self, role: &str, ttl: &str) -> anyhow::Result<String> {
        let out = self.vps(&["token", "create", "--role", role, "--ttl", ttl])?;
        anyhow::ensure!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Enrols a cerectl credentials dir and returns its path.
    pub fn enroll_ctl(&self) -> anyhow::Result<PathBuf> {
        let ctl_dir = self.dir.path().join(format!("ctl-{}", unique_id()));
        let token = self.token("admin", "1h")?;
        sh(Command::new(bin("cerectl"))
            .arg("--dir")
            .arg(&ctl_dir)
            .args(["enroll", &token]))?;
        Ok(ctl_dir)
    }

    /// Path of a state file.
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }
}

/// A TCP echo server (socat) inside a namespace, stopped on drop.
pub fn echo_server(ns: &Netns, ip: &str, port: u16, dir: &Path) -> anyhow::Result<Daemon> {
    let mut cmd = ns.command("socat");
    cmd.arg(format!("TCP-LISTEN:{port},bind={ip},reuseaddr,fork"))
        .arg("PIPE");
    Daemon::spawn("echo", cmd, dir)
}

/// Sends `payload` to an echo server from inside `ns`; true when it came back whole.
pub fn echo_roundtrip(ns: &Netns, ip: &str, port: u16, payload: &str) -> anyhow::Result<bool> {
    let mut cmd = ns.command("timeout");
    cmd.args([
        "5",
        "socat",
        "-T",
        "3",
        "-",
        &format!("TCP:{ip}:{port},connect-timeout=2"),
    ]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(payload.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout) == payload)
}

/// Every secret the lab's CERES state holds: private keys (PEM bodies and
/// WireGuard keys, including staged ones), pre-shared keys, join tokens.
/// WireGuard keys and PSKs are listed in base64 and in hex too (the form
/// the userspace API uses), so a key logged either way is caught.
pub fn lab_secrets(ceres: &Ceres<'_>) -> Vec<String> {
    let mut secrets: Vec<String> = ceres.tokens.locked().clone();
    let wireguard = |b64: &str, secrets: &mut Vec<String>| {
        if let Some(hex) = wireguard_key_hex(b64) {
            secrets.push(hex);
        }
        secrets.push(b64.to_owned());
    };
    for dir in [&ceres.vps_state, &ceres.home_state, &ceres.ctl_dir] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if name.ends_with(".key") {
                // PEM: every base64 line of the body; WireGuard: the key itself.
                for line in text
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.trim().len() >= 24)
                {
                    wireguard(line.trim(), &mut secrets);
                }
            }
            if name == "home-peer.json" {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    if let Some(psk) = v["preshared_key"].as_str() {
                        wireguard(psk, &mut secrets);
                    }
                }
            }
        }
    }
    secrets
}

/// The hex form of a base64 WireGuard key (32 bytes); `None` for anything else.
pub fn wireguard_key_hex(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    (bytes.len() == 32).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Fails when any of `secrets` appears in any of `logs` (daemon logs,
/// command output): keys and tokens must never be logged.
pub fn assert_no_secrets(secrets: &[String], logs: &[(&str, String)]) {
    assert!(
        !secrets.is_empty(),
        "no secrets collected: the check would prove nothing"
    );
    for (name, log) in logs {
        for secret in secrets {
            assert!(
                !log.contains(secret.as_str()),
                "a secret ({}...) appears in {name}",
                &secret[..8.min(secret.len())]
            );
        }
    }
}
