//! Postfix exactly as Debian installs it for an "Internet Site", run as a
//! private lab instance: the baseline that `cerectl mailserver-config
//! postfix --apply` edits, so a test can show that a stock home mail server
//! changed only by that command is safe.
//!
//! `main.cf` is built the way `postfix.postinst` builds it on a fresh
//! install (`main.cf.debian`, then `main.cf.tls` because the snakeoil key
//! exists, then its `postconf -e` lines with the debconf answers of an
//! "Internet Site"), and `master.cf` is `master.cf.dist`. After that come
//! only the changes a second instance on a shared machine cannot do
//! without — each explained in a comment block appended to `main.cf`.
//! Nothing that decides who may connect, relay or authenticate is touched
//! (`mynetworks`, restrictions, `inet_interfaces`, `inet_protocols`,
//! listeners and TLS stay Debian's).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use super::{Postfix, PostfixOptions, chown, user_ids};
use crate::{Netns, sh, unique_id, wait_until};

/// The site's own facts: what a person types into Debian's postfix
/// questions, plus the mailboxes the test reads.
#[derive(Debug, Clone)]
pub struct StockSite {
    /// The host's fully qualified name (`myhostname`; Debian takes it from
    /// `hostname --fqdn`, which inside a namespace is the lab machine's).
    pub myhostname: String,
    /// debconf's "System mail name" (`postfix/mailname`): the mail domain.
    /// Debian writes it to `/etc/mailname` and sets `myorigin` to that file.
    pub mailname: String,
    /// Local parts that have a mailbox: `alice` receives `alice@<mailname>`
    /// in `mail_dir()/alice/Maildir/`.
    pub users: Vec<String>,
    /// How long `start_stock` waits for the banner.
    pub start_timeout: Duration,
}

impl Default for StockSite {
    fn default() -> Self {
        Self {
            myhostname: "mail.example.com".to_owned(),
            mailname: "example.com".to_owned(),
            users: vec!["alice".to_owned()],
            start_timeout: Duration::from_secs(20),
        }
    }
}

impl StockSite {
    /// debconf's default `postfix/destinations` for an "Internet Site"
    /// (`postfix.config`): `$myhostname, <mailname>, <fqdn>,
    /// localhost.<domain>, localhost`, the fqdn left out when it equals
    /// the mail name.
    fn mydestination(&self) -> String {
        let domain = self
            .myhostname
            .split_once('.')
            .map_or("localdomain", |(_, d)| d);
        let mut parts = vec!["$myhostname".to_owned(), self.mailname.clone()];
        if self.mailname != self.myhostname {
            parts.push(self.myhostname.clone());
        }
        parts.push(format!("localhost.{domain}"));
        parts.push("localhost".to_owned());
        parts.join(", ")
    }
}

/// Debian's template answers that do not depend on the site
/// (`postfix.templates` defaults and the "Internet Site" branch of the
/// postinst), in the postinst's order after the site-specific ones.
const DEBIAN_DEFAULTS: &[&str] = &[
    "relayhost=",
    "mynetworks=127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
    "mailbox_size_limit=0",
    "recipient_delimiter=+",
    "inet_interfaces=all",
    "inet_protocols=all",
];

impl Postfix {
    /// Starts Debian's stock "Internet Site" Postfix for `site` in `ns`
    /// and waits for the 220 banner on 127.0.0.1:25 (no PROXY header:
    /// stock smtpd on 25 expects none).
    ///
    /// Mail for the site's users is delivered by `local(8)` through
    /// aliases into Maildirs under `mail_dir()` (see `write_aliases`), so
    /// `maildir_messages`, `wait_for_message*` work as for `start`.
    pub fn start_stock(ns: &Netns, site: StockSite) -> anyhow::Result<Postfix> {
        for user in &site.users {
            ensure!(
                !user.is_empty()
                    && user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "StockSite user {user:?}: use a plain local part"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ceres-postfix-stock-{}-", unique_id()))
            .tempdir()
            .context("creating the instance dir")?;
        // local(8) delivers to alias files as `nobody`, which must
        // traverse this dir to reach the Maildirs. Nothing in it is secret.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let (postfix_uid, postfix_gid) = user_ids("postfix")?;
        let (mail_uid, mail_gid) = user_ids("nobody")?;
        let conf = dir.path().join("conf");
        let data = dir.path().join("data");
        let mail = dir.path().join("mail");
        let spool = dir.path().join("spool");
        for d in [&conf, &dir.path().join("queue"), &data, &mail, &spool] {
            std::fs::create_dir(d)?;
        }
        chown(&data, postfix_uid, postfix_gid)?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        // Like /var/mail, writable for every recipient (sticky).
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o1777))?;
        for user in site.users.iter().map(String::as_str).chain(["root"]) {
            let home = mail.join(user);
            std::fs::create_dir(&home)?;
            chown(&home, mail_uid, mail_gid)?;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
        }

        write_debian_main_cf(&conf, &site)?;
        std::fs::copy("/usr/share/postfix/master.cf.dist", conf.join("master.cf"))
            .context("copying Debian's master.cf.dist (is postfix installed?)")?;
        write_aliases(&conf, &mail, &site)?;
        append_instance_settings(&conf, dir.path())?;
        unchroot_services(&conf)?;

        let opts = PostfixOptions {
            myhostname: site.myhostname.clone(),
            mydomain: site.mailname.clone(),
            domains: vec![site.mailname.clone()],
            // "all": the readiness probe then dials 127.0.0.1:25.
            inet_interfaces: Vec::new(),
            mynetworks: ["127.0.0.0/8", "[::ffff:127.0.0.0]/104", "[::1]/128"]
                .map(str::to_owned)
                .to_vec(),
            start_timeout: site.start_timeout,
            ..PostfixOptions::default()
        };
        let pf = Postfix {
            ns: ns.name.clone(),
            opts,
            dir,
            stopped: false,
        };
        pf.postfix_cmd("start")?;
        pf.wait_ready()?;
        Ok(pf)
    }

    /// `postconf -c DIR ARGS` (e.g. `["-n"]`, `["-h", "mynetworks"]`,
    /// `["-M", "smtp/inet"]`); returns its standard output.
    pub fn postconf(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new("postconf")
            .arg("-c")
            .arg(self.config_dir())
            .args(args))
    }

    /// `postfix -c DIR reload`, then waits until the master logged that it
    /// re-read its configuration (new listeners are open from then on).
    pub fn reload(&self) -> anyhow::Result<()> {
        const RELOADED: &str = "reload -- version";
        let before = self.log().matches(RELOADED).count();
        self.postfix_cmd("reload")?;
        wait_until("Postfix to reload", Duration::from_secs(10), || {
            Ok(self.log().matches(RELOADED).count() > before)
        })
        .map_err(|e| e.context(format!("log:\n{}", self.log())))
    }
}

/// `main.cf` as `postfix.postinst` writes it on a fresh "Internet Site"
/// install, with the site's answers. Two of Debian's values name machine
/// files a private instance must not share; they name the instance's own
/// copies instead: `alias_maps`/`alias_database` (`/etc/aliases`) and
/// `myorigin` (`/etc/mailname`). Values are set with `postconf -e`, as the
/// postinst does, so the file looks like Debian's.
fn write_debian_main_cf(conf: &Path, site: &StockSite) -> anyhow::Result<()> {
    let mut main_cf = std::fs::read_to_string("/usr/share/postfix/main.cf.debian")
        .context("reading Debian's main.cf.debian (is postfix installed?)")?;
    // The postinst appends the TLS block when the snakeoil key exists
    // (ssl-cert creates it).
    if Path::new("/etc/ssl/private/ssl-cert-snakeoil.key").exists() {
        main_cf.push_str(&std::fs::read_to_string("/usr/share/postfix/main.cf.tls")?);
    }
    std::fs::write(conf.join("main.cf"), main_cf)?;
    let mailname = conf.join("mailname");
    std::fs::write(&mailname, format!("{}\n", site.mailname))?;
    let aliases = format!("hash:{}", conf.join("aliases").display());
    let mut settings = vec![
        "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination".to_owned(),
        format!("myhostname={}", site.myhostname),
        format!("alias_maps={aliases}"),
        format!("alias_database={aliases}"),
        format!("myorigin={}", mailname.display()),
        format!("mydestination={}", site.mydestination()),
    ];
    settings.extend(DEBIAN_DEFAULTS.iter().map(|s| (*s).to_owned()));
    sh(Command::new("postconf")
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .args(&settings))?;
    Ok(())
}

/// The site's aliases: Debian's `/etc/aliases` (`postmaster: root`), the
/// root alias the postinst adds from "Root and postmaster mail recipient",
/// and one line per site user — then `postalias`, as `newaliases` would.
///
/// Why aliases: stock Debian delivers `user@mailname` to the Unix account
/// `user` (`local_recipient_maps` = passwd + aliases), and the lab may not
/// add accounts to `/etc/passwd`. An alias to a path ending in `/` is
/// local(8)'s Maildir delivery, done as `default_privs` (`nobody`) because
/// the alias file is root's; it keeps the stock transport, recipient check
/// and `mydestination`. Root's mail gets a Maildir too, so bounces and
/// postmaster notices never reach the machine's `/var/mail/root`.
fn write_aliases(conf: &Path, mail: &Path, site: &StockSite) -> anyhow::Result<()> {
    let mut text = String::from("# See man 5 aliases for format\npostmaster:    root\n");
    text.push_str("# CERES lab: the site's mailboxes, Maildirs of this instance.\n");
    for user in site.users.iter().map(String::as_str).chain(["root"]) {
        text.push_str(&format!(
            "{user}: {}/\n",
            mail.join(user).join("Maildir").display()
        ));
    }
    let path = conf.join("aliases");
    std::fs::write(&path, text)?;
    sh(Command::new("postalias").arg("-c").arg(conf).arg(&path))?;
    Ok(())
}

/// Appends the settings only a private instance needs, each with its
/// reason, after Debian's lines (a later line would override an earlier
/// one; none of these exists earlier).
fn append_instance_settings(conf: &Path, dir: &Path) -> anyhow::Result<()> {
    let d = dir.display();
    let block = format!(
        "\n\
# ---------------------------------------------------------------------
# CERES lab: private-instance settings. Everything above is what Debian's
# postinst writes for an \"Internet Site\" (alias_maps/alias_database and
# myorigin name this instance's copies of /etc/aliases and /etc/mailname).
# Below: only what a second instance on a shared machine needs. Nothing
# here decides who may connect, relay or log in.
#
# Its own queue and state: /var/spool/postfix and /var/lib/postfix belong
# to the machine's Postfix and to the other lab instances.
queue_directory = {d}/queue
data_directory = {d}/data
# No syslog in the lab: postlogd writes the log to this file, and only
# to paths under maillog_file_prefixes (default: /var, /dev/stdout).
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
# Mailboxes of Unix accounts (none used by the tests) stay in the
# instance instead of the machine's /var/mail.
mail_spool_directory = {d}/spool
# master.cf: every chroot column is n (postconf -F), because a private
# instance has no populated chroot under its queue directory.
# smtpd_peername_lookup stays at its default (yes): in a lab namespace the
# resolver has no route, so the reverse lookup fails at once and clients
# are logged as unknown[IP] without delay.
"
    );
    let path = conf.join("main.cf");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&block);
    std::fs::write(&path, text)?;
    Ok(())
}

/// Switches every chrooted service in `master.cf` to `chroot = n`, listing
/// them with `postconf -F '*/*/chroot'` (LAB-NOTES): Debian chroots most
/// services into /var/spool/postfix, which holds copies of /etc files
/// only for the system instance.
fn unchroot_services(conf: &Path) -> anyhow::Result<()> {
    let list = sh(Command::new("postconf")
        .arg("-c")
        .arg(conf)
        .args(["-F", "*/*/chroot"]))?;
    let mut changes = Vec::new();
    for line in list.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match value.trim() {
            "n" => {}
            "y" | "-" => changes.push(format!("{} = n", key.trim())),
            other => bail!("unexpected chroot value {other:?} in {line:?}"),
        }
    }
    if !changes.is_empty() {
        sh(Command::new("postconf")
            .arg("-c")
            .arg(conf)
            .arg("-F")
            .arg("-e")
            .args(&changes))?;
    }
    let left = sh(Command::new("postconf")
        .arg("-c")
        .arg(conf)
        .args(["-F", "*/*/chroot"]))?;
    ensure!(
        left.lines().all(|l| l.trim_end().ends_with("= n")),
        "services still chrooted after postconf -F -e:\n{left}"
    );
    Ok(())
}
