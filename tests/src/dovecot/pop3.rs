//! A minimal POP3 client for the lab: greeting, STLS, USER/PASS, QUIT.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::bail;

use super::conn::{LineConn, Security};
use crate::Netns;

/// One POP3 reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `+OK` (true) or `-ERR` (false).
    pub ok: bool,
    /// The text after the status word.
    pub text: String,
}

impl Reply {
    /// Whether the server refused because the connection is not secure
    /// (Dovecot: `-ERR [AUTH] Plaintext authentication disallowed ...`).
    pub fn privacy_required(&self) -> bool {
        !self.ok && self.text.contains("Plaintext authentication disallowed")
    }
}

/// A POP3 session.
#[derive(Debug)]
pub struct Pop3Client {
    conn: LineConn,
    greeting: String,
}

impl Pop3Client {
    /// Connects from inside `ns` (from `local` when given), sends
    /// `proxy_header` first when given, and reads the `+OK` greeting.
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
                bail!("{addr} closed before a POP3 greeting; transcript:\n{transcript}")
            }
        }
    }

    /// `connect`, but a server that closes before greeting is
    /// `Ok(Err(transcript))` rather than an error.
    pub fn try_connect(
        ns: &Netns,
        local: Option<IpAddr>,
        addr: SocketAddr,
        proxy_header: Option<&[u8]>,
        security: Security,
        timeout: Duration,
    ) -> anyhow::Result<Result<Self, String>> {
        let mut conn = LineConn::open(&ns.name, local, addr, proxy_header, security, timeout)?;
        let Some(greeting) = conn.read_line()? else {
            return Ok(Err(conn.transcript().to_owned()));
        };
        if !greeting.starts_with("+OK") {
            bail!(
                "not a POP3 greeting: {greeting:?}; transcript:\n{}",
                conn.transcript()
            );
        }
        Ok(Ok(Self { conn, greeting }))
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

    /// Sends one command and reads its (single-line) reply.
    pub fn command(&mut self, command: &str) -> anyhow::Result<Reply> {
        self.command_shown(command, None)
    }

    fn command_shown(&mut self, command: &str, shown: Option<&str>) -> anyhow::Result<Reply> {
        self.conn.send_line(command, shown)?;
        let line = self.conn.expect_line()?;
        if let Some(text) = line.strip_prefix("+OK") {
            return Ok(Reply {
                ok: true,
                text: text.trim_start().to_owned(),
            });
        }
        if let Some(text) = line.strip_prefix("-ERR") {
            return Ok(Reply {
                ok: false,
                text: text.trim_start().to_owned(),
            });
        }
        bail!(
            "not a POP3 reply: {line:?}; transcript:\n{}",
            self.transcript()
        )
    }

    /// `STLS`; on `+OK` the TLS handshake follows at once.
    pub fn stls(&mut self) -> anyhow::Result<Reply> {
        let r = self.command("STLS")?;
        if r.ok {
            self.conn.start_tls()?;
        }
        Ok(r)
    }

    /// `USER` then, if the server took it, `PASS`; returns the reply that
    /// decided (USER's `-ERR`, or PASS's reply). The transcript masks the
    /// password.
    pub fn user_pass(&mut self, user: &str, password: &str) -> anyhow::Result<Reply> {
        let r = self.command(&format!("USER {user}"))?;
        if !r.ok {
            return Ok(r);
        }
        self.command_shown(&format!("PASS {password}"), Some("PASS ****"))
    }

    /// `QUIT` (a server that already closed is fine).
    pub fn quit(mut self) -> anyhow::Result<()> {
        if self.conn.send_line("QUIT", None).is_ok() {
            let _ = self.conn.read_line()?;
        }
        Ok(())
    }
}
