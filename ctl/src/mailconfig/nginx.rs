//! nginx: every site that serves port 80 (or 443 with TLS) also listens on the
//! loopback PROXY port the relay dials (`127.0.0.1:10080 proxy_protocol`,
//! `127.0.0.1:10443 ssl proxy_protocol`), and `conf.d/ceres.conf` takes the
//! client address from the header only from loopback (`set_real_ip_from`,
//! `real_ip_header proxy_protocol`). The ordinary listeners stay as they are.
//!
//! nginx picks the site for a connection among the server blocks that listen
//! on its address and port, so the extra `listen` goes into each site rather
//! than into a site of our own. Checked with `nginx -t`, read back with
//! `nginx -T`, reloaded with `nginx -s reload`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ceres_relay::{ProxyMode, RelaySpec};

use super::edit::{Backup, Outcome, append_line, break_for_test, replace_file, run_ok};
use super::{Finding, MailSetup, is_loopback_listen};

/// Our http-level file, relative to the configuration directory.
pub const FILE: &str = "conf.d/ceres.conf";
/// Marks the lines we insert into sites.
const MARK: &str = "# CERES: relayed clients, address from the PROXY header";

/// A token of an nginx configuration with its byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Semi,
}

fn tokenize(text: &str) -> Vec<(Tok, usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => {
                out.push((Tok::Open, i, i + 1));
                i += 1;
            }
            b'}' => {
                out.push((Tok::Close, i, i + 1));
                i += 1;
            }
            b';' => {
                out.push((Tok::Semi, i, i + 1));
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'"' | b'\'' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push((
                    Tok::Word(text[start + 1..i.saturating_sub(1).max(start + 1)].to_owned()),
                    start,
                    i,
                ));
            }
            _ => {
                let start = i;
                while i < b.len()
                    && !b[i].is_ascii_whitespace()
                    && !matches!(b[i], b'{' | b'}' | b';')
                {
                    i += 1;
                }
                out.push((Tok::Word(text[start..i].to_owned()), start, i));
            }
        }
    }
    out
}

/// One `listen` directive: its arguments and where its `;` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The arguments (`127.0.0.1:10080`, `proxy_protocol`, ...).
    pub args: Vec<String>,
    /// Byte offset of the directive's start.
    pub start: usize,
    /// Byte offset just past its `;`.
    pub end: usize,
}

impl Listen {
    /// The port (nginx's default 80 when none is written).
    pub fn port(&self) -> u16 {
        let a = self.args.first().map(String::as_str).unwrap_or_default();
        if let Ok(p) = a.parse() {
            return p;
        }
        let port = if let Some((_, p)) = a.rsplit_once("]:") {
            p
        } else if !a.starts_with('[') && a.contains(':') {
            a.rsplit_once(':').map_or("", |(_, p)| p)
        } else {
            ""
        };
        port.parse().unwrap_or(80)
    }

    /// The address part (`None`: every address).
    pub fn host(&self) -> Option<String> {
        let a = self.args.first().map(String::as_str).unwrap_or_default();
        if a.parse::<u16>().is_ok() || a.starts_with('*') {
            return None;
        }
        let host = if let Some((h, _)) = a.rsplit_once("]:") {
            format!("{h}]")
        } else if !a.starts_with('[') && a.contains(':') {
            a.rsplit_once(':')
                .map_or(String::new(), |(h, _)| h.to_owned())
        } else {
            a.to_owned()
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        (!matches!(bare, "::" | "0.0.0.0" | "")).then(|| bare.to_owned())
    }

    fn has(&self, flag: &str) -> bool {
        self.args.iter().skip(1).any(|a| a == flag)
    }

    fn loopback(&self) -> bool {
        self.host().is_some_and(|h| is_loopback_listen(&h))
    }
}

/// A `server { }` block's listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    /// Its `listen` directives, in order.
    pub listens: Vec<Listen>,
}

/// The server blocks of a configuration text, plus http-level directives seen
/// anywhere (name and arguments), for the check.
pub fn server_blocks(text: &str) -> (Vec<ServerBlock>, Vec<(String, Vec<String>)>) {
    let toks = tokenize(text);
    let mut blocks = Vec::new();
    let mut directives = Vec::new();
    // Stack of open blocks: (is a server block, its listens).
    let mut stack: Vec<(bool, Vec<Listen>)> = Vec::new();
    let mut words: Vec<(String, usize)> = Vec::new();
    for (tok, start, end) in toks {
        match tok {
            Tok::Word(w) => words.push((w, start)),
            Tok::Open => {
                let is_server = words.len() == 1 && words[0].0 == "server";
                stack.push((is_server, Vec::new()));
                words.clear();
            }
            Tok::Close => {
                if let Some((is_server, listens)) = stack.pop()
                    && is_server
                {
                    blocks.push(ServerBlock { listens });
                }
                words.clear();
            }
            Tok::Semi => {
                if let Some((name, first)) = words.first().cloned() {
                    let args: Vec<String> = words.iter().skip(1).map(|(w, _)| w.clone()).collect();
                    if name == "listen"
                        && let Some((true, listens)) = stack.last_mut()
                    {
                        listens.push(Listen {
                            args: args.clone(),
                            start: first,
                            end,
                        });
                    }
                    directives.push((name, args));
                }
                words.clear();
            }
        }
    }
    (blocks, directives)
}

/// The PROXY relays of the web ports: (public port, relay).
fn web_relays(s: &MailSetup) -> Vec<&RelaySpec> {
    [80u16, 443].iter().filter_map(|p| s.relay(*p)).collect()
}

/// The `listen` line a site serving `r.public_port` needs.
fn listen_line(s: &MailSetup, r: &RelaySpec) -> String {
    let tls = if r.public_port == 443 { " ssl" } else { "" };
    format!(
        "listen {}:{}{tls} proxy_protocol;",
        s.proxy_listen(),
        r.home_port
    )
}

/// Whether a server block serves a relayed web port the ordinary way.
fn serves(block: &ServerBlock, r: &RelaySpec) -> bool {
    block.listens.iter().any(|l| {
        l.port() == r.public_port
            && !l.has("proxy_protocol")
            && (r.public_port != 443 || l.has("ssl"))
    })
}

fn has_proxy_listen(block: &ServerBlock, r: &RelaySpec) -> bool {
    block
        .listens
        .iter()
        .any(|l| l.port() == r.home_port && l.has("proxy_protocol") && l.loopback())
}

/// Inserts the missing PROXY listens into every server block of `text` that
/// serves a relayed web port; returns the new text and what was added.
pub fn edit_sites(s: &MailSetup, text: &str) -> (String, usize) {
    let (blocks, _) = server_blocks(text);
    // (offset, text) insertions, applied from the end.
    let mut inserts: Vec<(usize, String)> = Vec::new();
    for block in &blocks {
        let Some(last) = block.listens.last() else {
            continue;
        };
        let line_start = text[..last.start].rfind('\n').map_or(0, |i| i + 1);
        let indent: String = text[line_start..last.start]
            .chars()
            .take_while(|c| c.is_whitespace())
            .collect();
        for r in web_relays(s) {
            if r.proxy == ProxyMode::None || !serves(block, r) || has_proxy_listen(block, r) {
                continue;
            }
            inserts.push((last.end, format!("\n{indent}{} {MARK}", listen_line(s, r))));
        }
    }
    let n = inserts.len();
    let mut out = text.to_owned();
    inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, add) in &inserts {
        out.insert_str(*at, add);
    }
    (out, n)
}

/// Our http-level file.
pub fn file(s: &MailSetup) -> String {
    let mut o = String::from(
        "# Written by `cerectl mailserver-config nginx --apply` (CERES).\n\
         # Run that command again instead of editing: it rewrites this file.\n\
         # The client address comes from the PROXY header, and only on\n\
         # connections from the home agent (loopback).\n",
    );
    for a in &s.agent_addresses {
        let _ = writeln!(o, "set_real_ip_from {a};");
    }
    o.push_str("real_ip_header proxy_protocol;\n");
    o
}

/// The printed form.
pub fn print(s: &MailSetup) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nginx for CERES: relays {}.\n\
         # Apply on the home host with `cerectl mailserver-config nginx --apply`\n\
         # (adds the listens to your sites and writes /etc/nginx/{FILE}, checks\n\
         # with nginx -t, reloads), or do it yourself, then `nginx -t && nginx -s reload`.\n",
        s.relay_list()
    );
    let web = web_relays(s);
    if web.is_empty() {
        o.push_str("# Neither 80 nor 443 is relayed: nothing to change for CERES.\n");
        return o;
    }
    for r in &web {
        if r.proxy == ProxyMode::None {
            let _ = writeln!(
                o,
                "# WARNING: port {} is relayed without PROXY: every client is the home\n\
                 # agent ({}) to nginx, so `allow 127.0.0.1` rules let the whole internet\n\
                 # in and logs show one address. Relay it with PROXY ({}/proxy-v2 in\n\
                 # CERES_RELAYS) and run this again.",
                r.public_port,
                s.agents(", "),
                r.public_port
            );
        } else {
            let _ = writeln!(
                o,
                "# In each server {{ }} that serves port {}{}, next to its listen lines:\n{}",
                r.public_port,
                if r.public_port == 443 {
                    " with TLS"
                } else {
                    ""
                },
                listen_line(s, r)
            );
        }
    }
    if web.iter().any(|r| r.proxy != ProxyMode::None) {
        let _ = writeln!(o, "\n# ---- /etc/nginx/{FILE} ----\n{}", file(s));
    }
    o
}

fn config_file(dir: &Path) -> PathBuf {
    dir.join("nginx.conf")
}

/// The site files whose server blocks may serve the web ports: sites-enabled/*
/// (symlinks followed) and conf.d/*.conf, ours excepted.
fn site_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (sub, only_conf) in [("sites-enabled", false), ("conf.d", true)] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if only_conf && p.extension().is_none_or(|e| e != "conf") {
                continue;
            }
            if p.ends_with(FILE) {
                continue;
            }
            let real = std::fs::canonicalize(&p).unwrap_or(p);
            if real.is_file() && !out.contains(&real) {
                out.push(real);
            }
        }
    }
    out
}

/// Every unsafe or missing setting in the live configuration (`nginx -T`).
pub fn check(s: &MailSetup, dir: &Path) -> anyhow::Result<Vec<Finding>> {
    let conf = config_file(dir);
    let text = run_ok("nginx", &["-T", "-q", "-c", &conf.to_string_lossy()])
        .context("reading nginx's configuration (installed? --config-dir right?)")?;
    Ok(findings(s, &text))
}

/// The findings for a whole configuration (`nginx -T` output).
pub fn findings(s: &MailSetup, text: &str) -> Vec<Finding> {
    const APPLY: &str = "cerectl mailserver-config nginx --apply";
    let mut out = Vec::new();
    let (blocks, directives) = server_blocks(text);
    for l in blocks.iter().flat_map(|b| &b.listens) {
        if l.has("proxy_protocol") && !l.loopback() {
            out.push(Finding::unsafe_(
                format!("listen {}", l.args.join(" ")),
                "reads a PROXY header on every address: anything that reaches it can claim any client address",
                format!("listen on 127.0.0.1 only (or {APPLY})"),
            ));
        }
    }
    for r in web_relays(s) {
        if r.proxy == ProxyMode::None {
            out.push(Finding::unsafe_(
                format!("port {} relayed without PROXY", r.public_port),
                "every client is the home agent (127.0.0.1) to nginx: `allow 127.0.0.1` rules let the internet in",
                format!("relay it with PROXY ({}/proxy-v2 in CERES_RELAYS on the VPS), then {APPLY}", r.public_port),
            ));
            continue;
        }
        let landed = blocks.iter().any(|b| has_proxy_listen(b, r));
        if !landed {
            out.push(Finding::missing(
                format!(
                    "listen 127.0.0.1:{}{} proxy_protocol",
                    r.home_port,
                    if r.public_port == 443 { " ssl" } else { "" }
                ),
                format!(
                    "port {} is relayed to 127.0.0.1:{} and no site listens there{}",
                    r.public_port,
                    r.home_port,
                    if r.public_port == 443 {
                        " (no site serves `listen 443 ssl`)"
                    } else {
                        ""
                    }
                ),
                format!(
                    "{APPLY} once a site serves port {} — or stop relaying it (remove {} from CERES_RELAYS on the VPS)",
                    r.public_port, r.public_port
                ),
            ));
        }
        for b in &blocks {
            if serves(b, r) && !has_proxy_listen(b, r) && landed {
                let first = b
                    .listens
                    .first()
                    .map(|l| l.args.join(" "))
                    .unwrap_or_default();
                out.push(Finding::missing(
                    format!("server with `listen {first}`: no listen 127.0.0.1:{}", r.home_port),
                    "relayed clients reach another site (the first one on that port) instead of this one",
                    APPLY,
                ));
            }
        }
    }
    if web_relays(s).iter().any(|r| r.proxy != ProxyMode::None) {
        let real_ip = directives.iter().any(|(n, a)| {
            n == "real_ip_header" && a.first().is_some_and(|v| v == "proxy_protocol")
        });
        if !real_ip {
            out.push(Finding::missing(
                "real_ip_header proxy_protocol",
                "logs and access rules see 127.0.0.1 for every relayed client",
                APPLY,
            ));
        }
        for (_, a) in directives.iter().filter(|(n, _)| n == "set_real_ip_from") {
            let v = a.first().cloned().unwrap_or_default();
            let host = v.split('/').next().unwrap_or_default();
            if !is_loopback_listen(host) && !s.agent_addresses.iter().any(|x| x.to_string() == host)
            {
                out.push(Finding::unsafe_(
                    format!("set_real_ip_from {v}"),
                    "hosts there may claim any client address (with real_ip_header proxy_protocol)",
                    format!("trust only the home agent ({})", s.agents(", ")),
                ));
            }
        }
    }
    out
}

/// Adds the listens to the sites and writes our file; `nginx -t` (restoring
/// every file on failure); reload.
pub fn apply(s: &MailSetup, dir: &Path) -> anyhow::Result<Outcome> {
    let conf = config_file(dir);
    anyhow::ensure!(
        conf.exists(),
        "{} not found: give nginx's configuration directory with --config-dir",
        conf.display()
    );
    let mut outcome = Outcome {
        target: "nginx",
        ..Outcome::default()
    };
    let proxied = web_relays(s).iter().any(|r| r.proxy != ProxyMode::None);
    if !proxied {
        return Ok(outcome);
    }
    let mut writes: Vec<(PathBuf, String, String)> = Vec::new();
    for f in site_files(dir) {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let (new, added) = edit_sites(s, &text);
        if added > 0 {
            writes.push((
                f.clone(),
                new,
                format!("{}: {added} listen line(s) added", f.display()),
            ));
        }
    }
    let ours = dir.join(FILE);
    let want = file(s);
    if std::fs::read_to_string(&ours).ok().as_deref() != Some(want.as_str()) {
        writes.push((ours.clone(), want, format!("wrote {}", ours.display())));
    }
    if writes.is_empty() {
        return Ok(outcome);
    }
    let rel: Vec<PathBuf> = writes
        .iter()
        .map(|(p, _, _)| {
            p.strip_prefix(dir)
                .map_or_else(|_| p.clone(), Path::to_path_buf)
        })
        .collect();
    let backup = Backup::take(dir, &rel)?;
    let c = conf.to_string_lossy().into_owned();
    let result = (|| -> anyhow::Result<()> {
        for (p, text, _) in &writes {
            replace_file(p, text.as_bytes())?;
        }
        if break_for_test() {
            append_line(&ours, "ceres_test_breakage on;")?;
        }
        run_ok("nginx", &["-t", "-q", "-c", &c])
            .context("nginx refused the changed configuration")?;
        Ok(())
    })();
    if let Err(e) = result {
        backup
            .restore()
            .context("restoring the backup after a failed apply")?;
        return Err(e.context("nothing changed: every file is restored"));
    }
    outcome.changes = writes.into_iter().map(|(_, _, what)| what).collect();
    outcome.backup = Some(backup.dir.clone());
    outcome.reload = match run_ok("nginx", &["-s", "reload", "-c", &c]) {
        Ok(_) => "nginx reloaded.".into(),
        Err(_) => {
            "nginx is not running (no reload): the changes take effect when it starts.".into()
        }
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::setup;
    use super::*;

    const DEBIAN_DEFAULT: &str = "# Default server configuration\n#\nserver {\n\tlisten 80 default_server;\n\tlisten [::]:80 default_server;\n\n\t# SSL configuration\n\t# listen 443 ssl default_server;\n\troot /var/www/html;\n\tserver_name _;\n\tlocation / {\n\t\ttry_files $uri $uri/ =404;\n\t}\n}\n";

    #[test]
    fn listen_parsing() {
        let (b, _) = server_blocks(
            "server { listen 80; listen [::]:443 ssl http2; listen 127.0.0.1:10080 proxy_protocol; listen 0.0.0.0:8080; listen [::1]:9; listen localhost; }",
        );
        let l = &b[0].listens;
        assert_eq!(
            l.iter().map(Listen::port).collect::<Vec<_>>(),
            [80, 443, 10080, 8080, 9, 80]
        );
        assert_eq!(
            l.iter().map(Listen::host).collect::<Vec<_>>(),
            [
                None,
                None,
                Some("127.0.0.1".into()),
                None,
                Some("::1".into()),
                Some("localhost".into())
            ]
        );
        assert!(l[2].loopback() && l[4].loopback() && !l[0].loopback());
        assert!(l[1].has("ssl"));
    }

    #[test]
    fn edits_the_debian_default_site_once() {
        let s = setup(ceres_relay::DEFAULT_RELAYS);
        let (t, n) = edit_sites(&s, DEBIAN_DEFAULT);
        assert_eq!(n, 1, "{t}");
        assert!(
            t.contains(
                "\tlisten [::]:80 default_server;\n\tlisten 127.0.0.1:10080 proxy_protocol; # CERES"
            ),
            "{t}"
        );
        // The commented 443 is not a listen.
        assert!(!t.contains("10443"), "{t}");
        let (again, n) = edit_sites(&s, &t);
        assert_eq!((again.as_str(), n), (t.as_str(), 0), "idempotent");
        let mut all = t.clone();
        all.push_str(&file(&s));
        let f = findings(&s, &all);
        // Only what the stock site cannot serve: it has no TLS.
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].subject.starts_with("listen 127.0.0.1:10443 ssl")
                && f[0].fix.contains("remove 443"),
            "{f:?}"
        );
    }

    #[test]
    fn tls_sites_get_the_ssl_listen_and_upstream_blocks_are_ignored() {
        let s = setup("80/proxy-v2,443/proxy-v2");
        let text = "upstream app { server 127.0.0.1:3000; }\nhttp {\n  server {\n    listen 443 ssl;\n    server_name mail.example.com;\n  }\n  server {\n    listen 80;\n    return 301 https://$host$request_uri;\n  }\n}\n";
        let (t, n) = edit_sites(&s, text);
        assert_eq!(n, 2, "{t}");
        assert!(
            t.contains(
                "    listen 443 ssl;\n    listen 127.0.0.1:10443 ssl proxy_protocol; # CERES"
            ),
            "{t}"
        );
        assert!(
            t.contains("    listen 80;\n    listen 127.0.0.1:10080 proxy_protocol; # CERES"),
            "{t}"
        );
    }

    #[test]
    fn unsafe_variants_are_found() {
        let s = setup("80/proxy-v2");
        let f = findings(
            &s,
            "server { listen 80 proxy_protocol; }\nset_real_ip_from 0.0.0.0/0;\nreal_ip_header proxy_protocol;\n",
        );
        let subjects: Vec<&str> = f.iter().map(|x| x.subject.as_str()).collect();
        assert!(
            subjects.contains(&"listen 80 proxy_protocol"),
            "{subjects:?}"
        );
        assert!(
            subjects.contains(&"set_real_ip_from 0.0.0.0/0"),
            "{subjects:?}"
        );
        assert!(
            subjects
                .iter()
                .any(|x| x.starts_with("listen 127.0.0.1:10080")),
            "{subjects:?}"
        );
        let f = findings(&setup("80"), DEBIAN_DEFAULT);
        assert_eq!(f[0].subject, "port 80 relayed without PROXY");
        assert!(print(&setup("80")).contains("WARNING: port 80 is relayed without PROXY"));
    }
}
