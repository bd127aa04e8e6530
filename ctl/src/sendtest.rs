//! `cerectl send-test`: sends one real message through the VPS's public
//! address and prints every SMTP step, so an admin can prove the path mail
//! and applications (Keycloak, onboarding mail) will use.
//!
//! Port 25 without credentials (the path of mail from the internet), or
//! submission with TLS and AUTH when credentials are given: 587 with
//! STARTTLS, 465 with implicit TLS. A password is never sent in clear and is
//! never read from the command line (a file or `CERES_SMTP_PASSWORD`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::Args;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::cli::Cli;
use crate::smtp::{Reply, SmtpConn, SmtpError, tls_connector};
use crate::vps::{fetch_status, vps_part};

/// Env var that may hold the SMTP password (instead of `--password-file`).
pub const PASSWORD_ENV: &str = "CERES_SMTP_PASSWORD";

/// `send-test` arguments.
#[derive(Debug, Args)]
pub struct SendTestArgs {
    /// The recipient.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
    pub to: String,
    /// The sender; default the --user if it is an address, else postmaster@DOMAIN.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
    pub from: Option<String>,
    /// Where to connect (IP or host name); default the VPS's first public address.
    #[arg(long, value_name = "HOST")]
    pub server: Option<String>,
    /// 25 (default without credentials), 587 (default with; STARTTLS) or 465 (implicit TLS).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Require STARTTLS (always on for 587; on 25 only with this flag).
    #[arg(long)]
    pub starttls: bool,
    /// Log in as this user (needs TLS, and the password from --password-file
    /// or CERES_SMTP_PASSWORD).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// File holding the password (first line). Never on the command line.
    #[arg(long, value_name = "FILE", requires = "user")]
    pub password_file: Option<PathBuf>,
    /// Trust these CA certificates (PEM) for TLS instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry; default --server when
    /// it is a name, else the mail host.
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Name to greet with (EHLO); default our address as a literal, [IP].
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Give up on any single step after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// The mail domain (for the default sender and Message-ID); default the VPS's.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Reach the VPS here instead of the address stored at enrolment.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// Print one JSON document at the end (every step, and the outcome)
    /// instead of the lines as they happen; same exit codes.
    #[arg(long)]
    pub json: bool,
}

/// `send-test --json`: what was tried, every SMTP step, and the outcome.
#[derive(Debug, serde::Serialize)]
struct JsonReport<'a> {
    /// `IP:PORT` connected to.
    server: String,
    /// "none", "starttls" or "implicit".
    tls: &'static str,
    from: &'a str,
    to: &'a str,
    /// The Message-ID header of the test message, without brackets.
    message_id: &'a str,
    /// The server took the message (final 250).
    accepted: bool,
    /// The queue id from the final reply, when the server named one.
    queue_id: Option<String>,
    /// Each step as it happened: `step` ("connect", "banner", "EHLO", ...)
    /// and `text` (the server's reply, or what the step did).
    steps: Vec<JsonStep>,
    /// Where it stopped and why (null when accepted).
    failed: Option<JsonFailure>,
}

#[derive(Debug, serde::Serialize)]
struct JsonStep {
    step: String,
    text: String,
}

#[derive(Debug, serde::Serialize)]
struct JsonFailure {
    step: &'static str,
    reason: String,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain SMTP.
    None,
    /// `STARTTLS` after the first EHLO; refuse to go on without it.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// Login for submission. `Debug` hides the password.
#[derive(Clone)]
pub struct Login {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"MASKED")
            .finish()
    }
}

/// Everything one test send needs.
#[derive(Clone)]
pub struct Plan {
    /// Where to connect.
    pub server: SocketAddr,
    /// TLS mode.
    pub tls: TlsMode,
    /// TLS client (when `tls` is not `None`).
    pub connector: Option<TlsConnector>,
    /// Name checked in the server's certificate.
    pub tls_name: String,
    /// EHLO name; `None`: our address literal.
    pub helo: Option<String>,
    /// Envelope sender.
    pub from: String,
    /// Envelope recipient.
    pub to: String,
    /// Login, if any.
    pub login: Option<Login>,
    /// The message (headers and body).
    pub message: String,
    /// Per-step timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field("tls_name", &self.tls_name)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Where a send stopped.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct SendError {
    /// The step, e.g. "RCPT".
    pub step: &'static str,
    /// What happened.
    pub reason: String,
}

/// Why the connect failed, and when port 25 timed out, where else to try
/// from: submission on 587 is rarely blocked, but needs a user.
fn connect_failure(e: &SmtpError) -> String {
    if e.port25_timed_out() {
        format!(
            "{e}\n  {}; or submit as a user instead: `--port 587 --user USER --password-file FILE`",
            crate::smtp::PORT25_BLOCKED_HINT
        )
    } else {
        e.to_string()
    }
}

fn fail(step: &'static str, reason: impl std::fmt::Display) -> SendError {
    SendError {
        step,
        reason: reason.to_string(),
    }
}

/// The outcome of an accepted message.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The queue id in the final reply to DATA, if the server named one.
    pub queue_id: Option<String>,
}

/// Runs `cerectl send-test`.
pub async fn run(cli: &Cli, args: &SendTestArgs) -> anyhow::Result<ExitCode> {
    let password = match (&args.user, &args.password_file) {
        (None, _) => None,
        (Some(_), Some(path)) => Some(read_password(path)?),
        (Some(_), None) => Some(std::env::var(PASSWORD_ENV).map_err(|_| {
            anyhow::anyhow!("--user needs a password: --password-file FILE or {PASSWORD_ENV}")
        })?),
    };
    // Ask the VPS only for what the flags leave open.
    let needs_vps = args.server.is_none() || (args.domain.is_none() && args.from.is_none());
    let (domain, mail_host, public_ips) = if needs_vps {
        let resp = fetch_status(
            cli,
            args.address.as_deref(),
            "cannot get the VPS's address and domain (or give --server and --from)",
        )
        .await?;
        let vps = vps_part(&resp)?;
        (
            args.domain.clone().unwrap_or_else(|| vps.domain.clone()),
            Some(vps.mail_host.clone()).filter(|h| !h.is_empty()),
            vps.public_ips.clone(),
        )
    } else {
        let domain = match &args.domain {
            Some(d) => d.clone(),
            None => args
                .from
                .as_deref()
                .and_then(|f| f.rsplit_once('@'))
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
        };
        (domain, None, Vec::new())
    };
    let port = args
        .port
        .unwrap_or(if args.user.is_some() { 587 } else { 25 });
    let tls = match port {
        465 => TlsMode::Implicit,
        587 => TlsMode::StartTls,
        _ if args.starttls => TlsMode::StartTls,
        _ if args.user.is_some() => TlsMode::StartTls,
        _ => TlsMode::None,
    };
    let (server, server_name) = match &args.server {
        Some(host) => (resolve(host, port).await?, Some(host.clone())),
        None => {
            let ip: IpAddr = public_ips
                .first()
                .context("the VPS reports no public address: give --server")?
                .parse()
                .context("the VPS reported a bad public address")?;
            (SocketAddr::new(ip, port), None)
        }
    };
    let tls_name = args
        .tls_name
        .clone()
        .or_else(|| server_name.filter(|s| s.parse::<IpAddr>().is_err()))
        .or(mail_host)
        .unwrap_or_else(|| server.ip().to_string());
    let from = match (&args.from, &args.user) {
        (Some(f), _) => f.clone(),
        (None, Some(u)) if u.contains('@') => u.clone(),
        _ => format!("postmaster@{domain}"),
    };
    let connector = match tls {
        TlsMode::None => None,
        _ => Some(tls_connector(args.ca_file.as_deref())?),
    };
    let message_id = format!(
        "ceres-send-test.{}.{}@{}",
        unix_now(),
        std::process::id(),
        from.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost")
    );
    let plan = Plan {
        server,
        tls,
        connector,
        tls_name,
        helo: args.helo.clone(),
        message: compose(&from, &args.to, &message_id, server),
        from,
        to: args.to.clone(),
        login: args.user.clone().map(|user| Login {
            user,
            password: password.unwrap_or_default(),
        }),
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    if args.json {
        let mut steps = Vec::new();
        let outcome = send(&plan, &mut |step: &str, text: &str| {
            steps.push(JsonStep {
                step: step.to_owned(),
                text: text.to_owned(),
            });
        })
        .await;
        let accepted = outcome.is_ok();
        let (queue_id, failed) = match outcome {
            Ok(acc) => (acc.queue_id, None),
            Err(e) => (
                None,
                Some(JsonFailure {
                    step: e.step,
                    reason: e.reason,
                }),
            ),
        };
        let report = JsonReport {
            server: plan.server.to_string(),
            tls: match plan.tls {
                TlsMode::None => "none",
                TlsMode::StartTls => "starttls",
                TlsMode::Implicit => "implicit",
            },
            from: &plan.from,
            to: &plan.to,
            message_id: &message_id,
            accepted,
            queue_id,
            steps,
            failed,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(if accepted {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    println!(
        "send-test: {} -> {} via {} ({})",
        plan.from,
        plan.to,
        plan.server,
        match plan.tls {
            TlsMode::None => "plain SMTP",
            TlsMode::StartTls => "STARTTLS",
            TlsMode::Implicit => "implicit TLS",
        }
    );
    let mut print = |step: &str, text: &str| println!("  {step:<9} {text}");
    match send(&plan, &mut print).await {
        Ok(acc) => {
            println!(
                "delivered: the server accepted the message{} (Message-ID <{message_id}>)",
                acc.queue_id
                    .map(|q| format!(", queue id {q}"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED at {}: {}", e.step, e.reason);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs one SMTP session for `plan`, reporting each step to `out(step, text)`.
/// `Ok` only when the final reply to DATA is 250.
pub async fn send(plan: &Plan, out: &mut dyn FnMut(&str, &str)) -> Result<Accepted, SendError> {
    let mut c = SmtpConn::connect(plan.server, plan.timeout)
        .await
        .map_err(|e| fail("connect", connect_failure(&e)))?;
    out("connect", &format!("{} (from {})", c.peer(), c.local()));
    let name = ServerName::try_from(plan.tls_name.clone()).map_err(|_| {
        fail(
            "TLS",
            format!("{:?} is not a valid TLS name", plan.tls_name),
        )
    })?;
    if plan.tls == TlsMode::Implicit {
        handshake(&mut c, plan, name.clone()).await?;
        out(
            "TLS",
            &format!("handshake done, certificate valid for {}", plan.tls_name),
        );
    }
    let banner = c.read_reply().await.map_err(|e| fail("banner", e))?;
    out("banner", &banner.text());
    if banner.code != 220 {
        return Err(fail("banner", banner.first_line()));
    }
    let helo = plan.helo.clone().unwrap_or_else(|| match c.local().ip() {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    });
    let mut ehlo = step(&mut c, out, "EHLO", &format!("EHLO {helo}"), 250).await?;
    if plan.tls == TlsMode::StartTls {
        if !ehlo.has_extension("STARTTLS") {
            return Err(fail("STARTTLS", "the server does not offer STARTTLS"));
        }
        step(&mut c, out, "STARTTLS", "STARTTLS", 220).await?;
        handshake(&mut c, plan, name).await?;
        out(
            "TLS",
            &format!("handshake done, certificate valid for {}", plan.tls_name),
        );
        ehlo = step(&mut c, out, "EHLO", &format!("EHLO {helo}"), 250).await?;
    }
    if let Some(login) = &plan.login {
        if !c.is_tls() {
            return Err(fail("AUTH", "refusing to send a password without TLS"));
        }
        auth(&mut c, out, &ehlo, login).await?;
    }
    step(
        &mut c,
        out,
        "MAIL",
        &format!("MAIL FROM:<{}>", plan.from),
        250,
    )
    .await?;
    let rcpt = c
        .command(&format!("RCPT TO:<{}>", plan.to))
        .await
        .map_err(|e| fail("RCPT", e))?;
    out("RCPT", &rcpt.text());
    if !matches!(rcpt.code, 250 | 251) {
        let _ = c.quit().await;
        return Err(fail("RCPT", rcpt.first_line()));
    }
    step(&mut c, out, "DATA", "DATA", 354).await?;
    let done = c
        .send_data(&plan.message)
        .await
        .map_err(|e| fail("message", e))?;
    out("message", &done.text());
    if let Some(bye) = c.quit().await {
        out("QUIT", &bye.text());
    }
    if done.code != 250 {
        return Err(fail("message", done.first_line()));
    }
    Ok(Accepted {
        queue_id: done.queue_id(),
    })
}

/// Sends `command`, reports the reply, and insists on `want`.
async fn step(
    c: &mut SmtpConn,
    out: &mut dyn FnMut(&str, &str),
    label: &'static str,
    command: &str,
    want: u16,
) -> Result<Reply, SendError> {
    let reply = c.command(command).await.map_err(|e| fail(label, e))?;
    out(label, &reply.text());
    if reply.code != want {
        return Err(fail(label, reply.first_line()));
    }
    Ok(reply)
}

async fn handshake(
    c: &mut SmtpConn,
    plan: &Plan,
    name: ServerName<'static>,
) -> Result<(), SendError> {
    let connector = plan
        .connector
        .as_ref()
        .ok_or_else(|| fail("TLS", "no TLS configuration"))?;
    c.start_tls(connector, name).await.map_err(|e| match e {
        SmtpError::Tls(m) => fail("TLS", m),
        other => fail("TLS", other),
    })
}

/// AUTH PLAIN when offered, else LOGIN. The secret never reaches `out`.
async fn auth(
    c: &mut SmtpConn,
    out: &mut dyn FnMut(&str, &str),
    ehlo: &Reply,
    login: &Login,
) -> Result<(), SendError> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let mechs = ehlo.auth_mechanisms();
    let reply = if mechs.iter().any(|m| m == "PLAIN") {
        let token = b64(format!("\0{}\0{}", login.user, login.password).as_bytes());
        c.command(&format!("AUTH PLAIN {token}"))
            .await
            .map_err(|e| fail("AUTH", e))?
    } else if mechs.iter().any(|m| m == "LOGIN") {
        let r = c.command("AUTH LOGIN").await.map_err(|e| fail("AUTH", e))?;
        if r.code != 334 {
            out("AUTH", &r.text());
            return Err(fail("AUTH", r.first_line()));
        }
        let r = c
            .command(&b64(login.user.as_bytes()))
            .await
            .map_err(|e| fail("AUTH", e))?;
        if r.code != 334 {
            out("AUTH", &r.text());
            return Err(fail("AUTH", r.first_line()));
        }
        c.command(&b64(login.password.as_bytes()))
            .await
            .map_err(|e| fail("AUTH", e))?
    } else {
        return Err(fail(
            "AUTH",
            format!(
                "the server offers no PLAIN or LOGIN authentication (offers: {})",
                if mechs.is_empty() {
                    "none".into()
                } else {
                    mechs.join(" ")
                }
            ),
        ));
    };
    out("AUTH", &format!("{} (as {})", reply.text(), login.user));
    if reply.code != 235 {
        return Err(fail("AUTH", reply.first_line()));
    }
    Ok(())
}

/// The test message.
fn compose(from: &str, to: &str, message_id: &str, server: SocketAddr) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    format!(
        "From: <{from}>\n\
         To: <{to}>\n\
         Subject: CERES test message\n\
         Date: {date}\n\
         Message-ID: <{message_id}>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n\
         This is a test message sent by `cerectl send-test` through {server}.\n\
         If you can read it, mail reaches the mail server through CERES.\n"
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let pw = text.lines().next().unwrap_or_default().to_owned();
    anyhow::ensure!(
        !pw.is_empty(),
        "the password file {} is empty",
        path.display()
    );
    Ok(pw)
}

/// `local@domain`, without spaces, brackets or control characters (they
/// would end up inside SMTP commands).
fn parse_address(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = s
        .rsplit_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.ends_with('.'))
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a mail address (like someone@example.com)"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    #[test]
    fn addresses() {
        assert_eq!(parse_address(" a@example.com ").unwrap(), "a@example.com");
        for bad in [
            "a",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@example.com>",
            "a@x.",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn login_debug_hides_the_password() {
        let l = Login {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{l:?}").contains("hunter2"));
    }

    /// A tiny SMTP server: `script(line) -> reply` after each line; with
    /// `tls` it offers STARTTLS and switches to it. Returns what it heard.
    async fn serve<S>(stream: S, offers: &str) -> (Vec<String>, S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut heard = Vec::new();
        let mut r = BufReader::new(stream);
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let line = line.trim_end().to_owned();
            heard.push(line.clone());
            let reply: String = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                "250 2.0.0 Ok: queued as ABC123\r\n".into()
            } else if line.starts_with("EHLO") {
                format!("250-test.example\r\n{offers}250 8BITMIME\r\n")
            } else if line == "STARTTLS" {
                r.get_mut()
                    .write_all(b"220 2.0.0 go ahead\r\n")
                    .await
                    .unwrap();
                return (heard, r.into_inner());
            } else if line.starts_with("AUTH PLAIN") {
                "235 2.7.0 ok\r\n".into()
            } else if line == "DATA" {
                in_data = true;
                "354 go\r\n".into()
            } else if line == "QUIT" {
                r.get_mut().write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                "250 ok\r\n".into()
            };
            r.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
        (heard, r.into_inner())
    }

    #[test]
    fn a_timed_out_port_25_suggests_another_network_or_587() {
        let timeout = Duration::from_secs(20);
        let on = |port| SmtpError::ConnectTimeout {
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
            timeout,
        };
        let text = connect_failure(&on(25));
        assert!(
            text.contains("your ISP may block outbound port 25"),
            "{text}"
        );
        assert!(text.contains("--port 587 --user USER"), "{text}");
        // Only 25 is commonly blocked; refused is not a block.
        assert!(!connect_failure(&on(587)).contains("ISP"));
        let refused = SmtpError::Connect {
            addr: SocketAddr::from(([192, 0, 2, 1], 25)),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(!connect_failure(&refused).contains("ISP"));
    }

    fn plan(server: SocketAddr, tls: TlsMode, connector: Option<TlsConnector>) -> Plan {
        Plan {
            server,
            tls,
            connector,
            tls_name: "mail.example.test".into(),
            helo: None,
            from: "me@example.test".into(),
            to: "you@example.test".into(),
            login: None,
            message: "Subject: hi\n\n.dot line\n".into(),
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn plain_port_25_session_reports_each_step_and_the_queue_id() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 test.example ESMTP\r\n").await.unwrap();
            serve(s, "").await.0
        });
        let mut steps = Vec::new();
        let acc = send(&plan(addr, TlsMode::None, None), &mut |s, t| {
            steps.push(format!("{s} {t}"))
        })
        .await
        .unwrap();
        assert_eq!(acc.queue_id.as_deref(), Some("ABC123"));
        let labels: Vec<&str> = steps.iter().map(|s| s.split(' ').next().unwrap()).collect();
        assert_eq!(
            labels,
            [
                "connect", "banner", "EHLO", "MAIL", "RCPT", "DATA", "message", "QUIT"
            ]
        );
        let heard = server.await.unwrap();
        assert!(heard.contains(&"MAIL FROM:<me@example.test>".to_owned()));
        assert!(heard.contains(&"..dot line".to_owned()), "{heard:?}");
    }

    #[tokio::test]
    async fn a_refused_recipient_fails_at_rcpt() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 x\r\n").await.unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            for reply in [
                "250 x\r\n",
                "250 ok\r\n",
                "554 5.7.1 Relay access denied\r\n",
                "221 bye\r\n",
            ] {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                r.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let e = send(&plan(addr, TlsMode::None, None), &mut |_, _| {})
            .await
            .unwrap_err();
        assert_eq!(e.step, "RCPT");
        assert!(e.reason.contains("Relay access denied"));
    }

    #[tokio::test]
    async fn starttls_and_auth_plain_against_a_tls_server() {
        ceres_pki::tls::install_crypto_provider();
        let ck = rcgen::generate_simple_self_signed(vec!["mail.example.test".to_owned()]).unwrap();
        let cert_der = ck.cert.der().clone();
        let key_der =
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 test.example ESMTP\r\n").await.unwrap();
            let (mut heard, s) = serve(s, "250-STARTTLS\r\n").await;
            let tls = acceptor.accept(s).await.unwrap();
            let (after, _) = serve(tls, "250-AUTH LOGIN PLAIN\r\n").await;
            heard.extend(after);
            heard
        });
        let connector = crate::smtp::tls_connector_from_pem(&ck.cert.pem()).unwrap();
        let mut p = plan(addr, TlsMode::StartTls, Some(connector));
        p.login = Some(Login {
            user: "alice".into(),
            password: "s3cret".into(),
        });
        let mut steps = Vec::new();
        let acc = send(&p, &mut |s, t| steps.push(format!("{s} {t}")))
            .await
            .unwrap();
        let all = steps.join("\n");
        // `send` is `Ok` only on a 250 to the message; the queue id comes from it.
        assert!(all.contains("message 250"), "{all}");
        assert!(acc.queue_id.is_some(), "{all}");
        assert!(all.contains("STARTTLS 220"), "{all}");
        assert!(all.contains("TLS handshake done"), "{all}");
        assert!(all.contains("AUTH 235 2.7.0 ok (as alice)"), "{all}");
        let token = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0s3cret");
        assert!(!all.contains("s3cret") && !all.contains(&token), "{all}");
        let heard = server.await.unwrap();
        assert!(heard.contains(&format!("AUTH PLAIN {token}")), "{heard:?}");
        // The password went only inside TLS: the plain part ends at STARTTLS.
        let plain_end = heard.iter().position(|l| l == "STARTTLS").unwrap();
        assert!(heard[..plain_end].iter().all(|l| !l.starts_with("AUTH")));
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_refused() {
        ceres_pki::tls::install_crypto_provider();
        let ck = rcgen::generate_simple_self_signed(vec!["other.example.test".to_owned()]).unwrap();
        let key_der =
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key_der)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let _ = acceptor.accept(s).await;
        });
        let connector = crate::smtp::tls_connector_from_pem(&ck.cert.pem()).unwrap();
        let e = send(
            &plan(addr, TlsMode::Implicit, Some(connector)),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(e.step, "TLS", "{e}");
    }

    #[tokio::test]
    async fn no_password_without_tls() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 x\r\n").await.unwrap();
            serve(s, "250-AUTH PLAIN\r\n").await.0
        });
        let mut p = plan(addr, TlsMode::None, None);
        p.login = Some(Login {
            user: "alice".into(),
            password: "s3cret".into(),
        });
        let e = send(&p, &mut |_, _| {}).await.unwrap_err();
        assert_eq!(e.step, "AUTH");
        drop(server);
    }
}
