//! `cerectl mailserver-config`: the exact lines the home mail software needs
//! for the ports CERES relays — Postfix, Dovecot, nginx — and the SMTP
//! settings for a Keycloak realm that sends its mail through the VPS.
//!
//! Everything is derived from the relay list in effect (`CERES_RELAYS`, from
//! Admin.Status, or `--relays` offline): PROXY lines only for the ports whose
//! relay sends a PROXY header, because a server expecting a header that never
//! comes (or getting one it does not expect) breaks every connection.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use ceres_relay::{DEFAULT_RELAYS, ProxyMode, RelaySpec, parse_relays};
use clap::{Args, ValueEnum};

use crate::cli::Cli;
use crate::vps::{fetch_status, split_prefix, vps_part};

/// Which software to print lines for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// master.cf and main.cf lines (postscreen, submission, smtp_bind_address).
    Postfix,
    /// haproxy listeners and haproxy_trusted_networks.
    Dovecot,
    /// listen ... proxy_protocol and real_ip lines (only if 80/443 carry PROXY).
    Nginx,
    /// A realm's SMTP settings (key/value and the realm JSON's smtpServer).
    Keycloak,
}

/// `mailserver-config` arguments.
#[derive(Debug, Args)]
pub struct MailConfigArgs {
    /// What to print lines for.
    #[arg(value_enum)]
    pub target: Target,
    /// The mail domain; with --home-tunnel-address no VPS is asked (offline).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// The mail host; default the VPS's, or mail.DOMAIN offline.
    #[arg(long, value_name = "HOST")]
    pub mail_host: Option<String>,
    /// Relayed ports, CERES_RELAYS syntax; default the VPS's (offline: the
    /// CERES default list).
    #[arg(long, value_name = "LIST")]
    pub relays: Option<String>,
    /// Home's tunnel address (CERES_TUNNEL_HOME_ADDRESS, e.g. 10.77.77.2/24);
    /// default the VPS's.
    #[arg(long, value_name = "IP[/PREFIX]")]
    pub home_tunnel_address: Option<String>,
    /// Where the home agent connects to the mail server from, as the mail
    /// server sees it (trusted to send PROXY headers). Default 127.0.0.1 and
    /// ::1: the mail server on the agent's host. Mail server in a container
    /// or on another host: the agent host's address on that network.
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    pub agent_address: Vec<IpAddr>,
    /// Keycloak: the submission port applications use (587 STARTTLS or 465
    /// implicit TLS); default 587 when relayed, else 465.
    #[arg(long, value_name = "587|465")]
    pub port: Option<u16>,
    /// Keycloak: the sender address; default noreply@DOMAIN.
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Keycloak: the SMTP login; default the sender address.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Reach the VPS here instead of the address stored at enrolment.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
}

/// What the generated lines depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSetup {
    /// The mail domain.
    pub domain: String,
    /// The host MX points at (the VPS's name).
    pub mail_host: String,
    /// The relays in effect.
    pub relays: Vec<RelaySpec>,
    /// Home's tunnel address (Postfix's `smtp_bind_address`).
    pub home_tunnel: IpAddr,
    /// Prefix length of the tunnel subnet (for the mynetworks warning).
    pub tunnel_prefix: u8,
    /// Where the home agent's forwarder connects to the mail server from.
    pub agent_addresses: Vec<IpAddr>,
}

/// Keycloak choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeycloakOptions {
    /// 587 or 465; `None`: 587 when relayed, else 465.
    pub port: Option<u16>,
    /// Sender; default `noreply@DOMAIN`.
    pub from: Option<String>,
    /// Login; default the sender.
    pub user: Option<String>,
}

/// Why no lines could be printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailConfigError {
    /// Keycloak needs a submission port and none is relayed.
    #[error(
        "neither 587 nor 465 is relayed (CERES_RELAYS): applications cannot submit mail through the VPS"
    )]
    NoSubmissionPort,
    /// `--port` names a port that is not relayed or is not a submission port.
    #[error("port {0} is not a relayed submission port (relayed: {1})")]
    BadPort(u16, String),
}

/// The addresses the forwarder connects from when the flag is not given.
const DEFAULT_AGENT_ADDRESSES: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

/// Runs `cerectl mailserver-config`.
pub async fn run(cli: &Cli, args: &MailConfigArgs) -> anyhow::Result<ExitCode> {
    let setup = setup(cli, args).await?;
    let text = match args.target {
        Target::Postfix => postfix(&setup),
        Target::Dovecot => dovecot(&setup),
        Target::Nginx => nginx(&setup),
        Target::Keycloak => keycloak(
            &setup,
            &KeycloakOptions {
                port: args.port,
                from: args.from.clone(),
                user: args.user.clone(),
            },
        )?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn setup(cli: &Cli, args: &MailConfigArgs) -> anyhow::Result<MailSetup> {
    const OFFLINE: &str = "cannot get the relays and addresses from the VPS \
                           (or give --domain and --home-tunnel-address to work without it)";
    let (domain, mail_host, relays, tunnel) = match (&args.domain, &args.home_tunnel_address) {
        (Some(d), Some(t)) => (
            d.clone(),
            args.mail_host.clone(),
            args.relays.clone().unwrap_or_else(|| DEFAULT_RELAYS.into()),
            t.clone(),
        ),
        _ => {
            let resp = fetch_status(cli, args.address.as_deref(), OFFLINE).await?;
            let vps = vps_part(&resp)?;
            (
                args.domain.clone().unwrap_or_else(|| vps.domain.clone()),
                args.mail_host
                    .clone()
                    .or_else(|| Some(vps.mail_host.clone()).filter(|h| !h.is_empty())),
                args.relays.clone().unwrap_or_else(|| vps.relays.clone()),
                args.home_tunnel_address
                    .clone()
                    .unwrap_or_else(|| vps.tunnel_home_address.clone()),
            )
        }
    };
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    anyhow::ensure!(
        domain.contains('.'),
        "{domain:?} is not a mail domain (like example.com)"
    );
    let relays = if relays.trim().is_empty() {
        Vec::new()
    } else {
        parse_relays(&relays)?
    };
    let (home_tunnel, prefix) = split_prefix(&tunnel)?;
    Ok(MailSetup {
        mail_host: mail_host.unwrap_or_else(|| format!("mail.{domain}")),
        domain,
        relays,
        home_tunnel,
        tunnel_prefix: prefix.unwrap_or(if home_tunnel.is_ipv4() { 24 } else { 64 }),
        agent_addresses: if args.agent_address.is_empty() {
            DEFAULT_AGENT_ADDRESSES.to_vec()
        } else {
            args.agent_address.clone()
        },
    })
}

impl MailSetup {
    /// The relay whose public port is `port`.
    pub fn relay(&self, port: u16) -> Option<&RelaySpec> {
        self.relays.iter().find(|r| r.public_port == port)
    }

    /// The tunnel subnet, e.g. `10.77.77.0/24`.
    pub fn tunnel_subnet(&self) -> String {
        let p = self.tunnel_prefix;
        match self.home_tunnel {
            IpAddr::V4(ip) => {
                let p = p.min(32);
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                format!("{}/{p}", std::net::Ipv4Addr::from(u32::from(ip) & mask))
            }
            IpAddr::V6(ip) => {
                let p = p.min(128);
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                format!("{}/{p}", std::net::Ipv6Addr::from(u128::from(ip) & mask))
            }
        }
    }

    fn relay_list(&self) -> String {
        if self.relays.is_empty() {
            return "(none)".into();
        }
        self.relays
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn agents(&self, sep: &str) -> String {
        self.agent_addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    }
}

fn proxy_name(mode: ProxyMode) -> &'static str {
    match mode {
        ProxyMode::None => "without PROXY",
        ProxyMode::V1 => "with PROXY v1",
        ProxyMode::V2 => "with PROXY v2",
    }
}

/// A master.cf service name for a home port: the usual name on the usual
/// port, else the number (Postfix accepts both).
fn service(home_port: u16, usual: (u16, &str)) -> String {
    if home_port == usual.0 {
        usual.1.to_owned()
    } else {
        home_port.to_string()
    }
}

/// A master.cf line in Postfix's column layout.
fn master_line(out: &mut String, cols: [&str; 8]) {
    let _ = writeln!(
        out,
        // Each column padded, and always at least one space apart.
        "{:<9} {:<5} {:<7} {:<7} {:<7} {:<7} {:<7} {}",
        cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7]
    );
}

/// Postfix: master.cf and main.cf lines for the relayed SMTP ports.
pub fn postfix(s: &MailSetup) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Postfix for CERES: mail host {}, relays {}.\n\
         # The master.cf lines replace the services of the same name in\n\
         # /etc/postfix/master.cf; the main.cf lines go in /etc/postfix/main.cf.\n\
         # Then run `postfix check && postfix reload`.\n",
        s.mail_host,
        s.relay_list()
    );
    let _ = writeln!(o, "# ---- /etc/postfix/master.cf ----");
    match s.relay(25) {
        Some(r) if r.proxy != ProxyMode::None => {
            let _ = writeln!(
                o,
                "# Port 25 (MX) is relayed {} to home port {}: postscreen reads the\n\
                 # header, so DNSBL checks, SPF and logs see the real client address.",
                proxy_name(r.proxy),
                r.home_port
            );
            let svc = service(r.home_port, (25, "smtp"));
            master_line(
                &mut o,
                [&svc, "inet", "n", "-", "y", "-", "1", "postscreen"],
            );
            master_line(&mut o, ["smtpd", "pass", "-", "-", "y", "-", "-", "smtpd"]);
            master_line(
                &mut o,
                ["dnsblog", "unix", "-", "-", "y", "-", "0", "dnsblog"],
            );
            master_line(
                &mut o,
                ["tlsproxy", "unix", "-", "-", "y", "-", "0", "tlsproxy"],
            );
        }
        Some(r) => {
            let _ = writeln!(
                o,
                "# WARNING: port 25 (MX) is relayed WITHOUT PROXY. Every sender then\n\
                 # connects from the home agent ({}), so DNSBLs, SPF and logs see that\n\
                 # address, and Postfix trusts it by default (mynetworks): an OPEN\n\
                 # RELAY. Relay 25 with PROXY on the VPS (CERES_RELAYS=25/proxy-v2,...)\n\
                 # and run this command again for the postscreen lines.",
                s.agents(", ")
            );
            let svc = service(r.home_port, (25, "smtp"));
            master_line(&mut o, [&svc, "inet", "n", "-", "y", "-", "-", "smtpd"]);
        }
        None => {
            let _ = writeln!(
                o,
                "# Port 25 is not relayed: no inbound MX mail comes through CERES."
            );
        }
    }
    for (port, usual, extra) in [
        (587u16, "submission", None),
        (465u16, "submissions", Some("smtpd_tls_wrappermode=yes")),
    ] {
        let Some(r) = s.relay(port) else {
            let _ = writeln!(
                o,
                "# Port {port} is not relayed: no {usual} service needed for CERES."
            );
            continue;
        };
        let svc = service(r.home_port, (port, usual));
        if r.proxy != ProxyMode::None {
            let _ = writeln!(
                o,
                "# Port {port} ({usual}) is relayed {} to home port {}: only this\n\
                 # service expects the header. Never set smtpd_upstream_proxy_protocol\n\
                 # in main.cf: internal reinjection (content filters) sends no header.\n\
                 # Keep your existing -o lines (TLS, SASL) below these.",
                proxy_name(r.proxy),
                r.home_port
            );
        } else {
            let _ = writeln!(
                o,
                "# Port {port} ({usual}) is relayed without PROXY: Postfix sees the home\n\
                 # agent ({}) as every client; require SASL auth (no permit_mynetworks).",
                s.agents(", ")
            );
        }
        master_line(&mut o, [&svc, "inet", "n", "-", "y", "-", "-", "smtpd"]);
        let _ = writeln!(o, "  -o syslog_name=postfix/{usual}");
        if let Some(extra) = extra {
            let _ = writeln!(o, "  -o {extra}");
        }
        if r.proxy != ProxyMode::None {
            let _ = writeln!(o, "  -o smtpd_upstream_proxy_protocol=haproxy");
        }
    }
    let _ = writeln!(o, "\n# ---- /etc/postfix/main.cf ----");
    if s.relay(25).is_some_and(|r| r.proxy != ProxyMode::None) {
        let _ = writeln!(o, "postscreen_upstream_proxy_protocol = haproxy");
    }
    let _ = writeln!(
        o,
        "# Outbound mail leaves from the VPS address: Postfix sends from home's\n\
         # tunnel address and the home agent routes that into the tunnel."
    );
    match s.home_tunnel {
        IpAddr::V4(ip) => {
            let _ = writeln!(o, "smtp_bind_address = {ip}");
        }
        IpAddr::V6(ip) => {
            let _ = writeln!(o, "smtp_bind_address6 = {ip}");
        }
    }
    let _ = writeln!(
        o,
        "# inet_interfaces must include the address the home agent forwards to\n\
         # (CERES_MAIL_SERVER, default 127.0.0.1); the default `all` does.\n\
         # smtp_bind_address exists while the home agent runs; a Postfix in a\n\
         # container has no tunnel address: leave smtp_bind_address out there and\n\
         # set CERES_EGRESS_FROM to the container network instead.\n\
         #\n\
         # !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         # !!! NEVER add the tunnel subnet ({}) to mynetworks.\n\
         # !!! Connections from the whole internet arrive through the tunnel and\n\
         # !!! the home agent ({}): trusting them makes an OPEN RELAY.\n\
         # !!! For the same reason a port relayed without PROXY must not be\n\
         # !!! trusted by address: relay 25 with PROXY.\n\
         # !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        s.tunnel_subnet(),
        s.agents(", ")
    );
    o
}

/// Dovecot's login services, by public port: (service, listener, implicit TLS).
const DOVECOT_PORTS: [(u16, &str, &str, bool); 5] = [
    (993, "imap-login", "imaps", true),
    (143, "imap-login", "imap", false),
    (995, "pop3-login", "pop3s", true),
    (110, "pop3-login", "pop3", false),
    (4190, "managesieve-login", "sieve", false),
];

/// Dovecot: haproxy listeners for the ports relayed with PROXY.
pub fn dovecot(s: &MailSetup) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Dovecot for CERES: relays {}.\n\
         # These lines go in /etc/dovecot/conf.d/10-master.conf (Debian; or\n\
         # dovecot.conf): edit the existing inet_listener of each port rather\n\
         # than adding a second one on the same port. Then `doveadm reload`.\n",
        s.relay_list()
    );
    let mut proxied = Vec::new();
    for (port, svc, listener, ssl) in DOVECOT_PORTS {
        match s.relay(port) {
            Some(r) if r.proxy != ProxyMode::None => proxied.push((r, svc, listener, ssl)),
            Some(_) => {
                let _ = writeln!(
                    o,
                    "# Port {port} ({listener}) is relayed without PROXY: no change; Dovecot\n\
                     # sees the home agent ({}) as the client of every relayed login.",
                    s.agents(", ")
                );
            }
            None => {
                let _ = writeln!(o, "# Port {port} ({listener}) is not relayed.");
            }
        }
    }
    if proxied.is_empty() {
        let _ = writeln!(
            o,
            "\n# No Dovecot port is relayed with PROXY: nothing to change for CERES."
        );
        return o;
    }
    let _ = writeln!(
        o,
        "\n# Who may send PROXY headers: the home agent, which connects to the mail\n\
         # server (CERES_MAIL_SERVER) from this address. Dovecot on another host or\n\
         # in a container: put the agent host's address as Dovecot sees it\n\
         # (cerectl mailserver-config dovecot --agent-address IP).\n\
         haproxy_trusted_networks = {}\n",
        s.agents(" ")
    );
    let mut current: Option<&str> = None;
    for (r, svc, listener, ssl) in proxied {
        if current != Some(svc) {
            if current.is_some() {
                let _ = writeln!(o, "}}");
            }
            let _ = writeln!(o, "service {svc} {{");
            current = Some(svc);
        }
        let _ = writeln!(
            o,
            "  # Port {} relayed {}; this listener now refuses clients without\n  \
             # a header: local clients (webmail) need another listener on another port.\n  \
             inet_listener {listener} {{\n    port = {}\n{}    haproxy = yes\n  }}",
            r.public_port,
            proxy_name(r.proxy),
            r.home_port,
            if ssl { "    ssl = yes\n" } else { "" }
        );
    }
    let _ = writeln!(o, "}}");
    o
}

/// nginx: PROXY lines for 80/443, only when those relays carry PROXY.
pub fn nginx(s: &MailSetup) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nginx for CERES: relays {}.\n\
         # Lines for each server {{ }} block that serves traffic relayed by CERES\n\
         # (autoconfig, webmail, ACME challenges). Then `nginx -t && nginx -s reload`.\n",
        s.relay_list()
    );
    let web: Vec<&RelaySpec> = [80u16, 443].iter().filter_map(|p| s.relay(*p)).collect();
    if web.is_empty() {
        let _ = writeln!(
            o,
            "# Neither 80 nor 443 is relayed: nothing to change for CERES."
        );
        return o;
    }
    let proxied: Vec<&&RelaySpec> = web.iter().filter(|r| r.proxy != ProxyMode::None).collect();
    for r in &web {
        if r.proxy == ProxyMode::None {
            let _ = writeln!(
                o,
                "# Port {} is relayed without PROXY (the default for 80 and 443): no\n\
                 # change needed; nginx sees the home agent ({}) as every client. To log\n\
                 # real clients, relay it with PROXY ({}/proxy-v2 in CERES_RELAYS) and\n\
                 # run this command again.",
                r.public_port,
                s.agents(", "),
                r.public_port
            );
        }
    }
    if proxied.is_empty() {
        return o;
    }
    for r in &proxied {
        let tls = if r.public_port == 443 { " ssl" } else { "" };
        let _ = writeln!(
            o,
            "# Port {} relayed {}: this listener now requires the header.\n\
             listen {}{tls} proxy_protocol;",
            r.public_port,
            proxy_name(r.proxy),
            r.home_port
        );
    }
    for a in &s.agent_addresses {
        let _ = writeln!(o, "set_real_ip_from {a};");
    }
    let _ = writeln!(o, "real_ip_header proxy_protocol;");
    o
}

/// Keycloak: a realm's SMTP settings, as key/value lines and as the realm
/// JSON's `smtpServer` fragment.
pub fn keycloak(s: &MailSetup, k: &KeycloakOptions) -> Result<String, MailConfigError> {
    let submission: Vec<u16> = [587u16, 465]
        .into_iter()
        .filter(|p| s.relay(*p).is_some())
        .collect();
    let port = match k.port {
        Some(p) if submission.contains(&p) => p,
        Some(p) => {
            let list = submission
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(MailConfigError::BadPort(
                p,
                if list.is_empty() { "none".into() } else { list },
            ));
        }
        None => *submission
            .first()
            .ok_or(MailConfigError::NoSubmissionPort)?,
    };
    let starttls = port == 587;
    let from = k
        .from
        .clone()
        .unwrap_or_else(|| format!("noreply@{}", s.domain));
    let user = k.user.clone().unwrap_or_else(|| from.clone());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Keycloak realm SMTP for CERES: Realm settings -> Email in the admin\n\
         # console (or the realm JSON's \"smtpServer\", below). Mail goes to {}\n\
         # (the VPS), which relays port {port} to the home mail server.\n\
         # The password is the mailbox password of {user} on the home mail\n\
         # server: enter it in Keycloak; it is not printed here.\n",
        s.mail_host
    );
    let _ = writeln!(o, "host = {}", s.mail_host);
    let _ = writeln!(o, "port = {port}");
    let _ = writeln!(
        o,
        "encryption = {}",
        if starttls {
            "STARTTLS (starttls = true, ssl = false)"
        } else {
            "SSL/TLS (ssl = true, starttls = false)"
        }
    );
    let _ = writeln!(o, "from = {from}");
    let _ = writeln!(o, "fromDisplayName = {}", s.domain);
    let _ = writeln!(o, "auth = true");
    let _ = writeln!(o, "user = {user}");
    let _ = writeln!(o, "password = (the mailbox password; set it in Keycloak)");
    let json = serde_json::json!({
        "smtpServer": {
            "host": s.mail_host,
            "port": port.to_string(),
            "from": from,
            "fromDisplayName": s.domain,
            "starttls": starttls.to_string(),
            "ssl": (!starttls).to_string(),
            "auth": "true",
            "user": user,
            "password": "CHANGE-ME",
        }
    });
    let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
    // The fragment, without the outer braces, to paste into a realm export.
    let inner: Vec<&str> = pretty.lines().collect();
    let _ = writeln!(o, "\n# Realm JSON fragment (replace CHANGE-ME):");
    if inner.len() >= 2 {
        for l in &inner[1..inner.len() - 1] {
            let _ = writeln!(o, "{}", l.strip_prefix("  ").unwrap_or(l));
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn setup(relays: &str) -> MailSetup {
        MailSetup {
            domain: "example.com".into(),
            mail_host: "mail.example.com".into(),
            relays: parse_relays(relays).unwrap(),
            home_tunnel: "10.77.77.2".parse().unwrap(),
            tunnel_prefix: 24,
            agent_addresses: DEFAULT_AGENT_ADDRESSES.to_vec(),
        }
    }

    /// The non-comment lines of a section of the output.
    fn section<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
        let start = text.find(marker).unwrap();
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("# ----"))
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .collect()
    }

    #[test]
    fn postfix_default_relays() {
        let t = postfix(&setup(DEFAULT_RELAYS));
        assert!(t.starts_with("# Postfix for CERES"), "{t}");
        let master = section(&t, "master.cf ----");
        let main = section(&t, "main.cf ----");
        assert!(master[0].starts_with("smtp ") && master[0].ends_with("postscreen"));
        assert!(
            master
                .iter()
                .any(|l| l.starts_with("smtpd ") && l.contains("pass"))
        );
        let proxy_lines = master
            .iter()
            .filter(|l| l.contains("smtpd_upstream_proxy_protocol=haproxy"))
            .count();
        assert_eq!(proxy_lines, 2, "{t}");
        assert!(master.iter().any(|l| l.starts_with("submission ")));
        assert!(master.iter().any(|l| l.starts_with("submissions ")));
        assert!(master.contains(&"  -o smtpd_tls_wrappermode=yes"));
        assert_eq!(
            main,
            vec![
                "postscreen_upstream_proxy_protocol = haproxy",
                "smtp_bind_address = 10.77.77.2"
            ]
        );
        // Never globally.
        assert!(
            !main
                .iter()
                .any(|l| l.contains("smtpd_upstream_proxy_protocol"))
        );
        assert!(t.contains("NEVER add the tunnel subnet (10.77.77.0/24) to mynetworks"));
    }

    #[test]
    fn postfix_only_proxied_ports_get_proxy_lines() {
        let t = postfix(&setup("25/proxy-v1,587,143"));
        let master = section(&t, "master.cf ----");
        assert!(master[0].ends_with("postscreen"), "{t}");
        assert!(!master.iter().any(|l| l.contains("upstream_proxy")), "{t}");
        assert!(t.contains("Port 465 is not relayed"));
        assert!(t.contains("relayed with PROXY v1"));
        // 25 without PROXY: plain smtpd, a loud warning, no postscreen line.
        let t = postfix(&setup("25,587/proxy-v2"));
        let master = section(&t, "master.cf ----");
        let main = section(&t, "main.cf ----");
        assert!(
            master[0].starts_with("smtp ") && master[0].ends_with("smtpd"),
            "{t}"
        );
        assert!(t.contains("WITHOUT PROXY") && t.contains("OPEN"));
        assert!(!main.iter().any(|l| l.starts_with("postscreen_")), "{t}");
        assert_eq!(
            master
                .iter()
                .filter(|l| l.contains("smtpd_upstream_proxy_protocol"))
                .count(),
            1
        );
        // A mapped home port becomes the service name.
        let t = postfix(&setup("25:2525/proxy-v2"));
        assert!(section(&t, "master.cf ----")[0].starts_with("2525 "), "{t}");
    }

    #[test]
    fn dovecot_listeners_only_for_proxied_ports() {
        let t = dovecot(&setup(DEFAULT_RELAYS));
        assert!(t.starts_with("# Dovecot for CERES"));
        assert!(
            t.contains("haproxy_trusted_networks = 127.0.0.1 ::1"),
            "{t}"
        );
        assert!(
            t.contains("inet_listener imaps {\n    port = 993\n    ssl = yes\n    haproxy = yes"),
            "{t}"
        );
        assert_eq!(t.matches("haproxy = yes").count(), 1, "{t}");
        assert!(
            t.contains("Port 143 (imap) is relayed without PROXY"),
            "{t}"
        );
        let t = dovecot(&setup(
            "993/proxy-v2,143/proxy-v1,995/proxy-v2,4190/proxy-v2",
        ));
        assert_eq!(t.matches("haproxy = yes").count(), 4, "{t}");
        assert_eq!(t.matches("service imap-login {").count(), 1, "{t}");
        assert_eq!(t.matches("service pop3-login {").count(), 1, "{t}");
        let t = dovecot(&setup("25/proxy-v2,993"));
        assert!(t.contains("nothing to change"), "{t}");
        assert!(!t.contains("haproxy_trusted_networks ="), "{t}");
        let mut other = setup("993/proxy-v2");
        other.agent_addresses = vec!["172.17.0.1".parse().unwrap()];
        assert!(dovecot(&other).contains("haproxy_trusted_networks = 172.17.0.1\n"));
    }

    #[test]
    fn nginx_says_so_by_default_and_prints_lines_with_proxy() {
        let t = nginx(&setup(DEFAULT_RELAYS));
        assert!(t.starts_with("# nginx for CERES"));
        assert!(
            t.contains("Port 80 is relayed without PROXY (the default"),
            "{t}"
        );
        assert!(!t.contains("proxy_protocol;"), "{t}");
        let t = nginx(&setup("80,443/proxy-v2"));
        assert!(t.contains("listen 443 ssl proxy_protocol;"), "{t}");
        assert!(!t.contains("listen 80"), "{t}");
        assert!(
            t.contains(
                "set_real_ip_from 127.0.0.1;\nset_real_ip_from ::1;\nreal_ip_header proxy_protocol;"
            ),
            "{t}"
        );
        assert!(nginx(&setup("25")).contains("Neither 80 nor 443 is relayed"));
    }

    #[test]
    fn keycloak_port_choice_and_json() {
        let t = keycloak(&setup(DEFAULT_RELAYS), &KeycloakOptions::default()).unwrap();
        assert!(t.starts_with("# Keycloak realm SMTP"));
        assert!(
            t.contains("host = mail.example.com\nport = 587\nencryption = STARTTLS"),
            "{t}"
        );
        assert!(t.contains("from = noreply@example.com"));
        assert!(t.contains("user = noreply@example.com"));
        let start = t.find("\"smtpServer\": {").unwrap();
        let frag = format!("{{{}}}", &t[start..]);
        let v: serde_json::Value = serde_json::from_str(&frag).unwrap();
        assert_eq!(v["smtpServer"]["port"], "587");
        assert_eq!(v["smtpServer"]["starttls"], "true");
        assert_eq!(v["smtpServer"]["ssl"], "false");
        assert_eq!(v["smtpServer"]["auth"], "true");

        let t = keycloak(
            &setup("25/proxy-v2,465/proxy-v2"),
            &KeycloakOptions {
                from: Some("id@example.com".into()),
                user: Some("keycloak".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(t.contains("port = 465\nencryption = SSL/TLS"), "{t}");
        assert!(t.contains("\"ssl\": \"true\""), "{t}");
        assert!(t.contains("user = keycloak") && t.contains("from = id@example.com"));
        assert_eq!(
            keycloak(&setup("25"), &KeycloakOptions::default()),
            Err(MailConfigError::NoSubmissionPort)
        );
        assert!(matches!(
            keycloak(
                &setup("587"),
                &KeycloakOptions {
                    port: Some(465),
                    ..Default::default()
                }
            ),
            Err(MailConfigError::BadPort(465, _))
        ));
    }

    #[test]
    fn tunnel_subnets() {
        let mut s = setup("25");
        assert_eq!(s.tunnel_subnet(), "10.77.77.0/24");
        s.home_tunnel = "fd00:77::2".parse().unwrap();
        s.tunnel_prefix = 64;
        assert_eq!(s.tunnel_subnet(), "fd00:77::/64");
    }
}
