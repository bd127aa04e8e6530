//! Text rendering of a [`Report`]: one line per check, details indented below
//! anything that is not a pass.

use std::fmt::Write as _;

use super::{Check, CheckKind, Report, Status};

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
/// what the admin types into the provider's panel.
fn display_name(c: &Check) -> String {
    match (c.kind, c.address) {
        (CheckKind::Ptr, Some(ip)) => ip.to_string(),
        _ => c.name.clone(),
    }
}

impl Report {
    /// Human-readable report. `color` adds ANSI colours and symbols (for a terminal);
    /// without it the output is plain ASCII-aligned text, fit for pipes and logs.
    pub fn render_text(&self, color: bool) -> String {
        let mut out = format!(
            "DNS check for {} (mail host {})\n\n",
            self.domain, self.mail_host
        );
        let name_w = self
            .checks
            .iter()
            .map(|c| display_name(c).len())
            .max()
            .unwrap_or(0);
        // Badge, kind and name columns plus their two-space gaps, so details line up
        // under the "found" column.
        let badge_w = if color { 7 } else { 5 };
        let indent = " ".repeat(badge_w + 2 + 5 + 2 + name_w + 2);
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{}  {:<5}  {:name_w$}  {}",
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
        let s = self.summary();
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
