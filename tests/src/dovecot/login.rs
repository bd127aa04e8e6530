//! One question a test asks a mailbox server again and again: does this
//! password get accepted on this kind of connection, from this address?
//! Answered as a typed outcome plus the transcript, for IMAP and POP3.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::conn::Security;
use super::imap::{ImapClient, Status};
use super::pop3::Pop3Client;
use crate::Netns;

/// How the client reaches the point of sending its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginPath {
    /// On the plain connection (143, 110): what must be refused unless
    /// the server treats the connection as secure.
    Plaintext,
    /// After STARTTLS (IMAP) or STLS (POP3) on the plain port.
    StartTls,
    /// On an implicit-TLS port (993, 995).
    ImplicitTls,
}

/// What the server did with the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Logged in.
    LoggedIn,
    /// Refused because the connection is not secure (IMAP
    /// `[PRIVACYREQUIRED]`, Dovecot's "Plaintext authentication disallowed").
    PrivacyRequired,
    /// Refused for another reason (wrong password, STARTTLS refused...);
    /// the server's words.
    Refused(String),
    /// The server closed the connection before its greeting (e.g. a PROXY
    /// listener given no header, or a plain client on a TLS port).
    NoGreeting,
}

/// One login attempt: its outcome and the whole session (password masked).
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    /// What happened.
    pub outcome: LoginOutcome,
    /// Both directions of the session.
    pub transcript: String,
}

/// Where and how to try a login.
#[derive(Debug, Clone)]
pub struct LoginTarget<'a> {
    /// The namespace the client runs in.
    pub ns: &'a Netns,
    /// Its source address (`None`: whatever routing picks).
    pub local: Option<IpAddr>,
    /// The server.
    pub addr: SocketAddr,
    /// Bytes sent before anything else (a PROXY v1/v2 header).
    pub proxy_header: Option<Vec<u8>>,
    /// Per-step timeout.
    pub timeout: Duration,
}

impl<'a> LoginTarget<'a> {
    /// `addr` from `local` in `ns`, no PROXY header, 10 s per step.
    pub fn new(ns: &'a Netns, local: Option<IpAddr>, addr: SocketAddr) -> Self {
        Self {
            ns,
            local,
            addr,
            proxy_header: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// The same target with a PROXY header sent first.
    pub fn with_proxy_header(mut self, header: Vec<u8>) -> Self {
        self.proxy_header = Some(header);
        self
    }
}

fn security(path: LoginPath) -> Security {
    match path {
        LoginPath::ImplicitTls => Security::ImplicitTls,
        LoginPath::Plaintext | LoginPath::StartTls => Security::Plain,
    }
}

/// Tries `LOGIN user password` over IMAP along `path`, then logs out.
pub fn imap_login(
    target: &LoginTarget<'_>,
    path: LoginPath,
    user: &str,
    password: &str,
) -> anyhow::Result<LoginAttempt> {
    let mut client = match ImapClient::try_connect(
        target.ns,
        target.local,
        target.addr,
        target.proxy_header.as_deref(),
        security(path),
        target.timeout,
    )? {
        Ok(client) => client,
        Err(transcript) => {
            return Ok(LoginAttempt {
                outcome: LoginOutcome::NoGreeting,
                transcript,
            });
        }
    };
    if path == LoginPath::StartTls {
        let r = client.starttls()?;
        if r.status != Status::Ok {
            return Ok(LoginAttempt {
                outcome: LoginOutcome::Refused(format!("STARTTLS: {}", r.text)),
                transcript: client.transcript().to_owned(),
            });
        }
    }
    let r = client.login(user, password)?;
    let outcome = if r.status == Status::Ok {
        LoginOutcome::LoggedIn
    } else if r.privacy_required() {
        LoginOutcome::PrivacyRequired
    } else {
        LoginOutcome::Refused(r.text.clone())
    };
    let transcript = client.transcript().to_owned();
    client.logout()?;
    Ok(LoginAttempt {
        outcome,
        transcript,
    })
}

/// Tries `USER`/`PASS` over POP3 along `path`, then quits.
pub fn pop3_login(
    target: &LoginTarget<'_>,
    path: LoginPath,
    user: &str,
    password: &str,
) -> anyhow::Result<LoginAttempt> {
    let mut client = match Pop3Client::try_connect(
        target.ns,
        target.local,
        target.addr,
        target.proxy_header.as_deref(),
        security(path),
        target.timeout,
    )? {
        Ok(client) => client,
        Err(transcript) => {
            return Ok(LoginAttempt {
                outcome: LoginOutcome::NoGreeting,
                transcript,
            });
        }
    };
    if path == LoginPath::StartTls {
        let r = client.stls()?;
        if !r.ok {
            return Ok(LoginAttempt {
                outcome: LoginOutcome::Refused(format!("STLS: {}", r.text)),
                transcript: client.transcript().to_owned(),
            });
        }
    }
    let r = client.user_pass(user, password)?;
    let outcome = if r.ok {
        LoginOutcome::LoggedIn
    } else if r.privacy_required() {
        LoginOutcome::PrivacyRequired
    } else {
        LoginOutcome::Refused(r.text.clone())
    };
    let transcript = client.transcript().to_owned();
    client.quit()?;
    Ok(LoginAttempt {
        outcome,
        transcript,
    })
}
