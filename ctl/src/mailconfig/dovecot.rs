//! Dovecot: one file of ours, `conf.d/99-ceres.conf` (Debian's dovecot.conf
//! includes `conf.d/*.conf`), adding loopback listeners that read the PROXY
//! header — new listener names, so the stock ones (143, 993, ...) stay as they
//! are for LAN clients — plus `haproxy_trusted_networks` and, when submission
//! is relayed, the SASL socket Postfix authenticates with.
//!
//! Checked with `doveconf -n` (which refuses a broken configuration),
//! reloaded with `doveadm reload`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ceres_relay::ProxyMode;

use super::edit::{Backup, Outcome, append_line, break_for_test, replace_file, run_ok};
use super::{Finding, MailSetup, is_loopback_listen, proxy_name};

/// Our file, relative to the configuration directory.
pub const FILE: &str = "conf.d/99-ceres.conf";

/// Dovecot's login services, by public port: (service, our listener, implicit TLS).
const PORTS: [(u16, &str, &str, bool); 5] = [
    (143, "imap-login", "imap_ceres", false),
    (993, "imap-login", "imaps_ceres", true),
    (110, "pop3-login", "pop3_ceres", false),
    (995, "pop3-login", "pop3s_ceres", true),
    (4190, "managesieve-login", "sieve_ceres", false),
];

/// The file's content for `s` (`queue`: Postfix's queue directory, for the
/// SASL socket; `None`: leave it out).
pub fn file(s: &MailSetup, queue: Option<&Path>) -> String {
    let mut o = String::from(
        "# Written by `cerectl mailserver-config dovecot --apply` (CERES).\n\
         # Run that command again instead of editing: it rewrites this file.\n\
         #\n\
         # Relayed clients arrive on the loopback listeners below, which read the\n\
         # PROXY header the VPS sends: Dovecot logs and rate-limits the real\n\
         # address, and a client is \"secured\" (may send a password) only with\n\
         # TLS, never for looking local. Only the home agent reaches loopback.\n\n",
    );
    let proxied: Vec<_> = PORTS
        .iter()
        .filter_map(|p| {
            s.relay(p.0)
                .filter(|r| r.proxy != ProxyMode::None)
                .map(|r| (r, p))
        })
        .collect();
    for (port, _, listener, _) in PORTS {
        if let Some(r) = s.relay(port).filter(|r| r.proxy == ProxyMode::None) {
            let _ = writeln!(
                o,
                "# WARNING: port {port} is relayed without PROXY (no {listener} here): every\n\
                 # client of it is the home agent ({}) to Dovecot, which counts that as\n\
                 # secured and accepts cleartext passwords. Relay it with PROXY\n\
                 # ({port}/proxy-v2 in CERES_RELAYS) and apply again. (home port {})\n",
                s.agents(", "),
                r.home_port
            );
        }
    }
    if !proxied.is_empty() {
        let _ = writeln!(
            o,
            "# Who may send a PROXY header: the home agent only.\nhaproxy_trusted_networks = {}\n",
            s.agents(" ")
        );
    }
    let mut current: Option<&str> = None;
    for (r, (_, svc, listener, ssl)) in &proxied {
        if current != Some(*svc) {
            if current.is_some() {
                o.push_str("}\n");
            }
            let _ = writeln!(o, "service {svc} {{");
            current = Some(svc);
        }
        let _ = writeln!(
            o,
            "  # Port {} relayed {}.\n  inet_listener {listener} {{\n    address = {}\n    port = {}\n{}    haproxy = yes\n  }}",
            r.public_port,
            proxy_name(r.proxy),
            s.proxy_listen(),
            r.home_port,
            if *ssl { "    ssl = yes\n" } else { "" }
        );
    }
    if current.is_some() {
        o.push_str("}\n");
    }
    if s.relay(587).is_some() || s.relay(465).is_some() {
        match queue {
            Some(q) => {
                let _ = writeln!(
                    o,
                    "\n# Postfix's submission services authenticate here (smtpd_sasl_type = dovecot).\n\
                     service auth {{\n  unix_listener {} {{\n    mode = 0660\n    user = postfix\n    group = postfix\n  }}\n}}",
                    q.join("private/auth").display()
                );
            }
            None => o.push_str(
                "\n# No Postfix queue directory here: no SASL socket for Postfix's submission.\n",
            ),
        }
    }
    o
}

/// The printed form.
pub fn print(s: &MailSetup, queue: &Path) -> String {
    format!(
        "# Dovecot for CERES: relays {}.\n\
         # Apply on the home host with `cerectl mailserver-config dovecot --apply`\n\
         # (writes /etc/dovecot/{FILE}, checks with doveconf, reloads), or put\n\
         # the lines below in that file yourself, then `doveadm reload`.\n\n{}",
        s.relay_list(),
        file(s, Some(queue))
    )
}

/// A parsed `doveconf -n` section: its settings and subsections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// `kind name {` (e.g. `service`, `imap-login`).
    pub kind: String,
    /// The section's name (may be empty).
    pub name: String,
    /// `key = value` settings.
    pub settings: Vec<(String, String)>,
    /// Nested sections.
    pub children: Vec<Section>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `doveconf -n` output into a tree (root: settings outside sections).
pub fn parse(text: &str) -> Section {
    let mut stack = vec![Section::default()];
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "}" {
            if stack.len() > 1
                && let Some(done) = stack.pop()
                && let Some(parent) = stack.last_mut()
            {
                parent.children.push(done);
            }
            continue;
        }
        if let Some(head) = line.strip_suffix('{') {
            let mut words = head.split_whitespace();
            stack.push(Section {
                kind: words.next().unwrap_or_default().to_owned(),
                name: words.collect::<Vec<_>>().join(" "),
                ..Section::default()
            });
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && let Some(top) = stack.last_mut()
        {
            top.settings
                .push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    while stack.len() > 1 {
        if let Some(done) = stack.pop()
            && let Some(parent) = stack.last_mut()
        {
            parent.children.push(done);
        }
    }
    stack.pop().unwrap_or_default()
}

/// A login listener as Dovecot will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listener {
    service: String,
    name: String,
    address: String,
    port: String,
    haproxy: bool,
}

fn listeners(root: &Section) -> Vec<Listener> {
    let mut out = Vec::new();
    for svc in root.children.iter().filter(|c| c.kind == "service") {
        for l in svc.children.iter().filter(|c| c.kind == "inet_listener") {
            out.push(Listener {
                service: svc.name.clone(),
                name: l.name.clone(),
                // Dovecot's default: every address.
                address: l.get("address").unwrap_or("*, ::").to_owned(),
                // `doveconf -n` leaves out defaults, a stock listener's port too.
                port: l
                    .get("port")
                    .or(match l.name.as_str() {
                        "imap" => Some("143"),
                        "imaps" => Some("993"),
                        "pop3" => Some("110"),
                        "pop3s" => Some("995"),
                        "sieve" => Some("4190"),
                        _ => None,
                    })
                    .unwrap_or_default()
                    .to_owned(),
                haproxy: l.get("haproxy") == Some("yes"),
            });
        }
    }
    out
}

fn config_file(dir: &Path) -> PathBuf {
    dir.join("dovecot.conf")
}

/// Every unsafe or missing setting in the live configuration.
pub fn check(s: &MailSetup, dir: &Path) -> anyhow::Result<Vec<Finding>> {
    let conf = config_file(dir);
    let text = run_ok("doveconf", &["-c", &conf.to_string_lossy(), "-n"])
        .context("reading Dovecot's configuration (installed? --config-dir right?)")?;
    Ok(findings(s, &parse(&text)))
}

/// The findings for a parsed configuration.
pub fn findings(s: &MailSetup, root: &Section) -> Vec<Finding> {
    const APPLY: &str = "cerectl mailserver-config dovecot --apply";
    let mut out = Vec::new();
    let all = listeners(root);
    for l in all.iter().filter(|l| l.haproxy) {
        let every_loopback = l
            .address
            .split([',', ' '])
            .filter(|a| !a.is_empty())
            .all(is_loopback_listen);
        if !every_loopback {
            out.push(Finding::unsafe_(
                format!("service {} inet_listener {} (port {}) haproxy = yes", l.service, l.name, l.port),
                format!(
                    "reads a PROXY header on {}: anything that reaches that address can claim any client address",
                    l.address
                ),
                format!("set `address = 127.0.0.1` in that listener, or remove haproxy (then {APPLY})"),
            ));
        }
    }
    let trusted = root.get("haproxy_trusted_networks").unwrap_or_default();
    for net in trusted.split_whitespace() {
        let host = net.split('/').next().unwrap_or_default();
        let agent = s.agent_addresses.iter().any(|a| a.to_string() == host);
        if !agent && !is_loopback_listen(host) {
            out.push(Finding::unsafe_(
                format!("haproxy_trusted_networks {net}"),
                "hosts there may send PROXY headers and claim any client address",
                format!("haproxy_trusted_networks = {}  (or {APPLY})", s.agents(" ")),
            ));
        }
    }
    for (port, _, name, ssl) in PORTS {
        let Some(r) = s.relay(port) else { continue };
        if r.proxy == ProxyMode::None {
            out.push(Finding::unsafe_(
                format!("port {port} relayed without PROXY"),
                format!(
                    "every client is the home agent ({}) to Dovecot: counted as secured (cleartext passwords accepted), one address for auth penalties and fail2ban",
                    s.agents(", ")
                ),
                format!("relay it with PROXY ({port}/proxy-v2 in CERES_RELAYS on the VPS), then {APPLY}"),
            ));
            continue;
        }
        let home = r.home_port.to_string();
        let ok = all.iter().any(|l| {
            l.port == home
                && l.haproxy
                && l.address
                    .split([',', ' '])
                    .filter(|a| !a.is_empty())
                    .all(is_loopback_listen)
        });
        if !ok {
            out.push(Finding::missing(
                format!("a loopback haproxy listener on port {home} ({name}{})", if ssl { ", ssl" } else { "" }),
                format!("port {port} is relayed to 127.0.0.1:{home} and nothing there reads it: clients cannot connect"),
                APPLY,
            ));
        } else if trusted.is_empty() {
            out.push(Finding::missing(
                "haproxy_trusted_networks",
                "Dovecot refuses PROXY headers from everyone: every relayed connection fails",
                format!("haproxy_trusted_networks = {}  (or {APPLY})", s.agents(" ")),
            ));
        }
    }
    out.dedup();
    out
}

/// Writes our file, checks with doveconf (restoring on failure), reloads.
pub fn apply(s: &MailSetup, dir: &Path, queue: &Path) -> anyhow::Result<Outcome> {
    let conf = config_file(dir);
    anyhow::ensure!(
        conf.exists(),
        "{} not found: give Dovecot's configuration directory with --config-dir",
        conf.display()
    );
    let main =
        std::fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
    anyhow::ensure!(
        main.lines()
            .any(|l| l.trim_start().starts_with("!include") && l.contains("conf.d/*.conf")),
        "{} does not include conf.d/*.conf, so {FILE} would not be read: add `!include conf.d/*.conf` or put the lines of `cerectl mailserver-config dovecot` in it yourself",
        conf.display()
    );
    let queue = queue.join("private").is_dir().then_some(queue);
    let want = file(s, queue);
    let path = dir.join(FILE);
    let mut outcome = Outcome {
        target: "dovecot",
        ..Outcome::default()
    };
    if std::fs::read_to_string(&path).ok().as_deref() == Some(want.as_str()) {
        return Ok(outcome);
    }
    let backup = Backup::take(dir, &[FILE.into()])?;
    let c = conf.to_string_lossy().into_owned();
    let result = (|| -> anyhow::Result<()> {
        replace_file(&path, want.as_bytes())?;
        if break_for_test() {
            append_line(&path, "ceres_test_breakage {")?;
        }
        run_ok("doveconf", &["-c", &c, "-n"])
            .context("Dovecot refused the changed configuration")?;
        Ok(())
    })();
    if let Err(e) = result {
        backup
            .restore()
            .context("restoring the backup after a failed apply")?;
        return Err(e.context(format!("nothing changed: {} is restored", path.display())));
    }
    outcome.changes.push(format!("wrote {}", path.display()));
    if queue.is_none() && (s.relay(587).is_some() || s.relay(465).is_some()) {
        outcome.changes.push(
            "no SASL socket for Postfix: no Postfix queue directory found (--postfix-queue-dir)"
                .into(),
        );
    }
    outcome.backup = Some(backup.dir.clone());
    outcome.reload = match run_ok("doveadm", &["-c", &c, "reload"]) {
        Ok(_) => "Dovecot reloaded.".into(),
        Err(e) if e.to_string().contains("not running") => {
            "Dovecot is not running: the changes take effect when it starts.".into()
        }
        Err(e) => {
            return Err(
                e.context("the configuration is written and valid, but reloading Dovecot failed")
            );
        }
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::setup;
    use super::*;

    #[test]
    fn file_for_default_relays() {
        let s = setup(ceres_relay::DEFAULT_RELAYS);
        let t = file(&s, Some(Path::new("/var/spool/postfix")));
        assert!(
            t.contains("haproxy_trusted_networks = 127.0.0.1 ::1\n"),
            "{t}"
        );
        assert!(t.contains("  inet_listener imaps_ceres {\n    address = 127.0.0.1\n    port = 10993\n    ssl = yes\n    haproxy = yes\n  }"), "{t}");
        assert_eq!(t.matches("haproxy = yes").count(), 5, "{t}");
        assert_eq!(t.matches("service imap-login {").count(), 1, "{t}");
        assert!(
            t.contains("unix_listener /var/spool/postfix/private/auth {"),
            "{t}"
        );
        // The file parses as Dovecot sections (balanced braces).
        let root = parse(&t);
        let l = listeners(&root);
        assert_eq!(l.len(), 5);
        assert!(l.iter().all(|l| l.address == "127.0.0.1" && l.haproxy));
        assert!(findings(&s, &root).is_empty(), "{:?}", findings(&s, &root));
    }

    #[test]
    fn plain_relays_are_warned_and_found() {
        let s = setup("143,993/proxy-v2");
        let t = file(&s, None);
        assert!(
            t.contains("WARNING: port 143 is relayed without PROXY"),
            "{t}"
        );
        let f = findings(&s, &parse(&t));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "port 143 relayed without PROXY");
    }

    #[test]
    fn unsafe_listeners_and_trust_are_found() {
        let s = setup("993/proxy-v2");
        let stock_like = "haproxy_trusted_networks = 192.168.1.0/24\nservice imap-login {\n  inet_listener imaps {\n    haproxy = yes\n    port = 993\n    ssl = yes\n  }\n}\n";
        let f = findings(&s, &parse(stock_like));
        let subjects: Vec<&str> = f.iter().map(|x| x.subject.as_str()).collect();
        assert!(
            subjects.contains(&"service imap-login inet_listener imaps (port 993) haproxy = yes"),
            "{subjects:?}"
        );
        assert!(
            subjects.contains(&"haproxy_trusted_networks 192.168.1.0/24"),
            "{subjects:?}"
        );
        assert!(
            subjects
                .iter()
                .any(|x| x.starts_with("a loopback haproxy listener on port 10993")),
            "{subjects:?}"
        );
    }
}
