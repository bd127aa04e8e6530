//! SPF record syntax (RFC 7208 section 4.6 and 12): terms, qualifiers, CIDR lengths,
//! macro-strings. Syntax errors name the offending term, since the fix is to edit it.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::macros::{MacroString, parse_macro_string};

/// What a matching mechanism means (RFC 7208 4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qualifier {
    /// `+` (the default): the address is authorised.
    Pass,
    /// `-`: the address is not authorised.
    Fail,
    /// `~`: probably not authorised.
    SoftFail,
    /// `?`: no statement.
    Neutral,
}

impl Qualifier {
    /// The qualifier character as written in a record.
    pub fn symbol(self) -> char {
        match self {
            Self::Pass => '+',
            Self::Fail => '-',
            Self::SoftFail => '~',
            Self::Neutral => '?',
        }
    }
}

/// An SPF mechanism with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`: always matches.
    All,
    /// `include:<domain-spec>`.
    Include(MacroString),
    /// `a[:<domain-spec>][/<cidr4>][//<cidr6>]`.
    A {
        /// Target, or the current domain when absent.
        domain: Option<MacroString>,
        /// IPv4 prefix length (32 when absent).
        cidr4: u8,
        /// IPv6 prefix length (128 when absent).
        cidr6: u8,
    },
    /// `mx[:<domain-spec>][/<cidr4>][//<cidr6>]`.
    Mx {
        /// Target, or the current domain when absent.
        domain: Option<MacroString>,
        /// IPv4 prefix length (32 when absent).
        cidr4: u8,
        /// IPv6 prefix length (128 when absent).
        cidr6: u8,
    },
    /// `ptr[:<domain-spec>]` (deprecated by RFC 7208, still evaluated).
    Ptr(Option<MacroString>),
    /// `ip4:<address>[/<prefix>]`.
    Ip4(Ipv4Addr, u8),
    /// `ip6:<address>[/<prefix>]`.
    Ip6(Ipv6Addr, u8),
    /// `exists:<domain-spec>`.
    Exists(MacroString),
}

/// One `[qualifier]mechanism` term, with its original text for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// What a match means.
    pub qualifier: Qualifier,
    /// What is matched.
    pub mechanism: Mechanism,
    /// The term as written, e.g. `-all` or `ip4:203.0.113.10`.
    pub text: String,
}

/// A parsed SPF record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfRecord {
    /// Mechanisms in evaluation order.
    pub directives: Vec<Directive>,
    /// `redirect=` target, used when no mechanism matched.
    pub redirect: Option<MacroString>,
    /// `exp=` target (only recorded; explanations are not fetched).
    pub explanation: Option<MacroString>,
}

impl SpfRecord {
    /// The `all` directive's qualifier, if the record has one.
    pub fn all_qualifier(&self) -> Option<Qualifier> {
        self.directives
            .iter()
            .find(|d| d.mechanism == Mechanism::All)
            .map(|d| d.qualifier)
    }
}

/// A syntax error in an SPF record: evaluation yields `permerror` (RFC 7208 4.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpfSyntaxError {
    /// The text does not start with `v=spf1`.
    #[error("not an SPF record: it must start with \"v=spf1\"")]
    NotSpf,
    /// A term that is neither a known mechanism nor a `name=value` modifier.
    #[error("unknown mechanism {0:?}")]
    UnknownMechanism(String),
    /// `ip4:` with something that is not an IPv4 address.
    #[error("invalid IPv4 address in {0:?}")]
    BadIp4(String),
    /// `ip6:` with something that is not an IPv6 address.
    #[error("invalid IPv6 address in {0:?}")]
    BadIp6(String),
    /// A prefix length out of range or not a number.
    #[error("invalid CIDR prefix length in {0:?}")]
    BadCidr(String),
    /// `include`, `exists`, `redirect` without a target, or a target with bad characters.
    #[error("missing or invalid domain in {0:?}")]
    BadDomain(String),
    /// A mechanism that takes no argument got one (e.g. `all:x`).
    #[error("unexpected argument in {0:?}")]
    UnexpectedArgument(String),
    /// `redirect=` or `exp=` given twice.
    #[error("modifier {0:?} appears more than once")]
    DuplicateModifier(String),
    /// A `%` sequence that is not valid macro syntax.
    #[error("invalid macro in {term:?}: {reason}")]
    BadMacro {
        /// The term containing the macro.
        term: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// True for a TXT string that is an SPF record (`v=spf1` then space or end).
pub fn is_spf_record(txt: &str) -> bool {
    let t = txt.trim_start();
    t.len() >= 6
        && t.as_bytes()[..6].eq_ignore_ascii_case(b"v=spf1")
        && (t.len() == 6 || t.as_bytes()[6] == b' ')
}

/// Parses a whole record; any syntax error anywhere fails the whole record.
pub fn parse_record(text: &str) -> Result<SpfRecord, SpfSyntaxError> {
    if !is_spf_record(text) {
        return Err(SpfSyntaxError::NotSpf);
    }
    let mut record = SpfRecord {
        directives: Vec::new(),
        redirect: None,
        explanation: None,
    };
    for term in text.trim_start()[6..].split(' ').filter(|t| !t.is_empty()) {
        parse_term(term, &mut record)?;
    }
    Ok(record)
}

fn parse_term(term: &str, record: &mut SpfRecord) -> Result<(), SpfSyntaxError> {
    // A modifier is `name=value` where name is ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
    if let Some((name, value)) = term.split_once('=') {
        let is_name = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if is_name {
            let lname = name.to_ascii_lowercase();
            let slot = match lname.as_str() {
                "redirect" => &mut record.redirect,
                "exp" => &mut record.explanation,
                // Unknown modifiers are ignored (RFC 7208 6), but their value must
                // still be a valid macro-string.
                _ => {
                    parse_macro_string(value, false).map_err(|reason| bad_macro(term, reason))?;
                    return Ok(());
                }
            };
            if slot.is_some() {
                return Err(SpfSyntaxError::DuplicateModifier(lname));
            }
            *slot = Some(domain_spec(term, value, lname == "exp")?);
            return Ok(());
        }
    }

    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    // The mechanism name ends at the first ':' or '/'.
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(split);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" => {
            if !args.is_empty() {
                return Err(SpfSyntaxError::UnexpectedArgument(term.to_owned()));
            }
            Mechanism::All
        }
        "include" => Mechanism::Include(required_domain(term, args)?),
        "exists" => Mechanism::Exists(required_domain(term, args)?),
        "a" | "mx" => {
            let (domain, cidr4, cidr6) = domain_and_dual_cidr(term, args)?;
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A {
                    domain,
                    cidr4,
                    cidr6,
                }
            } else {
                Mechanism::Mx {
                    domain,
                    cidr4,
                    cidr6,
                }
            }
        }
        "ptr" => {
            if args.starts_with('/') {
                return Err(SpfSyntaxError::UnexpectedArgument(term.to_owned()));
            }
            match args.strip_prefix(':') {
                Some(d) => Mechanism::Ptr(Some(domain_spec(term, d, false)?)),
                None => Mechanism::Ptr(None),
            }
        }
        "ip4" => {
            let arg = args
                .strip_prefix(':')
                .ok_or_else(|| SpfSyntaxError::BadIp4(term.to_owned()))?;
            let (addr, len) = split_cidr(term, arg, 32)?;
            let ip = addr
                .parse::<Ipv4Addr>()
                .map_err(|_| SpfSyntaxError::BadIp4(term.to_owned()))?;
            Mechanism::Ip4(ip, len)
        }
        "ip6" => {
            let arg = args
                .strip_prefix(':')
                .ok_or_else(|| SpfSyntaxError::BadIp6(term.to_owned()))?;
            let (addr, len) = split_cidr(term, arg, 128)?;
            let ip = addr
                .parse::<Ipv6Addr>()
                .map_err(|_| SpfSyntaxError::BadIp6(term.to_owned()))?;
            Mechanism::Ip6(ip, len)
        }
        _ => return Err(SpfSyntaxError::UnknownMechanism(term.to_owned())),
    };
    record.directives.push(Directive {
        qualifier,
        mechanism,
        text: term.to_owned(),
    });
    Ok(())
}

fn bad_macro(term: &str, reason: String) -> SpfSyntaxError {
    SpfSyntaxError::BadMacro {
        term: term.to_owned(),
        reason,
    }
}

fn required_domain(term: &str, args: &str) -> Result<MacroString, SpfSyntaxError> {
    let d = args
        .strip_prefix(':')
        .ok_or_else(|| SpfSyntaxError::BadDomain(term.to_owned()))?;
    domain_spec(term, d, false)
}

fn domain_spec(term: &str, spec: &str, is_exp: bool) -> Result<MacroString, SpfSyntaxError> {
    if spec.is_empty() {
        return Err(SpfSyntaxError::BadDomain(term.to_owned()));
    }
    let ms = parse_macro_string(spec, is_exp).map_err(|reason| bad_macro(term, reason))?;
    // A literal domain-spec must look like a domain: labels, no empty ones in the middle.
    if !ms.has_macros() {
        let d = spec.trim_end_matches('.');
        if d.is_empty() || d.split('.').any(str::is_empty) || !d.contains('.') {
            return Err(SpfSyntaxError::BadDomain(term.to_owned()));
        }
    }
    Ok(ms)
}

/// `[:domain][/cidr4][//cidr6]` for `a` and `mx`.
fn domain_and_dual_cidr(
    term: &str,
    args: &str,
) -> Result<(Option<MacroString>, u8, u8), SpfSyntaxError> {
    let (domain_part, cidr_part) = match args.find('/') {
        Some(i) => args.split_at(i),
        None => (args, ""),
    };
    let domain = match domain_part.strip_prefix(':') {
        Some(d) => Some(domain_spec(term, d, false)?),
        None if domain_part.is_empty() => None,
        None => return Err(SpfSyntaxError::UnknownMechanism(term.to_owned())),
    };
    let bad = || SpfSyntaxError::BadCidr(term.to_owned());
    let (mut cidr4, mut cidr6) = (32, 128);
    if !cidr_part.is_empty() {
        // "/n", "//m" or "/n//m".
        let (v4, v6) = match cidr_part.find("//") {
            Some(i) => (&cidr_part[..i], Some(&cidr_part[i + 2..])),
            None => (cidr_part, None),
        };
        if !v4.is_empty() {
            cidr4 = parse_len(v4.strip_prefix('/').ok_or_else(bad)?, 32).ok_or_else(bad)?;
        }
        if let Some(v6) = v6 {
            cidr6 = parse_len(v6, 128).ok_or_else(bad)?;
        }
    }
    Ok((domain, cidr4, cidr6))
}

fn split_cidr<'a>(term: &str, arg: &'a str, max: u8) -> Result<(&'a str, u8), SpfSyntaxError> {
    match arg.split_once('/') {
        Some((addr, len)) => Ok((
            addr,
            parse_len(len, max).ok_or_else(|| SpfSyntaxError::BadCidr(term.to_owned()))?,
        )),
        None => Ok((arg, max)),
    }
}

/// A decimal prefix length without leading zeros, at most `max`.
fn parse_len(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse::<u8>().ok().filter(|n| *n <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_record() {
        let r = parse_record(
            "v=spf1 ip4:203.0.113.10 ip6:2001:db8::/32 a mx:example.com/24//64 include:_spf.example.net ~all",
        )
        .unwrap();
        assert_eq!(r.directives.len(), 6);
        assert_eq!(
            r.directives[0].mechanism,
            Mechanism::Ip4("203.0.113.10".parse().unwrap(), 32)
        );
        assert_eq!(
            r.directives[1].mechanism,
            Mechanism::Ip6("2001:db8::".parse().unwrap(), 32)
        );
        assert!(matches!(
            r.directives[3].mechanism,
            Mechanism::Mx {
                cidr4: 24,
                cidr6: 64,
                ..
            }
        ));
        assert_eq!(r.all_qualifier(), Some(Qualifier::SoftFail));
    }

    #[test]
    fn recognises_spf_records() {
        assert!(is_spf_record("v=spf1"));
        assert!(is_spf_record("V=SPF1 -all"));
        assert!(!is_spf_record("v=spf10 -all"));
        assert!(!is_spf_record("v=DMARC1; p=none"));
    }

    #[test]
    fn names_syntax_errors() {
        let cases = [
            (
                "v=spf1 ip4:203.0.113.300 -all",
                SpfSyntaxError::BadIp4("ip4:203.0.113.300".into()),
            ),
            (
                "v=spf1 ip6:2001:db8::zz -all",
                SpfSyntaxError::BadIp6("ip6:2001:db8::zz".into()),
            ),
            (
                "v=spf1 ip4:192.0.2.0/33 -all",
                SpfSyntaxError::BadCidr("ip4:192.0.2.0/33".into()),
            ),
            ("v=spf1 a/024 -all", SpfSyntaxError::BadCidr("a/024".into())),
            (
                "v=spf1 foo:bar -all",
                SpfSyntaxError::UnknownMechanism("foo:bar".into()),
            ),
            (
                "v=spf1 include -all",
                SpfSyntaxError::BadDomain("include".into()),
            ),
            (
                "v=spf1 include:nodots -all",
                SpfSyntaxError::BadDomain("include:nodots".into()),
            ),
            (
                "v=spf1 -all:x",
                SpfSyntaxError::UnexpectedArgument("-all:x".into()),
            ),
            (
                "v=spf1 redirect=a.example redirect=b.example",
                SpfSyntaxError::DuplicateModifier("redirect".into()),
            ),
            ("spf1 -all", SpfSyntaxError::NotSpf),
        ];
        for (text, want) in cases {
            assert_eq!(parse_record(text), Err(want), "{text}");
        }
        assert!(matches!(
            parse_record("v=spf1 exists:%{q}.example.com -all"),
            Err(SpfSyntaxError::BadMacro { .. })
        ));
    }

    #[test]
    fn unknown_modifiers_are_ignored() {
        let r = parse_record("v=spf1 foo=bar -all").unwrap();
        assert_eq!(r.directives.len(), 1);
    }
}
