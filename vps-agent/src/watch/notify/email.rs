//! The e-mail channel: the VPS agent delivers each alert itself, straight to
//! the recipient domain's MX, from the VPS address — no relay, no home (an
//! address outside your own domain gets it while home is down), and SPF
//! passes because the sender's domain authorises the VPS address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_dnscheck::{Lookup, LookupError};
use ceres_smtp::{Reply, SmtpConn, SmtpError};
use rustls::pki_types::ServerName;

use super::Message;
use crate::watch::dns::Resolver;
use crate::watch::settings::MailAddress;

/// Bounds the connect and each reply (RFC 5321 4.5.3.2 allows servers
/// minutes; an alert that waits that long is retried instead).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line written (RFC 5322 allows 998 characters).
const MAX_LINE: usize = 900;

/// Why an alert mail was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The recipient domain's MX could not be found.
    #[error("MX of {domain}: {reason}")]
    Mx {
        /// The domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// A server refused for good (5xx): other MX hosts would too.
    #[error("{server} refused it: {reply}")]
    Rejected {
        /// Which MX.
        server: String,
        /// Its answer.
        reply: String,
    },
    /// No MX host took it (each one's reason).
    #[error("no MX host of {domain} took it: {tries}")]
    Undelivered {
        /// The domain.
        domain: String,
        /// What each host said, `; `-separated.
        tries: String,
    },
}

/// Sends alert mail.
#[derive(Debug, Clone)]
pub struct Mailer {
    /// Envelope and header sender.
    pub from: MailAddress,
    /// EHLO name: the mail host (its PTR names it).
    pub helo: String,
    /// The VPS addresses: connections leave from the one of the MX's family.
    pub sources: Vec<IpAddr>,
    /// Where MX questions go.
    pub resolver: Resolver,
}

/// A try failed: for good (stop) or for now (next address or host).
enum Try {
    Permanent(String),
    Transient(String),
}

impl Mailer {
    /// Delivers `msg` to `to`; `Ok` with what the server said and which one.
    pub async fn deliver(&self, to: &MailAddress, msg: &Message) -> Result<String, MailError> {
        let domain = to.domain().to_owned();
        let lookup = self.resolver.lookup().map_err(|e| MailError::Mx {
            domain: domain.clone(),
            reason: e.to_string(),
        })?;
        let hosts = mx_hosts(&lookup, &domain).await?;
        let data = compose(&self.from, to, msg, &self.helo);
        let mut tries = Vec::new();
        for host in hosts {
            let addrs = self.addresses(&lookup, &host).await;
            if addrs.is_empty() {
                tries.push(format!("{host}: no address to reach it from the VPS"));
            }
            for ip in addrs {
                let server = format!("{host} [{ip}]");
                match self.attempt(&host, ip, to, &data, true).await {
                    Ok(reply) => return Ok(format!("{server} accepted it: {reply}")),
                    Err(Try::Permanent(reply)) => {
                        return Err(MailError::Rejected { server, reply });
                    }
                    Err(Try::Transient(why)) => tries.push(format!("{server}: {why}")),
                }
            }
        }
        Err(MailError::Undelivered {
            domain,
            tries: tries.join("; "),
        })
    }

    /// The host's addresses of the families the VPS can send from.
    async fn addresses<L: Lookup>(&self, lookup: &L, host: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        if self.sources.iter().any(IpAddr::is_ipv4) {
            if let Ok(v4) = lookup.a(host).await {
                out.extend(v4.into_iter().map(IpAddr::V4));
            }
        }
        if self.sources.iter().any(IpAddr::is_ipv6) {
            if let Ok(v6) = lookup.aaaa(host).await {
                out.extend(v6.into_iter().map(IpAddr::V6));
            }
        }
        out
    }

    /// One SMTP transaction with `ip`. STARTTLS when offered (verified
    /// against the system's CAs); when the handshake fails, once more in
    /// plain text, as MTAs do at their opportunistic level.
    async fn attempt(
        &self,
        host: &str,
        ip: IpAddr,
        to: &MailAddress,
        data: &str,
        try_tls: bool,
    ) -> Result<String, Try> {
        let transient = |e: SmtpError| Try::Transient(e.to_string());
        let mut c = self
            .connect(SocketAddr::new(ip, 25))
            .await
            .map_err(transient)?;
        expect(c.read_reply().await.map_err(transient)?, 220)?;
        let mut ehlo = c
            .command(&format!("EHLO {}", self.helo))
            .await
            .map_err(transient)?;
        if !ehlo.is_positive() {
            ehlo = c
                .command(&format!("HELO {}", self.helo))
                .await
                .map_err(transient)?;
        }
        expect(ehlo.clone(), 250)?;
        let mut tls = false;
        if try_tls && ehlo.has_extension("STARTTLS") {
            expect(c.command("STARTTLS").await.map_err(transient)?, 220)?;
            let handshake = match (
                ceres_smtp::tls_connector(None),
                ServerName::try_from(host.to_owned()),
            ) {
                (Ok(connector), Ok(name)) => c.start_tls(&connector, name).await,
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(SmtpError::Tls(e.to_string())),
            };
            if let Err(e) = handshake {
                tracing::info!(mx = host, %ip, error = %e, "STARTTLS failed: delivering the alert without TLS");
                return Box::pin(self.attempt(host, ip, to, data, false)).await;
            }
            tls = true;
            expect(
                c.command(&format!("EHLO {}", self.helo))
                    .await
                    .map_err(transient)?,
                250,
            )?;
        }
        expect(
            c.command(&format!("MAIL FROM:<{}>", self.from))
                .await
                .map_err(transient)?,
            250,
        )?;
        expect(
            c.command(&format!("RCPT TO:<{to}>"))
                .await
                .map_err(transient)?,
            250,
        )?;
        expect(c.command("DATA").await.map_err(transient)?, 354)?;
        let done = expect(c.send_data(data).await.map_err(transient)?, 250)?;
        let _ = c.quit().await;
        Ok(format!(
            "{}{}",
            done.text(),
            if tls { " (TLS)" } else { "" }
        ))
    }

    /// From the VPS address of the destination's family; from whatever the
    /// routing picks when that address is not on this host (a VPS behind
    /// 1:1 NAT, whose public address its provider maps to a private one).
    async fn connect(&self, addr: SocketAddr) -> Result<SmtpConn, SmtpError> {
        let from = self
            .sources
            .iter()
            .find(|s| s.is_ipv4() == addr.is_ipv4())
            .copied();
        match SmtpConn::connect_from(addr, from, SMTP_TIMEOUT).await {
            Err(SmtpError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                SmtpConn::connect_from(addr, None, SMTP_TIMEOUT).await
            }
            other => other,
        }
    }
}

/// `reply` if it has `code` (2xx/3xx of that class); a 5xx is permanent,
/// anything else transient.
fn expect(reply: Reply, code: u16) -> Result<Reply, Try> {
    if reply.code / 100 == code / 100 {
        return Ok(reply);
    }
    let text = clean(&reply.text());
    if reply.code >= 500 {
        Err(Try::Permanent(text))
    } else {
        Err(Try::Transient(text))
    }
}

/// The MX hosts of `domain`, best first; the domain itself when it has no
/// MX but exists (RFC 5321 5.1, the implicit MX); an error for a null MX.
async fn mx_hosts<L: Lookup>(lookup: &L, domain: &str) -> Result<Vec<String>, MailError> {
    let err = |reason: String| MailError::Mx {
        domain: domain.to_owned(),
        reason,
    };
    match lookup.mx(domain).await {
        Ok(mut mxs) => {
            if mxs.iter().any(|m| m.exchange.is_empty()) {
                return Err(err(
                    "it publishes a null MX (RFC 7505): the domain takes no mail".into(),
                ));
            }
            mxs.sort_by_key(|m| m.preference);
            Ok(mxs.into_iter().map(|m| m.exchange).collect())
        }
        Err(LookupError::NoData { .. }) => Ok(vec![domain.to_owned()]),
        Err(e) => Err(err(e.to_string())),
    }
}

/// `s` on one line, printable ASCII only: header values and replies shown.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The message: plain 7-bit text (anything else becomes `?`: no encoding
/// to get wrong, and nothing in a finding can break out of the body), lines
/// kept under RFC 5322's limit.
pub fn compose(from: &MailAddress, to: &MailAddress, msg: &Message, helo: &str) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(msg.at_unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let id = format!("<{}.{:016x}@{helo}>", msg.at_unix, rand::random::<u64>());
    let mut out = format!(
        "Date: {date}\nFrom: CERES alerts <{from}>\nTo: <{to}>\nSubject: {}\n\
         Message-ID: {id}\nAuto-Submitted: auto-generated\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\n",
        clean(&msg.title)
    );
    for line in msg.text.lines() {
        let line = clean(line);
        let mut rest = line.as_str();
        while rest.len() > MAX_LINE {
            let (head, tail) = rest.split_at(MAX_LINE);
            out.push_str(head);
            out.push('\n');
            rest = tail;
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_dnscheck::FakeLookup;

    #[tokio::test]
    async fn mx_hosts_sorted_implicit_and_null() {
        let dns = FakeLookup::new()
            .with_mx("example.net", 20, "mx2.example.net")
            .with_mx("example.net", 10, "mx1.example.net")
            .with_a("bare.example", "192.0.2.1".parse().unwrap())
            .with_mx("nomail.example", 0, "");
        assert_eq!(
            mx_hosts(&dns, "example.net").await.unwrap(),
            ["mx1.example.net", "mx2.example.net"]
        );
        assert_eq!(
            mx_hosts(&dns, "bare.example").await.unwrap(),
            ["bare.example"]
        );
        let e = mx_hosts(&dns, "nomail.example").await.unwrap_err();
        assert!(e.to_string().contains("null MX"), "{e}");
    }

    #[test]
    fn the_message_is_plain_ascii_with_its_headers_alone() {
        let msg = Message {
            kind: crate::watch::state::EventKind::Failing,
            title: "[mail.example.com] FAILING: DNS blocklists\nBcc: x@evil.example".into(),
            text: format!(
                "line one é\nBcc: in the body is harmless\n{}",
                "x".repeat(2000)
            ),
            at_unix: 1_700_000_000,
            json: serde_json::Value::Null,
        };
        let from: MailAddress = "ceres-alerts@example.com".parse().unwrap();
        let to: MailAddress = "ops@example.net".parse().unwrap();
        let m = compose(&from, &to, &msg, "mail.example.com");
        let (head, body) = m.split_once("\n\n").unwrap();
        assert!(
            head.contains(
                "Subject: [mail.example.com] FAILING: DNS blocklists?Bcc: x@evil.example\n"
            ),
            "{head}"
        );
        assert!(!head.contains("\nBcc:"), "{head}");
        assert!(
            head.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"),
            "{head}"
        );
        assert!(head.contains("Auto-Submitted: auto-generated"));
        assert!(body.starts_with("line one ?\n"), "{body}");
        assert!(m.is_ascii());
        assert!(m.lines().all(|l| l.len() <= MAX_LINE));
    }
}
