//! `cerectl doctor`: everything `dns --check` verifies, plus the practical
//! limits of a cheap VPS, as one report with a fix for every finding.
//!
//! Findings come in [`Section`]s of [`Finding`]s: the DNS records and
//! blocklists (from `ceres-dnscheck`), and the mail ports (module `mail`):
//! inbound port 25 on each VPS address with the home server's banner, the
//! open-relay probe through the tunnel, outbound tcp/25 (only with
//! `--probe-25`), and PROXY expected vs configured per relayed port (from the
//! home agent's probes). Rendering and the exit code do not care which.

mod mail;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use ceres_dnscheck::{
    Check, CheckKind, DEFAULT_DNSBL_ZONES, Lookup, MailIdentity, Row, Status, Summary, Table,
    dnsbl_check, verify,
};
use ceres_proto::StatusResponse;
use clap::Args;
use futures::StreamExt as _;
use serde::Serialize;

use crate::cli::Cli;
use crate::dns::{IdentityArgs, Outcome, VpsIps, color, identity, lookup, parse_resolver};
use crate::vps::{fetch_status, vps_part};

/// `doctor` arguments.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Which domain, host and addresses.
    #[command(flatten)]
    pub id: IdentityArgs,
    /// Ask this DNS server instead of the system's. Several blocklists refuse
    /// queries from big public resolvers: a resolver of your own is best.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_resolver)]
    pub resolver: Option<SocketAddr>,
    /// Blocklist zones to look the VPS addresses up in, comma-separated;
    /// default the common public ones.
    #[arg(long, value_name = "ZONE[,ZONE]", value_delimiter = ',', value_parser = parse_zone)]
    pub dnsbl_zones: Vec<String>,
    /// Skip the DNS records and blocklists (only the mail-port checks).
    #[arg(long, conflicts_with = "skip_mail")]
    pub skip_dns: bool,
    /// Skip the mail-port checks (inbound 25, open relay, outbound 25, PROXY):
    /// no connection to the VPS's mail ports is made.
    #[arg(long)]
    pub skip_mail: bool,
    /// Test outbound tcp/25 by connecting to this SMTP server (default port
    /// 25) from where cerectl runs — run cerectl on the VPS to test the VPS.
    /// Without it outbound 25 is reported as not checked.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub probe_25: Option<String>,
    /// Seconds to wait for each SMTP connection and reply.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub smtp_timeout: u64,
    /// Print JSON: the same schema as `dns --check --json`, more check kinds.
    #[arg(long)]
    pub json: bool,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A DNS record or blocklist check.
    Dns(CheckKind),
    /// Port 25 on a VPS address, from where cerectl runs.
    SmtpInbound,
    /// Outbound tcp/25 from where cerectl runs (`--probe-25`).
    SmtpOutbound,
    /// `RCPT TO` an outside domain through the VPS.
    OpenRelay,
    /// PROXY header sent by the relay vs expected by the mail server.
    Proxy,
}

impl Kind {
    /// Upper-case label for the text table (at most five characters).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Dns(k) => k.label(),
            Kind::SmtpInbound | Kind::SmtpOutbound => "SMTP",
            Kind::OpenRelay => "RELAY",
            Kind::Proxy => "PROXY",
        }
    }

    /// The JSON `kind`: the DNS kinds as `dns --check` has them, and
    /// `smtp-inbound`, `smtp-outbound`, `open-relay`, `proxy`.
    pub fn json_name(self) -> String {
        match self {
            Kind::Dns(k) => serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            Kind::SmtpInbound => "smtp-inbound".into(),
            Kind::SmtpOutbound => "smtp-outbound".into(),
            Kind::OpenRelay => "open-relay".into(),
            Kind::Proxy => "proxy".into(),
        }
    }
}

/// One finding: what was looked at, the verdict, what was found and expected,
/// and the one-line fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is about.
    pub kind: Kind,
    /// The DNS name, blocklist zone, or endpoint looked at.
    pub name: String,
    /// The VPS address it is about, if any.
    pub address: Option<IpAddr>,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What should be there.
    pub expected: String,
    /// One line saying what to change; `None` when nothing is to be done.
    pub fix: Option<String>,
}

impl From<Check> for Finding {
    fn from(c: Check) -> Self {
        Finding {
            kind: Kind::Dns(c.kind),
            name: c.name,
            address: c.address,
            status: c.status,
            found: c.found,
            expected: c.expected,
            fix: c.fix,
        }
    }
}

impl Finding {
    fn display_name(&self) -> String {
        match (self.kind, self.address) {
            (Kind::Dns(CheckKind::Ptr), Some(ip)) => ip.to_string(),
            (Kind::Dns(CheckKind::Dnsbl), Some(ip)) => format!("{ip} in {}", self.name),
            _ => self.name.clone(),
        }
    }
}

/// One group of findings, shown under its title in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// What the group is about, e.g. "DNS records".
    pub title: &'static str,
    /// Its findings.
    pub checks: Vec<Finding>,
}

/// Everything the doctor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The mail domain.
    pub domain: String,
    /// The mail host.
    pub mail_host: String,
    /// Findings, grouped.
    pub sections: Vec<Section>,
}

/// Settings of the mail-port checks.
#[derive(Debug, Clone)]
pub struct MailCheckOptions {
    /// SMTP port to probe on each VPS address (25; tests use others).
    pub port: u16,
    /// `--probe-25` target.
    pub probe_25: Option<String>,
    /// Connect and reply timeout.
    pub timeout: Duration,
}

/// Runs `cerectl doctor`.
pub async fn run(cli: &Cli, args: &DoctorArgs) -> Outcome {
    let (id, status) = identity_and_status(cli, args).await?;
    let zones: Vec<String> = if args.dnsbl_zones.is_empty() {
        DEFAULT_DNSBL_ZONES
            .iter()
            .map(|z| (*z).to_owned())
            .collect()
    } else {
        args.dnsbl_zones.clone()
    };
    let opts = MailCheckOptions {
        port: 25,
        probe_25: args.probe_25.clone(),
        timeout: Duration::from_secs(args.smtp_timeout.max(1)),
    };
    let dns = if args.skip_dns {
        None
    } else {
        Some(lookup(args.resolver)?)
    };
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut wanted = Vec::new();
    if let Some(dns) = &dns {
        pending.extend(dns_checks(&id, dns, &zones));
        wanted.extend([DNS_RECORDS, BLOCKLISTS]);
    }
    if !args.skip_mail {
        pending.extend(mail_checks(&id, &status, &opts));
        wanted.extend([SMTP, OPEN_RELAY, PROXY]);
    }
    // Text rows are printed as each check finishes (SMTP steps can take
    // `--smtp-timeout` each); JSON is one document at the end.
    let mut progress = (!args.json).then(|| {
        let p = Progress::new(&id, &zones, color());
        print_now(&p.header());
        p
    });
    let mut done = Vec::new();
    let mut running: futures::stream::FuturesUnordered<_> = pending
        .into_iter()
        .enumerate()
        .map(|(seq, f)| async move { (seq, f.await) })
        .collect();
    while let Some((seq, findings)) = running.next().await {
        if let Some(p) = progress.as_mut() {
            print_now(&p.rows(&findings));
        }
        done.push((seq, findings));
    }
    let diagnosis = Diagnosis {
        domain: id.domain().to_owned(),
        mail_host: id.mail_host().to_owned(),
        sections: into_sections(done, &wanted),
    };
    match progress {
        None => println!("{}", diagnosis.render_json()),
        Some(p) => print_now(&(p.empty_sections(&diagnosis) + &diagnosis.summary().render_text())),
    }
    Ok(if diagnosis.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The identity to check and, for the mail checks, the VPS's status (its
/// relays and home's probes) — fetched once. `Err(text)`: why there is none.
async fn identity_and_status(
    cli: &Cli,
    args: &DoctorArgs,
) -> anyhow::Result<(MailIdentity, Result<StatusResponse, String>)> {
    const HINT: &str = "cannot get the domain, addresses and relays from the VPS \
                        (or give --domain and --public-ip, and --skip-mail, to work without it)";
    if args.skip_mail {
        return Ok((
            identity(cli, &args.id).await?,
            Err("mail checks skipped".into()),
        ));
    }
    let (given_ips, given_host) = args.id.one_vps()?;
    let offline = args.id.domain.is_some() && !given_ips.is_empty();
    let status = match fetch_status(cli, args.id.address.as_deref(), HINT).await {
        Ok(s) => s,
        // Flags say enough for the identity: the mail checks run without
        // the VPS's relays and probes, and say so.
        Err(e) if offline => return Ok((identity(cli, &args.id).await?, Err(format!("{e:#}")))),
        Err(e) => return Err(e),
    };
    let vps = vps_part(&status)?;
    let public_ip = if given_ips.is_empty() {
        vps.public_ips
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| anyhow::anyhow!("the VPS reported a bad public address {s:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        given_ips
    };
    let filled = IdentityArgs {
        domain: Some(args.id.domain.clone().unwrap_or_else(|| vps.domain.clone())),
        mail_host: given_host
            .or_else(|| Some(vps.mail_host.clone()).filter(|h| !h.is_empty()))
            .into_iter()
            .collect(),
        public_ip: vec![VpsIps(public_ip)],
        dkim_selector: args.id.dkim_selector.clone(),
        address: args.id.address.clone(),
    };
    Ok((identity(cli, &filled).await?, Ok(status)))
}

/// The section titles, in the order the report shows them.
const SECTIONS: [&str; 5] = [
    "DNS records",
    "Blocklists (DNSBL)",
    "Mail ports (SMTP)",
    "Open relay",
    "PROXY protocol (relay vs mail server)",
];
const DNS_RECORDS: usize = 0;
const BLOCKLISTS: usize = 1;
const SMTP: usize = 2;
const OPEN_RELAY: usize = 3;
const PROXY: usize = 4;

/// Findings of one finished check, each with the index of its section.
type Found = Vec<(usize, Finding)>;

/// A check still running; checks run concurrently and are shown as each
/// finishes.
type Pending<'a> = futures::future::LocalBoxFuture<'a, Found>;

/// The DNS records (one check), and each VPS address in the blocklists.
fn dns_checks<'a, L: Lookup>(
    id: &'a MailIdentity,
    dns: &'a L,
    zones: &'a [String],
) -> Vec<Pending<'a>> {
    let mut checks: Vec<Pending<'a>> = vec![Box::pin(async move {
        let records = verify(id, dns).await;
        records
            .checks
            .into_iter()
            .map(|c| (DNS_RECORDS, Finding::from(c)))
            .collect()
    })];
    checks.extend(id.addresses().into_iter().map(|ip| -> Pending<'a> {
        Box::pin(async move {
            dnsbl_check(ip, zones, dns)
                .await
                .into_iter()
                .map(|r| (BLOCKLISTS, Finding::from(r.to_check())))
                .collect()
        })
    }));
    checks
}

/// The mail-port checks: inbound 25 and the open-relay probe on each VPS
/// address, outbound 25, and PROXY per relayed port.
fn mail_checks<'a>(
    id: &'a MailIdentity,
    status: &'a Result<StatusResponse, String>,
    opts: &'a MailCheckOptions,
) -> Vec<Pending<'a>> {
    let mut checks: Vec<Pending<'a>> = id
        .addresses()
        .into_iter()
        .map(|ip| -> Pending<'a> {
            Box::pin(async move {
                mail::inbound_and_relay(
                    SocketAddr::new(ip, opts.port),
                    id.domain(),
                    id.mail_host(),
                    opts.timeout,
                )
                .await
                .into_iter()
                .map(|f| {
                    let section = if f.kind == Kind::SmtpInbound {
                        SMTP
                    } else {
                        OPEN_RELAY
                    };
                    (section, f)
                })
                .collect()
            })
        })
        .collect();
    checks.push(Box::pin(async move {
        vec![(
            SMTP,
            mail::outbound(opts.probe_25.as_deref(), opts.timeout).await,
        )]
    }));
    checks.push(Box::pin(async move {
        mail::proxy_findings(status)
            .into_iter()
            .map(|f| (PROXY, f))
            .collect()
    }));
    checks
}

/// Finished checks (with their start order) as the report's sections: in
/// section order, and within one in the order the checks were started, so
/// the final report does not depend on which answered first. The sections
/// in `wanted` are there even when empty.
fn into_sections(mut done: Vec<(usize, Found)>, wanted: &[usize]) -> Vec<Section> {
    done.sort_by_key(|(seq, _)| *seq);
    let mut sections: Vec<Option<Section>> = (0..SECTIONS.len())
        .map(|i| {
            wanted.contains(&i).then(|| Section {
                title: SECTIONS[i],
                checks: Vec::new(),
            })
        })
        .collect();
    for (section, finding) in done.into_iter().flat_map(|(_, f)| f) {
        sections[section]
            .get_or_insert_with(|| Section {
                title: SECTIONS[section],
                checks: Vec::new(),
            })
            .checks
            .push(finding);
    }
    sections.into_iter().flatten().collect()
}

/// Runs every check to the end: the DNS records and the blocklists. The
/// command streams its checks instead (`Progress`); the tests use this.
#[cfg(test)]
pub async fn dns_sections<L: Lookup>(id: &MailIdentity, dns: &L, zones: &[String]) -> Vec<Section> {
    let done = futures::future::join_all(dns_checks(id, dns, zones)).await;
    into_sections(
        done.into_iter().enumerate().collect(),
        &[DNS_RECORDS, BLOCKLISTS],
    )
}

/// Writes `text` to stdout now: a pipe would otherwise hold the rows until
/// the end.
fn print_now(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The text report while checks finish: the header, then each row as its
/// check finishes under its section's title (repeated when rows of another
/// section came in between).
struct Progress {
    table: Table,
    header: String,
    last_section: Option<usize>,
    shown: [bool; SECTIONS.len()],
}

impl Progress {
    /// The name column fits the names known before any check runs (the
    /// domain, host, addresses, blocklist entries); a longer one found later
    /// only shifts its own row.
    fn new(id: &MailIdentity, zones: &[String], color: bool) -> Self {
        let mut names = vec![
            id.domain().to_owned(),
            id.mail_host().to_owned(),
            format!("_dmarc.{}", id.domain()),
            "outbound 25".to_owned(),
        ];
        for ip in id.addresses() {
            names.extend(zones.iter().map(|z| format!("{ip} in {z}")));
            names.push(format!("{} to example.net", SocketAddr::new(ip, 25)));
        }
        Progress {
            table: Table::new(color, 2, names.iter().map(String::as_str)),
            header: format!(
                "Doctor for {} (mail host {})\n",
                id.domain(),
                id.mail_host()
            ),
            last_section: None,
            shown: [false; SECTIONS.len()],
        }
    }

    fn header(&self) -> String {
        self.header.clone()
    }

    /// The rows of one finished check.
    fn rows(&mut self, found: &Found) -> String {
        let mut out = String::new();
        for (section, c) in found {
            if self.last_section != Some(*section) {
                let _ = writeln!(out, "\n{}", SECTIONS[*section]);
                self.last_section = Some(*section);
            }
            self.shown[*section] = true;
            self.table.write_row(
                &mut out,
                &Row {
                    status: c.status,
                    label: c.kind.label(),
                    name: &c.display_name(),
                    found: &c.found,
                    expected: &c.expected,
                    fix: c.fix.as_deref(),
                },
            );
        }
        out
    }

    /// Sections of the report that got no row at all.
    fn empty_sections(&self, d: &Diagnosis) -> String {
        let mut out = String::new();
        for s in &d.sections {
            let i = SECTIONS.iter().position(|t| *t == s.title);
            if s.checks.is_empty() && i.is_some_and(|i| !self.shown[i]) {
                let _ = writeln!(out, "\n{}\n  (nothing to check)", s.title);
            }
        }
        out
    }
}

impl Diagnosis {
    /// All findings in order.
    pub fn findings(&self) -> impl Iterator<Item = (&'static str, &Finding)> {
        self.sections
            .iter()
            .flat_map(|s| s.checks.iter().map(move |c| (s.title, c)))
    }

    /// Counts per status.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for (_, c) in self.findings() {
            match c.status {
                Status::Pass => s.pass += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
                Status::Error => s.error += 1,
            }
        }
        s
    }

    /// Nothing failed and nothing was left unchecked (warnings are fine):
    /// the exit code is 0 exactly then.
    pub fn is_ok(&self) -> bool {
        self.findings()
            .all(|(_, c)| matches!(c.status, Status::Pass | Status::Warn))
    }

    /// Pretty-printed JSON: `{"domain", "mail_host", "ok", "summary",
    /// "checks": [{"kind", "name", "address", "status", "found", "expected",
    /// "fix", "section"}]}` — `dns --check --json`'s schema plus `section`.
    pub fn render_json(&self) -> String {
        #[derive(Serialize)]
        struct Item<'a> {
            kind: String,
            name: &'a str,
            address: Option<IpAddr>,
            status: Status,
            found: &'a str,
            expected: &'a str,
            fix: Option<&'a str>,
            section: &'a str,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            domain: &'a str,
            mail_host: &'a str,
            ok: bool,
            summary: Summary,
            checks: Vec<Item<'a>>,
        }
        let checks = self
            .findings()
            .map(|(section, c)| Item {
                kind: c.kind.json_name(),
                name: &c.name,
                address: c.address,
                status: c.status,
                found: &c.found,
                expected: &c.expected,
                fix: c.fix.as_deref(),
                section,
            })
            .collect();
        serde_json::to_string_pretty(&Out {
            domain: &self.domain,
            mail_host: &self.mail_host,
            ok: self.is_ok(),
            summary: self.summary(),
            checks,
        })
        .unwrap_or_default()
    }

    /// Human rendering, by section; `color` adds ANSI colours and symbols.
    /// The command streams its rows instead (`Progress`); the tests use this.
    #[cfg(test)]
    pub fn render_text(&self, color: bool) -> String {
        let mut out = format!(
            "Doctor for {} (mail host {})\n",
            self.domain, self.mail_host
        );
        let names: Vec<Vec<String>> = self
            .sections
            .iter()
            .map(|s| s.checks.iter().map(Finding::display_name).collect())
            .collect();
        let table = Table::new(color, 2, names.iter().flatten().map(String::as_str));
        for (s, names) in self.sections.iter().zip(&names) {
            let _ = writeln!(out, "\n{}", s.title);
            if s.checks.is_empty() {
                out.push_str("  (nothing to check)\n");
            }
            for (c, name) in s.checks.iter().zip(names) {
                table.write_row(
                    &mut out,
                    &Row {
                        status: c.status,
                        label: c.kind.label(),
                        name,
                        found: &c.found,
                        expected: &c.expected,
                        fix: c.fix.as_deref(),
                    },
                );
            }
        }
        out.push_str(&self.summary().render_text());
        out
    }
}

/// A blocklist zone: a DNS name of at least two labels.
fn parse_zone(s: &str) -> Result<String, String> {
    let z = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = z.contains('.')
        && z.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(z)
    } else {
        Err(format!(
            "{s:?} is not a DNS zone name (like zen.spamhaus.org)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_dnscheck::FakeLookup;

    fn id() -> MailIdentity {
        MailIdentity::builder("example.com")
            .address("203.0.113.10".parse().expect("ip"))
            .build()
            .expect("identity")
    }

    #[tokio::test]
    async fn blocklist_findings_are_a_section_and_decide_the_exit() {
        let dns = FakeLookup::new()
            .with_a("10.113.0.203.bl.example", "127.0.0.2".parse().expect("ip"))
            .with_txt("10.113.0.203.bl.example", "spam trap");
        let zones = vec!["bl.example".to_owned(), "clean.example".to_owned()];
        let d = Diagnosis {
            domain: "example.com".into(),
            mail_host: "mail.example.com".into(),
            sections: dns_sections(&id(), &dns, &zones).await,
        };
        assert_eq!(d.sections.len(), 2);
        let bl = &d.sections[1];
        assert_eq!(bl.checks.len(), 2);
        assert_eq!(bl.checks[0].status, Status::Fail);
        assert_eq!(bl.checks[1].status, Status::Pass);
        let text = d.render_text(false);
        assert!(text.contains("Blocklists (DNSBL)"), "{text}");
        assert!(
            text.contains("FAIL   DNSBL  203.0.113.10 in bl.example"),
            "{text}"
        );
        assert!(text.contains("LISTED (127.0.0.2): spam trap"), "{text}");
        assert!(!d.is_ok());
        let json: serde_json::Value = serde_json::from_str(&d.render_json()).expect("json");
        assert_eq!(json["ok"], false);
        let listed = &json["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["kind"] == "dnsbl" && c["status"] == "fail")
            .expect("listed")
            .clone();
        assert_eq!(listed["name"], "bl.example");
        assert_eq!(listed["section"], "Blocklists (DNSBL)");
    }

    #[test]
    fn warnings_pass_and_not_checked_fails_the_exit() {
        let finding = |status| Finding {
            kind: Kind::SmtpOutbound,
            name: "outbound 25".into(),
            address: None,
            status,
            found: "x".into(),
            expected: "y".into(),
            fix: None,
        };
        let mut d = Diagnosis {
            domain: "example.com".into(),
            mail_host: "mail.example.com".into(),
            sections: vec![Section {
                title: "Mail ports (SMTP)",
                checks: vec![finding(Status::Pass), finding(Status::Warn)],
            }],
        };
        assert!(d.is_ok());
        assert!(d.render_text(false).contains("WARN   SMTP   outbound 25"));
        d.sections[0].checks.push(finding(Status::Error));
        assert!(!d.is_ok());
        let json: serde_json::Value = serde_json::from_str(&d.render_json()).expect("json");
        assert_eq!(json["checks"][0]["kind"], "smtp-outbound");
        assert_eq!(json["summary"]["error"], 1);
    }

    #[test]
    fn zone_names() {
        assert_eq!(
            parse_zone("ZEN.spamhaus.org.").as_deref(),
            Ok("zen.spamhaus.org")
        );
        assert!(parse_zone("nodot").is_err());
        assert!(parse_zone("a..b").is_err());
    }
}
