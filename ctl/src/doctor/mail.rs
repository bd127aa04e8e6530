//! The doctor's mail-port checks: what a sender on the internet sees on the
//! VPS's port 25, whether the home server relays for strangers through the
//! tunnel, whether tcp/25 leaves, and whether each relay's PROXY setting
//! matches what the mail server expects (from the home agent's probes).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ceres_dnscheck::Status;
use ceres_proto::{MailProbe, StatusResponse};
use ceres_relay::{ProxyMode, RelaySpec, parse_relays};

use super::{Finding, Kind};
use crate::smtp::{Reply, SmtpConn, SmtpError};

/// The recipient of the open-relay probe: a mailbox in a domain that is not
/// ours. Reserved (RFC 2606), so an open relay cannot deliver anything.
const RELAY_TEST_LOCAL: &str = "ceres-open-relay-test";

fn finding(
    kind: Kind,
    name: String,
    address: Option<IpAddr>,
    status: Status,
    found: impl Into<String>,
    expected: &str,
    fix: Option<String>,
) -> Finding {
    Finding {
        kind,
        name,
        address,
        status,
        found: found.into(),
        expected: expected.to_owned(),
        fix,
    }
}

/// An outside domain for the relay probe: never the checked domain itself.
fn outside_domain(domain: &str) -> &'static str {
    if domain == "example.net" || domain.ends_with(".example.net") {
        "example.org"
    } else {
        "example.net"
    }
}

/// Port 25 on one VPS address: the banner (the home server's, relayed), then
/// on the same connection the open-relay probe. Returns the inbound finding
/// and the relay finding ("not checked" when there was no 220).
pub(super) async fn inbound_and_relay(
    addr: SocketAddr,
    domain: &str,
    mail_host: &str,
    timeout: Duration,
) -> Vec<Finding> {
    let first = inbound_banner(addr, mail_host, timeout).await;
    let (banner_finding, conn) = match first {
        Ok(pair) => pair,
        Err(f) => {
            // No greeting, no probe: say so rather than leave the section empty.
            let relay = finding(
                Kind::OpenRelay,
                format!("{addr} to {}", outside_domain(domain)),
                Some(addr.ip()),
                Status::Error,
                "not checked: port 25 did not greet (see Mail ports)",
                "RCPT TO an outside domain refused (4xx/5xx), e.g. 454 Relay access denied",
                None,
            );
            return vec![f, relay];
        }
    };
    let mut c = conn;
    let relay = open_relay(&mut c, addr, domain).await;
    let _ = c.quit().await;
    vec![banner_finding, relay]
}

/// The fix for a timed-out inbound probe: either end of the path may drop 25.
fn inbound_timeout_fix(addr: SocketAddr) -> String {
    format!(
        "{}; if it also times out from there, port 25 is blocked on the way to {}: open tcp/25 in the VPS provider's firewall (many block it until asked)",
        crate::smtp::PORT25_BLOCKED_HINT,
        addr.ip()
    )
}

/// Connects to port 25 and judges the banner; `Ok` with the open connection
/// only after a 220.
async fn inbound_banner(
    addr: SocketAddr,
    mail_host: &str,
    timeout: Duration,
) -> Result<(Finding, SmtpConn), Finding> {
    const EXPECTED: &str = "220 banner of the home mail server naming the mail host";
    let name = addr.to_string();
    let ip = Some(addr.ip());
    let inbound = |status, found: String, fix: Option<String>| {
        finding(
            Kind::SmtpInbound,
            name.clone(),
            ip,
            status,
            found,
            EXPECTED,
            fix,
        )
    };
    let mut c = match SmtpConn::connect(addr, timeout).await {
        Ok(c) => c,
        Err(e @ SmtpError::ConnectTimeout { .. }) => {
            return Err(inbound(
                Status::Fail,
                format!("no answer: {e}"),
                Some(inbound_timeout_fix(addr)),
            ));
        }
        Err(e) => {
            return Err(inbound(
                Status::Fail,
                e.to_string(),
                Some(
                    "nothing relays port 25 on this address: check that `ceres-vps run` is running and CERES_RELAYS lists 25".into(),
                ),
            ));
        }
    };
    let banner = match c.read_reply().await {
        Ok(r) => r,
        Err(e) => {
            return Err(inbound(
                Status::Fail,
                format!("connected, but no banner: {e}"),
                Some(
                    "the home mail server does not greet: see the PROXY section (a server waiting for a PROXY header the relay does not send stays silent)".into(),
                ),
            ));
        }
    };
    let found = banner.text();
    match banner.code {
        421 => {
            return Err(inbound(
                Status::Fail,
                format!("{found} (the VPS answers for an absent home)"),
                Some(
                    "home is down or the tunnel is: run `cerectl status`, check that `ceres-home run` is running".into(),
                ),
            ));
        }
        220 => {}
        _ => {
            return Err(inbound(
                Status::Fail,
                found,
                Some("the mail server refuses connections: check its logs".into()),
            ));
        }
    }
    let names_host = banner
        .lines
        .first()
        .and_then(|l| l.split_whitespace().next())
        .is_some_and(|h| h.eq_ignore_ascii_case(mail_host));
    let judged = if names_host {
        inbound(Status::Pass, found, None)
    } else {
        inbound(
            Status::Warn,
            found,
            Some(format!(
                "the banner should name {mail_host} (Postfix: myhostname = {mail_host}); some receivers compare it with the PTR"
            )),
        )
    };
    Ok((judged, c))
}

/// EHLO, MAIL FROM one of ours, RCPT TO an outside domain: must be refused.
/// Never sends DATA; RSET before leaving.
async fn open_relay(c: &mut SmtpConn, addr: SocketAddr, domain: &str) -> Finding {
    let outside = outside_domain(domain);
    let rcpt = format!("{RELAY_TEST_LOCAL}@{outside}");
    let expected = "RCPT TO an outside domain refused (4xx/5xx), e.g. 454 Relay access denied";
    let name = format!("{addr} to {outside}");
    let ip = Some(addr.ip());
    let result = |status, found: String, fix: Option<String>| {
        finding(
            Kind::OpenRelay,
            name.clone(),
            ip,
            status,
            found,
            expected,
            fix,
        )
    };
    let helo = match c.local().ip() {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let not_checked = |what: &str, e: &dyn std::fmt::Display| {
        result(
            Status::Error,
            format!("not checked: {what}: {e}"),
            Some("run doctor again; if it persists, try the probe by hand (swaks)".into()),
        )
    };
    match c.command(&format!("EHLO {helo}")).await {
        Ok(r) if r.code == 250 => {}
        Ok(r) => return not_checked("EHLO refused", &r.text()),
        Err(e) => return not_checked("EHLO", &e),
    }
    // Our own domain first (what a relay abuser would forge); the null
    // sender when a sender check refuses that.
    let mut mail: Option<Reply> = None;
    for from in [format!("doctor@{domain}"), String::new()] {
        match c.command(&format!("MAIL FROM:<{from}>")).await {
            Ok(r) if r.code == 250 => {
                mail = Some(r);
                break;
            }
            Ok(r) => {
                mail = None;
                let _ = c.command("RSET").await;
                if from.is_empty() {
                    return not_checked("MAIL FROM refused", &r.text());
                }
            }
            Err(e) => return not_checked("MAIL FROM", &e),
        }
    }
    if mail.is_none() {
        return not_checked("MAIL FROM refused", &"no sender accepted");
    }
    let reply = match c.command(&format!("RCPT TO:<{rcpt}>")).await {
        Ok(r) => r,
        Err(e) => return not_checked("RCPT TO", &e),
    };
    let _ = c.command("RSET").await;
    match reply.code {
        250..=252 => result(
            Status::Fail,
            format!("ACCEPTED: {} — an OPEN RELAY through the tunnel", reply.text()),
            Some(
                "remove the tunnel subnet and 127.0.0.1 from mynetworks (the home agent forwards from 127.0.0.1, so with 25 relayed without PROXY every sender looks local): relay 25 with PROXY (CERES_RELAYS=25/proxy-v2) and use `cerectl mailserver-config postfix`".into(),
            ),
        ),
        400..=599 => result(Status::Pass, format!("refused: {}", reply.text()), None),
        _ => not_checked("unexpected reply to RCPT", &reply.text()),
    }
}

/// Outbound tcp/25 from where cerectl runs, to `--probe-25 HOST[:PORT]`.
pub(super) async fn outbound(target: Option<&str>, timeout: Duration) -> Finding {
    let expected = "a 220 banner from the probe target on tcp/25";
    let Some(target) = target else {
        return finding(
            Kind::SmtpOutbound,
            "outbound 25".into(),
            None,
            Status::Warn,
            "not checked: give --probe-25 HOST (an SMTP server, e.g. any MX)",
            expected,
            Some(
                "run `cerectl doctor --probe-25 HOST` on the VPS: the test runs from where cerectl runs".into(),
            ),
        );
    };
    let name = format!("outbound to {target}");
    let result = |status, found: String, fix: Option<String>| {
        finding(
            Kind::SmtpOutbound,
            name.clone(),
            None,
            status,
            found,
            expected,
            fix,
        )
    };
    let addr = match resolve(target).await {
        Ok(a) => a,
        Err(e) => {
            return result(
                Status::Error,
                format!("not checked: {e}"),
                Some("give --probe-25 as IP[:PORT] or a resolvable host".into()),
            );
        }
    };
    let blocked_fix = Some(
        "outbound tcp/25 is blocked from this machine: on a VPS, ask the provider to unblock port 25 (many block it by default)".to_owned(),
    );
    let mut c = match SmtpConn::connect(addr, timeout).await {
        Ok(c) => c,
        Err(e) => return result(Status::Fail, e.to_string(), blocked_fix),
    };
    let r = match c.read_reply().await {
        Ok(r) => r,
        Err(e) => {
            return result(
                Status::Fail,
                format!("connected, no banner: {e}"),
                blocked_fix,
            );
        }
    };
    let _ = c.quit().await;
    if r.code == 220 {
        result(
            Status::Pass,
            format!("{} (from this machine, {addr})", r.first_line()),
            None,
        )
    } else {
        result(
            Status::Warn,
            format!("port open, but: {}", r.first_line()),
            Some("tcp/25 leaves, but the probe target refused us: try another --probe-25".into()),
        )
    }
}

async fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = target.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 25));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{target:?}: bad port"))?,
        ),
        None => (target, 25),
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// PROXY configured on each relay vs what home's probe says the mail server
/// expects.
pub(super) fn proxy_findings(status: &Result<StatusResponse, String>) -> Vec<Finding> {
    let expected = "the relay sends a PROXY header exactly when the mail server expects one";
    let note = |status, found: String, fix: Option<String>| {
        vec![finding(
            Kind::Proxy,
            "relays".into(),
            None,
            status,
            found,
            expected,
            fix,
        )]
    };
    let resp = match status {
        Ok(r) => r,
        Err(e) => {
            return note(
                Status::Warn,
                format!("not checked: no status from the VPS ({e})"),
                None,
            );
        }
    };
    let relays_text = resp.vps.as_ref().map(|v| v.relays.as_str()).unwrap_or("");
    let relays = if relays_text.trim().is_empty() {
        Vec::new()
    } else {
        match parse_relays(relays_text) {
            Ok(r) => r,
            Err(e) => {
                return note(
                    Status::Error,
                    format!("not checked: the VPS reports relays {relays_text:?}: {e}"),
                    None,
                );
            }
        }
    };
    if relays.is_empty() {
        return note(
            Status::Warn,
            "no ports are relayed (CERES_RELAYS is empty)".into(),
            None,
        );
    }
    let home = resp.home.as_ref();
    let probes = home
        .filter(|h| h.connected)
        .and_then(|h| h.last_report.as_ref())
        .map(|r| r.probes.as_slice());
    match probes {
        None => note(
            Status::Warn,
            "not checked: the home agent is not connected, so there are no probes of the mail server".into(),
            Some("start `ceres-home run` at home, then run doctor again".into()),
        ),
        Some([]) => note(
            Status::Warn,
            "not checked: the home agent reported no probes of the mail server yet (older agent, or its first probe is pending)".into(),
            None,
        ),
        Some(probes) => relays
            .iter()
            .map(|spec| judge(spec, probes.iter().find(|p| p.port == u32::from(spec.home_port))))
            .collect(),
    }
}

/// One relayed port against home's probe of it.
fn judge(spec: &RelaySpec, probe: Option<&MailProbe>) -> Finding {
    let name = if spec.home_port == spec.public_port {
        format!("port {}", spec.public_port)
    } else {
        format!("port {} -> home {}", spec.public_port, spec.home_port)
    };
    let sends = spec.proxy != ProxyMode::None;
    let expected = if sends {
        "the mail server expects the PROXY header the relay sends"
    } else {
        "the mail server greets without a PROXY header (the relay sends none)"
    };
    let result = |status, found: String, fix: Option<String>| {
        finding(
            Kind::Proxy,
            name.clone(),
            None,
            status,
            found,
            expected,
            fix,
        )
    };
    let Some(p) = probe else {
        return result(
            Status::Warn,
            format!(
                "not checked: home reported no probe of port {}",
                spec.home_port
            ),
            None,
        );
    };
    let seen = if p.banner.is_empty() {
        String::new()
    } else {
        format!(" (banner {:?})", p.banner)
    };
    if !p.reachable {
        let err = if p.error.is_empty() {
            "not reachable"
        } else {
            &p.error
        };
        // Only 25 is essential; the default list relays ports many setups
        // do not serve (POP3, ManageSieve).
        let status = if spec.public_port == 25 {
            Status::Fail
        } else {
            Status::Warn
        };
        return result(
            status,
            format!(
                "home cannot reach the mail server on port {}: {err}",
                spec.home_port
            ),
            Some(format!(
                "start the service on port {} at home, or remove {} from CERES_RELAYS if you do not serve it",
                spec.home_port, spec.public_port
            )),
        );
    }
    match (sends, p.expects_proxy) {
        (true, true) => result(
            Status::Pass,
            format!("relay sends {}, the mail server expects it", spec.proxy.label()),
            None,
        ),
        (false, false) if spec.public_port == 25 => result(
            Status::Warn,
            format!("relay sends none, the mail server expects none{seen}; every sender looks local to it"),
            Some("relay 25 with PROXY (CERES_RELAYS=25/proxy-v2) and configure postscreen (`cerectl mailserver-config postfix`)".into()),
        ),
        (false, false) => result(
            Status::Pass,
            format!("relay sends none, the mail server expects none{seen}"),
            None,
        ),
        (true, false) => result(
            Status::Fail,
            format!(
                "relay sends {}, but the mail server does not expect it{seen}: every relayed connection breaks",
                spec.proxy.label()
            ),
            Some(format!(
                "make the server expect PROXY on port {} (`cerectl mailserver-config postfix|dovecot|nginx`), or relay it plain ({} without /proxy-vN in CERES_RELAYS)",
                spec.home_port, spec.public_port
            )),
        ),
        (false, true) => result(
            Status::Fail,
            "relay sends none, but the mail server seems to wait for a PROXY header: relayed clients get no answer".into(),
            Some(format!(
                "relay it with PROXY ({}/proxy-v2 in CERES_RELAYS), or turn PROXY off for port {} on the mail server",
                spec.public_port, spec.home_port
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ceres_proto::{HomeStatus, Report, VpsStatus};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    #[test]
    fn inbound_timeout_names_the_isp_block_first_then_the_provider() {
        let fix = inbound_timeout_fix(SocketAddr::from(([203, 0, 113, 10], 25)));
        let isp = fix.find("your ISP may block outbound port 25").unwrap();
        let provider = fix.find("VPS provider's firewall").unwrap();
        assert!(isp < provider, "{fix}");
        assert!(
            fix.contains("run it from the VPS or another server"),
            "{fix}"
        );
    }

    /// An SMTP server that greets with `banner` and answers RCPT with
    /// `rcpt`; returns what it heard.
    async fn server(
        banner: &'static str,
        rcpt: &'static str,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(banner.as_bytes()).await.unwrap();
            let mut r = BufReader::new(s);
            let mut heard = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_owned();
                let reply = if line.starts_with("RCPT") {
                    rcpt
                } else if line == "QUIT" {
                    "221 bye\r\n"
                } else {
                    "250 ok\r\n"
                };
                heard.push(line.clone());
                if r.get_mut().write_all(reply.as_bytes()).await.is_err() || line == "QUIT" {
                    break;
                }
            }
            heard
        });
        (addr, task)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn closed_relay_passes_and_never_sends_data() {
        let (addr, task) = server(
            "220 mail.example.com ESMTP\r\n",
            "454 4.7.1 <ceres-open-relay-test@example.net>: Relay access denied\r\n",
        )
        .await;
        let f = inbound_and_relay(addr, "example.com", "mail.example.com", T).await;
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, Status::Pass, "{f:?}");
        assert_eq!(f[1].kind, Kind::OpenRelay);
        assert_eq!(f[1].status, Status::Pass, "{f:?}");
        assert!(f[1].found.contains("Relay access denied"));
        let heard = task.await.unwrap();
        assert!(
            heard.contains(&"MAIL FROM:<doctor@example.com>".to_owned()),
            "{heard:?}"
        );
        assert!(heard.contains(&"RCPT TO:<ceres-open-relay-test@example.net>".to_owned()));
        assert!(!heard.iter().any(|l| l == "DATA"), "{heard:?}");
        assert!(heard.contains(&"RSET".to_owned()) && heard.last().unwrap() == "QUIT");
    }

    #[tokio::test]
    async fn open_relay_fails_with_the_mynetworks_fix() {
        let (addr, _task) = server("220 mail.example.com ESMTP\r\n", "250 2.1.5 Ok\r\n").await;
        let f = inbound_and_relay(addr, "example.com", "mail.example.com", T).await;
        assert_eq!(f[1].status, Status::Fail);
        assert!(f[1].found.contains("OPEN RELAY"));
        assert!(f[1].fix.as_deref().unwrap().contains("mynetworks"));
    }

    #[tokio::test]
    async fn a_421_means_home_is_down_and_another_name_warns() {
        let (addr, _t) = server("421 4.4.2 mail.example.com temporarily unavailable\r\n", "").await;
        let f = inbound_and_relay(addr, "example.com", "mail.example.com", T).await;
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, Status::Fail);
        assert_eq!(f[1].status, Status::Error, "no greeting: relay not checked");
        assert!(f[0].fix.as_deref().unwrap().contains("ceres-home"));
        let (addr, _t) = server("220 localhost ESMTP\r\n", "554 no\r\n").await;
        let f = inbound_and_relay(addr, "example.com", "mail.example.com", T).await;
        assert_eq!(f[0].status, Status::Warn);
        assert!(f[0].fix.as_deref().unwrap().contains("myhostname"));
    }

    #[tokio::test]
    async fn refused_and_silent_ports_fail() {
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let f = inbound_and_relay(reserved.local_addr().unwrap(), "example.com", "m", T).await;
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].fix.as_deref().unwrap().contains("CERES_RELAYS"));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move { l.accept().await.map(|(s, _)| s) });
        let f = inbound_and_relay(addr, "example.com", "m", Duration::from_millis(300)).await;
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].found.contains("no banner"), "{f:?}");
    }

    #[tokio::test]
    async fn outbound_is_a_warning_unless_asked_and_passes_on_a_banner() {
        let f = outbound(None, T).await;
        assert_eq!(f.status, Status::Warn);
        assert!(f.found.starts_with("not checked"));
        let (addr, _t) = server("220 mx.example.net ESMTP\r\n", "").await;
        let f = outbound(Some(&addr.to_string()), T).await;
        assert_eq!(f.status, Status::Pass, "{f:?}");
    }

    fn status(relays: &str, probes: Vec<MailProbe>) -> Result<StatusResponse, String> {
        Ok(StatusResponse {
            vps: Some(VpsStatus {
                relays: relays.into(),
                ..Default::default()
            }),
            home: Some(HomeStatus {
                connected: true,
                last_report: Some(Report {
                    probes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn probe(port: u32, reachable: bool, expects_proxy: bool) -> MailProbe {
        MailProbe {
            port,
            reachable,
            banner: if expects_proxy || !reachable {
                String::new()
            } else {
                "220 mail.example.com ESMTP".into()
            },
            expects_proxy,
            error: if reachable {
                String::new()
            } else {
                "connection refused".into()
            },
        }
    }

    #[test]
    fn proxy_expected_vs_configured() {
        let st = status(
            "25/proxy-v2,587/proxy-v2,2993:993/proxy-v2,143,110",
            vec![
                // Probes are by home port: PROXY relays land on 10000 + port.
                probe(10025, true, true),
                probe(10587, true, false),
                probe(993, true, true),
                probe(143, true, true),
                probe(110, false, false),
            ],
        );
        let f = proxy_findings(&st);
        let by = |n: &str| f.iter().find(|x| x.name == n).unwrap();
        assert_eq!(by("port 25 -> home 10025").status, Status::Pass);
        assert_eq!(by("port 587 -> home 10587").status, Status::Fail);
        assert!(
            by("port 587 -> home 10587")
                .found
                .contains("does not expect")
        );
        assert_eq!(by("port 2993 -> home 993").status, Status::Pass);
        assert_eq!(by("port 143").status, Status::Fail);
        assert!(
            by("port 143")
                .fix
                .as_deref()
                .unwrap()
                .contains("143/proxy-v2")
        );
        assert_eq!(by("port 110").status, Status::Warn);
        // 25 plain and matching: a warning; 25 unreachable: a failure.
        let f = proxy_findings(&status("25", vec![probe(25, true, false)]));
        assert_eq!(f[0].status, Status::Warn);
        let f = proxy_findings(&status("25/proxy-v2", vec![probe(10025, false, false)]));
        assert_eq!(f[0].status, Status::Fail);
    }

    #[test]
    fn no_probes_is_not_checked_not_a_pass() {
        let f = proxy_findings(&status("25/proxy-v2", Vec::new()));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Warn);
        assert!(f[0].found.starts_with("not checked"));
        let f = proxy_findings(&Err("unreachable".into()));
        assert!(f[0].found.starts_with("not checked"));
    }
}
