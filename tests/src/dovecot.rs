//! Dovecot (Debian's 2.3 with imapd, pop3d, managesieved) exactly as the
//! packages install it, run as a private instance in a lab namespace: the
//! baseline `cerectl mailserver-config dovecot --apply` edits, so a test
//! can show that a stock mailbox server changed only by that command is
//! safe.
//!
//! The instance's config dir is a copy of the whole `/etc/dovecot` tree
//! (`dovecot.conf`, `conf.d/`, `private/` with the snakeoil links), every
//! stock file unchanged. One file is added, `conf.d/00-lab-instance.conf`
//! (see `INSTANCE_CONF`), with only what a second instance on a shared
//! machine needs and the site's user database. `disable_plaintext_auth`,
//! `ssl`, listeners, `auth_mechanisms`, `login_trusted_networks` all stay
//! stock.
//!
//! Started with `ip netns exec NS dovecot -c DIR/dovecot.conf` (Dovecot
//! daemonizes); stopped with SIGTERM to `base_dir/master.pid`, a wait for
//! the master and its children, then SIGKILL for any of them left — also
//! on drop.

mod conn;
pub mod imap;
pub mod login;
pub mod pop3;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

pub use conn::Security;

use crate::postfix::{chown, process_gone, user_ids};
use crate::{Netns, unique_id, wait_until};

/// The file the instance adds to `conf.d/`. Its `00-` sorts it first in
/// the stock `!include conf.d/*.conf`, which matters for the passdb and
/// userdb: Dovecot asks them in the order they appear, so the site's
/// passwd-file answers before the stock PAM/passwd pair from
/// `auth-system.conf.ext` (kept: it only serves system accounts, and the
/// lab users are not system accounts). Plain settings here would be
/// overridden by a later stock file that sets them; these are all unset
/// in the stock files.
const INSTANCE_CONF: &str = "00-lab-instance.conf";

/// A running Dovecot instance; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct Dovecot {
    ns: String,
    dir: tempfile::TempDir,
    users: Vec<String>,
    stopped: bool,
}

/// One successful login from the log: `<service>: Info: Login: user=<u>,
/// method=M, rip=R, lip=L, mpid=N[, TLS][, secured], session=<...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// `imap-login`, `pop3-login`, `managesieve-login`.
    pub service: String,
    /// The user name.
    pub user: String,
    /// The client address Dovecot saw (the PROXY header's, when one was taken).
    pub rip: IpAddr,
    /// The local address the client reached.
    pub lip: IpAddr,
    /// The connection was TLS.
    pub tls: bool,
    /// Dovecot counted the connection as secure (TLS, or client address
    /// equal to the local address, or a trusted network).
    pub secured: bool,
}

impl Dovecot {
    /// Copies the stock configuration into a fresh instance dir, adds the
    /// instance file with `users` (name, password) as the site's user
    /// database, starts Dovecot inside `ns` and waits for the IMAP greeting
    /// on 127.0.0.1:143.
    pub fn start_stock(ns: &Netns, users: &[(&str, &str)]) -> anyhow::Result<Self> {
        for (user, password) in users {
            ensure!(
                !user.is_empty()
                    && user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')),
                "Dovecot user {user:?}: letters, digits and . _ - @ only"
            );
            ensure!(
                !password.is_empty() && !password.contains([':', '\n', '\r']),
                "a password for the passwd-file may not contain ':' or newlines"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ceres-dovecot-{}-", unique_id()))
            .tempdir()
            .context("creating the instance dir")?;
        // Its login processes (dovenull) and mail processes (nobody) must
        // traverse it to reach base_dir and the homes.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let conf = dir.path().join("conf");
        // `cp -a`: modes, owners and the private/ symlinks to the
        // snakeoil pair as they are.
        crate::sh(Command::new("cp").arg("-a").arg("/etc/dovecot").arg(&conf))
            .context("copying /etc/dovecot (is dovecot-core installed?)")?;
        for sub in ["run", "state", "home"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let (mail_uid, mail_gid) = user_ids("nobody")?;
        let (_, dovecot_gid) = user_ids("dovecot")?;
        let mut passwd = String::new();
        for (user, password) in users {
            let home = dir.path().join("home").join(user);
            std::fs::create_dir(&home)?;
            chown(&home, mail_uid, mail_gid)?;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
            // passwd-file: user:password:uid:gid:gecos:home:shell:extra.
            // `userdb_mail` is per user, so it beats the stock global
            // `mail_location` (an mbox in /var/mail/%u, the machine's).
            passwd.push_str(&format!(
                "{user}:{{PLAIN}}{password}:{mail_uid}:{mail_gid}::{}::userdb_mail=maildir:~/Maildir\n",
                home.display()
            ));
        }
        let users_file = conf.join("users");
        std::fs::write(&users_file, passwd)?;
        chown(&users_file, 0, dovecot_gid)?;
        std::fs::set_permissions(&users_file, std::fs::Permissions::from_mode(0o640))?;
        std::fs::write(
            conf.join("conf.d").join(INSTANCE_CONF),
            instance_conf(dir.path(), &users_file),
        )?;

        let dovecot = Self {
            ns: ns.name.clone(),
            dir,
            users: users.iter().map(|(u, _)| (*u).to_owned()).collect(),
            stopped: false,
        };
        // Fails early, with Dovecot's own message, on a config it rejects.
        dovecot.doveconf(&["-n"])?;
        // Output to a file, not a pipe: the daemonized master keeps the
        // inherited descriptors, so reading a pipe to its end would wait
        // for Dovecot to stop.
        let start_out = dovecot.dir.path().join("start.out");
        let file = std::fs::File::create(&start_out)?;
        let status = dovecot
            .command("dovecot")
            .arg("-c")
            .arg(dovecot.config_path())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("running dovecot")?;
        if !status.success() {
            bail!(
                "dovecot failed to start ({status}): {}\nlog:\n{}",
                std::fs::read_to_string(&start_out).unwrap_or_default(),
                dovecot.log()
            );
        }
        dovecot.wait_ready(Duration::from_secs(20))?;
        Ok(dovecot)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]);
        cmd
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 143);
        wait_until(
            &format!("Dovecot's IMAP greeting on {addr}"),
            timeout,
            || {
                if self.master_pid().is_some_and(process_gone) {
                    bail!("the Dovecot master exited");
                }
                let greeting = imap::ImapClient::try_connect_in(
                    &self.ns,
                    None,
                    addr,
                    None,
                    Security::Plain,
                    Duration::from_secs(2),
                )?;
                match greeting {
                    Ok(client) => {
                        let _ = client.logout();
                        Ok(true)
                    }
                    Err(_) => Ok(false),
                }
            },
        )
        .map_err(|e| e.context(format!("log:\n{}", self.log())))
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its config directory: the copy of `/etc/dovecot` (`conf.d/` is in it).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    /// Its `dovecot.conf` (for `dovecot -c`, `doveconf -c`, `doveadm -c`).
    pub fn config_path(&self) -> PathBuf {
        self.config_dir().join("dovecot.conf")
    }

    /// Its `base_dir` (sockets, `master.pid`).
    pub fn base_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Its log file (errors and info alike).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.log")
    }

    /// The home of `user` (its Maildir is `Maildir/` in it).
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user)
    }

    /// The users of its user database.
    pub fn users(&self) -> &[String] {
        &self.users
    }

    /// The master's pid, from `base_dir/master.pid`.
    pub fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.base_dir().join("master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `doveconf -c CONFIG ARGS`, e.g. `["-n"]` or `["-h",
    /// "disable_plaintext_auth"]`; returns its standard output.
    pub fn doveconf(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::sh(
            Command::new("doveconf")
                .arg("-c")
                .arg(self.config_path())
                .args(args),
        )
    }

    /// The log so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log_path())
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        crate::wait_log_line("Dovecot", &self.log_path(), needle, timeout)
    }

    /// Every successful login in the log, in order (readiness probes log
    /// none: they never log in).
    pub fn logins(&self) -> Vec<LoginRecord> {
        self.log().lines().filter_map(parse_login).collect()
    }

    /// `doveadm -c CONFIG reload` (SIGHUP to the master), then waits until
    /// the master logged that it re-read its configuration.
    pub fn reload(&self) -> anyhow::Result<()> {
        const RELOADED: &str = "SIGHUP received - reloading configuration";
        let before = self.log().matches(RELOADED).count();
        crate::sh(
            self.command("doveadm")
                .arg("-c")
                .arg(self.config_path())
                .arg("reload"),
        )?;
        wait_until("Dovecot to reload", Duration::from_secs(10), || {
            Ok(self.log().matches(RELOADED).count() > before)
        })
        .map_err(|e| e.context(format!("log:\n{}", self.log())))
    }

    /// Stops the instance: SIGTERM to the master, a wait for it and for its
    /// children (collected before the signal: they are reparented once the
    /// master is gone), SIGKILL for any still there. Idempotent.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let Some(master) = self.master_pid().filter(|pid| !process_gone(*pid)) else {
            return Ok(());
        };
        let children = crate::procs::descendants(master);
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(master, libc::SIGTERM) };
        let waited = wait_until(
            "the Dovecot master to exit",
            Duration::from_secs(10),
            || Ok(process_gone(master)),
        );
        let settled = wait_until("Dovecot processes to exit", Duration::from_secs(5), || {
            Ok(children.iter().all(|pid| process_gone(*pid)))
        });
        if waited.is_err() || settled.is_err() {
            let left: Vec<i32> = std::iter::once(master)
                .chain(children)
                .filter(|pid| !process_gone(*pid))
                .collect();
            for pid in &left {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            eprintln!(
                "Dovecot in {}: SIGKILLed {} processes left after SIGTERM: {left:?}",
                self.ns,
                left.len()
            );
        }
        waited
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "stopping Dovecot in {} ({}): {e:#}",
                self.ns,
                self.dir.path().display()
            );
        }
    }
}

/// The instance file: each line with the reason it is there.
fn instance_conf(dir: &Path, users_file: &Path) -> String {
    let d = dir.display();
    let u = users_file.display();
    format!(
        "# CERES lab: private-instance settings. Every other file in this\n\
# directory tree is Debian's, unchanged. Nothing here decides who may\n\
# connect or when a password may be sent.\n\
#\n\
# Sockets and master.pid: /run/dovecot belongs to the machine's Dovecot.\n\
base_dir = {d}/run\n\
# The master records its instances here; /var/lib/dovecot is the machine's.\n\
state_dir = {d}/state\n\
# No syslog in the lab: errors and the info lines (logins with rip=,\n\
# lip= and 'secured') go to a file of this instance.\n\
log_path = {d}/dovecot.log\n\
info_log_path = {d}/dovecot.log\n\
\n\
# The site's user database (as conf.d/auth-passwdfile.conf.ext would\n\
# configure, with this instance's file). It comes before the stock\n\
# auth-system.conf.ext pair (PAM, passwd), which stays: the lab users are\n\
# not system accounts, so only this one knows them.\n\
passdb {{\n\
\x20 driver = passwd-file\n\
\x20 args = scheme=PLAIN username_format=%u {u}\n\
}}\n\
userdb {{\n\
\x20 driver = passwd-file\n\
\x20 args = username_format=%u {u}\n\
}}\n"
    )
}

/// Parses a `Login:` line.
fn parse_login(line: &str) -> Option<LoginRecord> {
    let (head, fields) = line.split_once(": Login: ")?;
    let service = head
        .rsplit(' ')
        .find(|w| w.ends_with("-login:"))?
        .trim_end_matches(':')
        .to_owned();
    let mut record = LoginRecord {
        service,
        user: String::new(),
        rip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        lip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        tls: false,
        secured: false,
    };
    let (mut rip, mut lip) = (None, None);
    for field in fields.split(", ") {
        match field.split_once('=') {
            Some(("user", v)) => {
                record.user = v.trim_start_matches('<').trim_end_matches('>').to_owned();
            }
            Some(("rip", v)) => rip = v.parse().ok(),
            Some(("lip", v)) => lip = v.parse().ok(),
            Some(_) => {}
            None if field.starts_with("TLS") => record.tls = true,
            None if field == "secured" => record.secured = true,
            None => {}
        }
    }
    record.rip = rip?;
    record.lip = lip?;
    Some(record)
}
