//! The doctor's text report while its checks run: the header, then each
//! check's rows the moment it finishes, then the sections that got no row
//! and the summary.
//!
//! Checks finish in any order, so rows of one section can arrive apart,
//! with rows of another section in between. Each section title is printed
//! once, when its first row arrives; rows go under it while it is the last
//! title printed. A row whose section's title is further up (another title
//! came since) is printed where it is, with its section named in the row
//! (`Mail ports (SMTP): outbound to …`) rather than under its title again.
//! Holding such rows back until their section could be printed whole would
//! keep every other section waiting on the slowest check (an SMTP probe
//! may wait out `--smtp-timeout`), which is what printing as checks finish
//! is for. Within a section rows are printed in the order they arrive; the
//! report at the end (`into_sections`) still has them in start order.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;

use ceres_dnscheck::{MailIdentity, Row, Table};

use super::{Diagnosis, Found, SECTIONS};

/// The streamed text report, written to `out` (stdout in the command, a
/// buffer in the tests).
pub(super) struct Progress<W: Write> {
    out: W,
    table: Table,
    header: String,
    /// The section whose title was printed last: its rows go under it.
    open: Option<usize>,
    /// Sections whose title was printed: never printed again.
    shown: [bool; SECTIONS.len()],
}

impl<W: Write> Progress<W> {
    /// The name column fits the names known before any check runs (the
    /// domain, host, addresses, blocklist entries); a longer one found later
    /// only shifts its own row.
    pub(super) fn new(out: W, id: &MailIdentity, zones: &[String], color: bool) -> Self {
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
            out,
            table: Table::new(color, 2, names.iter().map(String::as_str)),
            header: format!(
                "Doctor for {} (mail host {})\n",
                id.domain(),
                id.mail_host()
            ),
            open: None,
            shown: [false; SECTIONS.len()],
        }
    }

    /// The first line, before any check finishes.
    pub(super) fn header(&mut self) {
        let header = self.header.clone();
        self.emit(&header);
    }

    /// The rows of one finished check.
    pub(super) fn rows(&mut self, found: &Found) {
        let mut text = String::new();
        for (section, c) in found {
            let title = SECTIONS[*section];
            let mut name = c.display_name();
            if self.open != Some(*section) {
                if self.shown[*section] {
                    // Its title is above another one now: say where it belongs.
                    name = format!("{title}: {name}");
                } else {
                    let _ = writeln!(text, "\n{title}");
                    self.shown[*section] = true;
                    self.open = Some(*section);
                }
            }
            self.table.write_row(
                &mut text,
                &Row {
                    status: c.status,
                    label: c.kind.label(),
                    name: &name,
                    found: &c.found,
                    expected: &c.expected,
                    fix: c.fix.as_deref(),
                },
            );
        }
        self.emit(&text);
    }

    /// The end: the report's sections that got no row at all, then the
    /// summary line.
    pub(super) fn finish(&mut self, d: &Diagnosis) {
        let mut text = String::new();
        for s in &d.sections {
            let i = SECTIONS.iter().position(|t| *t == s.title);
            if s.checks.is_empty() && i.is_some_and(|i| !self.shown[i]) {
                let _ = writeln!(text, "\n{}\n  (nothing to check)", s.title);
            }
        }
        text.push_str(&d.summary().render_text());
        self.emit(&text);
    }

    /// Writes and flushes now: a pipe would otherwise hold the rows until
    /// the end. A reader that went away (a closed pipe) does not stop the
    /// checks: the exit code still says how they went.
    fn emit(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    #[cfg(test)]
    fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        BLOCKLISTS, DNS_RECORDS, Finding, Kind, OPEN_RELAY, PROXY, SMTP, into_sections,
    };
    use super::*;
    use ceres_dnscheck::{CheckKind, Status};

    const WANTED: [usize; 5] = [DNS_RECORDS, BLOCKLISTS, SMTP, OPEN_RELAY, PROXY];

    fn id() -> MailIdentity {
        MailIdentity::builder("example.com")
            .address("203.0.113.10".parse().expect("ip"))
            .address("203.0.113.11".parse().expect("ip"))
            .build()
            .expect("identity")
    }

    /// A finding named `name`: every name in a test is unique and no name
    /// contains another, so a line shows which finding it is.
    fn finding(kind: Kind, name: &str, status: Status) -> Finding {
        Finding {
            kind,
            name: name.to_owned(),
            address: None,
            status,
            found: "found".into(),
            expected: "expected".into(),
            fix: Some("fix".into()),
        }
    }

    /// The checks of a two-address doctor run, in start order, shaped as
    /// the real ones: one check spans two sections (inbound 25 and the
    /// relay probe of one address), and three sections get rows from
    /// several checks.
    fn checks() -> Vec<Found> {
        let row = |section, kind, name: &str| (section, finding(kind, name, Status::Fail));
        let dns = |k| Kind::Dns(k);
        vec![
            vec![
                row(DNS_RECORDS, dns(CheckKind::Mx), "<mx>"),
                row(DNS_RECORDS, dns(CheckKind::Spf), "<spf>"),
            ],
            vec![row(BLOCKLISTS, dns(CheckKind::Dnsbl), "<bl-1>")],
            vec![row(BLOCKLISTS, dns(CheckKind::Dnsbl), "<bl-2>")],
            vec![
                row(SMTP, Kind::SmtpInbound, "<in-1>"),
                row(OPEN_RELAY, Kind::OpenRelay, "<relay-1>"),
            ],
            vec![
                row(SMTP, Kind::SmtpInbound, "<in-2>"),
                row(OPEN_RELAY, Kind::OpenRelay, "<relay-2>"),
            ],
            vec![row(SMTP, Kind::SmtpOutbound, "<out>")],
            vec![row(PROXY, Kind::Proxy, "<proxy>")],
        ]
    }

    /// Streams the checks finishing in `order` (indices into `checks`) and
    /// returns the printed text.
    fn stream(checks: &[Found], order: &[usize]) -> String {
        let mut p = Progress::new(Vec::new(), &id(), &[], false);
        p.header();
        let mut done = Vec::new();
        for &seq in order {
            p.rows(&checks[seq]);
            done.push((seq, checks[seq].clone()));
        }
        let d = Diagnosis {
            domain: "example.com".into(),
            mail_host: "mail.example.com".into(),
            sections: into_sections(done, &WANTED),
        };
        p.finish(&d);
        String::from_utf8(p.into_inner()).expect("utf-8")
    }

    /// Each title is a heading line at most once, and every finding is on
    /// exactly one line, either under its own title or named with it; within
    /// a section, in the order the checks finished.
    fn assert_streamed(checks: &[Found], order: &[usize], text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        for title in SECTIONS {
            let headings = lines.iter().filter(|l| **l == title).count();
            assert!(headings <= 1, "{title:?} printed {headings} times:\n{text}");
        }
        let mut seen: Vec<Vec<&str>> = vec![Vec::new(); SECTIONS.len()];
        for &seq in order {
            for (section, f) in &checks[seq] {
                let at: Vec<usize> = (0..lines.len())
                    .filter(|i| lines[*i].contains(&f.name))
                    .collect();
                let [at] = at[..] else {
                    panic!("{} on {} lines, not one:\n{text}", f.name, at.len());
                };
                let title = SECTIONS[*section];
                let heading = lines[..at].iter().rposition(|l| SECTIONS.contains(l));
                let under_own = heading.is_some_and(|h| lines[h] == title);
                let named = lines[at].contains(&format!("{title}: {}", f.name));
                assert!(
                    under_own != named,
                    "{} is neither under {title:?} nor named with it (or both):\n{text}",
                    f.name
                );
                seen[*section].push(lines[at]);
            }
        }
        for (section, rows) in seen.iter().enumerate() {
            let at: Vec<usize> = rows
                .iter()
                .map(|r| lines.iter().position(|l| l == r).expect("row"))
                .collect();
            assert!(
                at.is_sorted(),
                "rows of {:?} out of finishing order:\n{text}",
                SECTIONS[section]
            );
        }
        assert!(lines[0].starts_with("Doctor for example.com"), "{text}");
        assert!(
            lines.last().is_some_and(|l| l.contains("not checked")),
            "the summary comes last:\n{text}"
        );
    }

    /// Every order of `0..n`.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        let mut orders = vec![Vec::new()];
        for _ in 0..n {
            let mut longer = Vec::new();
            for o in &orders {
                for i in (0..n).filter(|i| !o.contains(i)) {
                    longer.push([o.as_slice(), &[i]].concat());
                }
            }
            orders = longer;
        }
        orders
    }

    #[test]
    fn a_section_whose_rows_arrive_apart_gets_its_title_once() {
        let checks = checks();
        // Inbound 25 and the relay probe of the first address, then PROXY,
        // then the slow outbound 25: SMTP's title is above two others.
        let order = [3, 6, 5, 0, 1, 2, 4];
        let text = stream(&checks, &order);
        assert_streamed(&checks, &order, &text);
        let out = text
            .lines()
            .find(|l| l.contains("<out>"))
            .expect("outbound row");
        assert!(
            out.contains("SMTP   Mail ports (SMTP): <out>"),
            "a late row names its section: {out:?}\n{text}"
        );
        // A row that arrives while its title is the last one goes under it
        // plainly.
        let bl2 = text.lines().find(|l| l.contains("<bl-2>")).expect("bl-2");
        assert!(bl2.contains("DNSBL  <bl-2>"), "{bl2:?}\n{text}");
    }

    #[test]
    fn every_finishing_order_prints_each_title_once_and_each_finding_once() {
        let checks = checks();
        let orders = permutations(checks.len());
        assert_eq!(orders.len(), 5040);
        let mut late_rows = 0;
        for order in &orders {
            let text = stream(&checks, order);
            assert_streamed(&checks, order, &text);
            late_rows += text.lines().filter(|l| l.contains(": <")).count();
        }
        assert!(late_rows > 0, "no order made a row arrive late");
    }

    #[test]
    fn the_final_report_does_not_depend_on_the_finishing_order() {
        let checks = checks();
        let sections = |order: &[usize]| {
            into_sections(
                order.iter().map(|&i| (i, checks[i].clone())).collect(),
                &WANTED,
            )
        };
        let in_order = sections(&[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(sections(&[3, 6, 5, 0, 1, 2, 4]), in_order);
        assert_eq!(sections(&[6, 5, 4, 3, 2, 1, 0]), in_order);
        let smtp: Vec<&str> = in_order[SMTP]
            .checks
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(smtp, ["<in-1>", "<in-2>", "<out>"]);
    }

    #[test]
    fn a_section_without_rows_is_printed_once_at_the_end() {
        // No relays known: the PROXY check finds nothing.
        let mut checks = checks();
        checks[6].clear();
        let order = [6, 3, 5, 4, 0, 2, 1];
        let text = stream(&checks, &order);
        assert_streamed(&checks, &order, &text);
        assert!(
            text.contains("\nPROXY protocol (relay vs mail server)\n  (nothing to check)\n"),
            "{text}"
        );
    }
}
