//! Helpers shared by the relay integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::{TcpSocket, TcpStream};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback address no other test process uses: nextest runs each test in its own
/// process, so pid × 64 + a per-process counter is unique; 127.0.0.0/16 is skipped.
pub fn unique_ip() -> IpAddr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 64, "too many addresses in one test");
    let x = (std::process::id() * 64 + n) % ((1 << 24) - (1 << 16));
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + (1 << 16) + x))
}

/// Connects to `to` from `from` (port chosen by the kernel).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// A network namespace with `lo` up, deleted on drop (also when the test panics).
pub struct Netns {
    /// Its name (for `ip -n`).
    pub name: String,
}

impl Netns {
    /// A fresh namespace (needs root).
    pub fn new() -> Self {
        let name = format!("crelay{}", ceres_testkit::unique_id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `f` on a thread that has entered this namespace; sockets created there stay
    /// in it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: a valid netns fd; setns only affects this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
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

/// Runs a command that must succeed.
pub fn sh(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
