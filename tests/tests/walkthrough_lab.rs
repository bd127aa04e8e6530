//! Issue 14's "done when": docs/quickstart-vps.md and then
//! docs/quickstart-home.md, followed literally in the namespace lab. Every
//! command of a block marked `sh walkthrough ROLE` (see
//! `ceres_tests::walkthrough`) runs, in the docs' order, on the machine the
//! docs name, exactly as printed — so a marked command that stops working,
//! or a product change that breaks one, fails this test. It ends with mail
//! in (the docs' `send-test`) and out (the docs' `sendmail`) through the
//! VPS, and `cerectl status` exiting 0.
//!
//! The lab matches the docs' example values, so nothing in a command is
//! rewritten except the join token:
//!
//! | in the docs | in the lab |
//! |---|---|
//! | `203.0.113.10`, `mail.example.com`, `example.com` | the VPS namespace's public address; the home Postfix's host name and domain |
//! | the VPS / the home server | namespaces `vps` and `home` (home behind the internet router at 198.51.100.10) |
//! | "your workstation", "a server elsewhere" (role `admin`) | the `internet` namespace (192.0.2.10, 203.0.113.1 towards the VPS) |
//! | `TOKEN` | the output of the last `ceres-vps token create` of the role the command needs (`cerectl enroll`: admin, `ceres-home join`: home), each used once |
//! | `you@example.net` | a Postfix on the internet side that accepts mail for `example.net` |
//! | your DNS host and the provider's reverse DNS | nsd on 192.0.2.53, every host's resolver: it serves what the docs' `cerectl dns --format zone` printed (the zone records, and the PTR for the reverse zone), and empty blocklist zones |
//!
//! What the lab does that the reader does elsewhere (not in marked
//! blocks): the mail server at home exists before the docs start (Debian's
//! stock Postfix, whose `/etc/postfix` is the host's), and home's Postfix
//! finds `example.net`'s MX through a transport map (the lab's Postfix does
//! not use the lab's DNS). Provider tickets and building stay prose.
//!
//! Checks that converge (a status, `doctor`) are run again until they pass
//! or 90 s go by, as a reader watching `cerectl status --watch` would: the
//! home agent probes the mail server every 30 s, and the docs say to wait
//! for it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ceres_tests::postfix::{Postfix, PostfixOptions, StockSite};
use ceres_tests::walkthrough::{self, Block, Host, Role};
use ceres_tests::{Daemon, Lab, addr, require_root, wait_until};

/// The quick starts, in the order a reader follows them.
const DOCS: &[&str] = &["docs/quickstart-vps.md", "docs/quickstart-home.md"];
/// The lab's DNS server (the reader's DNS host and the provider's reverse
/// zone), on the internet side.
const RESOLVER: &str = "192.0.2.53";
/// The outside domain the docs send to.
const OUTSIDE_DOMAIN: &str = "example.net";
/// How long a converging check may take to pass.
const CHECK_DEADLINE: Duration = Duration::from_secs(90);

/// What a command printed and how it ended.
#[derive(Debug)]
struct Ran {
    role: Role,
    command: String,
    origin: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn new(role: Role, command: &str, origin: &str, out: &Output) -> Self {
        Self {
            role,
            command: command.to_owned(),
            origin: origin.to_owned(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "[{} @ {}] $ {}\n(exit {:?})\n{}{}",
            self.role.name(),
            self.origin,
            self.command,
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// The walk: the three hosts, what the docs' commands produced so far, and
/// what they started.
struct Walk<'a> {
    lab: &'a Lab,
    hosts: Vec<Host<'a>>,
    /// Tokens printed by `token create`, per role, oldest first.
    tokens: BTreeMap<String, VecDeque<String>>,
    /// Every command run, in order.
    transcript: Vec<Ran>,
    /// Agents started by foreground blocks.
    daemons: Vec<Daemon>,
    /// The DNS server, once the docs printed the records to set.
    nsd: Option<ceres_testkit::Nsd>,
    nsd_binary: PathBuf,
}

/// The command as the reader types it, without `sudo ` (for matching).
fn bare(command: &str) -> &str {
    command
        .strip_prefix("sudo ")
        .unwrap_or(command)
        .trim_start()
}

/// Checks that report on a converging system, run again until they pass.
fn converges(command: &str) -> bool {
    let c = bare(command);
    (c.starts_with("cerectl status") && !c.contains("--watch"))
        || c.starts_with("cerectl doctor")
        || c.starts_with("cerectl dns --check")
        || c.starts_with("ceres-vps status")
        || c.starts_with("ceres-home status")
}

impl<'a> Walk<'a> {
    fn host(&self, role: Role) -> &Host<'a> {
        self.hosts.iter().find(|h| h.role == role).unwrap()
    }

    /// The docs' `TOKEN`, replaced by an unused token of the role the
    /// command redeems.
    fn substitute(&mut self, command: &str) -> anyhow::Result<String> {
        if !command.split_whitespace().any(|w| w == "TOKEN") {
            return Ok(command.to_owned());
        }
        let role = if bare(command).starts_with("ceres-home join") {
            "home"
        } else if bare(command).starts_with("cerectl enroll") {
            "admin"
        } else {
            bail!(
                "TOKEN in {command:?}: the walkthrough knows tokens only for `ceres-home join` and `cerectl enroll`"
            );
        };
        let token = self
            .tokens
            .get_mut(role)
            .and_then(VecDeque::pop_front)
            .with_context(|| {
                format!("{command:?} needs a {role} token, but no marked `ceres-vps token create --role {role}` made one before it")
            })?;
        Ok(command
            .split(' ')
            .map(|w| if w == "TOKEN" { token.as_str() } else { w })
            .collect::<Vec<_>>()
            .join(" "))
    }

    fn block(&mut self, block: &Block) -> anyhow::Result<()> {
        for command in &block.commands {
            self.command(block, command)?;
        }
        Ok(())
    }

    fn command(&mut self, block: &Block, written: &str) -> anyhow::Result<()> {
        ensure!(
            !written.contains("--watch"),
            "{}: `{written}` never ends: leave it out of marked blocks",
            block.origin
        );
        let command = self.substitute(written)?;
        println!("[{} @ {}] $ {written}", block.role.name(), block.origin);
        if block.foreground {
            let cmd = self.host(block.role).command(&command, true);
            let mut d = Daemon::spawn(block.role.name(), cmd, self.lab.dir.path())?;
            d.wait_ready(Duration::from_secs(30))
                .with_context(|| format!("{} ({written:?}) did not get ready", block.origin))?;
            self.transcript.push(Ran {
                role: block.role,
                command: written.to_owned(),
                origin: block.origin.clone(),
                code: None,
                stdout: String::new(),
                stderr: String::new(),
            });
            self.daemons.push(d);
            return Ok(());
        }
        let mut last = None;
        let result = if converges(&command) {
            wait_until(&format!("{written:?} to pass"), CHECK_DEADLINE, || {
                let out = self.host(block.role).run(&command)?;
                let ok = out.status.success();
                last = Some(out);
                Ok(ok)
            })
        } else {
            let out = self.host(block.role).run(&command)?;
            let ok = out.status.success();
            last = Some(out);
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("exit status is not 0"))
            }
        };
        let out = last.context("the command never ran")?;
        let ran = Ran::new(block.role, written, &block.origin, &out);
        print!("{}", indent(&ran.stdout));
        if let Err(e) = result {
            bail!("{e:#}\n{}", ran.describe());
        }
        // What the reader copies from the output to the next step.
        let c = bare(written);
        if c.starts_with("ceres-vps token create") {
            let role = c
                .split_once("--role ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .context("token create without --role")?;
            let token = ran.stdout.trim();
            ensure!(
                !token.is_empty() && !token.contains(char::is_whitespace),
                "token create printed {:?}, not one token",
                ran.stdout
            );
            self.tokens
                .entry(role.to_owned())
                .or_default()
                .push_back(token.to_owned());
        }
        if c.starts_with("cerectl dns") && c.contains("--format zone") {
            self.publish(&ran.stdout)?;
        }
        self.transcript.push(ran);
        Ok(())
    }

    /// The reader pastes the zone snippet at the DNS host and sets the PTR
    /// it shows at the provider: the lab's nsd serves exactly that.
    fn publish(&mut self, snippet: &str) -> anyhow::Result<()> {
        ensure!(self.nsd.is_none(), "the docs print the zone twice");
        let header = |zone: &str| {
            format!(
                "$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60\n@ IN NS ns1.example.com.\n"
            )
        };
        let mut zones: BTreeMap<String, String> = BTreeMap::new();
        let forward = snippet
            .lines()
            .find_map(|l| l.strip_prefix("; Paste into the zone file of "))
            .and_then(|r| r.split_whitespace().next())
            .context("the zone snippet does not say which zone it is for")?
            .to_owned();
        zones.insert(
            forward.clone(),
            format!(
                "{}ns1.example.com. IN A {RESOLVER}\n{snippet}",
                header(&forward)
            ),
        );
        // The PTR lines are comments in the snippet (they belong to the
        // provider's reverse zone): uncommented into that zone.
        for line in snippet.lines() {
            let Some(rr) = line.strip_prefix("; ") else {
                continue;
            };
            if !rr.contains(" IN PTR ") {
                continue;
            }
            let name = rr.split_whitespace().next().unwrap_or_default();
            let zone = name
                .trim_end_matches('.')
                .split_once('.')
                .map(|(_, z)| z.to_owned())
                .context("a PTR name without a zone")?;
            zones
                .entry(zone.clone())
                .or_insert_with(|| header(&zone))
                .push_str(&format!("{rr}\n"));
        }
        ensure!(zones.len() >= 2, "no PTR in the zone snippet:\n{snippet}");
        for bl in ceres_dnscheck::DEFAULT_DNSBL_ZONES {
            zones.insert((*bl).to_owned(), header(bl));
        }
        let zones: Vec<(&str, &str)> = zones
            .iter()
            .map(|(n, z)| (n.as_str(), z.as_str()))
            .collect();
        self.lab
            .internet
            .ip(&["addr", "add", &format!("{RESOLVER}/32"), "dev", "lo"])?;
        self.nsd = Some(
            ceres_testkit::Nsd::spawn_in(
                Some(&self.lab.internet.name),
                &self.nsd_binary,
                format!("{RESOLVER}:53").parse()?,
                &zones,
            )
            .context("starting nsd")?,
        );
        Ok(())
    }

    /// Everything worth reading when the walk fails.
    fn report(&self, home_mx: &Postfix, remote_mx: &Postfix) -> String {
        let mut s = String::from("--- transcript ---\n");
        for r in &self.transcript {
            s.push_str(&r.describe());
            s.push('\n');
        }
        for d in &self.daemons {
            s.push_str(&format!("--- {} log ---\n{}\n", d.label, d.log_text()));
        }
        if let Some(n) = &self.nsd {
            s.push_str(&format!("--- nsd ---\n{}\n", n.log()));
        }
        s.push_str(&format!(
            "--- home Postfix ---\n{}\n--- {OUTSIDE_DOMAIN} MX ---\n{}\n",
            home_mx.log(),
            remote_mx.log()
        ));
        s
    }

    /// The first command run on `role` that starts with `prefix` (after `sudo`).
    fn ran(&self, role: Role, prefix: &str) -> Option<&Ran> {
        self.transcript
            .iter()
            .find(|r| r.role == role && bare(&r.command).starts_with(prefix))
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn quickstarts_followed_literally_deliver_mail_in_and_out() {
    if !require_root("quickstarts_followed_literally_deliver_mail_in_and_out") {
        return;
    }
    let Some(nsd_binary) = ceres_testkit::Nsd::binary() else {
        return;
    };
    let mut blocks = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
        blocks.extend(walkthrough::parse(doc, &text).unwrap());
    }

    let lab = Lab::new().unwrap();
    // The outside world's MX for example.net, and the reader's existing
    // mail server at home: Debian's stock Postfix for example.com.
    let remote_mx = Postfix::start(
        &lab.internet,
        PostfixOptions::sink(
            vec![addr::CLIENT.parse().unwrap()],
            "mx.example.net",
            &[OUTSIDE_DOMAIN],
        ),
    )
    .unwrap();
    let home_mx = Postfix::start_stock(&lab.home, StockSite::default()).unwrap();
    home_mx
        .postconf(&[
            "-e",
            &format!(
                "transport_maps = inline:{{ {OUTSIDE_DOMAIN}=smtp:[{}]:25 }}",
                addr::CLIENT
            ),
        ])
        .unwrap();
    home_mx.reload().unwrap();
    // On the reader's host /etc/postfix also holds Debian's meta files
    // (post-install, postfix-files, dynamicmaps.cf: `meta_directory`),
    // which `postfix check` reads from there; the instance's config dir
    // becomes the home host's /etc/postfix, so it gets copies beside its
    // own main.cf and master.cf.
    ceres_tests::sh(
        std::process::Command::new("cp")
            .args(["-a", "-n", "/etc/postfix/."])
            .arg(home_mx.config_dir()),
    )
    .unwrap();

    let bin_dir = walkthrough::bin_dir(lab.dir.path()).unwrap();
    let host = |role, ns| Host::new(role, ns, lab.dir.path(), &bin_dir, RESOLVER).unwrap();
    let mut home = host(Role::Home, &lab.home);
    home.bind(&home_mx.config_dir(), "/etc/postfix");
    let mut walk = Walk {
        lab: &lab,
        hosts: vec![
            host(Role::Vps, &lab.vps),
            home,
            host(Role::Admin, &lab.internet),
        ],
        tokens: BTreeMap::new(),
        transcript: Vec::new(),
        daemons: Vec::new(),
        nsd: None,
        nsd_binary,
    };

    for block in &blocks {
        if let Err(e) = walk.block(block) {
            panic!("{e:#}\n{}", walk.report(&home_mx, &remote_mx));
        }
    }

    let fail = |what: &str, e: anyhow::Error| {
        panic!("{what}: {e:#}\n{}", walk.report(&home_mx, &remote_mx))
    };
    // The docs took the reader through every stage, in this order.
    let milestones = [
        (Role::Admin, "cerectl dns"),
        (Role::Vps, "ceres-vps init"),
        (Role::Vps, "ceres-vps run"),
        (Role::Admin, "cerectl enroll"),
        (Role::Home, "ceres-home join"),
        (Role::Home, "ceres-home run"),
        (Role::Home, "cerectl mailserver-config postfix --apply"),
        (Role::Admin, "cerectl status"),
        (Role::Admin, "cerectl doctor"),
        (Role::Admin, "cerectl send-test"),
        (Role::Home, "/usr/sbin/sendmail"),
    ];
    let mut at = 0;
    for (role, prefix) in milestones {
        match walk.transcript[at..]
            .iter()
            .position(|r| r.role == role && bare(&r.command).contains(prefix))
        {
            Some(i) => at += i + 1,
            None => fail(
                "the marked blocks lost a stage",
                anyhow::anyhow!("no `{prefix}` on {} after command {at}", role.name()),
            ),
        }
    }
    // init wrote the default config, which every later command found.
    let env = std::fs::read_to_string(walk.host(Role::Vps).file("/etc/ceres/ceres.env").unwrap())
        .unwrap();
    assert!(env.contains("CERES_PUBLIC_IP=203.0.113.10"), "{env}");

    // Mail in: the docs' send-test reached the home Postfix, which saw the
    // sender's own address (the PROXY header), not the home agent's.
    let sent = walk.ran(Role::Admin, "cerectl send-test").unwrap();
    let from: IpAddr = sent
        .stdout
        .split_once("(from ")
        .and_then(|(_, r)| r.split_once(')'))
        .and_then(|(from, _)| from.rsplit_once(':'))
        .map(|(ip, _)| ip.trim_matches(['[', ']']))
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| {
            fail("send-test output", anyhow::anyhow!("{}", sent.stdout));
            unreachable!()
        });
    if let Err(e) = home_mx.wait_for_message(
        |m| m.content.contains("cerectl send-test"),
        Duration::from_secs(30),
    ) {
        fail("mail in", e);
    }
    assert!(
        home_mx.clients_seen().contains(&from),
        "home Postfix never saw {from}:\n{}",
        home_mx.log()
    );
    // Mail out: the docs' sendmail left through the VPS's address.
    if let Err(e) = remote_mx.wait_for_message(
        |m| m.content.contains(&format!("@{OUTSIDE_DOMAIN}")),
        Duration::from_secs(60),
    ) {
        fail("mail out", e);
    }
    let vps: IpAddr = addr::VPS.parse().unwrap();
    let seen = remote_mx.clients_seen();
    let home_ip: IpAddr = addr::HOME.parse().unwrap();
    assert!(
        seen.contains(&vps) && !seen.contains(&home_ip),
        "the outside MX saw {seen:?}: the mail must come from the VPS, never from home's own address:\n{}",
        remote_mx.log()
    );
    // And the end state: cerectl status from the admin machine, exit 0.
    let out = walk.host(Role::Admin).run("cerectl status").unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
