//! nginx (Debian's 1.22) exactly as the package installs it, run as a
//! private instance in a lab namespace: the baseline `cerectl
//! mailserver-config nginx --apply` edits (it adds `conf.d/ceres.conf` and
//! `listen` lines in the server blocks of `sites-enabled/*`).
//!
//! The instance's config dir is a copy of `/etc/nginx`. The only edits are
//! the absolute paths in `nginx.conf` that name machine-wide files (pid
//! file, logs, the `include /etc/nginx/...` lines), each checked so a
//! changed stock file fails loudly; and `sites-enabled/default`, an
//! absolute link to `/etc/nginx/sites-available/default`, becomes a
//! relative link inside the copy (so editing the enabled site edits the
//! instance's, never the machine's).
//!
//! nginx runs in the foreground (`-g 'daemon off;'` on the command line,
//! not in the file) as a lab `Daemon`: the master is our child, its log is
//! captured, and drop stops it. Readiness is an HTTP 200 from the default
//! site on 127.0.0.1:80.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::postfix::smtp::connect_in;
use crate::{Daemon, Netns, sh, unique_id, wait_until};

/// How long one `http_get` step may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx instance; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct Nginx {
    ns: String,
    // Dropped before `dir`: the daemon's log lives in it.
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Copies `/etc/nginx`, points its machine-wide paths into the
    /// instance, starts nginx inside `ns` and waits for a 200 on
    /// 127.0.0.1:80.
    pub fn start_stock(ns: &Netns) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ceres-nginx-{}-", unique_id()))
            .tempdir()
            .context("creating the instance dir")?;
        let conf = dir.path().join("conf");
        sh(Command::new("cp").arg("-a").arg("/etc/nginx").arg(&conf))
            .context("copying /etc/nginx (is nginx installed?)")?;
        relink_into(&conf, Path::new("/etc/nginx"))?;
        let main = conf.join("nginx.conf");
        let text = std::fs::read_to_string(&main)?;
        std::fs::write(&main, rewrite_main_conf(&text, dir.path(), &conf)?)?;
        sh(Command::new("nginx").arg("-t").arg("-c").arg(&main))
            .context("nginx -t on the instance copy")?;

        let mut cmd = ns.command("nginx");
        cmd.arg("-c").arg(&main).args(["-g", "daemon off;"]);
        let daemon = Daemon::spawn("nginx", cmd, dir.path())?;
        let mut nginx = Self {
            ns: ns.name.clone(),
            daemon: Some(daemon),
            dir,
        };
        nginx.wait_ready(Duration::from_secs(20))?;
        Ok(nginx)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);
        let result = wait_until(&format!("HTTP 200 from nginx on {addr}"), timeout, || {
            if let Some(d) = self.daemon.as_mut()
                && let Some(status) = d.try_wait()?
            {
                bail!("nginx exited ({status})");
            }
            Ok(http_get_in(&self.ns, None, addr, None)? == Some(200))
        });
        result.map_err(|e| e.context(self.diagnose()))
    }

    fn diagnose(&self) -> String {
        format!(
            "nginx output:\n{}\nerror log:\n{}",
            self.daemon
                .as_ref()
                .map(Daemon::log_text)
                .unwrap_or_default(),
            self.error_log()
        )
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its config directory: the copy of `/etc/nginx`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    /// Its `nginx.conf` (for `nginx -t -c`, `nginx -s reload -c`).
    pub fn config_path(&self) -> PathBuf {
        self.config_dir().join("nginx.conf")
    }

    /// Its access log (stock `combined` format: client address first).
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Its error log.
    pub fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        read_lossy(&self.access_log_path())
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        read_lossy(&self.error_log_path())
    }

    /// The client address of every access-log line, in order (readiness
    /// probes from 127.0.0.1 included).
    pub fn access_clients(&self) -> Vec<IpAddr> {
        self.access_log()
            .lines()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    }

    /// The master's pid.
    pub fn master_pid(&self) -> Option<i32> {
        self.daemon
            .as_ref()
            .and_then(Daemon::pid)
            .and_then(|p| i32::try_from(p).ok())
    }

    /// `nginx -s reload -c CONFIG`, then waits until the master has started
    /// a new generation of workers (it does so only after the new
    /// configuration loaded and its listeners are open). A configuration
    /// nginx rejects leaves the old workers: that is an error here, with
    /// the error log.
    pub fn reload(&self) -> anyhow::Result<()> {
        let master = self.master_pid().context("nginx is not running")?;
        let before = crate::procs::children(master);
        sh(Command::new("nginx")
            .arg("-s")
            .arg("reload")
            .arg("-c")
            .arg(self.config_path()))?;
        wait_until(
            "new nginx workers after reload",
            Duration::from_secs(10),
            || {
                Ok(crate::procs::children(master)
                    .iter()
                    .any(|p| !before.contains(p)))
            },
        )
        .map_err(|e| e.context(self.diagnose()))
    }

    /// Stops nginx (SIGTERM, then SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match self.daemon.take() {
            Some(mut d) => d.terminate(Duration::from_secs(5)).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping nginx in {}: {e:#}", self.ns);
        }
    }
}

/// `GET /` over HTTP/1.0 from inside `ns` (from `src` when given) to
/// `addr`, with `proxy_header` (PROXY v1/v2) sent first when given.
/// Returns the status code, or `None` when nginx closed without a status
/// line (what a `proxy_protocol` listener does with a bad header).
pub fn http_get(
    ns: &Netns,
    src: Option<IpAddr>,
    addr: SocketAddr,
    proxy_header: Option<Vec<u8>>,
) -> anyhow::Result<Option<u16>> {
    http_get_in(&ns.name, src, addr, proxy_header.as_deref())
}

fn http_get_in(
    ns: &str,
    src: Option<IpAddr>,
    addr: SocketAddr,
    proxy_header: Option<&[u8]>,
) -> anyhow::Result<Option<u16>> {
    let mut stream = connect_in(ns, src, addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = proxy_header.map(<[u8]>::to_vec).unwrap_or_default();
    request
        .extend_from_slice(b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: ceres-lab\r\n\r\n");
    stream.write_all(&request).context("sending the request")?;
    // HTTP/1.0: the server closes after the response.
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading from {addr}"))),
    }
    let head = String::from_utf8_lossy(&response);
    let Some(status_line) = head.lines().next().filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let code = status_line
        .strip_prefix("HTTP/")
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line from {addr}: {status_line:?}"))?;
    Ok(Some(code))
}

/// Rewrites the active (uncommented) lines of the stock `nginx.conf` that
/// name machine-wide paths, and heads the file with a note saying so.
/// Each expected line must be found exactly: a different stock file is an
/// error, not a silent partial rewrite.
fn rewrite_main_conf(text: &str, dir: &Path, conf: &Path) -> anyhow::Result<String> {
    let d = dir.display();
    let c = conf.display();
    let replacements = [
        ("pid /run/nginx.pid;", format!("pid {d}/nginx.pid;")),
        (
            "error_log /var/log/nginx/error.log;",
            format!("error_log {d}/error.log;"),
        ),
        (
            "access_log /var/log/nginx/access.log;",
            format!("access_log {d}/access.log;"),
        ),
    ];
    let mut seen = [false; 3];
    let mut out = format!(
        "# CERES lab instance: Debian's nginx.conf with only its machine-wide paths\n\
# moved into the instance: pid file, error and access log, and the\n\
# include lines (/etc/nginx/ -> {c}/).\n"
    );
    for line in text.lines() {
        let trimmed = line.trim();
        let mut new = line.to_owned();
        if !trimmed.starts_with('#') {
            for (i, (from, to)) in replacements.iter().enumerate() {
                if trimmed == *from {
                    new = line.replace(from, to);
                    seen[i] = true;
                }
            }
            if trimmed.starts_with("include /etc/nginx/") {
                new = line.replace("/etc/nginx/", &format!("{c}/"));
            }
        }
        out.push_str(&new);
        out.push('\n');
    }
    for (i, (from, _)) in replacements.iter().enumerate() {
        ensure!(seen[i], "stock nginx.conf has no line {from:?}");
    }
    ensure!(
        !out.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("/etc/nginx")),
        "nginx.conf still names /etc/nginx after the rewrite"
    );
    Ok(out)
}

/// Replaces every symlink under `conf` that points into `stock` (the
/// original tree) by a relative one to the same file in the copy.
fn relink_into(conf: &Path, stock: &Path) -> anyhow::Result<()> {
    let mut stack = vec![conf.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if !ft.is_symlink() {
                continue;
            }
            let target = std::fs::read_link(&path)?;
            let Ok(inside) = target.strip_prefix(stock) else {
                continue;
            };
            // From `dir` (inside conf) up to conf, then down to the file.
            let depth = dir.strip_prefix(conf)?.components().count();
            let mut rel = PathBuf::new();
            for _ in 0..depth {
                rel.push("..");
            }
            rel.push(inside);
            std::fs::remove_file(&path)?;
            std::os::unix::fs::symlink(&rel, &path)
                .with_context(|| format!("linking {} -> {}", path.display(), rel.display()))?;
        }
    }
    Ok(())
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
