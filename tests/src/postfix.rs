//! A real Postfix (Debian's 3.7) as a private instance inside a lab
//! namespace: the home mail server behind CERES, or an SMTP server "on the
//! internet" that receives outbound mail and logs which client it saw.
//!
//! Each instance owns a directory of its own (config, queue, data, Maildir,
//! log) under the system temp dir and is started with `postfix -c DIR`.
//! Instances are independent, so tests run in parallel:
//!
//! - The shared `/etc/postfix/main.cf` is neither needed nor touched. Its
//!   `alternate_config_directories` list only gates *unprivileged* users of
//!   the set-gid tools (`postdrop`, `postqueue`); `postfix(1)` is root-only
//!   and root may name any config dir (postconf(5), `config_directory`).
//!   Measured here: start, `sendmail`, `postqueue` and stop all work with no
//!   `/etc/postfix/main.cf` at all. The lab runs as root anyway (namespaces).
//! - Every service in `master.cf` runs unchrooted, so no copies of
//!   `/etc/services` etc. are needed in the queue dir.
//! - There is no syslog: `maillog_file` is the instance's own log.
//! - Reverse DNS is off (`smtpd_peername_lookup = no`): the namespaces have
//!   no resolver, and each lookup would stall a session for seconds. Clients
//!   are logged as `unknown[IP]`.
//! - Mail for `domains` goes through the `virtual` agent into one catch-all
//!   Maildir, owned by `nobody`. (Per-user maps with `$1` substitution are
//!   refused by `virtual(8)` for security, and one box is what tests want.)
//!
//! `Postfix::start_stock` is the other kind of instance: Debian's own
//! "Internet Site" configuration with only private-instance changes (see
//! `stock.rs`), for tests of tools that edit a real, stock configuration.
//!
//! Stopped on drop (also on panic): `postfix stop`, a wait for the master
//! and its children to exit, then SIGKILL for any process of this instance
//! (working directory in its queue) still there. Drop it before the
//! namespace it runs in (it still stops, by signal, if the namespace is gone).

pub mod smtp;
mod stock;

pub use stock::StockSite;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::{Netns, run, sh, unique_id, wait_until};

/// How to configure one Postfix instance. `Default` is a home mail server
/// for `example.com` with a plain smtpd on port 25 — set `inet_interfaces`.
#[derive(Debug, Clone)]
pub struct PostfixOptions {
    /// The name in the banner and in `Received:` lines.
    pub myhostname: String,
    /// `mydomain` (and `myorigin`).
    pub mydomain: String,
    /// Domains delivered into this instance's Maildir (virtual mailbox domains).
    pub domains: Vec<String>,
    /// Addresses to listen on (IPv4 and/or IPv6; they must exist in the
    /// namespace). Also decides `inet_protocols`. Must not be empty.
    pub inet_interfaces: Vec<IpAddr>,
    /// The relay's PROXY port for 25 ([`PROXY_SMTP`], loopback) is postscreen
    /// expecting a PROXY header (v1 or v2) — the CERES relay's default. Port
    /// 25 itself is always a plain smtpd.
    pub postscreen_proxy_on_25: bool,
    /// Listen on 587 (submission) with a plain smtpd.
    pub submission: bool,
    /// A submission listener on the relay's PROXY port for 587
    /// ([`PROXY_SUBMISSION`], loopback) expects a PROXY header (set per
    /// service, never globally: that would break internal reinjection).
    pub submission_proxy: bool,
    /// Submission as applications use it: STARTTLS required, then SASL
    /// AUTH (Cyrus with a sasldb of one user, PLAIN and LOGIN), and only an
    /// authenticated client may send. Implies `submission`.
    pub submission_auth: Option<SubmissionAuth>,
    /// Trusted clients (may relay anywhere). Postfix syntax; IPv6 in
    /// brackets. Never put the tunnel subnet here: that is an open relay.
    pub mynetworks: Vec<String>,
    /// Send all outbound mail to this host, e.g. `[192.0.2.10]:25`
    /// (brackets: no MX lookup). Empty: none.
    pub relayhost: String,
    /// Per-domain next hops without DNS: `("example.net", "[192.0.2.10]:25")`
    /// becomes `example.net = smtp:[192.0.2.10]:25`.
    pub transport: Vec<(String, String)>,
    /// Source address for outbound SMTP over IPv4 (egress through the tunnel).
    pub smtp_bind_address: Option<Ipv4Addr>,
    /// Source address for outbound SMTP over IPv6.
    pub smtp_bind_address6: Option<Ipv6Addr>,
    /// How long postscreen / smtpd wait for the PROXY header.
    pub proxy_timeout: Duration,
    /// How long postscreen holds a client it has not seen before (its
    /// pregreet test) before handing it to smtpd: the client gets a
    /// `220-` teaser at once and the final `220 ` after this. Postfix's
    /// default is 6 s; the lab uses 1 s (the minimum) to keep tests fast.
    /// A client that passed is remembered and passed at once next time.
    pub postscreen_greet_wait: Duration,
    /// Extra `main.cf` lines, appended last (a later line overrides an
    /// earlier one, with a warning in the log).
    pub extra_main_cf: Vec<String>,
    /// How long `start` waits for the banner.
    pub start_timeout: Duration,
}

impl Default for PostfixOptions {
    fn default() -> Self {
        Self {
            myhostname: "mail.example.com".to_owned(),
            mydomain: "example.com".to_owned(),
            domains: vec!["example.com".to_owned()],
            inet_interfaces: Vec::new(),
            postscreen_proxy_on_25: false,
            submission: false,
            submission_proxy: false,
            submission_auth: None,
            mynetworks: vec!["127.0.0.0/8".to_owned()],
            relayhost: String::new(),
            transport: Vec::new(),
            smtp_bind_address: None,
            smtp_bind_address6: None,
            proxy_timeout: Duration::from_secs(5),
            postscreen_greet_wait: Duration::from_secs(1),
            extra_main_cf: Vec::new(),
            start_timeout: Duration::from_secs(20),
        }
    }
}

impl PostfixOptions {
    /// The home mail server: `mail.example.com`, mail for `example.com`,
    /// postscreen expecting PROXY on 25, submission expecting PROXY on 587.
    pub fn home(listen: Vec<IpAddr>) -> Self {
        Self {
            inet_interfaces: listen,
            postscreen_proxy_on_25: true,
            submission: true,
            submission_proxy: true,
            ..Self::default()
        }
    }

    /// An SMTP server on the internet side taking mail for `domains`
    /// (plain smtpd on 25), to receive what home sends out.
    pub fn sink(listen: Vec<IpAddr>, hostname: &str, domains: &[&str]) -> Self {
        let mydomain = domains.first().copied().unwrap_or("example.net");
        Self {
            myhostname: hostname.to_owned(),
            mydomain: mydomain.to_owned(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            inet_interfaces: listen,
            ..Self::default()
        }
    }
}

/// The login and the TLS certificate of an authenticated submission service.
#[derive(Clone)]
pub struct SubmissionAuth {
    /// Login name as `user@domain` (the domain part is the SASL realm).
    pub login: String,
    /// Its password.
    pub password: String,
    /// The server certificate chain for STARTTLS (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for SubmissionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmissionAuth")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Writes the STARTTLS certificate and key, and the Cyrus SASL config with a
/// sasldb holding the one login, into `conf`.
fn write_submission_auth(conf: &Path, auth: &SubmissionAuth) -> anyhow::Result<()> {
    let (user, realm) = auth
        .login
        .split_once('@')
        .context("SubmissionAuth::login must be user@domain")?;
    std::fs::write(conf.join("tls.crt"), &auth.cert_pem)?;
    let key = conf.join("tls.key");
    std::fs::write(&key, &auth.key_pem)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let sasl = conf.join("sasl");
    std::fs::create_dir(&sasl)?;
    let sasldb = sasl.join("sasldb2");
    std::fs::write(
        sasl.join("smtpd.conf"),
        format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
            sasldb.display()
        ),
    )?;
    // `-p`: the password from standard input, never on a command line.
    let mut child = Command::new("saslpasswd2")
        .arg("-f")
        .arg(&sasldb)
        .args(["-p", "-c", "-u", realm, user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running saslpasswd2 (apt-get install sasl2-bin)")?;
    child
        .stdin
        .take()
        .context("saslpasswd2 stdin")?
        .write_all(auth.password.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "saslpasswd2 failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // smtpd looks the password up after dropping to the postfix user.
    let (_, postfix_gid) = user_ids("postfix")?;
    chown(&sasldb, 0, postfix_gid)?;
    std::fs::set_permissions(&sasldb, std::fs::Permissions::from_mode(0o640))?;
    Ok(())
}

/// A message found in the Maildir.
#[derive(Debug, Clone)]
pub struct MaildirMessage {
    /// Its file.
    pub path: PathBuf,
    /// Its full text, headers included (lossy UTF-8).
    pub content: String,
}

impl MaildirMessage {
    /// The first value of header `name` (case-insensitive; folded lines are
    /// not joined — enough for the headers tests write).
    pub fn header(&self, name: &str) -> Option<&str> {
        for line in self.content.lines() {
            if line.is_empty() {
                break;
            }
            if let Some((key, value)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                return Some(value.trim());
            }
        }
        None
    }

    /// The Message-ID, without angle brackets.
    pub fn message_id(&self) -> Option<&str> {
        self.header("Message-ID")
            .map(|v| v.trim_start_matches('<').trim_end_matches('>'))
    }
}

/// A running Postfix instance; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct Postfix {
    ns: String,
    opts: PostfixOptions,
    dir: tempfile::TempDir,
    stopped: bool,
}

/// uid and primary gid of a system user.
pub(crate) fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let cname = CString::new(name)?;
    // SAFETY: an all-zero passwd is a valid "empty" value for getpwnam_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf's length is passed;
    // getpwnam_r is the thread-safe variant (tests run in threads too).
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    ensure!(
        rc == 0 && !result.is_null(),
        "no system user {name:?} (is postfix installed?)"
    );
    Ok((pwd.pw_uid, pwd.pw_gid))
}

pub(crate) fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// Postfix list syntax for an address: IPv6 in brackets.
fn bracketed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// Whether a process is gone (no /proc entry, or a zombie nobody reaped —
/// the daemonized master is not our child).
pub(crate) fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

impl Postfix {
    /// Writes the instance's configuration, starts it inside `ns` and waits
    /// until port 25 answers with a 220 banner (through a PROXY v1 header
    /// claiming a loopback client when postscreen expects one).
    pub fn start(ns: &Netns, opts: PostfixOptions) -> anyhow::Result<Self> {
        ensure!(
            !opts.inet_interfaces.is_empty(),
            "PostfixOptions::inet_interfaces is empty: give the namespace's addresses"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("ceres-postfix-{}-", unique_id()))
            .tempdir()
            .context("creating the instance dir")?;
        // The virtual agent delivers as `nobody`, which must traverse this
        // dir to reach the Maildir. Nothing in it is secret.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let (postfix_uid, postfix_gid) = user_ids("postfix")?;
        let (mail_uid, mail_gid) = user_ids("nobody")?;
        let conf = dir.path().join("conf");
        let data = dir.path().join("data");
        let mail = dir.path().join("mail");
        std::fs::create_dir(&conf)?;
        std::fs::create_dir(dir.path().join("queue"))?;
        std::fs::create_dir(&data)?;
        chown(&data, postfix_uid, postfix_gid)?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        std::fs::create_dir(&mail)?;
        chown(&mail, mail_uid, mail_gid)?;
        std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(
            conf.join("main.cf"),
            main_cf(&opts, dir.path(), mail_uid, mail_gid),
        )?;
        std::fs::write(conf.join("master.cf"), master_cf(&opts))?;
        if let Some(auth) = &opts.submission_auth {
            write_submission_auth(&conf, auth)?;
        }

        let pf = Self {
            ns: ns.name.clone(),
            opts,
            dir,
            stopped: false,
        };
        // `postfix start` runs `postfix check` first, which creates the
        // queue directories with their owners and modes: no separate
        // `set-permissions`, which would also rewrite the modes of shared
        // system files from every parallel test. From here on, drop stops
        // whatever did start.
        pf.postfix_cmd("start")?;
        pf.wait_ready()?;
        Ok(pf)
    }

    /// Runs `postfix -c DIR ARG` in the namespace. Postfix prints its own
    /// errors only to a terminal, so a failure carries the instance log.
    fn postfix_cmd(&self, arg: &str) -> anyhow::Result<()> {
        let out = self.postfix_run(arg)?;
        if !out.status.success() {
            bail!(
                "postfix {arg} failed ({}) in {}: {}{}\n{}",
                out.status,
                self.ns,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnose()
            );
        }
        Ok(())
    }

    fn postfix_run(&self, arg: &str) -> anyhow::Result<std::process::Output> {
        run(self
            .command("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg(arg))
    }

    /// The instance log plus `postfix check` run under a pseudo-terminal
    /// (where Postfix does print its fatal errors), for failure messages.
    fn diagnose(&self) -> String {
        let check = format!(
            "ip netns exec {} postfix -c {} check",
            self.ns,
            self.config_dir().display()
        );
        let tty = run(Command::new("script").args(["-qec", &check, "/dev/null"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "postfix check: {}\nlog {}:\n{}",
            tty.trim(),
            self.log_path().display(),
            self.log()
        )
    }

    /// A command that runs inside this instance's namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]);
        cmd
    }

    /// Where a readiness probe connects from and to, and the PROXY header
    /// it sends. It always comes from (or claims) loopback, so it is never
    /// confused with a client a test sent.
    fn probe(&self) -> (IpAddr, SocketAddr, Option<Vec<u8>>) {
        let ip = self
            .opts
            .inet_interfaces
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(self.opts.inet_interfaces.first())
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = SocketAddr::new(ip, 25);
        let client = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        // Port 25 itself is always plain (PROXY is on the loopback ports).
        (client, addr, None)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let (client, addr, header) = self.probe();
        let result = wait_until(
            &format!("Postfix banner on {addr}"),
            self.opts.start_timeout,
            || {
                if self.master_pid().is_some_and(process_gone) {
                    bail!("the Postfix master exited");
                }
                let reply = smtp::read_banner_in(
                    &self.ns,
                    Some(client),
                    addr,
                    header.as_deref().unwrap_or_default(),
                    Duration::from_secs(2),
                )?;
                Ok(reply.is_some_and(|r| r.code == 220))
            },
        );
        result.map_err(|e| e.context(self.diagnose()))
    }

    /// The instance's directory (config, queue, data, mail, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its config directory (for `postfix -c`, `MAIL_CONFIG`, `postconf -c`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    /// Its queue directory.
    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    /// The root of its Maildir(s).
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("maillog")
    }

    /// The options it was started with.
    pub fn options(&self) -> &PostfixOptions {
        &self.opts
    }

    /// The master's pid, from its pid file.
    pub fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.queue_dir().join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every message delivered so far (`new/` and `cur/` of every Maildir
    /// under `mail_dir`), sorted by path.
    pub fn maildir_messages(&self) -> Vec<MaildirMessage> {
        let mut out = Vec::new();
        let mut stack = vec![self.mail_dir()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file()
                    && dir.file_name().is_some_and(|n| n == "new" || n == "cur")
                    && let Ok(bytes) = std::fs::read(&path)
                {
                    out.push(MaildirMessage {
                        path,
                        content: String::from_utf8_lossy(&bytes).into_owned(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The Message-IDs in the Maildir, with repeats (for counting duplicates).
    pub fn maildir_message_ids(&self) -> Vec<String> {
        self.maildir_messages()
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect()
    }

    /// Waits until a delivered message satisfies `pred`; returns it.
    pub fn wait_for_message<P>(&self, pred: P, timeout: Duration) -> anyhow::Result<MaildirMessage>
    where
        P: Fn(&MaildirMessage) -> bool,
    {
        let mut found = None;
        let waited = wait_until("a matching message in the Maildir", timeout, || {
            found = self.maildir_messages().into_iter().find(|m| pred(m));
            Ok(found.is_some())
        });
        match (waited, found) {
            (Ok(()), Some(m)) => Ok(m),
            (res, _) => Err(res
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("no message"))
                .context(format!(
                    "queue: {:?}; log:\n{}",
                    self.queue_len().ok(),
                    self.log()
                ))),
        }
    }

    /// Waits for the message with this Message-ID (without angle brackets).
    pub fn wait_for_message_id(
        &self,
        message_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<MaildirMessage> {
        self.wait_for_message(|m| m.message_id() == Some(message_id), timeout)
    }

    /// The instance log so far (empty if none yet).
    pub fn log(&self) -> String {
        crate::read_log(&self.log_path())
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        crate::wait_log_line("Postfix", &self.log_path(), needle, timeout)
    }

    /// The client addresses this instance's SMTP servers saw, in log order:
    /// smtpd's `connect from NAME[IP]` (the address from the PROXY header
    /// when there was one) — readiness probes from loopback included.
    pub fn clients_seen(&self) -> Vec<IpAddr> {
        self.log()
            .lines()
            // postfix/smtpd and postfix/submission/smtpd alike.
            .filter(|l| l.contains("/smtpd["))
            .filter_map(|l| {
                let rest = l.split_once(": connect from ")?.1;
                let ip = rest.split_once('[')?.1.split_once(']')?.0;
                ip.parse().ok()
            })
            .collect()
    }

    /// Distinct clients seen, loopback (readiness probes) left out.
    pub fn remote_clients_seen(&self) -> BTreeSet<IpAddr> {
        self.clients_seen()
            .into_iter()
            .filter(|ip| !ip.to_canonical().is_loopback())
            .collect()
    }

    /// Submits a message with this instance's `sendmail`, as a local user
    /// would (`-i`: a lone dot does not end it).
    pub fn sendmail(&self, from: &str, to: &str, message: &str) -> anyhow::Result<()> {
        let mut cmd = self.command("sendmail");
        cmd.env("MAIL_CONFIG", self.config_dir())
            .args(["-i", "-f", from, "--", to])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        child
            .stdin
            .take()
            .context("sendmail stdin")?
            .write_all(message.as_bytes())
            .context("writing to sendmail")?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "sendmail failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.diagnose()
        );
        Ok(())
    }

    /// Messages in the queue (all queues: incoming, active, deferred, hold).
    pub fn queue_len(&self) -> anyhow::Result<usize> {
        let out = sh(self
            .command("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-j"))?;
        Ok(out
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .count())
    }

    /// Asks for an immediate delivery attempt of everything queued.
    pub fn flush(&self) -> anyhow::Result<()> {
        sh(self
            .command("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-f"))?;
        Ok(())
    }

    /// Waits until the queue is empty.
    pub fn wait_queue_empty(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until("an empty Postfix queue", timeout, || {
            Ok(self.queue_len()? == 0)
        })
        .map_err(|e| e.context(format!("log:\n{}", self.log())))
    }

    /// Stops the instance: `postfix stop` (or SIGTERM to the master when
    /// that cannot run, e.g. the namespace is gone), waits for the master to
    /// exit and for its children to follow; SIGKILLs whatever of this
    /// instance is still running after that. Idempotent.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        // No pid file: the master never got going (a failed start), so
        // there is nothing for `postfix stop` to stop.
        let master = self.master_pid();
        if let Some(pid) = master
            && !self.postfix_run("stop").is_ok_and(|o| o.status.success())
        {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let waited = match master {
            Some(pid) => wait_until(
                "the Postfix master to exit",
                Duration::from_secs(10),
                || Ok(process_gone(pid)),
            ),
            None => Ok(()),
        };
        // Children notice the master's exit on their own, a moment later.
        let settled = wait_until("Postfix processes to exit", Duration::from_secs(5), || {
            Ok(self.leftovers().is_empty())
        });
        if settled.is_err() {
            let pids = self.leftovers();
            for pid in &pids {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            eprintln!(
                "Postfix in {}: SIGKILLed {} processes left after stop: {pids:?}",
                self.ns,
                pids.len()
            );
        }
        waited
    }

    /// Live processes whose working directory is this instance's queue
    /// (every Postfix daemon chdirs there): the instance's, and only its.
    fn leftovers(&self) -> Vec<i32> {
        let queue = self.queue_dir();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
                let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
                (cwd.starts_with(&queue) && !process_gone(pid)).then_some(pid)
            })
            .collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "stopping Postfix in {} ({}): {e:#}",
                self.ns,
                self.dir.path().display()
            );
        }
    }
}

fn main_cf(opts: &PostfixOptions, dir: &Path, mail_uid: u32, mail_gid: u32) -> String {
    let d = dir.display();
    let has4 = opts.inet_interfaces.iter().any(IpAddr::is_ipv4);
    let has6 = opts.inet_interfaces.iter().any(IpAddr::is_ipv6);
    let protocols = match (has4, has6) {
        (true, true) => "all",
        (false, true) => "ipv6",
        _ => "ipv4",
    };
    let interfaces: Vec<String> = opts.inet_interfaces.iter().map(bracketed).collect();
    let mut cf = String::new();
    let mut line = |s: String| {
        cf.push_str(&s);
        cf.push('\n');
    };
    line("# A CERES lab instance, written by ceres-tests.".into());
    line("compatibility_level = 3.6".into());
    line(format!("queue_directory = {d}/queue"));
    line(format!("data_directory = {d}/data"));
    line("mail_owner = postfix".into());
    line("setgid_group = postdrop".into());
    line(format!("maillog_file = {d}/maillog"));
    line(format!("maillog_file_prefixes = {d}"));
    line(format!("myhostname = {}", opts.myhostname));
    line(format!("mydomain = {}", opts.mydomain));
    line("myorigin = $mydomain".into());
    // Nothing is delivered to local Unix accounts: only the virtual domains.
    line("mydestination =".into());
    line("local_recipient_maps =".into());
    line("alias_maps =".into());
    line("alias_database =".into());
    line("biff = no".into());
    line(format!("inet_interfaces = {}", interfaces.join(", ")));
    line(format!("inet_protocols = {protocols}"));
    line(format!("mynetworks = {}", opts.mynetworks.join(", ")));
    line("smtpd_peername_lookup = no".into());
    line("smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination".into());
    line(format!(
        "virtual_mailbox_domains = {}",
        opts.domains.join(", ")
    ));
    line(format!("virtual_mailbox_base = {d}/mail"));
    line("virtual_mailbox_maps = static:Maildir/".into());
    line(format!("virtual_uid_maps = static:{mail_uid}"));
    line(format!("virtual_gid_maps = static:{mail_gid}"));
    // Retry deferred mail quickly: lab faults last seconds, not hours.
    line("queue_run_delay = 1s".into());
    line("minimal_backoff_time = 1s".into());
    line("maximal_backoff_time = 5s".into());
    line("smtp_connect_timeout = 5s".into());
    line(format!("relayhost = {}", opts.relayhost));
    if !opts.transport.is_empty() {
        let entries: Vec<String> = opts
            .transport
            .iter()
            .map(|(domain, hop)| format!("{{ {domain} = smtp:{hop} }}"))
            .collect();
        line(format!(
            "transport_maps = inline:{{ {} }}",
            entries.join(", ")
        ));
    }
    if let Some(ip) = opts.smtp_bind_address {
        line(format!("smtp_bind_address = {ip}"));
    }
    if let Some(ip) = opts.smtp_bind_address6 {
        line(format!("smtp_bind_address6 = {ip}"));
    }
    let proxy_timeout = format!("{}s", opts.proxy_timeout.as_secs().max(1));
    if opts.postscreen_proxy_on_25 {
        // The PROXY setting itself is per service (master.cf): globally it
        // would make port 25 on every address take a forged header.
        line(format!(
            "postscreen_upstream_proxy_timeout = {proxy_timeout}"
        ));
        line(format!(
            "postscreen_greet_wait = {}s",
            opts.postscreen_greet_wait.as_secs().max(1)
        ));
    }
    if opts.submission_auth.is_some() {
        line(format!("smtpd_tls_cert_file = {d}/conf/tls.crt"));
        line(format!("smtpd_tls_key_file = {d}/conf/tls.key"));
        line("smtpd_sasl_type = cyrus".into());
        line(format!("cyrus_sasl_config_path = {d}/conf/sasl"));
        line("smtpd_sasl_path = smtpd".into());
    }
    for extra in &opts.extra_main_cf {
        line(extra.clone());
    }
    cf
}

/// Where the relays' PROXY connections land (CERES's PROXY ports, 10000 +
/// the public port, on loopback).
pub const PROXY_SMTP: &str = "127.0.0.1:10025";
/// The submission PROXY port.
pub const PROXY_SUBMISSION: &str = "127.0.0.1:10587";

fn master_cf(opts: &PostfixOptions) -> String {
    // Every service unchrooted (5th column "n"): a chroot would need copies
    // of system files in each instance's queue dir.
    let mut cf = String::from("# A CERES lab instance, written by ceres-tests.\n");
    // Port 25 on every address stays plain (LAN clients, local programs).
    cf.push_str("smtp      inet  n       -       n       -       -       smtpd\n");
    if opts.postscreen_proxy_on_25 {
        // The relay's PROXY port (10000 + 25), on loopback: only the home
        // agent reaches it, so only it can send a header.
        let _ = write!(
            cf,
            "{PROXY_SMTP}  inet  n       -       n       -       1       postscreen\n\
             \x20 -o postscreen_upstream_proxy_protocol=haproxy\n\
             smtpd     pass  -       -       n       -       -       smtpd\n\
             dnsblog   unix  -       -       n       -       0       dnsblog\n\
             tlsproxy  unix  -       -       n       -       0       tlsproxy\n",
        );
    }
    let proxy_timeout = opts.proxy_timeout.as_secs().max(1);
    let submission_auth = |cf: &mut String| {
        if opts.submission_auth.is_some() {
            for o in [
                "smtpd_tls_security_level=encrypt",
                "smtpd_tls_auth_only=yes",
                "smtpd_sasl_auth_enable=yes",
                "smtpd_client_restrictions=permit_sasl_authenticated,reject",
                "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            ] {
                let _ = writeln!(cf, "  -o {o}");
            }
        }
    };
    if opts.submission || opts.submission_proxy || opts.submission_auth.is_some() {
        cf.push_str("submission inet n       -       n       -       -       smtpd\n");
        cf.push_str("  -o syslog_name=postfix/submission\n");
        submission_auth(&mut cf);
    }
    if opts.submission_proxy {
        let _ = write!(
            cf,
            "{PROXY_SUBMISSION} inet n       -       n       -       -       smtpd\n\
             \x20 -o syslog_name=postfix/submission\n\
             \x20 -o smtpd_upstream_proxy_protocol=haproxy\n\
             \x20 -o smtpd_upstream_proxy_timeout={proxy_timeout}s\n"
        );
        submission_auth(&mut cf);
    }
    if opts.submission_auth.is_some() {
        // TLS session cache and entropy for smtpd: without it smtpd turns TLS off.
        cf.push_str("tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n");
    }
    cf.push_str(
        "pickup    unix  n       -       n       60      1       pickup\n\
         cleanup   unix  n       -       n       -       0       cleanup\n\
         qmgr      unix  n       -       n       300     1       qmgr\n\
         rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
         bounce    unix  -       -       n       -       0       bounce\n\
         defer     unix  -       -       n       -       0       bounce\n\
         trace     unix  -       -       n       -       0       bounce\n\
         verify    unix  -       -       n       -       1       verify\n\
         flush     unix  n       -       n       1000?   0       flush\n\
         proxymap  unix  -       -       n       -       -       proxymap\n\
         proxywrite unix -       -       n       -       1       proxymap\n\
         smtp      unix  -       -       n       -       -       smtp\n\
         relay     unix  -       -       n       -       -       smtp\n\
         showq     unix  n       -       n       -       -       showq\n\
         error     unix  -       -       n       -       -       error\n\
         retry     unix  -       -       n       -       -       error\n\
         discard   unix  -       -       n       -       -       discard\n\
         virtual   unix  -       n       n       -       -       virtual\n\
         anvil     unix  -       -       n       -       1       anvil\n\
         scache    unix  -       -       n       -       1       scache\n\
         postlog   unix-dgram n  -       n       -       1       postlogd\n",
    );
    cf
}
