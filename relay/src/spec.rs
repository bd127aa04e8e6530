//! Which ports are relayed, and how: the parsed form of `CERES_RELAYS`.
//!
//! Syntax: a comma-separated list of entries `PUBLIC[:HOME][/OPTION]...`, e.g.
//! `25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143,995,110,4190,80,443`.
//!
//! - `PUBLIC` is the port the VPS listens on; `HOME` (default: the same) is the port the
//!   VPS connects to on the home tunnel address. `:` follows Docker's `-p PUBLIC:HOME`
//!   order, which docker-mailserver and mailcow users already know; `=` is accepted as a
//!   synonym (`2525=25` relays public 2525 to home 25).
//! - Options: `proxy-v1` / `proxy-v2` prefix each relayed connection with a PROXY
//!   protocol header carrying the real client address (none: plain TCP); `smtp` /
//!   `no-smtp` override whether the port speaks SMTP first, i.e. whether the VPS answers
//!   `421` when home is down (default: yes for public ports 25 and 587).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The relay list used when `CERES_RELAYS` is not set.
///
/// Why each entry:
/// - `25/proxy-v2`: inbound MX traffic. Postfix's postscreen
///   (`postscreen_upstream_proxy_protocol = haproxy`) needs the real client address for
///   DNSBL checks, greylisting and SPF; without PROXY every sender looks like the tunnel.
/// - `465/proxy-v2`, `587/proxy-v2`: submission (implicit TLS and STARTTLS). Per-service
///   `-o smtpd_upstream_proxy_protocol=haproxy` in master.cf, so fail2ban and rate limits
///   see real clients.
/// - `993/proxy-v2`: IMAPS, Dovecot `haproxy = yes` listener, same reason (auth
///   failures are logged with the real address).
/// - `143`, `995`, `110`, `4190`: IMAP with STARTTLS, POP3S, POP3 and ManageSieve are
///   relayed plain because most setups have no haproxy listener for them and a PROXY
///   header sent to a server not expecting one breaks the connection outright.
/// - `80`, `443`: Let's Encrypt HTTP-01 challenges, autoconfig/autodiscover and webmail;
///   plain, because web servers need explicit setup for PROXY (nginx `proxy_protocol`).
pub const DEFAULT_RELAYS: &str =
    "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143,995,110,4190,80,443";

/// Whether a relayed connection starts with a PROXY protocol header, and which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyMode {
    /// Plain TCP: the home server sees the tunnel address as the client.
    None,
    /// PROXY protocol version 1 (text line).
    V1,
    /// PROXY protocol version 2 (binary).
    V2,
}

/// One relayed port: parsed from one `CERES_RELAYS` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RelaySpec {
    /// Port the VPS listens on (public side).
    pub public_port: u16,
    /// Port connected to on the home tunnel address (the forwarder's listening port).
    pub home_port: u16,
    /// PROXY header sent ahead of the client's bytes.
    pub proxy: ProxyMode,
    /// The protocol speaks first with an SMTP banner, so the VPS may answer `421` while
    /// home is unreachable (senders then retry later or try the next MX).
    pub smtp_banner: bool,
}

impl RelaySpec {
    /// A relay of `port` to the same port at home, with the defaults for that port.
    pub fn new(port: u16, proxy: ProxyMode) -> Self {
        Self {
            public_port: port,
            home_port: port,
            proxy,
            smtp_banner: smtp_banner_by_default(port),
        }
    }
}

impl RelaySpec {
    /// An SMTP port (25, 465, 587 on either side, or relayed with an SMTP
    /// banner): gets the SMTP idle timeout (RFC 5321 §4.5.3.2.7, 5 minutes)
    /// instead of the one sized for IMAP IDLE.
    pub fn is_smtp(&self) -> bool {
        self.smtp_banner
            || [self.public_port, self.home_port]
                .iter()
                .any(|p| matches!(p, 25 | 465 | 587))
    }
}

/// Ports whose clients wait for a plaintext SMTP banner: SMTP (25) and submission with
/// STARTTLS (587). 465 is implicit TLS, so a plaintext `421` would be garbage there.
pub fn smtp_banner_by_default(public_port: u16) -> bool {
    matches!(public_port, 25 | 587)
}

/// A `CERES_RELAYS` value that could not be parsed; names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The list or one of its entries is empty (e.g. `25,,587`).
    #[error("empty relay entry at position {position} (entries are separated by commas)")]
    Empty {
        /// 1-based position in the list.
        position: usize,
    },
    /// A port is not a number in 1..=65535.
    #[error("relay entry {entry:?}: {port:?} is not a port number (1-65535)")]
    BadPort {
        /// The whole entry as written.
        entry: String,
        /// The part that should have been a port.
        port: String,
    },
    /// An option after `/` is not known.
    #[error(
        "relay entry {entry:?}: unknown option {option:?} (known: proxy-v1, proxy-v2, smtp, no-smtp)"
    )]
    BadOption {
        /// The whole entry as written.
        entry: String,
        /// The unknown option.
        option: String,
    },
    /// Two options contradict each other (`/proxy-v1/proxy-v2`, `/smtp/no-smtp`).
    #[error("relay entry {entry:?}: conflicting options")]
    Conflict {
        /// The whole entry as written.
        entry: String,
    },
    /// The same public port is listed twice.
    #[error("relay entry {entry:?}: public port {port} is already relayed by an earlier entry")]
    Duplicate {
        /// The whole entry as written.
        entry: String,
        /// The repeated public port.
        port: u16,
    },
}

impl FromStr for RelaySpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_entry(s, 1)
    }
}

fn parse_port(entry: &str, text: &str) -> Result<u16, SpecError> {
    match text.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(SpecError::BadPort {
            entry: entry.to_owned(),
            port: text.trim().to_owned(),
        }),
    }
}

fn parse_entry(raw: &str, position: usize) -> Result<RelaySpec, SpecError> {
    let entry = raw.trim();
    if entry.is_empty() {
        return Err(SpecError::Empty { position });
    }
    let mut parts = entry.split('/');
    let ports = parts.next().unwrap_or_default();
    let (public, home) = match ports.split_once([':', '=']) {
        Some((p, h)) => (parse_port(entry, p)?, parse_port(entry, h)?),
        None => {
            let p = parse_port(entry, ports)?;
            (p, p)
        }
    };
    let mut proxy = None;
    let mut smtp = None;
    for option in parts {
        let (slot_proxy, slot_smtp) = match option.trim().to_ascii_lowercase().as_str() {
            "proxy-v1" => (Some(ProxyMode::V1), None),
            "proxy-v2" => (Some(ProxyMode::V2), None),
            "smtp" => (None, Some(true)),
            "no-smtp" => (None, Some(false)),
            _ => {
                return Err(SpecError::BadOption {
                    entry: entry.to_owned(),
                    option: option.trim().to_owned(),
                });
            }
        };
        if let Some(mode) = slot_proxy {
            if proxy.replace(mode).is_some_and(|old| old != mode) {
                return Err(SpecError::Conflict {
                    entry: entry.to_owned(),
                });
            }
        }
        if let Some(flag) = slot_smtp {
            if smtp.replace(flag).is_some_and(|old| old != flag) {
                return Err(SpecError::Conflict {
                    entry: entry.to_owned(),
                });
            }
        }
    }
    Ok(RelaySpec {
        public_port: public,
        home_port: home,
        proxy: proxy.unwrap_or(ProxyMode::None),
        smtp_banner: smtp.unwrap_or_else(|| smtp_banner_by_default(public)),
    })
}

/// Parses a whole `CERES_RELAYS` value. Public ports must be unique; order is kept.
pub fn parse_relays(list: &str) -> Result<Vec<RelaySpec>, SpecError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, raw) in list.split(',').enumerate() {
        let spec = parse_entry(raw, i + 1)?;
        if !seen.insert(spec.public_port) {
            return Err(SpecError::Duplicate {
                entry: raw.trim().to_owned(),
                port: spec.public_port,
            });
        }
        out.push(spec);
    }
    Ok(out)
}

/// The parsed [`DEFAULT_RELAYS`].
pub fn default_relays() -> Vec<RelaySpec> {
    // The constant is covered by a unit test, so this cannot fail at run time.
    parse_relays(DEFAULT_RELAYS).unwrap_or_default()
}

impl fmt::Display for RelaySpec {
    /// Writes the canonical entry form, which [`parse_relays`] reads back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.public_port)?;
        if self.home_port != self.public_port {
            write!(f, ":{}", self.home_port)?;
        }
        match self.proxy {
            ProxyMode::None => {}
            ProxyMode::V1 => f.write_str("/proxy-v1")?,
            ProxyMode::V2 => f.write_str("/proxy-v2")?,
        }
        if self.smtp_banner != smtp_banner_by_default(self.public_port) {
            f.write_str(if self.smtp_banner {
                "/smtp"
            } else {
                "/no-smtp"
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_parses_with_expected_modes() {
        let relays = default_relays();
        assert_eq!(relays.len(), 10);
        let by_port = |p: u16| relays.iter().find(|r| r.public_port == p).copied().unwrap();
        assert_eq!(by_port(25).proxy, ProxyMode::V2);
        assert!(by_port(25).smtp_banner);
        assert!(by_port(587).smtp_banner);
        assert!(!by_port(465).smtp_banner, "465 is implicit TLS");
        assert!(!by_port(993).smtp_banner);
        assert_eq!(by_port(143).proxy, ProxyMode::None);
        assert_eq!(by_port(443).home_port, 443);
    }

    #[test]
    fn mapping_modes_and_overrides() {
        let r = parse_relays("2525:25/proxy-v1, 26=2526/no-smtp/proxy-v2 ,8025/SMTP").unwrap();
        assert_eq!(
            r[0],
            RelaySpec {
                public_port: 2525,
                home_port: 25,
                proxy: ProxyMode::V1,
                smtp_banner: false
            }
        );
        assert_eq!((r[1].public_port, r[1].home_port), (26, 2526));
        assert_eq!(r[1].proxy, ProxyMode::V2);
        assert!(!r[1].smtp_banner);
        assert!(r[2].smtp_banner);
        assert_eq!(r[2].proxy, ProxyMode::None);
    }

    #[test]
    fn errors_name_the_bad_entry() {
        let e = parse_relays("25,abc/proxy-v2").unwrap_err();
        assert!(e.to_string().contains("\"abc/proxy-v2\""), "{e}");
        let e = parse_relays("25/proxy-v3").unwrap_err();
        assert!(e.to_string().contains("proxy-v3"), "{e}");
        assert_eq!(
            parse_relays("25,,587").unwrap_err(),
            SpecError::Empty { position: 2 }
        );
        assert!(matches!(parse_relays("0"), Err(SpecError::BadPort { .. })));
        assert!(matches!(
            parse_relays("65536"),
            Err(SpecError::BadPort { .. })
        ));
        assert!(matches!(
            parse_relays("25:"),
            Err(SpecError::BadPort { .. })
        ));
        assert!(matches!(
            parse_relays("25/proxy-v1/proxy-v2"),
            Err(SpecError::Conflict { .. })
        ));
        assert!(matches!(
            parse_relays("25/smtp/no-smtp"),
            Err(SpecError::Conflict { .. })
        ));
        let e = parse_relays("25,587,25:2525").unwrap_err();
        assert!(matches!(e, SpecError::Duplicate { port: 25, .. }), "{e}");
        assert!(matches!(
            parse_relays(""),
            Err(SpecError::Empty { position: 1 })
        ));
    }

    #[test]
    fn display_round_trips() {
        let list = "25/proxy-v2,2525:25/proxy-v1/smtp,993/proxy-v2,80,587/no-smtp,8025:25/smtp";
        let parsed = parse_relays(list).unwrap();
        let printed: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(printed.join(","), list);
        assert_eq!(parse_relays(&printed.join(",")).unwrap(), parsed);
    }
}
