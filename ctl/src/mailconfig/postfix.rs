//! Postfix: a PROXY-reading `smtpd` on loopback for each relayed SMTP port,
//! trusting no network; the ordinary services untouched for LAN clients and
//! local programs; outbound mail bound to the tunnel addresses, and kept to
//! IPv4 where the VPS offers no IPv6 egress.
//!
//! Printed as master.cf/main.cf lines; applied with Postfix's own `postconf`
//! (`-e`, `-X`, `-M`, `-P`, `-PX`), checked with `postfix check`, reloaded with
//! `postfix reload`; read back with `postconf -n`, `-M`, `-P` and `-h`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use ceres_relay::{ProxyMode, RelaySpec};

use super::edit::{Backup, Outcome, append_line, break_for_test, run_ok};
use super::{Finding, MailConfigError, MailSetup, is_loopback_listen, proxy_name};

/// The PROXY settings that must never be global (main.cf): they would make
/// every listener, LAN ones included, take a client address from whoever
/// connects.
const GLOBAL_PROXY_PARAMS: [&str; 2] = [
    "postscreen_upstream_proxy_protocol",
    "smtpd_upstream_proxy_protocol",
];

/// Outbound SMTP client services kept to IPv4 when the VPS has no IPv6 egress.
const CLIENT_SERVICES: [&str; 2] = ["smtp/unix", "relay/unix"];

/// A master.cf service: its eight columns and its `-o` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name, `[host:]port` for inet services.
    pub name: String,
    /// `inet`, `unix`, `pass`, ...
    pub kind: String,
    /// The columns private, unpriv, chroot, wakeup, maxproc.
    pub flags: [String; 5],
    /// The command (and its arguments, without `-o` ones).
    pub command: String,
    /// `-o name=value` parameters, in order.
    pub params: Vec<(String, String)>,
}

impl Service {
    /// `name/type`, as postconf addresses a service.
    pub fn key(&self) -> String {
        format!("{}/{}", self.name, self.kind)
    }

    fn columns(&self) -> String {
        let f = &self.flags;
        format!(
            "{} {} {} {} {} {} {} {}",
            self.name, self.kind, f[0], f[1], f[2], f[3], f[4], self.command
        )
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The host part of an inet service's name (`None`: all addresses).
    fn host(&self) -> Option<&str> {
        self.name.rsplit_once(':').map(|(h, _)| h)
    }

    fn port(&self) -> &str {
        self.name.rsplit_once(':').map_or(&self.name, |(_, p)| p)
    }
}

/// The live configuration, as postconf reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// main.cf parameters set explicitly (`postconf -n`).
    pub main: BTreeMap<String, String>,
    /// master.cf services with their parameters (`postconf -M`, `-P`).
    pub services: Vec<Service>,
    /// Effective `inet_protocols`.
    pub inet_protocols: String,
    /// Effective `mynetworks`.
    pub mynetworks: String,
    /// Effective `smtpd_sasl_type` and `smtpd_sasl_path`, if set in main.cf.
    pub sasl: Option<(String, String)>,
}

impl Live {
    /// Reads the configuration in `dir` with postconf.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let d = dir.to_string_lossy();
        let n = run_ok("postconf", &["-c", &d, "-n"])
            .context("reading main.cf (Postfix installed? --config-dir right?)")?;
        let m = run_ok("postconf", &["-c", &d, "-M"])?;
        let p = run_ok("postconf", &["-c", &d, "-P"])?;
        let h = run_ok(
            "postconf",
            &["-c", &d, "-h", "inet_protocols", "mynetworks"],
        )?;
        let mut h = h.lines();
        let inet_protocols = h.next().unwrap_or_default().trim().to_owned();
        let mynetworks = h.next().unwrap_or_default().trim().to_owned();
        Ok(Self::parse(&n, &m, &p, inet_protocols, mynetworks))
    }

    /// Builds the live view from postconf's outputs.
    pub fn parse(n: &str, m: &str, p: &str, inet_protocols: String, mynetworks: String) -> Self {
        let main: BTreeMap<String, String> = n
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut services: Vec<Service> = m
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                if cols.len() < 8 {
                    return None;
                }
                // The command runs to the first `-o` (postconf -M prints the
                // parameters too; -P gives them one per line).
                let rest: Vec<&str> = cols[7..]
                    .iter()
                    .take_while(|c| **c != "-o")
                    .copied()
                    .collect();
                Some(Service {
                    name: cols[0].to_owned(),
                    kind: cols[1].to_owned(),
                    flags: [cols[2], cols[3], cols[4], cols[5], cols[6]].map(str::to_owned),
                    command: rest.join(" "),
                    params: Vec::new(),
                })
            })
            .collect();
        for line in p.lines() {
            let Some((path, value)) = line.split_once('=') else {
                continue;
            };
            let path = path.trim();
            let Some((key, param)) = path.rsplit_once('/') else {
                continue;
            };
            if let Some(svc) = services.iter_mut().find(|s| s.key() == key) {
                svc.params.push((param.to_owned(), value.trim().to_owned()));
            }
        }
        let sasl = main.get("smtpd_sasl_type").map(|t| {
            (
                t.clone(),
                main.get("smtpd_sasl_path").cloned().unwrap_or_default(),
            )
        });
        Self {
            main,
            services,
            inet_protocols,
            mynetworks,
            sasl,
        }
    }

    fn service(&self, key: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.key() == key)
    }

    /// Whether Postfix may use IPv6 (`inet_protocols` all, ipv6, or both).
    fn ipv6_on(&self) -> bool {
        let p = self.inet_protocols.to_ascii_lowercase();
        p.contains("all") || p.contains("ipv6")
    }
}

/// What CERES needs in Postfix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// main.cf parameters to set.
    pub main_set: Vec<(String, String)>,
    /// main.cf parameters to remove.
    pub main_remove: Vec<String>,
    /// Services to create or make exactly so.
    pub services: Vec<Service>,
    /// `(service key, parameter, value)` to set on existing services.
    pub param_set: Vec<(String, String, String)>,
    /// `(service key, parameter)` to remove from existing services.
    pub param_remove: Vec<(String, String)>,
}

/// The usual service label of an SMTP port, for syslog names.
fn smtp_label(public_port: u16) -> Option<&'static str> {
    match public_port {
        25 => Some("smtp"),
        587 => Some("submission"),
        465 => Some("submissions"),
        _ => None,
    }
}

/// The relays that land on Postfix, in the order 25, 587, 465.
fn smtp_relays(s: &MailSetup) -> Vec<&RelaySpec> {
    [25u16, 587, 465]
        .iter()
        .filter_map(|p| s.relay(*p))
        .collect()
}

/// The loopback service one SMTP relay lands on.
fn relay_service(s: &MailSetup, r: &RelaySpec, chroot: &str, sasl_set: bool) -> Service {
    let label = smtp_label(r.public_port).unwrap_or("smtp");
    let mut params = vec![("syslog_name".to_owned(), format!("postfix/ceres-{label}"))];
    if r.proxy != ProxyMode::None {
        params.push(("smtpd_upstream_proxy_protocol".into(), "haproxy".into()));
    }
    // Nobody is trusted by address here: a client address is whatever the
    // header says, and a header that claims 127.0.0.1 must not relay.
    params.push(("mynetworks".into(), String::new()));
    if r.public_port == 25 {
        params.push((
            "smtpd_relay_restrictions".into(),
            "reject_unauth_destination".into(),
        ));
    } else {
        if r.public_port == 465 {
            params.push(("smtpd_tls_wrappermode".into(), "yes".into()));
        }
        for (k, v) in [
            ("smtpd_tls_security_level", "encrypt"),
            ("smtpd_sasl_auth_enable", "yes"),
            ("smtpd_tls_auth_only", "yes"),
        ] {
            params.push((k.into(), v.into()));
        }
        if !sasl_set {
            // Debian's Postfix+Dovecot recipe: Dovecot's auth socket in
            // Postfix's queue (`cerectl mailserver-config dovecot` adds it).
            params.push(("smtpd_sasl_type".into(), "dovecot".into()));
            params.push(("smtpd_sasl_path".into(), "private/auth".into()));
        }
        for k in ["smtpd_client_restrictions", "smtpd_relay_restrictions"] {
            params.push((k.into(), "permit_sasl_authenticated,reject".into()));
        }
    }
    Service {
        name: format!("{}:{}", s.proxy_listen(), r.home_port),
        kind: "inet".into(),
        flags: ["n", "-", chroot, "-", "-"].map(str::to_owned),
        command: "smtpd".into(),
        params,
    }
}

/// What Postfix needs for `s`, given the live configuration when there is one.
pub fn plan(s: &MailSetup, live: Option<&Live>) -> Result<Plan, MailConfigError> {
    let mut plan = Plan::default();
    // New services run like the stock smtp service does (Debian: chrooted).
    let chroot = live
        .and_then(|l| l.service("smtp/inet"))
        .map_or_else(|| "y".to_owned(), |svc| svc.flags[2].clone());
    let sasl_set = live.is_some_and(|l| l.sasl.is_some());
    for r in smtp_relays(s) {
        if r.proxy == ProxyMode::None {
            let shared = r.home_port == r.public_port
                || live.is_some_and(|l| {
                    l.services.iter().any(|svc| {
                        svc.kind == "inet"
                            && svc.port() == r.home_port.to_string()
                            && !svc.host().is_some_and(is_loopback_listen)
                    })
                });
            if shared {
                return Err(MailConfigError::PlainSmtpOnSharedPort {
                    port: r.public_port,
                    home_port: r.home_port,
                });
            }
        }
        plan.services.push(relay_service(s, r, &chroot, sasl_set));
    }
    if let IpAddr::V4(ip) = s.home_tunnel {
        plan.main_set
            .push(("smtp_bind_address".into(), ip.to_string()));
    }
    match s.home_tunnel6 {
        Some(ip6) => {
            plan.main_set
                .push(("smtp_bind_address6".into(), ip6.to_string()));
            for svc in CLIENT_SERVICES {
                if live.is_none_or(|l| {
                    l.service(svc)
                        .is_some_and(|x| x.param("inet_protocols").is_some())
                }) {
                    plan.param_remove
                        .push((svc.into(), "inet_protocols".into()));
                }
            }
        }
        None => {
            for svc in CLIENT_SERVICES {
                if live.is_none_or(|l| l.service(svc).is_some()) {
                    plan.param_set
                        .push((svc.into(), "inet_protocols".into(), "ipv4".into()));
                }
            }
            if live.is_some_and(|l| l.main.contains_key("smtp_bind_address6")) {
                plan.main_remove.push("smtp_bind_address6".into());
            }
        }
    }
    if let Some(l) = live {
        for p in GLOBAL_PROXY_PARAMS {
            if l.main.contains_key(p) {
                plan.main_remove.push(p.into());
            }
        }
        for svc in &l.services {
            if svc.kind == "inet" && !svc.host().is_some_and(is_loopback_listen) {
                for p in GLOBAL_PROXY_PARAMS {
                    if svc.param(p).is_some() {
                        plan.param_remove.push((svc.key(), p.into()));
                    }
                }
            }
        }
    }
    Ok(plan)
}

/// A master.cf line in Postfix's column layout, with its `-o` lines.
fn master_lines(out: &mut String, svc: &Service) {
    let f = &svc.flags;
    let _ = writeln!(
        out,
        "{:<9} {:<5} {:<7} {:<7} {:<7} {:<7} {:<7} {}",
        svc.name, svc.kind, f[0], f[1], f[2], f[3], f[4], svc.command
    );
    for (k, v) in &svc.params {
        let _ = writeln!(out, "  -o {k}={v}");
    }
}

/// The printed form: what to put where, and why.
pub fn print(s: &MailSetup) -> anyhow::Result<String> {
    let plan = plan(s, None)?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Postfix for CERES: mail host {}, relays {}.\n\
         # Apply on the home host with `cerectl mailserver-config postfix --apply`\n\
         # (backup, `postfix check`, reload; rolled back if the check fails), or\n\
         # add these lines yourself, then `postfix check && postfix reload`.\n",
        s.mail_host,
        s.relay_list()
    );
    let _ = writeln!(o, "# ---- /etc/postfix/master.cf ----");
    let _ = writeln!(
        o,
        "# Add these services; keep your others as they are.\n\
         # Relayed SMTP lands on these loopback services, which read the PROXY\n\
         # header the VPS sends and so see every client's real address. Only the\n\
         # home agent reaches loopback: a LAN host cannot forge an address, and\n\
         # the ordinary ports (25, 587, ...) stay as they are for LAN clients and\n\
         # local programs. mynetworks is empty here: no relayed client is\n\
         # trusted by address, even one a header claims is 127.0.0.1."
    );
    for r in smtp_relays(s) {
        let _ = writeln!(
            o,
            "# Port {} relayed {} to home port {}.",
            r.public_port,
            proxy_name(r.proxy),
            r.home_port
        );
        if r.proxy == ProxyMode::None {
            let _ = writeln!(
                o,
                "# WARNING: without PROXY every client of this port is the home agent\n\
                 # (127.0.0.1) to Postfix: DNSBL checks, SPF and logs see that address."
            );
        }
        if let Some(svc) = plan
            .services
            .iter()
            .find(|x| x.name.ends_with(&format!(":{}", r.home_port)))
        {
            master_lines(&mut o, svc);
        }
    }
    if smtp_relays(s).is_empty() {
        let _ = writeln!(
            o,
            "# No SMTP port (25, 465, 587) is relayed: no service to add."
        );
    }
    if s.relay(587).is_some() || s.relay(465).is_some() {
        let _ = writeln!(
            o,
            "# Submission authenticates through Dovecot's socket private/auth\n\
             # (`cerectl mailserver-config dovecot` adds it); with your own\n\
             # smtpd_sasl_type in main.cf, --apply keeps yours."
        );
    }
    for (svc, p, v) in &plan.param_set {
        let _ = writeln!(
            o,
            "# The {svc} service (outbound): -o {p}={v}\n\
             # The VPS sends no mail out over IPv6, so Postfix must not either: it\n\
             # would deliver to IPv6 MX hosts straight from home's own address."
        );
    }
    let _ = writeln!(o, "\n# ---- /etc/postfix/main.cf ----");
    let _ = writeln!(
        o,
        "# Outbound mail leaves from the VPS address: Postfix sends from home's\n\
         # tunnel addresses and the home agent routes those into the tunnel."
    );
    for (k, v) in &plan.main_set {
        let _ = writeln!(o, "{k} = {v}");
    }
    let _ = writeln!(
        o,
        "# Remove postscreen_upstream_proxy_protocol and smtpd_upstream_proxy_protocol\n\
         # from main.cf if they are there (older CERES printed them): globally,\n\
         # every listener would take a client address from whoever connects.\n\
         #\n\
         # NEVER add the tunnel subnet ({}) or the home agent ({}) to\n\
         # mynetworks: the whole internet arrives through them.",
        s.tunnel_subnet(),
        s.agents(", ")
    );
    Ok(o)
}

/// Every unsafe or missing setting in the live configuration.
pub fn check(s: &MailSetup, dir: &Path) -> anyhow::Result<Vec<Finding>> {
    Ok(findings(s, &Live::read(dir)?))
}

/// The findings for a live configuration.
pub fn findings(s: &MailSetup, live: &Live) -> Vec<Finding> {
    const APPLY: &str = "cerectl mailserver-config postfix --apply";
    let mut out = Vec::new();
    for p in GLOBAL_PROXY_PARAMS {
        if let Some(v) = live.main.get(p) {
            out.push(Finding::unsafe_(
                format!("main.cf {p} = {v}"),
                "every listener, LAN ones included, takes the client address from whoever connects: a LAN host claiming 127.0.0.1 relays mail out of the VPS",
                format!("postconf -X {p}  (or {APPLY})"),
            ));
        }
    }
    for svc in &live.services {
        if svc.kind != "inet" || svc.host().is_some_and(is_loopback_listen) {
            continue;
        }
        for p in GLOBAL_PROXY_PARAMS {
            if svc.param(p).is_some() {
                out.push(Finding::unsafe_(
                    format!("master.cf {} -o {p}", svc.key()),
                    format!(
                        "reads a PROXY header on every address of port {}: anyone on the LAN (or reaching it over IPv6) can claim any client address, 127.0.0.1 included",
                        svc.port()
                    ),
                    format!("postconf -PX {}/{p}  (or {APPLY}, which moves PROXY to loopback)", svc.key()),
                ));
            }
        }
    }
    for r in smtp_relays(s) {
        let key = format!("{}:{}/inet", s.proxy_listen(), r.home_port);
        if r.proxy == ProxyMode::None && r.home_port == r.public_port {
            let trusts_loopback = live
                .mynetworks
                .split([' ', ','])
                .any(|n| n.starts_with("127.") || n.contains("::1"));
            if trusts_loopback {
                out.push(Finding::unsafe_(
                    format!("port {} relayed without PROXY to Postfix port {}", r.public_port, r.home_port),
                    format!(
                        "every internet client arrives as the home agent (127.0.0.1), which mynetworks ({}) trusts: an open relay",
                        live.mynetworks
                    ),
                    format!("relay it with PROXY ({}/proxy-v2 in CERES_RELAYS on the VPS), then {APPLY}", r.public_port),
                ));
            }
            continue;
        }
        match live.service(&key) {
            None => out.push(Finding::missing(
                format!("master.cf {key}"),
                format!(
                    "port {} is relayed to 127.0.0.1:{} and nothing there reads it: senders get 421",
                    r.public_port, r.home_port
                ),
                APPLY,
            )),
            Some(svc) => {
                if svc.param("mynetworks") != Some("") {
                    out.push(Finding::unsafe_(
                        format!("master.cf {key} mynetworks"),
                        "the relayed service trusts mynetworks: a client address of 127.0.0.1 (in a header) relays anywhere",
                        format!("postconf -P '{key}/mynetworks='  (or {APPLY})"),
                    ));
                }
                let wants = r.proxy != ProxyMode::None;
                if wants != svc.param("smtpd_upstream_proxy_protocol").is_some() {
                    out.push(Finding::missing(
                        format!("master.cf {key} smtpd_upstream_proxy_protocol"),
                        format!(
                            "the relay sends {}, the service expects {}: every connection fails",
                            if wants { "a PROXY header" } else { "none" },
                            if wants { "none" } else { "one" }
                        ),
                        APPLY,
                    ));
                }
            }
        }
    }
    if let IpAddr::V4(ip) = s.home_tunnel {
        let have = live.main.get("smtp_bind_address").map(String::as_str);
        if have != Some(ip.to_string().as_str()) {
            out.push(Finding::missing(
                "main.cf smtp_bind_address",
                format!(
                    "outbound mail leaves from home's own address ({}), not from the VPS: no PTR, outside SPF, often blocked",
                    have.unwrap_or("not set")
                ),
                format!("postconf -e smtp_bind_address={ip}  (or {APPLY})"),
            ));
        }
    }
    if live.ipv6_on() {
        let client_v4_only = CLIENT_SERVICES
            .iter()
            .filter(|k| live.service(k).is_some())
            .all(|k| {
                live.service(k)
                    .and_then(|svc| svc.param("inet_protocols"))
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("ipv4"))
            });
        match s.home_tunnel6 {
            None if !client_v4_only => out.push(Finding::unsafe_(
                format!("main.cf inet_protocols = {}", live.inet_protocols),
                "Postfix delivers to IPv6 MX hosts from home's own IPv6 address, around the VPS (which offers no IPv6 egress)",
                format!("postconf -P smtp/unix/inet_protocols=ipv4 relay/unix/inet_protocols=ipv4  (or {APPLY})"),
            )),
            Some(ip6)
                if !client_v4_only
                    && live.main.get("smtp_bind_address6") != Some(&ip6.to_string()) =>
            {
                out.push(Finding::unsafe_(
                    "main.cf smtp_bind_address6",
                    "Postfix delivers to IPv6 MX hosts from home's own IPv6 address instead of the tunnel's",
                    format!("postconf -e smtp_bind_address6={ip6}  (or {APPLY})"),
                ))
            }
            _ => {}
        }
    }
    out
}

/// Makes the live configuration in `dir` what [`plan`] says: backup, postconf,
/// `postfix check` (restore on failure), reload.
pub fn apply(s: &MailSetup, dir: &Path) -> anyhow::Result<Outcome> {
    let live = Live::read(dir)?;
    let plan = plan(s, Some(&live))?;
    let d = dir.to_string_lossy().into_owned();
    let mut ops: Vec<(Vec<String>, String)> = Vec::new();
    for (k, v) in &plan.main_set {
        if live.main.get(k) != Some(v) {
            ops.push((
                vec!["-e".into(), format!("{k}={v}")],
                format!("main.cf {k} = {v}"),
            ));
        }
    }
    for k in &plan.main_remove {
        if live.main.contains_key(k) {
            ops.push((
                vec!["-X".into(), k.clone()],
                format!("main.cf: removed {k}"),
            ));
        }
    }
    for want in &plan.services {
        let have = live.service(&want.key());
        // `-M name/type=...` rewrites the whole entry, parameters included.
        let rewritten = have.is_none_or(|h| h.columns() != want.columns());
        if rewritten {
            ops.push((
                vec!["-M".into(), format!("{}={}", want.key(), want.columns())],
                format!("master.cf {}: {}", want.key(), want.columns()),
            ));
        }
        let have_params = have.map(|h| h.params.clone()).unwrap_or_default();
        // postconf -P lists a service's parameters sorted: compare as sets.
        let (mut have_sorted, mut want_sorted) = (have_params.clone(), want.params.clone());
        have_sorted.sort();
        want_sorted.sort();
        if rewritten || have_sorted != want_sorted {
            if !rewritten {
                for (k, _) in &have_params {
                    if !want.params.iter().any(|(w, _)| w == k) {
                        ops.push((
                            vec!["-PX".into(), format!("{}/{k}", want.key())],
                            format!("master.cf {}: removed -o {k}", want.key()),
                        ));
                    }
                }
            }
            for (k, v) in &want.params {
                ops.push((
                    vec!["-P".into(), format!("{}/{k}={v}", want.key())],
                    format!("master.cf {}: -o {k}={v}", want.key()),
                ));
            }
        }
    }
    for (svc, k, v) in &plan.param_set {
        let cur = live.service(svc).and_then(|x| x.param(k));
        if cur != Some(v.as_str()) {
            ops.push((
                vec!["-P".into(), format!("{svc}/{k}={v}")],
                format!("master.cf {svc}: -o {k}={v}"),
            ));
        }
    }
    for (svc, k) in &plan.param_remove {
        if live.service(svc).and_then(|x| x.param(k)).is_some() {
            ops.push((
                vec!["-PX".into(), format!("{svc}/{k}")],
                format!("master.cf {svc}: removed -o {k}"),
            ));
        }
    }
    let mut outcome = Outcome {
        target: "postfix",
        ..Outcome::default()
    };
    if ops.is_empty() {
        return Ok(outcome);
    }
    let backup = Backup::take(dir, &["main.cf".into(), "master.cf".into()])?;
    let result = (|| -> anyhow::Result<()> {
        for (args, _) in &ops {
            let mut all = vec!["-c", d.as_str()];
            all.extend(args.iter().map(String::as_str));
            run_ok("postconf", &all)?;
        }
        if break_for_test() {
            append_line(
                &dir.join("master.cf"),
                "ceres-test-breakage this is not a service",
            )?;
        }
        run_ok("postfix", &["-c", &d, "check"])
            .context("Postfix refused the changed configuration")?;
        Ok(())
    })();
    if let Err(e) = result {
        backup
            .restore()
            .context("restoring the backup after a failed apply")?;
        return Err(e.context(format!(
            "nothing changed: main.cf and master.cf are restored (copies of the originals in {})",
            backup.dir.display()
        )));
    }
    outcome.changes = ops.into_iter().map(|(_, what)| what).collect();
    outcome.backup = Some(backup.dir.clone());
    outcome.reload = if run_ok("postfix", &["-c", &d, "status"]).is_ok() {
        run_ok("postfix", &["-c", &d, "reload"])?;
        "Postfix reloaded.".into()
    } else {
        "Postfix is not running: the changes take effect when it starts.".into()
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::setup;
    use super::*;

    const STOCK_M: &str = "smtp       inet  n       -       y       -       -       smtpd\n\
        pickup     unix  n       -       y       60      1       pickup\n\
        smtp       unix  -       -       y       -       -       smtp\n\
        relay      unix  -       -       y       -       -       smtp -o syslog_name=postfix/$service_name\n";
    const STOCK_P: &str = "relay/unix/syslog_name = postfix/$service_name\n";
    const STOCK_N: &str = "compatibility_level = 3.6\nmynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128\ninet_protocols = all\n";

    fn stock() -> Live {
        Live::parse(
            STOCK_N,
            STOCK_M,
            STOCK_P,
            "all".into(),
            "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128".into(),
        )
    }

    #[test]
    fn parses_postconf_output() {
        let l = stock();
        assert_eq!(l.services.len(), 4);
        let relay = l.service("relay/unix").unwrap();
        assert_eq!(relay.command, "smtp");
        assert_eq!(relay.param("syslog_name"), Some("postfix/$service_name"));
        assert_eq!(l.service("smtp/inet").unwrap().flags[2], "y");
        assert!(l.ipv6_on());
        assert!(l.sasl.is_none());
    }

    #[test]
    fn default_relays_on_stock_postfix() {
        let s = setup(ceres_relay::DEFAULT_RELAYS);
        let p = plan(&s, Some(&stock())).unwrap();
        let names: Vec<String> = p.services.iter().map(Service::key).collect();
        assert_eq!(
            names,
            [
                "127.0.0.1:10025/inet",
                "127.0.0.1:10587/inet",
                "127.0.0.1:10465/inet"
            ]
        );
        for svc in &p.services {
            assert_eq!(svc.param("smtpd_upstream_proxy_protocol"), Some("haproxy"));
            assert_eq!(svc.param("mynetworks"), Some(""), "trust no one");
            assert_eq!(svc.flags[2], "y", "chroot like the stock smtp service");
        }
        let sub = &p.services[1];
        assert_eq!(
            sub.param("smtpd_relay_restrictions"),
            Some("permit_sasl_authenticated,reject")
        );
        assert_eq!(sub.param("smtpd_sasl_type"), Some("dovecot"));
        assert_eq!(p.services[2].param("smtpd_tls_wrappermode"), Some("yes"));
        assert_eq!(
            p.services[0].param("smtpd_relay_restrictions"),
            Some("reject_unauth_destination")
        );
        assert_eq!(
            p.main_set,
            [("smtp_bind_address".to_owned(), "10.77.77.2".to_owned())]
        );
        // No IPv6 egress: outbound kept to IPv4 on both client services.
        assert_eq!(p.param_set.len(), 2);
        assert!(
            p.param_set
                .iter()
                .all(|(_, k, v)| k == "inet_protocols" && v == "ipv4")
        );
        // Nothing global.
        assert!(!p.main_set.iter().any(|(k, _)| k.contains("proxy")));
    }

    #[test]
    fn ipv6_egress_binds_instead_of_restricting() {
        let mut s = setup("25/proxy-v2");
        s.home_tunnel6 = Some("fd77:77:77::2".parse().unwrap());
        let p = plan(&s, Some(&stock())).unwrap();
        assert!(
            p.main_set
                .contains(&("smtp_bind_address6".into(), "fd77:77:77::2".into()))
        );
        assert!(p.param_set.is_empty());
    }

    #[test]
    fn plain_smtp_on_the_shared_port_is_refused_and_on_its_own_port_trusts_no_one() {
        let e = plan(&setup("25"), Some(&stock())).unwrap_err();
        assert_eq!(
            e,
            MailConfigError::PlainSmtpOnSharedPort {
                port: 25,
                home_port: 25
            }
        );
        assert!(e.to_string().contains("open relay"), "{e}");
        assert!(print(&setup("587")).is_err());
        let p = plan(&setup("25:2525"), Some(&stock())).unwrap();
        let svc = &p.services[0];
        assert_eq!(svc.key(), "127.0.0.1:2525/inet");
        assert_eq!(svc.param("mynetworks"), Some(""));
        assert!(svc.param("smtpd_upstream_proxy_protocol").is_none());
    }

    #[test]
    fn old_global_and_wildcard_proxy_settings_are_removed() {
        let mut l = stock();
        l.main.insert(
            "postscreen_upstream_proxy_protocol".into(),
            "haproxy".into(),
        );
        l.services.push(Service {
            name: "submission".into(),
            kind: "inet".into(),
            flags: ["n", "-", "y", "-", "-"].map(str::to_owned),
            command: "smtpd".into(),
            params: vec![("smtpd_upstream_proxy_protocol".into(), "haproxy".into())],
        });
        let p = plan(&setup("25/proxy-v2"), Some(&l)).unwrap();
        assert_eq!(p.main_remove, ["postscreen_upstream_proxy_protocol"]);
        assert_eq!(
            p.param_remove,
            [(
                "submission/inet".to_owned(),
                "smtpd_upstream_proxy_protocol".to_owned()
            )]
        );
    }

    #[test]
    fn findings_on_stock_and_unsafe_variants() {
        let s = setup("25/proxy-v2,587/proxy-v2");
        let f = findings(&s, &stock());
        let subjects: Vec<&str> = f.iter().map(|x| x.subject.as_str()).collect();
        assert!(
            subjects.contains(&"master.cf 127.0.0.1:10025/inet"),
            "{subjects:?}"
        );
        assert!(
            subjects.contains(&"main.cf smtp_bind_address"),
            "{subjects:?}"
        );
        assert!(
            subjects
                .iter()
                .any(|x| x.starts_with("main.cf inet_protocols")),
            "{subjects:?}"
        );
        // Global PROXY.
        let mut l = stock();
        l.main
            .insert("smtpd_upstream_proxy_protocol".into(), "haproxy".into());
        assert!(findings(&s, &l).iter().any(|x| {
            x.subject
                .starts_with("main.cf smtpd_upstream_proxy_protocol")
                && x.kind == super::super::finding::FindingKind::Unsafe
        }));
        // PROXY on all addresses.
        let mut l = stock();
        l.services[0]
            .params
            .push(("smtpd_upstream_proxy_protocol".into(), "haproxy".into()));
        assert!(
            findings(&s, &l)
                .iter()
                .any(|x| x.subject == "master.cf smtp/inet -o smtpd_upstream_proxy_protocol")
        );
        // Plain 25 trusted by mynetworks.
        let f = findings(&setup("25"), &stock());
        assert!(
            f.iter()
                .any(|x| x.subject.starts_with("port 25 relayed without PROXY")),
            "{f:?}"
        );
    }

    #[test]
    fn print_has_the_services_and_no_global_proxy_line() {
        let t = print(&setup(ceres_relay::DEFAULT_RELAYS)).unwrap();
        assert!(t.contains("127.0.0.1:10025 inet  n       -       y       -       -       smtpd\n  -o syslog_name=postfix/ceres-smtp\n  -o smtpd_upstream_proxy_protocol=haproxy\n  -o mynetworks=\n"), "{t}");
        assert!(t.contains("smtp_bind_address = 10.77.77.2"), "{t}");
        assert!(
            !t.lines()
                .any(|l| l.starts_with("postscreen_upstream_proxy_protocol")),
            "{t}"
        );
        assert!(t.contains("-o inet_protocols=ipv4"), "{t}");
    }
}
