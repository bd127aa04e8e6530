//! SPF macro-strings (RFC 7208 section 7): `%{d}`, `%{ir}.%{v}._spf.%{d2}` and friends.
//! Expansion supports every letter a receiver knows about a check run (s l o d i v h,
//! and p as "unknown", which RFC 7208 7.3 allows when no validated name is at hand).

use std::fmt::Write as _;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Macro {
        letter: char,
        url_escape: bool,
        keep: Option<usize>,
        reverse: bool,
        delimiters: String,
    },
}

/// A parsed domain-spec or explanation string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroString {
    parts: Vec<Part>,
}

impl MacroString {
    /// True when the string contains at least one `%{...}` expansion.
    pub fn has_macros(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Macro { .. }))
    }
}

/// What macros expand to during one evaluation.
#[derive(Debug, Clone)]
pub(crate) struct MacroContext<'a> {
    pub sender: &'a str,
    pub domain: &'a str,
    pub ip: IpAddr,
}

/// Parses a macro-string; `is_exp` allows the explanation-only letters c, r, t.
pub(crate) fn parse_macro_string(s: &str, is_exp: bool) -> Result<MacroString, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            if !(c.is_ascii_graphic()) {
                return Err(format!("character {c:?} is not allowed"));
            }
            lit.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => lit.push('%'),
            Some('_') => lit.push(' '),
            Some('-') => lit.push_str("%20"),
            Some('{') => {
                let mut body = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => body.push(ch),
                        None => return Err("unterminated %{".into()),
                    }
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(parse_macro_body(&body, is_exp)?);
            }
            Some(other) => {
                return Err(format!(
                    "\"%{other}\" is not a macro (use %% for a literal %)"
                ));
            }
            None => return Err("a lone % at the end".into()),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Literal(lit));
    }
    Ok(MacroString { parts })
}

fn parse_macro_body(body: &str, is_exp: bool) -> Result<Part, String> {
    let mut chars = body.chars();
    let letter = chars.next().ok_or("empty %{}")?;
    let lower = letter.to_ascii_lowercase();
    match lower {
        's' | 'l' | 'o' | 'd' | 'i' | 'p' | 'v' | 'h' => {}
        'c' | 'r' | 't' if is_exp => {}
        'c' | 'r' | 't' => {
            return Err(format!(
                "macro letter {letter:?} is only allowed in exp= explanations"
            ));
        }
        _ => return Err(format!("unknown macro letter {letter:?}")),
    }
    let rest: String = chars.collect();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let mut tail = &rest[digits.len()..];
    let keep = if digits.is_empty() {
        None
    } else {
        let n: usize = digits
            .parse()
            .map_err(|_| format!("bad digit count {digits:?}"))?;
        if n == 0 {
            return Err("a digit transformer of 0 is not allowed".into());
        }
        Some(n)
    };
    let reverse = if let Some(t) = tail.strip_prefix(['r', 'R']) {
        tail = t;
        true
    } else {
        false
    };
    if let Some(bad) = tail.chars().find(|c| !".-+,/_=".contains(*c)) {
        return Err(format!("{bad:?} is not a macro delimiter"));
    }
    Ok(Part::Macro {
        letter: lower,
        url_escape: letter.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters: tail.to_owned(),
    })
}

impl MacroString {
    /// Expands the string for one evaluation.
    pub(crate) fn expand(&self, ctx: &MacroContext<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Macro {
                    letter,
                    url_escape,
                    keep,
                    reverse,
                    delimiters,
                } => {
                    let value = letter_value(*letter, ctx);
                    let delims: &str = if delimiters.is_empty() {
                        "."
                    } else {
                        delimiters
                    };
                    let mut labels: Vec<&str> = value.split(|c| delims.contains(c)).collect();
                    if *reverse {
                        labels.reverse();
                    }
                    if let Some(n) = keep
                        && labels.len() > *n
                    {
                        labels.drain(..labels.len() - n);
                    }
                    let joined = labels.join(".");
                    if *url_escape {
                        for b in joined.bytes() {
                            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                                out.push(b as char);
                            } else {
                                let _ = write!(out, "%{b:02X}");
                            }
                        }
                    } else {
                        out.push_str(&joined);
                    }
                }
            }
        }
        out
    }
}

fn letter_value(letter: char, ctx: &MacroContext<'_>) -> String {
    let (local, sender_domain) = ctx
        .sender
        .rsplit_once('@')
        .unwrap_or(("postmaster", ctx.sender));
    match letter {
        's' => ctx.sender.to_owned(),
        'l' => local.to_owned(),
        'o' => sender_domain.to_owned(),
        'd' | 'h' => ctx.domain.to_owned(),
        'i' => match ctx.ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let mut s = String::new();
                for b in v6.octets() {
                    let _ = write!(s, "{:x}.{:x}.", b >> 4, b & 0x0f);
                }
                s.pop();
                s
            }
        },
        'v' => match ctx.ip {
            IpAddr::V4(_) => "in-addr".into(),
            IpAddr::V6(_) => "ip6".into(),
        },
        'c' => ctx.ip.to_string(),
        'r' => "unknown".into(),
        't' => "0".into(),
        // 'p': no validated reverse name during a configuration check.
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(s: &str) -> String {
        let ctx = MacroContext {
            sender: "strong-bad@email.example.com",
            domain: "email.example.com",
            ip: "192.0.2.3".parse().unwrap(),
        };
        parse_macro_string(s, false).unwrap().expand(&ctx)
    }

    #[test]
    fn rfc_7208_examples() {
        assert_eq!(expand("%{s}"), "strong-bad@email.example.com");
        assert_eq!(expand("%{o}"), "email.example.com");
        assert_eq!(expand("%{d}"), "email.example.com");
        assert_eq!(expand("%{d4}"), "email.example.com");
        assert_eq!(expand("%{d3}"), "email.example.com");
        assert_eq!(expand("%{d2}"), "example.com");
        assert_eq!(expand("%{d1}"), "com");
        assert_eq!(expand("%{dr}"), "com.example.email");
        assert_eq!(expand("%{d2r}"), "example.email");
        assert_eq!(expand("%{l}"), "strong-bad");
        assert_eq!(expand("%{l-}"), "strong.bad");
        assert_eq!(expand("%{lr}"), "strong-bad");
        assert_eq!(expand("%{lr-}"), "bad.strong");
        assert_eq!(expand("%{l1r-}"), "strong");
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}"),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            expand("%{lr-}.lp._spf.%{d2}"),
            "bad.strong.lp._spf.example.com"
        );
    }

    #[test]
    fn ipv6_i_macro_is_nibbles() {
        let ctx = MacroContext {
            sender: "a@b.example",
            domain: "b.example",
            ip: "2001:db8::cb01".parse().unwrap(),
        };
        let got = parse_macro_string("%{ir}.%{v}._spf.%{d2}", false)
            .unwrap()
            .expand(&ctx);
        assert_eq!(
            got,
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.b.example"
        );
    }

    #[test]
    fn rejects_bad_macros() {
        assert!(parse_macro_string("%{x}", false).is_err());
        assert!(parse_macro_string("%{d0}", false).is_err());
        assert!(parse_macro_string("%{c}", false).is_err());
        assert!(parse_macro_string("%{c}", true).is_ok());
        assert!(parse_macro_string("%{d", false).is_err());
        assert!(parse_macro_string("50%", false).is_err());
        assert!(parse_macro_string("%a", false).is_err());
    }
}
