//! Which ports are relayed, and how: the parsed form of `CERES_RELAYS`.
//!
//! Syntax: a comma-separated list of entries `PUBLIC[:HOME][/OPTION]...`, e.g.
//! `25/proxy-v2,587/proxy-v2,993/proxy-v2,2525:25`.
//!
//! - `PUBLIC` is the port the VPS listens on; `HOME` is the port the home agent
//!   connects to on the mail server. `:` follows Docker's `-p PUBLIC:HOME` order, which
//!   docker-mailserver and mailcow users already know; `=` is accepted as a synonym
//!   (`2525=25` relays public 2525 to home 25).
//! - Options: `proxy-v1` / `proxy-v2` prefix each relayed connection with a PROXY
//!   protocol header carrying the real client address (none: plain TCP); `smtp` /
//!   `no-smtp` override whether the port speaks SMTP first, i.e. whether the VPS answers
//!   `421` when home is down (default: yes for public ports 25 and 587).
//! - Without `HOME`, a plain relay goes to the same port at home, and a PROXY relay
//!   to the mail server's **PROXY port** `10000 + PUBLIC` (25 → 10025, 587 → 10587,
//!   993 → 10993, 4190 → 14190, 443 → 10443; see [`proxy_home_port`]). A PROXY header
//!   must only be accepted where nothing but the home agent can connect, so the
//!   header-reading listeners are separate services on loopback, and the ordinary
//!   ports keep serving LAN clients without one. The numbers are the ones mailcow's
//!   own PROXY listeners already use (mailcow-dockerized `data/conf/postfix/master.cf`:
//!   10025 postscreen, 10465, 10587; `data/conf/dovecot/dovecot.conf`: 10143, 10993,
//!   10110, 10995, 14190 — read at commit 0642467 of 2026-08-05), so one convention
//!   serves every stack.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The relay list used when `CERES_RELAYS` is not set.
///
/// Every port carries the client's address (PROXY v2) to a loopback-only PROXY
/// listener at home ([`proxy_home_port`]): without it every internet client of
/// that port reaches the mail server from the home agent's address (127.0.0.1),
/// which Postfix trusts (`mynetworks`), Dovecot treats as a secured connection
/// (cleartext passwords allowed) and web apps' `allow 127.0.0.1` rules let in.
/// `cerectl mailserver-config postfix|dovecot|nginx --apply` adds those
/// listeners. Ports: 25 inbound MX; 465/587 submission; 993/143 IMAP;
/// 995/110 POP3; 4190 ManageSieve; 80/443 ACME challenges, autoconfig, webmail.
pub const DEFAULT_RELAYS: &str = "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,\
     143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,80/proxy-v2,443/proxy-v2";

/// The offset between a public port and its PROXY port at home.
pub const PROXY_PORT_OFFSET: u16 = 10000;

/// The home port a PROXY relay of `public_port` goes to when `CERES_RELAYS`
/// names none: `10000 + public_port` (`None` above 55535, where the entry must
/// name its home port).
pub const fn proxy_home_port(public_port: u16) -> Option<u16> {
    public_port.checked_add(PROXY_PORT_OFFSET)
}

/// The home port an entry without `:HOME` relays to.
fn default_home_port(public_port: u16, proxy: ProxyMode) -> Option<u16> {
    match proxy {
        ProxyMode::None => Some(public_port),
        ProxyMode::V1 | ProxyMode::V2 => proxy_home_port(public_port),
    }
}

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

impl ProxyMode {
    /// Every mode.
    pub const ALL: [ProxyMode; 3] = [ProxyMode::None, ProxyMode::V1, ProxyMode::V2];

    /// The mode's name: its option in `CERES_RELAYS` (`25/proxy-v2`), in the
    /// status (`RelayPort.proxy`, JSON `proxy`) and in advice. Plain has none
    /// (no option; `null` in JSON).
    pub fn option(self) -> Option<&'static str> {
        match self {
            ProxyMode::None => None,
            ProxyMode::V1 => Some("proxy-v1"),
            ProxyMode::V2 => Some("proxy-v2"),
        }
    }

    /// The mode an [`option`](Self::option) names, case-insensitively; `""`
    /// names plain. `None` for anything else.
    pub fn from_option(name: &str) -> Option<Self> {
        if name.is_empty() {
            return Some(ProxyMode::None);
        }
        Self::ALL
            .into_iter()
            .find(|m| m.option().is_some_and(|o| o.eq_ignore_ascii_case(name)))
    }

    /// For sentences: "PROXY v1", "PROXY v2", "none".
    pub fn label(self) -> &'static str {
        match self {
            ProxyMode::None => "none",
            ProxyMode::V1 => "PROXY v1",
            ProxyMode::V2 => "PROXY v2",
        }
    }
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
    /// A relay of `port` with the defaults for that port: to the same port at home
    /// when plain, to its PROXY port ([`proxy_home_port`], or the same port above
    /// 55535) with a header.
    pub fn new(port: u16, proxy: ProxyMode) -> Self {
        Self {
            public_port: port,
            home_port: default_home_port(port, proxy).unwrap_or(port),
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
    /// A PROXY relay of a port above 55535 has no default home port.
    #[error(
        "relay entry {entry:?}: a PROXY relay of port {port} needs its home port written out ({port}:HOME/proxy-v2): the default, {port} + 10000, is not a port"
    )]
    NoProxyPort {
        /// The whole entry as written.
        entry: String,
        /// The public port.
        port: u16,
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
        Some((p, h)) => (parse_port(entry, p)?, Some(parse_port(entry, h)?)),
        None => (parse_port(entry, ports)?, None),
    };
    let mut proxy = None;
    let mut smtp = None;
    for option in parts {
        let option = option.trim();
        let mode = Some(option)
            .filter(|o| !o.is_empty())
            .and_then(ProxyMode::from_option);
        let (slot_proxy, slot_smtp) = match option.to_ascii_lowercase().as_str() {
            _ if mode.is_some() => (mode, None),
            "smtp" => (None, Some(true)),
            "no-smtp" => (None, Some(false)),
            _ => {
                return Err(SpecError::BadOption {
                    entry: entry.to_owned(),
                    option: option.to_owned(),
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
    let proxy = proxy.unwrap_or(ProxyMode::None);
    let home = match home {
        Some(h) => h,
        None => default_home_port(public, proxy).ok_or_else(|| SpecError::NoProxyPort {
            entry: entry.to_owned(),
            port: public,
        })?,
    };
    Ok(RelaySpec {
        public_port: public,
        home_port: home,
        proxy,
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

impl RelaySpec {
    /// The entry with its home port always written out (`25:10025/proxy-v2`): what
    /// the VPS sends to home, so both ends agree on the port even when their
    /// versions' defaults differ.
    pub fn explicit(&self) -> String {
        let short = self.to_string();
        if short.contains(':') {
            return short;
        }
        let (port, options) = short.split_at(short.find('/').unwrap_or(short.len()));
        format!("{port}:{}{options}", self.home_port)
    }
}

impl fmt::Display for RelaySpec {
    /// Writes the canonical entry form, which [`parse_relays`] reads back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.public_port)?;
        if Some(self.home_port) != default_home_port(self.public_port, self.proxy) {
            write!(f, ":{}", self.home_port)?;
        }
        if let Some(option) = self.proxy.option() {
            write!(f, "/{option}")?;
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
        // Every port carries the client address, to its loopback PROXY port.
        for r in &relays {
            assert_eq!(r.proxy, ProxyMode::V2, "{r}");
            assert_eq!(r.home_port, r.public_port + 10000, "{r}");
        }
        assert_eq!(by_port(4190).home_port, 14190);
    }

    #[test]
    fn each_proxy_mode_has_one_name_read_back_as_itself() {
        for mode in ProxyMode::ALL {
            let name = mode.option().unwrap_or("");
            assert_eq!(ProxyMode::from_option(name), Some(mode), "{name:?}");
            let entry = format!(
                "2525{}",
                mode.option().map(|o| format!("/{o}")).unwrap_or_default()
            );
            assert_eq!(parse_relays(&entry).unwrap()[0].proxy, mode, "{entry}");
        }
        assert_eq!(ProxyMode::from_option("PROXY-V2"), Some(ProxyMode::V2));
        assert_eq!(ProxyMode::from_option("proxy-v3"), None);
        assert_eq!(ProxyMode::from_option("smtp"), None);
    }

    #[test]
    fn proxy_relays_default_to_the_proxy_port_plain_ones_to_the_same() {
        let r =
            parse_relays("25/proxy-v2,587/proxy-v1,143,2525:25/proxy-v2,26:26/proxy-v2").unwrap();
        let homes: Vec<u16> = r.iter().map(|r| r.home_port).collect();
        assert_eq!(homes, [10025, 10587, 143, 25, 26]);
        assert_eq!(RelaySpec::new(993, ProxyMode::V2).home_port, 10993);
        assert_eq!(RelaySpec::new(993, ProxyMode::None).home_port, 993);
        // No default above 55535: the entry must say where.
        assert_eq!(
            parse_relays("60000/proxy-v2").unwrap_err(),
            SpecError::NoProxyPort {
                entry: "60000/proxy-v2".into(),
                port: 60000
            }
        );
        assert_eq!(
            parse_relays("60000:6000/proxy-v2").unwrap()[0].home_port,
            6000
        );
        assert_eq!(parse_relays("60000").unwrap()[0].home_port, 60000);
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
        let list = "25/proxy-v2,2525:25/proxy-v1/smtp,993/proxy-v2,80,587/no-smtp,8025:25/smtp,26:26/proxy-v2,60000:6000/proxy-v1";
        let parsed = parse_relays(list).unwrap();
        let printed: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(printed.join(","), list);
        assert_eq!(parse_relays(&printed.join(",")).unwrap(), parsed);
        let explicit: Vec<String> = parsed.iter().map(RelaySpec::explicit).collect();
        assert_eq!(explicit[0], "25:10025/proxy-v2");
        assert_eq!(explicit[3], "80:80");
        assert_eq!(explicit[1], "2525:25/proxy-v1/smtp");
        assert_eq!(parse_relays(&explicit.join(",")).unwrap(), parsed);
    }
}
