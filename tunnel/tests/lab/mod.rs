//! Lab helpers for the namespace tests: unique names, namespaces and child
//! processes that clean up on drop (also on panic), running code inside a
//! namespace, TCP echo checks and UAPI queries.

// Test helpers: a panic is how they report a failed step.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;

pub const BIN: &str = env!("CARGO_BIN_EXE_ceres-wg");

pub use ceres_testkit::{require_root, unique_id, wait_until};

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!("ct{}", unique_id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args...`
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that has joined this namespace; sockets it creates
    /// live in the namespace and can be used from any thread afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let f_ns = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects two namespaces with a veth pair; returns the interface names.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let va = format!("va{}", unique_id());
    let vb = format!("vb{}", unique_id());
    sh(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    sh(&["ip", "link", "set", &va, "netns", &a.name]);
    sh(&["ip", "link", "set", &vb, "netns", &b.name]);
    for (ns, dev, addr) in [(a, &va, a_addr), (b, &vb, b_addr)] {
        if addr.contains(':') {
            ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        } else {
            ns.ip(&["addr", "add", addr, "dev", dev]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
    (va, vb)
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so the engine removes its UAPI socket; then make sure.
        ceres_testkit::stop_child(&mut self.child, false, Duration::from_secs(5));
    }
}

/// A WireGuard key pair as files and raw bytes.
#[derive(Debug, Clone)]
pub struct Keys {
    pub secret: [u8; 32],
    pub public_b64: String,
    pub file: PathBuf,
}

pub fn keys(dir: &Path, name: &str) -> Keys {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let k: ceres_tunnel::PrivateKey = secret.into();
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, format!("{}\n", k.to_base64())).unwrap();
    Keys {
        secret,
        public_b64: k.public_key().to_string(),
        file,
    }
}

pub fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

/// A running `ceres-wg`.
#[derive(Debug)]
pub struct Engine {
    pub proc: Proc,
    pub ifname: String,
    pub uapi: PathBuf,
    pub listen_port: u16,
}

/// Starts `ceres-wg` in `ns` with the given extra flags and waits for its
/// ready file.
pub fn engine(
    ns: &Netns,
    dir: &Path,
    uapi_dir: &Path,
    key: &Keys,
    address: &str,
    extra: &[&str],
) -> Engine {
    let ifname = format!("cw{}", unique_id());
    let ready = dir.join(format!("{ifname}.ready"));
    let log = std::fs::File::create(dir.join(format!("{ifname}.log"))).unwrap();
    let mut c = ns.cmd(BIN);
    c.args(["--name", &ifname, "--address", address])
        .arg("--private-key-file")
        .arg(&key.file)
        .arg("--uapi-dir")
        .arg(uapi_dir)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .env("RUST_LOG", "info,ceres_tunnel=debug")
        .stdout(Stdio::null())
        .stderr(log);
    let proc = Proc {
        child: c.spawn().expect("spawn ceres-wg"),
        name: ifname.clone(),
    };
    let mut p = proc;
    wait_until(&format!("{ifname} ready"), Duration::from_secs(10), || {
        if let Ok(Some(st)) = p.child.try_wait() {
            let log =
                std::fs::read_to_string(dir.join(format!("{ifname}.log"))).unwrap_or_default();
            panic!("ceres-wg exited early ({st}): {log}");
        }
        Ok(ready.exists())
    })
    .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    Engine {
        uapi: uapi_dir.join(format!("{ifname}.sock")),
        listen_port: info["listen_port"].as_u64().unwrap() as u16,
        proc: p,
        ifname,
    }
}

/// One UAPI request, reply up to the blank line.
pub fn uapi(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect UAPI");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"\n\n") {
        let n = s.read(&mut buf).expect("read UAPI");
        assert!(
            n > 0,
            "UAPI closed early: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).unwrap()
}

/// The engine's counters via our `stats=1` UAPI extension.
pub fn stats(e: &Engine) -> serde_json::Value {
    let r = uapi(&e.uapi, "stats=1\n\n");
    let line = r
        .lines()
        .find_map(|l| l.strip_prefix("ceres_stats="))
        .expect("stats line");
    serde_json::from_str(line).unwrap()
}

/// A TCP echo server in `ns` on `addr`; returns its address.
pub fn echo_server(ns: &Netns, addr: IpAddr) -> SocketAddr {
    let l = ns.run(|| TcpListener::bind(SocketAddr::new(addr, 0)).expect("bind echo"));
    let local = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    local
}

/// Connects from `ns` (retrying until the tunnel is up or the deadline).
pub fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    connect_within(ns, to, Duration::from_secs(20))
}

/// [`connect`] with a caller-chosen deadline.
pub fn connect_within(ns: &Netns, to: SocketAddr, within: Duration) -> TcpStream {
    let deadline = Instant::now() + within;
    loop {
        match ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5))) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "connect {to} from {}: {e}",
                    ns.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Sends `n` random bytes over `s` and checks the echo: data both ways.
pub fn echo_round(s: &mut TcpStream, n: usize) {
    let mut data = vec![0u8; n];
    rand::rng().fill_bytes(&mut data);
    let mut w = s.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&to_send));
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).expect("echo read");
    writer.join().unwrap().expect("echo write");
    assert!(back == data, "echoed data differs");
}

/// A fresh connection from `client` to an echo server in `server`, `n` bytes.
pub fn tcp_check(server: &Netns, server_ip: IpAddr, client: &Netns, n: usize) {
    let addr = echo_server(server, server_ip);
    let mut s = connect(client, addr);
    echo_round(&mut s, n);
}
