//! Text rendering of a [`Report`]: one line per check, details indented below
//! anything that is not a pass.

use std::fmt::Write as _;

use super::{Check, CheckKind, Report, Status, Summary};

/// One line of a findings table, as `cerectl dns --check` and `cerectl doctor`
/// print them.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The verdict.
    pub status: Status,
    /// Upper-case kind, at most five characters (`MX`, `SMTP`).
    pub label: &'a str,
    /// What was looked at, as the admin knows it.
    pub name: &'a str,
    /// What was found.
    pub found: &'a str,
    /// What should be there (shown unless the row passed).
    pub expected: &'a str,
    /// What to change (shown unless the row passed).
    pub fix: Option<&'a str>,
}

/// Aligned findings: badge, kind, name and what was found on one line; what
/// was expected and the fix indented under "found" for anything not a pass.
/// Colour and symbols for a terminal, plain ASCII for pipes and logs.
#[derive(Debug, Clone)]
pub struct Table {
    color: bool,
    lead: String,
    name_width: usize,
    detail_indent: String,
}

impl Table {
    /// A table whose rows start `lead` spaces in and whose name column fits the
    /// longest of `names`.
    pub fn new<'a>(color: bool, lead: usize, names: impl IntoIterator<Item = &'a str>) -> Self {
        let name_width = names
            .into_iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0);
        let badge_width = if color { 7 } else { 5 };
        Table {
            color,
            lead: " ".repeat(lead),
            name_width,
            detail_indent: " ".repeat(lead + badge_width + 2 + 5 + 2 + name_width + 2),
        }
    }

    /// Appends one row (and its details) to `out`.
    pub fn write_row(&self, out: &mut String, row: &Row<'_>) {
        let _ = writeln!(
            out,
            "{}{}  {:<5}  {:w$}  {}",
            self.lead,
            badge(row.status, self.color),
            row.label,
            row.name,
            row.found,
            w = self.name_width
        );
        if row.status != Status::Pass {
            let _ = writeln!(out, "{}expected: {}", self.detail_indent, row.expected);
            if let Some(fix) = row.fix {
                let _ = writeln!(out, "{}fix: {fix}", self.detail_indent);
            }
        }
    }
}

impl Summary {
    /// The closing line of a text report, preceded by a blank line.
    pub fn render_text(&self) -> String {
        format!(
            "\n{} passed, {} {}, {} failed, {} not checked\n",
            self.pass,
            self.warn,
            if self.warn == 1 {
                "warning"
            } else {
                "warnings"
            },
            self.fail,
            self.error
        )
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

/// PTR checks are named by their reverse name in JSON; in text the address itself is
/// what the admin types into the provider's panel. With several VPSes a check about
/// one of them says which.
fn display_name(c: &Check) -> String {
    let name = match (c.kind, c.address) {
        (CheckKind::Ptr, Some(ip)) => ip.to_string(),
        _ => c.name.clone(),
    };
    match &c.vps {
        Some(vps) => format!("{name} (VPS {vps})"),
        None => name,
    }
}

impl Report {
    /// Human-readable report. `color` adds ANSI colours and symbols (for a terminal);
    /// without it the output is plain ASCII-aligned text, fit for pipes and logs.
    pub fn render_text(&self, color: bool) -> String {
        let hosts = if self.vpses.is_empty() {
            format!("mail host {}", self.mail_host)
        } else {
            let list: Vec<String> = self
                .vpses
                .iter()
                .map(|v| format!("{} for {}", v.mail_host, v.name))
                .collect();
            format!("mail hosts {}", list.join(", "))
        };
        let mut out = format!("DNS check for {} ({hosts})\n\n", self.domain);
        let names: Vec<String> = self.checks.iter().map(display_name).collect();
        let table = Table::new(color, 0, names.iter().map(String::as_str));
        for (c, name) in self.checks.iter().zip(&names) {
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
        out.push_str(&self.summary().render_text());
        out
    }
}
