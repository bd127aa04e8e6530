//! Text table and BIND zone rendering of a [`Checklist`].

use std::fmt::Write as _;

use super::{Checklist, RecordToSet, SetAt};

/// TTL written into zone snippets by default: short enough to fix mistakes
/// within the hour. While mail is being set up or moved, a shorter one
/// ([`Checklist::render_zone_ttl`]) lets a wrong record be undone sooner.
pub const DEFAULT_ZONE_TTL: u32 = 3600;

/// `name` as an absolute zone-file name (with the trailing dot).
pub fn zone_name(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// TXT RDATA in zone-file syntax: quoted character-strings of at most 255 bytes each
/// (RFC 1035 3.3), with `"` and `\` escaped and non-printable bytes as `\DDD`.
pub fn zone_txt_rdata(value: &str) -> String {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return "\"\"".into();
    }
    bytes
        .chunks(255)
        .map(|chunk| {
            let mut s = String::from("\"");
            for &b in chunk {
                match b {
                    b'"' | b'\\' => {
                        s.push('\\');
                        s.push(b as char);
                    }
                    0x20..=0x7e => s.push(b as char),
                    _ => {
                        let _ = write!(s, "\\{b:03}");
                    }
                }
            }
            s.push('"');
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn text_name(r: &RecordToSet) -> String {
    match (r.set_at, r.address) {
        (SetAt::VpsProvider, Some(ip)) => ip.to_string(),
        _ => r.name.clone(),
    }
}

fn text_value(r: &RecordToSet) -> String {
    match (&r.value, r.priority) {
        (Some(v), Some(p)) => format!("{p} {v}"),
        (Some(v), None) => v.clone(),
        (None, _) => "(from your mail software, see note)".into(),
    }
}

impl Checklist {
    /// `mail host H`, or with several VPSes `mail hosts H1 for A, H2 for B`.
    fn hosts(&self) -> String {
        if self.vpses.is_empty() {
            return format!("mail host {}", self.mail_host);
        }
        let list: Vec<String> = self
            .vpses
            .iter()
            .map(|v| format!("{} for {}", v.mail_host, v.name))
            .collect();
        format!("mail hosts {}", list.join(", "))
    }

    /// A table a mail admin reads at once: where, type, name, value (and with
    /// several VPSes, which one); then notes.
    pub fn render_text(&self) -> String {
        let several = !self.vpses.is_empty();
        let rows: Vec<[String; 5]> = self
            .records
            .iter()
            .map(|r| {
                [
                    r.set_at.label().to_owned(),
                    r.rtype.to_owned(),
                    text_name(r),
                    text_value(r),
                    r.vps.clone().unwrap_or_else(|| "(all)".into()),
                ]
            })
            .collect();
        let header = ["WHERE", "TYPE", "NAME", "VALUE", "VPS"].map(String::from);
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = format!("DNS records for {} ({})\n\n", self.domain, self.hosts());
        for row in std::iter::once(&header).chain(&rows) {
            let line = if several {
                format!(
                    "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3]
                )
            } else {
                format!(
                    "{:w0$}  {:w1$}  {:w2$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                )
            };
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let notes: Vec<String> = self
            .records
            .iter()
            .filter_map(|r| {
                r.note
                    .as_ref()
                    .map(|n| format!("- {} {}: {n}", r.rtype, text_name(r)))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        out
    }

    /// A BIND zone snippet: absolute names, TXT split into 255-byte strings; DKIM
    /// (value unknown) and PTR (provider's reverse zone) as comments.
    pub fn render_zone(&self) -> String {
        self.render_zone_ttl(DEFAULT_ZONE_TTL)
    }

    /// [`Checklist::render_zone`] with every record's TTL set to `ttl` seconds.
    pub fn render_zone_ttl(&self, ttl: u32) -> String {
        let mut out = format!(
            "; Mail records for {} ({}), generated by cerectl.\n; Paste into the zone file of {} (names are absolute).\n",
            self.domain,
            self.hosts(),
            self.domain
        );
        // With several VPSes each record says whose it is, as a zone comment.
        let whose = |r: &RecordToSet| {
            r.vps
                .as_ref()
                .map(|v| format!(" ; VPS {v}"))
                .unwrap_or_default()
        };
        // Align on the zone's own names; the long ip6.arpa names are only comments.
        let width = self
            .records
            .iter()
            .filter(|r| r.set_at == SetAt::DnsZone)
            .map(|r| zone_name(&r.name).len())
            .max()
            .unwrap_or(0);
        let mut ptrs = Vec::new();
        for r in &self.records {
            let name = zone_name(&r.name);
            if r.set_at == SetAt::VpsProvider {
                ptrs.push(r);
                continue;
            }
            let rdata = match (r.rtype, &r.value) {
                (_, None) => {
                    let _ = writeln!(
                        out,
                        "; DKIM: {}\n; {name:width$} {ttl} IN TXT  \"v=DKIM1; k=rsa; p=<public key from your mail software>\"",
                        r.note
                            .as_deref()
                            .unwrap_or("value comes from your mail software")
                    );
                    continue;
                }
                ("TXT", Some(v)) => zone_txt_rdata(v),
                ("MX", Some(v)) => format!("{} {}", r.priority.unwrap_or(10), zone_name(v)),
                (_, Some(v)) => v.clone(),
            };
            let _ = writeln!(
                out,
                "{name:width$} {ttl} IN {:<4} {rdata}{}",
                r.rtype,
                whose(r)
            );
        }
        if !ptrs.is_empty() {
            out.push_str(
                "; Reverse DNS belongs to the VPS provider's reverse zone: set it in the provider's\n; control panel (these lines are for reference only):\n",
            );
            for r in ptrs {
                let _ = writeln!(
                    out,
                    "; {} {ttl} IN PTR  {}{}",
                    zone_name(&r.name),
                    zone_name(r.value.as_deref().unwrap_or_default()),
                    whose(r)
                );
            }
        }
        out
    }
}
