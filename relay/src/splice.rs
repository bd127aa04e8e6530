//! Moving bytes between two TCP sockets with splice(2), holding no user-space buffer.
//!
//! Each direction moves data socket → pipe → socket inside the kernel. A pipe is
//! borrowed from a small process-wide pool only while a chunk is in flight and given
//! back as soon as it is empty, so an idle connection holds two sockets and nothing
//! else: no buffer (RSS) and no pipe (file descriptors — 5,000 connections with two
//! pipes each would need 30,000 fds, over the 20,000 per-process limit).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle pipes kept for reuse. Beyond this, pipes are closed when given back; the cap
/// bounds the fds an idle relay holds no matter how busy it was before.
const POOL_CAP: usize = 32;
/// Pipe capacity asked for, and bytes moved per splice call. Larger than the 64 KiB
/// default so a bulk transfer needs fewer wake-ups; only pipes in flight hold pages.
const CHUNK: usize = 256 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // Best effort: when refused (pipe-max-size, per-user pipe quota) the pipe keeps
        // its default size and splice simply moves less per call.
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
        unsafe {
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                CHUNK as libc::c_int,
            )
        };
        Ok(pipe)
    }
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// A pipe on loan from the pool; goes back on drop unless it may still hold data.
struct Lease {
    pipe: Option<Pipe>,
    clean: bool,
}

impl Lease {
    fn take() -> io::Result<Self> {
        let pooled = POOL.lock().ok().and_then(|mut p| p.pop());
        let pipe = match pooled {
            Some(p) => p,
            None => Pipe::new()?,
        };
        Ok(Lease {
            pipe: Some(pipe),
            clean: true,
        })
    }

    fn pipe(&self) -> &Pipe {
        // Invariant: `pipe` is Some until drop.
        self.pipe
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease used after drop"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(pipe)) = (self.clean, self.pipe.take()) {
            if let Ok(mut pool) = POOL.lock() {
                if pool.len() < POOL_CAP {
                    pool.push(pipe);
                }
            }
        }
    }
}

/// One non-blocking splice(2). Splicing into a socket whose peer is gone raises
/// SIGPIPE (there is no MSG_NOSIGNAL for splice); Rust binaries ignore SIGPIPE by
/// default, so it surfaces as `EPIPE` and ends just that connection.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call (borrowed from live
    // sockets/pipes); null offsets mean "current position", as splice requires for
    // sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Shuts down the write side of `s`, forwarding a half-close. Errors are ignored: the
/// peer may already be gone, which the other direction will report.
fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

/// Last-activity clock shared by both directions of one connection, for the idle
/// timeout. Milliseconds since `start`, so it fits an atomic.
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`. Wakes at most once per `idle` period
    /// while traffic flows, so a busy connection costs no extra timer work.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copies `src` → `dst` until EOF on `src`, then half-closes `dst`.
/// Each counter in `moved` (the port's total, the connection's own) is
/// increased as bytes arrive at `dst`.
pub(crate) async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    moved: [&AtomicU64; 2],
    activity: &Activity,
) -> io::Result<()> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        src.readable().await?;
        let mut lease = Lease::take()?;
        loop {
            let write_fd = lease.pipe().write.as_raw_fd();
            let n = match src.try_io(Interest::READABLE, || splice(src_fd, write_fd, CHUNK)) {
                Ok(0) => {
                    drop(lease);
                    shutdown_write(dst);
                    return Ok(());
                }
                Ok(n) => n,
                // Drained for now: the pipe is empty, give it back while we wait.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            lease.clean = false;
            activity.touch();
            let read_fd = lease.pipe().read.as_raw_fd();
            let mut left = n;
            while left > 0 {
                match dst.try_io(Interest::WRITABLE, || splice(read_fd, dst_fd, left)) {
                    Ok(m) => {
                        left -= m;
                        for counter in moved {
                            counter.fetch_add(m as u64, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            lease.clean = true;
            activity.touch();
        }
    }
}

/// How a spliced connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both directions reached EOF.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The relay is shutting down.
    Shutdown,
}

/// Splices `a` ↔ `b` until both directions end, one fails, the idle timeout passes or
/// `shutdown` fires. `a_to_b` / `b_to_a` count the bytes moved each way (each
/// into a shared total and into the connection's own counter).
pub(crate) async fn bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: [&AtomicU64; 2],
    b_to_a: [&AtomicU64; 2],
    idle: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> io::Result<End> {
    let activity = Activity::new();
    let both =
        async { tokio::try_join!(pump(a, b, a_to_b, &activity), pump(b, a, b_to_a, &activity)) };
    tokio::select! {
        r = both => r.map(|_| End::Closed),
        () = activity.idle_for(idle) => Ok(End::Idle),
        () = shutdown.cancelled() => Ok(End::Shutdown),
    }
}

/// Pipes currently idle in the pool (for tests and the benchmark's fd accounting).
pub fn pooled_pipes() -> usize {
    POOL.lock().map(|p| p.len()).unwrap_or(0)
}
