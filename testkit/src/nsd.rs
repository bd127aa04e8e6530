//! An authoritative DNS server for tests: Debian's nsd in the foreground,
//! serving zones the test wrote, on an address the test chose. It runs as
//! whoever runs the test (no user switch, chroot or database), every file in
//! its own temporary directory, in a process group of its own (it forks a
//! server process), and is stopped on drop — also when the test panics.
//! Readiness is the caller's: ask it a question it must answer.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A running nsd.
#[derive(Debug)]
pub struct Nsd {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
}

impl Nsd {
    /// nsd's path. `None` (the caller skips) when it is not installed — except
    /// under `CI=true`, where a skip would hide a missing package: then it panics.
    pub fn binary() -> Option<PathBuf> {
        let found = ["/usr/sbin/nsd", "/usr/local/sbin/nsd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        if found.is_none() {
            crate::skip("nsd", "nsd is not installed (apt-get install -y nsd)");
        }
        found
    }

    /// Starts `binary` serving `zones` (`(name, zone file text)`) on `addr`.
    pub fn spawn(binary: &Path, addr: SocketAddr, zones: &[(&str, &str)]) -> io::Result<Nsd> {
        Self::spawn_in(None, binary, addr, zones)
    }

    /// [`Nsd::spawn`] inside the network namespace `netns` (`ip netns exec`,
    /// which execs nsd: the child is nsd itself), or here with `None`.
    pub fn spawn_in(
        netns: Option<&str>,
        binary: &Path,
        addr: SocketAddr,
        zones: &[(&str, &str)],
    ) -> io::Result<Nsd> {
        let dir = tempfile::Builder::new().prefix("ceres-nsd-").tempdir()?;
        let d = dir.path().display();
        // rrl-ratelimit 0: nsd's response-rate limiting (200/s by default)
        // silently drops answers to a burst of checks from one address, which
        // shows up as random 2 s timeouts.
        let mut conf = format!(
            "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  do-ip6: no\n  username: \"\"\n  \
             chroot: \"\"\n  database: \"\"\n  zonesdir: \"{d}\"\n  zonelistfile: \"{d}/zone.list\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  \
             logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n  rrl-ratelimit: 0\n\
             remote-control:\n  control-enable: no\n",
            ip = addr.ip(),
            port = addr.port(),
        );
        for (i, (name, body)) in zones.iter().enumerate() {
            let file = format!("zone{i}.zone");
            std::fs::write(dir.path().join(&file), body)?;
            conf.push_str(&format!(
                "zone:\n  name: \"{name}\"\n  zonefile: \"{file}\"\n"
            ));
        }
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf)?;
        let out = std::fs::File::create(dir.path().join("output"))?;
        let child = {
            use std::os::unix::process::CommandExt;
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(binary);
                    c
                }
                None => Command::new(binary),
            };
            cmd.arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .process_group(0)
                .spawn()?
        };
        Ok(Nsd { child, dir, addr })
    }

    /// Replaces the text of zone `index` (in the order given to `spawn`) and
    /// has nsd reload it (SIGHUP: nsd reads zone files whose mtime changed).
    /// It keeps answering meanwhile, so a client never sees it gone; bump the
    /// SOA serial in the new text and poll for the new answer.
    pub fn replace_zone(&self, index: usize, text: &str) -> io::Result<()> {
        let path = self.dir.path().join(format!("zone{index}.zone"));
        if !path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("nsd has no zone {index}"),
            ));
        }
        // Via a new file and a rename: nsd never reads half a zone.
        let tmp = self.dir.path().join(format!("zone{index}.zone.new"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        let pid = i32::try_from(self.child.id())
            .map_err(|_| io::Error::other("nsd's pid does not fit a pid_t"))?;
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet reaped (it is reaped on drop), so it names nsd.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// What nsd printed and logged so far, for failure messages.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("output"), read("nsd.log"))
    }

    /// `Some(status)` once nsd has exited (it should not, before drop).
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child, true, Duration::from_secs(5));
    }
}
