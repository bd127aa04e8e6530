//! `cerectl doctor`: everything `dns --check` verifies, plus the practical
//! limits of a cheap VPS, as one report with a fix for every finding.
//!
//! Findings come in [`Section`]s, each a list of [`Check`]s, so the checks to
//! come (outbound tcp/25 from the VPS, the inbound banner on the VPS address,
//! PROXY expected vs configured per port, an open-relay probe through the
//! tunnel) are each one more section, with no change to rendering or exit codes.

use std::fmt::Write as _;

use ceres_dnscheck::{
    Check, CheckKind, DEFAULT_DNSBL_ZONES, Lookup, MailIdentity, Report, Status, dnsbl_check,
    verify,
};
use clap::Args;

use crate::cli::Cli;
use crate::dns::{IdentityArgs, Outcome, color, exit_code, identity, lookup, parse_resolver};

/// `doctor` arguments.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Which domain, host and addresses.
    #[command(flatten)]
    pub id: IdentityArgs,
    /// Ask this DNS server instead of the system's. Several blocklists refuse
    /// queries from big public resolvers: a resolver of your own is best.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_resolver)]
    pub resolver: Option<std::net::SocketAddr>,
    /// Blocklist zones to look the VPS addresses up in, comma-separated;
    /// default the common public ones.
    #[arg(long, value_name = "ZONE[,ZONE]", value_delimiter = ',', value_parser = parse_zone)]
    pub dnsbl_zones: Vec<String>,
    /// Print JSON: the same schema as `dns --check --json`, with `dnsbl` checks added.
    #[arg(long)]
    pub json: bool,
}

/// One group of findings, shown under its title in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// What the group is about, e.g. "DNS records".
    pub title: &'static str,
    /// Its findings.
    pub checks: Vec<Check>,
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

/// Runs `cerectl doctor`.
pub async fn run(cli: &Cli, args: &DoctorArgs) -> Outcome {
    let id = identity(cli, &args.id).await?;
    let dns = lookup(args.resolver)?;
    let zones: Vec<String> = if args.dnsbl_zones.is_empty() {
        DEFAULT_DNSBL_ZONES
            .iter()
            .map(|z| (*z).to_owned())
            .collect()
    } else {
        args.dnsbl_zones.clone()
    };
    let diagnosis = diagnose(&id, &dns, &zones).await;
    let report = diagnosis.to_report();
    if args.json {
        println!("{}", report.render_json());
    } else {
        print!("{}", diagnosis.render_text(color()));
    }
    Ok(exit_code(&report))
}

/// Runs every doctor check for `id`; the independent groups run concurrently.
pub async fn diagnose<L: Lookup>(id: &MailIdentity, dns: &L, zones: &[String]) -> Diagnosis {
    let (records, blocklists) = tokio::join!(verify(id, dns), blocklists(id, zones, dns));
    Diagnosis {
        domain: id.domain().to_owned(),
        mail_host: id.mail_host().to_owned(),
        sections: vec![
            Section {
                title: "DNS records",
                checks: records.checks,
            },
            Section {
                title: "Blocklists (DNSBL)",
                checks: blocklists,
            },
        ],
    }
}

/// Each VPS address in each blocklist zone, all concurrently in this task.
async fn blocklists<L: Lookup>(id: &MailIdentity, zones: &[String], dns: &L) -> Vec<Check> {
    let per_address = futures::future::join_all(
        id.addresses()
            .into_iter()
            .map(|ip| dnsbl_check(ip, zones, dns)),
    )
    .await;
    per_address
        .into_iter()
        .flatten()
        .map(|r| r.to_check())
        .collect()
}

impl Diagnosis {
    /// All findings as one report (for JSON and the exit code).
    pub fn to_report(&self) -> Report {
        let mut report = Report {
            domain: self.domain.clone(),
            mail_host: self.mail_host.clone(),
            checks: Vec::new(),
        };
        for s in &self.sections {
            report.extend(s.checks.iter().cloned());
        }
        report
    }

    /// Human rendering, by section; `color` adds ANSI colours and symbols.
    pub fn render_text(&self, color: bool) -> String {
        let mut out = format!(
            "Doctor for {} (mail host {})\n",
            self.domain, self.mail_host
        );
        let name_w = self
            .sections
            .iter()
            .flat_map(|s| &s.checks)
            .map(|c| display_name(c).len())
            .max()
            .unwrap_or(0);
        let badge_w = if color { 7 } else { 5 };
        // Two leading spaces, badge, kind, name and their gaps: details line up
        // under the "found" column.
        let indent = " ".repeat(2 + badge_w + 2 + 5 + 2 + name_w + 2);
        for s in &self.sections {
            let _ = writeln!(out, "\n{}", s.title);
            if s.checks.is_empty() {
                out.push_str("  (nothing to check)\n");
            }
            for c in &s.checks {
                let _ = writeln!(
                    out,
                    "  {}  {:<5}  {:name_w$}  {}",
                    badge(c.status, color),
                    c.kind.label(),
                    display_name(c),
                    c.found
                );
                if c.status != Status::Pass {
                    let _ = writeln!(out, "{indent}expected: {}", c.expected);
                    if let Some(fix) = &c.fix {
                        let _ = writeln!(out, "{indent}fix: {fix}");
                    }
                }
            }
        }
        let s = self.to_report().summary();
        let _ = writeln!(
            out,
            "\n{} passed, {} {}, {} failed, {} not checked",
            s.pass,
            s.warn,
            if s.warn == 1 { "warning" } else { "warnings" },
            s.fail,
            s.error
        );
        out
    }
}

/// PTR lines are about an address; blocklist lines about an address in a zone.
fn display_name(c: &Check) -> String {
    match (c.kind, c.address) {
        (CheckKind::Ptr, Some(ip)) => ip.to_string(),
        (CheckKind::Dnsbl, Some(ip)) => format!("{ip} in {}", c.name),
        _ => c.name.clone(),
    }
}

fn badge(status: Status, color: bool) -> String {
    let (symbol, code) = match status {
        Status::Pass => ("✔", "32"),
        Status::Warn => ("!", "33"),
        Status::Fail => ("✘", "31"),
        Status::Error => ("?", "35"),
    };
    if color {
        format!("\x1b[{code}m{symbol} {:<5}\x1b[0m", status.label())
    } else {
        format!("{:<5}", status.label())
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
        let d = diagnose(&id(), &dns, &zones).await;
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
        assert!(!d.to_report().is_ok());
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
