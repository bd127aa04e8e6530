//! A minimal IMAP client for the lab: greeting, CAPABILITY, STARTTLS,
//! LOGIN, LOGOUT — enough to ask a server whether it takes a password on
//! a given connection, and from which client address it thinks it came.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::bail;

use super::conn::{LineConn, Security};
use crate::Netns;

/// The status of a tagged IMAP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NO`: the command failed (e.g. the login was refused).
    No,
    /// `BAD`: the command was not acceptable (e.g. STARTTLS inside TLS).
    Bad,
}

/// A complete response to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The tagged status.
    pub status: Status,
    /// The response code in brackets after the status, if any, e.g.
    /// `PRIVACYREQUIRED`, `AUTHENTICATIONFAILED`, `CAPABILITY ...`.
    pub code: Option<String>,
    /// The rest of the tagged line.
    pub text: String,
    /// Untagged lines (`* ...`) that came before it, without the `* `.
    pub untagged: Vec<String>,
}

impl Response {
    /// Whether the server refused because the connection is not secure:
    /// RFC 5530's `[PRIVACYREQUIRED]`, or Dovecot's wording of it.
    pub fn privacy_required(&self) -> bool {
        self.status != Status::Ok
            && (self.code.as_deref() == Some("PRIVACYREQUIRED")
                || self.text.contains("Plaintext authentication disallowed"))
    }
}

/// An IMAP session.
#[derive(Debug)]
pub struct ImapClient {
    conn: LineConn,
    greeting: String,
    next_tag: u32,
}

impl ImapClient {
    /// Connects from inside `ns` (from source address `local` when given),
    /// sends `proxy_header` first when given, and reads the greeting, which
    /// must be `* OK` or `* PREAUTH`.
    pub fn connect(
        ns: &Netns,
        local: Option<IpAddr>,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        security: Security,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        match Self::try_connect(ns, local, addr, proxy_header, security, timeout)? {
            Ok(client) => Ok(client),
            Err(transcript) => {
                bail!("{addr} closed before an IMAP greeting; transcript:\n{transcript}")
            }
        }
    }

    /// `connect`, but a server that closes before greeting (what a PROXY
    /// listener does with a connection that has no valid header) is
    /// `Ok(Err(transcript))` rather than an error.
    pub fn try_connect(
        ns: &Netns,
        local: Option<IpAddr>,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        security: Security,
        timeout: Duration,
    ) -> anyhow::Result<Result<Self, String>> {
        Self::try_connect_in(&ns.name, local, addr, proxy_header, security, timeout)
    }

    /// `try_connect` by namespace name.
    pub(crate) fn try_connect_in(
        ns: &str,
        local: Option<IpAddr>,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        security: Security,
        timeout: Duration,
    ) -> anyhow::Result<Result<Self, String>> {
        let mut conn = LineConn::open(ns, local, addr, proxy_header, security, timeout)?;
        let Some(greeting) = conn.read_line()? else {
            return Ok(Err(conn.transcript().to_owned()));
        };
        if !(greeting.starts_with("* OK") || greeting.starts_with("* PREAUTH")) {
            bail!(
                "not an IMAP greeting: {greeting:?}; transcript:\n{}",
                conn.transcript()
            );
        }
        Ok(Ok(Self {
            conn,
            greeting,
            next_tag: 1,
        }))
    }

    /// The greeting line.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Whether the session is TLS now.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// Everything exchanged so far (passwords masked).
    pub fn transcript(&self) -> &str {
        self.conn.transcript()
    }

    /// Sends one command and reads up to its tagged response.
    pub fn command(&mut self, command: &str) -> anyhow::Result<Response> {
        self.command_shown(command, None)
    }

    fn command_shown(&mut self, command: &str, shown: Option<&str>) -> anyhow::Result<Response> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        let shown = shown.map(|s| format!("{tag} {s}"));
        self.conn
            .send_line(&format!("{tag} {command}"), shown.as_deref())?;
        let mut untagged = Vec::new();
        loop {
            let line = self.conn.expect_line()?;
            if let Some(rest) = line.strip_prefix("* ") {
                untagged.push(rest.to_owned());
                continue;
            }
            if line.starts_with("+ ") || line == "+" {
                bail!(
                    "unexpected continuation request; transcript:\n{}",
                    self.transcript()
                );
            }
            let Some(rest) = line.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) else {
                bail!(
                    "unexpected line {line:?}; transcript:\n{}",
                    self.transcript()
                );
            };
            return parse_tagged(rest, untagged)
                .ok_or_else(|| anyhow::anyhow!("bad tagged response {line:?}"));
        }
    }

    /// `CAPABILITY`: the capability names.
    pub fn capabilities(&mut self) -> anyhow::Result<Vec<String>> {
        let r = self.command("CAPABILITY")?;
        Ok(r.untagged
            .iter()
            .filter_map(|l| l.strip_prefix("CAPABILITY "))
            .flat_map(|l| l.split(' ').map(str::to_owned))
            .collect())
    }

    /// `STARTTLS`; on `OK` the TLS handshake follows at once.
    pub fn starttls(&mut self) -> anyhow::Result<Response> {
        let r = self.command("STARTTLS")?;
        if r.status == Status::Ok {
            self.conn.start_tls()?;
        }
        Ok(r)
    }

    /// `LOGIN user password` (both quoted); the transcript masks the password.
    pub fn login(&mut self, user: &str, password: &str) -> anyhow::Result<Response> {
        let cmd = format!("LOGIN {} {}", quote(user), quote(password));
        let shown = format!("LOGIN {} \"****\"", quote(user));
        self.command_shown(&cmd, Some(&shown))
    }

    /// `LOGOUT` (a server that already closed is fine).
    pub fn logout(mut self) -> anyhow::Result<()> {
        if self
            .conn
            .send_line(&format!("a{} LOGOUT", self.next_tag), None)
            .is_err()
        {
            return Ok(());
        }
        while let Some(line) = self.conn.read_line()? {
            if line.starts_with(&format!("a{} ", self.next_tag)) {
                break;
            }
        }
        Ok(())
    }
}

/// `STATUS [CODE] text` after the tag.
fn parse_tagged(rest: &str, untagged: Vec<String>) -> Option<Response> {
    let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = match word.to_ascii_uppercase().as_str() {
        "OK" => Status::Ok,
        "NO" => Status::No,
        "BAD" => Status::Bad,
        _ => return None,
    };
    let (code, text) = match after.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((code, text)) => (Some(code.to_owned()), text.trim_start().to_owned()),
        None => (None, after.to_owned()),
    };
    Some(Response {
        status,
        code,
        text,
        untagged,
    })
}

/// An IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
