//! iRedMail, read at commit e0fe4fc (1.8.1, 2026-05-14). iRedMail installs
//! Postfix, Dovecot and nginx from the distribution on the host, so the
//! recipe's paths are the host's, relative to `/`.
//!
//! **Postfix** (`functions/postfix.sh`): `/etc/postfix/master.cf` is the
//! distribution's with `samples/postfix/master.cf` appended — `submission`
//! and `465` services with `smtpd_sasl_auth_enable=yes`,
//! `smtpd_client_restrictions=permit_sasl_authenticated,reject` and
//! `content_filter=smtp-amavis:[127.0.0.1]:10026` (Amavis's originating port,
//! `conf/amavisd`, which signs DKIM), and the Amavis re-injection service on
//! `127.0.0.1:10025` (`POSTFIX_MAIL_REINJECT_PORT='10025'`, `conf/postfix`).
//! `postfix_config_postscreen` turns the stock `smtp` service into
//! `postscreen` with the `smtpd pass` service behind it, and `chroot` is `n`
//! on every service with Postfix 3. main.cf (`samples/postfix/main.cf`):
//! `mynetworks = 127.0.0.1` (plus `[::1]` with IPv6, plus `LOCAL_ADDRESS`),
//! `permit_mynetworks` in the HELO, sender and recipient restrictions, iRedAPD
//! as a policy service on 127.0.0.1:7777; `main.cf.postscreen`:
//! `postscreen_access_list = permit_mynetworks cidr:...`, DNSBLs. Postfix
//! versions (comments in `postfix_config_basic`): 3.6 and later on Debian 12,
//! Ubuntu 22.04, the BSDs, 3.8 on RHEL 10, 3.5 on older RHEL.
//!
//! So 25's PROXY service cannot be 10025 (Amavis has it): it is 12525, as
//! docker-mailserver does for the same reason, and the VPS relays 25 to it
//! by name. The script copies the stock services the way DMS's PROXY page
//! does (`postconf -Mf SERVICE | sed`), so the copies keep every iRedMail
//! `-o` line (SASL, TLS, the Amavis content filter), and adds: the PROXY
//! setting per service (never in main.cf), an empty `mynetworks` (iRedMail's
//! trusts 127.0.0.1, where the home agent connects from), and for postscreen
//! its own `smtpd pass` copy with the same empty `mynetworks`
//! (`smtpd_service_name`) and its own cache file (two postscreen processes
//! must not share one unless through `proxy:`). Postfix facts from its own
//! manual (postconf(1), postconf(5) of Postfix 3.7.11, Debian 12):
//! `postscreen_upstream_proxy_protocol` and `smtpd_upstream_proxy_protocol`,
//! `smtpd_service_name` (2.8), `postconf -M`/`-P`/`-X` (2.11, 3.0); all
//! older than any Postfix iRedMail installs.
//!
//! Outbound: Postfix on the host sends from the host, so its SMTP clients
//! (`smtp/unix`, `relay/unix`; not `smtp-amavis`, which talks to Amavis on
//! loopback) bind the home tunnel address, and without an IPv6 tunnel address
//! keep to IPv4 — as `cerectl mailserver-config postfix` does.
//!
//! **Dovecot** (`samples/dovecot/dovecot.conf`, `conf/dovecot`): Dovecot 2.3
//! with one dovecot.conf ending in `!include_try /etc/dovecot/iredmail/*.conf`
//! (`DOVECOT_CONF_INCLUDE_DIR`); `listen = * [::]`; the stock `imap`,
//! `imaps`, `pop3`, `pop3s` listeners are Dovecot's defaults (commented out in
//! the sample); ManageSieve listens on `MANAGESIEVE_BIND_HOST`:4190, which is
//! `LOCAL_ADDRESS`, 127.0.0.1 (`conf/global`): iRedMail does not publish
//! ManageSieve, so 4190 is not relayed. Nothing sets
//! `haproxy_trusted_networks`. On Debian 13 and Ubuntu 26.04 iRedMail
//! installs Dovecot 2.4 (`DOVECOT_VERSION='2.4'`) from
//! `samples/dovecot/dovecot-2.4-*.conf`, which has **no** include and writes
//! a listener's address as `listen` (2.3: `address`).
//!
//! **nginx** (`samples/nginx/`, `conf/nginx`, `conf/web_server`): nginx.conf
//! includes `/etc/nginx/conf-enabled/*.conf` and `/etc/nginx/sites-enabled/*.conf`;
//! the HTTPS site `00-default-ssl.conf` is `listen 443 ssl http2`, root
//! `/var/www/html` and the templates misc, ssl, iredadmin, roundcube, sogo,
//! netdata, php-catchall, stub_status from `/etc/nginx/templates`; the HTTP
//! site `00-default.conf` serves `/.well-known/acme-challenge/` from
//! `/opt/www/well_known` and redirects the rest to HTTPS. The recipe's site
//! is the same two servers on the loopback PROXY ports.
//!
//! **Fail2Ban** (`samples/fail2ban/`, `conf/fail2ban`): jails for postfix,
//! dovecot, roundcube, sogo, nginx-http-auth, postfix-pregreet; the action is
//! `iptables-multiport` or `nftables-multiport`; `ignoreip` holds
//! `LOCAL_ADDRESS`, 127.0.0.0/8 and the private ranges.

use std::net::{Ipv4Addr, Ipv6Addr};

use ceres_relay::stack::{MailStack, Opening, Protocol, Software, StackFacts};

use super::{Citation, Recipe, StackFile, TrustedProxy};

const REPO: &str = "iredmail/iRedMail";
const COMMIT: &str = "e0fe4fc277504aaa3e4915046cfe420524e42162";

/// iRedMail's PROXY listeners and relays (25 to 12525 by name, the rest to
/// 10000 + port): the table the home agent's stack probe checks too.
fn facts() -> &'static StackFacts {
    MailStack::Iredmail.facts()
}

/// The Postfix service name of a PROXY port: bound to loopback only.
fn service_name(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Postfix's PROXY services: (new service, stock service it copies).
pub fn postfix_proxy() -> Vec<(String, &'static str)> {
    facts()
        .listeners()
        .filter(|l| l.software == Software::Postfix)
        .filter_map(|l| {
            let stock = match l.protocol {
                Protocol::Smtp => "smtp",
                Protocol::Submissions => "465",
                Protocol::Submission => "submission",
                _ => return None,
            };
            Some((service_name(l.port), stock))
        })
        .collect()
}

/// The PROXY copy of 25's postscreen service (`127.0.0.1:12525`).
fn smtp_proxy_service() -> String {
    service_name(facts().listener(Protocol::Smtp).map_or(0, |l| l.port))
}

/// The copy of `smtpd pass` 12525's postscreen hands clients to.
pub const PASS_SERVICE: &str = "ceres-smtpd";
/// iRedMail's Amavis re-injection port: never ours.
#[cfg(test)]
pub const AMAVIS_REINJECT: u16 = 10025;

/// Dovecot's PROXY listeners: (service, listener, port, implicit TLS).
pub fn dovecot_proxy() -> Vec<(&'static str, &'static str, u16, bool)> {
    facts()
        .listeners()
        .filter(|l| l.software == Software::Dovecot)
        .filter_map(|l| {
            let (service, name) = match l.protocol {
                Protocol::Imap => ("imap-login", "imap-ceres"),
                Protocol::Imaps => ("imap-login", "imaps-ceres"),
                Protocol::Pop3 => ("pop3-login", "pop3-ceres"),
                Protocol::Pop3s => ("pop3-login", "pop3s-ceres"),
                _ => return None,
            };
            let tls = l.protocol.opening() == Opening::ImplicitTls;
            Some((service, name, l.port, tls))
        })
        .collect()
}

/// nginx's PROXY listener for `protocol` (HTTP, HTTPS): its port.
fn nginx_port(protocol: Protocol) -> u16 {
    facts()
        .listener(protocol)
        .filter(|l| l.software == Software::Nginx)
        .map_or(0, |l| l.port)
}

/// Where Postfix's SMTP clients send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// Home's tunnel address (`--home-tunnel-address`).
    pub bind4: Ipv4Addr,
    /// Home's IPv6 tunnel address, when the VPS sends mail out over IPv6.
    pub bind6: Option<Ipv6Addr>,
}

impl Default for Outbound {
    /// CERES's defaults: 10.77.77.2 (the VPS's `CERES_TUNNEL_HOME_ADDRESS`
    /// default), IPv6 off.
    fn default() -> Self {
        Self {
            bind4: Ipv4Addr::new(10, 77, 77, 2),
            bind6: None,
        }
    }
}

/// The copies' own `-o` lines, after the ones of the stock service.
fn proxy_params(service: &str, stock: &str) -> Vec<String> {
    let label = match stock {
        "smtp" => "smtpd",
        "465" => "smtps",
        other => other,
    };
    let mut p = vec![format!(
        "{service}/inet/syslog_name=postfix/{label}-proxyprotocol"
    )];
    if stock == "smtp" {
        // 25 is postscreen on iRedMail; a header goes to postscreen then.
        p.push(format!(
            "{service}/inet/postscreen_upstream_proxy_protocol=haproxy"
        ));
        p.push(format!("{service}/inet/smtpd_service_name={PASS_SERVICE}"));
    } else {
        p.push(format!(
            "{service}/inet/smtpd_upstream_proxy_protocol=haproxy"
        ));
    }
    p.push(format!("{service}/inet/mynetworks="));
    p
}

fn postfix_script(out: &Outbound) -> String {
    let mut s = "#!/bin/bash\n\
         # CERES: Postfix PROXY services on 127.0.0.1 next to iRedMail's stock ones, copies\n\
         # of them (so SASL, TLS and the Amavis content filter stay as iRedMail set them),\n\
         # each trusting no network (mynetworks=): a relayed client is only what its header\n\
         # says. 25's is 12525: iRedMail's Amavis re-injects on 127.0.0.1:10025. The PROXY\n\
         # setting is per service, never in main.cf, so 25, 465 and 587 stay as they are.\n\
         # Safe to run again: it drops its earlier copies first.\n\
         set -euo pipefail\n\
         cf=\"$(postconf -h config_directory)/master.cf\"\n\
         for s in smtp/inet smtpd/pass 465/inet submission/inet; do\n\
         \x20 n=\"$(postconf -M \"$s\" 2>/dev/null | wc -l)\"\n\
         \x20 if [[ \"$n\" != 1 ]]; then\n\
         \x20   echo \"ceres-proxy.sh: $cf has $n $s services, not one; this is for iRedMail's layout (postscreen on 25, 465, submission)\" >&2\n\
         \x20   exit 1\n\
         \x20 fi\n\
         done\n\
         for s in COPIES; do\n\
         \x20 if [[ -n \"$(postconf -M \"$s\" 2>/dev/null)\" ]]; then postconf -MX \"$s\"; fi\n\
         done\n"
        .replace(
            "COPIES",
            &postfix_proxy()
                .iter()
                .map(|(svc, _)| format!("{svc}/inet"))
                .chain(std::iter::once(format!("{PASS_SERVICE}/pass")))
                .collect::<Vec<_>>()
                .join(" "),
        );
    let proxy = postfix_proxy();
    for (service, stock) in &proxy {
        s.push_str(&format!(
            "postconf -Mf {stock}/inet | sed -e 's/^{stock} /{service} /' >> \"$cf\"\n"
        ));
    }
    s.push_str(&format!(
        "# 12525's postscreen hands clients to this copy of `smtpd pass`, which trusts no\n\
         # network either (the stock one has iRedMail's mynetworks).\n\
         postconf -Mf smtpd/pass | sed -e 's/^smtpd /{PASS_SERVICE} /' >> \"$cf\"\n\
         postconf -P \\\n"
    ));
    let mut params: Vec<String> = proxy
        .iter()
        .flat_map(|(svc, stock)| proxy_params(svc, stock))
        .collect();
    params.push(format!(
        "{PASS_SERVICE}/pass/syslog_name=postfix/smtpd-proxyprotocol"
    ));
    params.push(format!("{PASS_SERVICE}/pass/mynetworks="));
    let n = params.len();
    for (i, p) in params.iter().enumerate() {
        s.push_str(&format!("  {p}{}\n", if i + 1 < n { " \\" } else { "" }));
    }
    s.push_str(
        &"# Two postscreen processes must not share a cache file except through proxy:\n\
         # 12525's gets its own, of the type 25's uses.\n\
         cache=\"$(postconf -xh postscreen_cache_map)\"\n\
         case \"$cache\" in\n\
         \x20 proxy:*) postconf -PX SMTP/inet/postscreen_cache_map ;;\n\
         \x20 *) postconf -P \"SMTP/inet/postscreen_cache_map=${cache}_proxyprotocol\" ;;\n\
         esac\n"
            .replace("SMTP", &smtp_proxy_service()),
    );
    s.push_str(&format!(
        "# Outbound mail leaves from the home tunnel address ({}): the home agent sends\n\
         # it out through the VPS. Only the Internet-facing SMTP clients bind it;\n\
         # smtp-amavis keeps talking to Amavis on the loopback.\n\
         postconf -PX smtp/unix/smtp_bind_address6 relay/unix/smtp_bind_address6 \\\n\
         \x20 smtp/unix/inet_protocols relay/unix/inet_protocols\n\
         postconf -P smtp/unix/smtp_bind_address={} relay/unix/smtp_bind_address={}\n",
        out.bind4, out.bind4, out.bind4
    ));
    match out.bind6 {
        Some(a6) => s.push_str(&format!(
            "postconf -P smtp/unix/smtp_bind_address6={a6} relay/unix/smtp_bind_address6={a6}\n"
        )),
        None => s.push_str(
            "# No IPv6 through the tunnel: the SMTP clients keep to IPv4, so no mail leaves\n\
             # from the home network's own IPv6 address.\n\
             postconf -P smtp/unix/inet_protocols=ipv4 relay/unix/inet_protocols=ipv4\n",
        ),
    }
    s
}

fn dovecot_conf() -> String {
    let mut s = String::from(
        "# CERES: Dovecot PROXY listeners on 127.0.0.1 next to iRedMail's stock ones (new\n\
         # names; imap, imaps, pop3, pop3s stay as they are). Headers only from the home\n\
         # agent, which runs on this host and connects from 127.0.0.1.\n\
         haproxy_trusted_networks = 127.0.0.1/32\n",
    );
    let mut service = "";
    for (svc, name, port, tls) in dovecot_proxy() {
        if svc != service {
            if !service.is_empty() {
                s.push_str("}\n");
            }
            s.push_str(&format!("service {svc} {{\n"));
            service = svc;
        }
        s.push_str(&format!(
            "  inet_listener {name} {{\n    address = 127.0.0.1\n    port = {port}\n    haproxy = yes\n{}  }}\n",
            if tls { "    ssl = yes\n" } else { "" }
        ));
    }
    s.push_str("}\n");
    s
}

/// The templates iRedMail's HTTPS site includes, in its order.
pub const NGINX_TEMPLATES: [&str; 8] = [
    "misc",
    "ssl",
    "iredadmin",
    "roundcube",
    "sogo",
    "netdata",
    "php-catchall",
    "stub_status",
];

fn nginx_site() -> String {
    // iRedMail's stock sites on the PROXY ports, each listen line keeping
    // its stock parameters.
    let (http, https) = (nginx_port(Protocol::Http), nginx_port(Protocol::Https));
    let includes: String = NGINX_TEMPLATES
        .iter()
        .map(|t| format!("    include /etc/nginx/templates/{t}.tmpl;\n"))
        .collect();
    format!(
        "# CERES: iRedMail's two default sites (00-default.conf, 00-default-ssl.conf) again,\n\
         # on the loopback PROXY ports the relays dial; the client address comes from the\n\
         # PROXY header, taken from 127.0.0.1 (the home agent) only. 80 and 443 stay as\n\
         # they are. If you changed iRedMail's sites, make the same changes here.\n\
         server {{\n\
         \x20   listen 127.0.0.1:{http} proxy_protocol;\n\
         \x20   server_name _;\n\
         \x20   set_real_ip_from 127.0.0.1;\n\
         \x20   real_ip_header proxy_protocol;\n\
         \n\
         \x20   location ~* ^/.well-known/acme-challenge/ {{\n\
         \x20       root /opt/www/well_known;\n\
         \x20       try_files $uri =404;\n\
         \x20       allow all;\n\
         \x20   }}\n\
         \x20   location / {{\n\
         \x20       return 301 https://$host$request_uri;\n\
         \x20   }}\n\
         }}\n\
         \n\
         server {{\n\
         \x20   listen 127.0.0.1:{https} ssl http2 proxy_protocol;\n\
         \x20   server_name _;\n\
         \x20   set_real_ip_from 127.0.0.1;\n\
         \x20   real_ip_header proxy_protocol;\n\
         \n\
         \x20   root /var/www/html;\n\
         \x20   index index.php index.html;\n\
         \n\
         {includes}}}\n"
    )
}

/// The recipe for iRedMail, outbound bound as `out` says.
pub fn recipe(out: &Outbound) -> Recipe {
    let cite = |path, fact| Citation {
        repo: REPO,
        path,
        commit: COMMIT,
        fact,
    };
    Recipe {
        stack: "iredmail",
        title: "iRedMail",
        version: "iRedMail 1.8.1 (commit e0fe4fc, 2026-05-14) with Dovecot 2.3 (its default; Debian 13 and Ubuntu 26.04 get Dovecot 2.4, see the notes); Postfix 3.5 and later as the distributions ship it",
        relays: facts().relays(),
        mail_server: "127.0.0.1",
        egress_from: Vec::new(),
        trusted_proxy: Some(TrustedProxy {
            address: facts().trusted_from().to_string(),
            source: "the home agent, which runs on the iRedMail host and connects to the 127.0.0.1 listeners",
            find_with: "grep -- -proxyprotocol /var/log/mail.log (relayed sessions log the client's address, never 127.0.0.1)",
        }),
        files: vec![
            StackFile {
                path: "etc/postfix/ceres-proxy.sh",
                purpose: "run once (and after iRedMail or distribution upgrades rewrite master.cf): adds the Postfix PROXY services 127.0.0.1:12525 (postscreen), 127.0.0.1:10465 and 127.0.0.1:10587 as copies of iRedMail's smtp, 465 and submission services, and binds outbound mail to the tunnel address",
                contents: postfix_script(out),
                executable: true,
            },
            StackFile {
                path: "etc/dovecot/iredmail/ceres-proxy.conf",
                purpose: "adds the Dovecot PROXY listeners on 127.0.0.1 (10143, 10993, 10110, 10995), read by the include at the end of iRedMail's dovecot.conf (Dovecot 2.3)",
                contents: dovecot_conf(),
                executable: false,
            },
            StackFile {
                path: "etc/nginx/sites-enabled/ceres-proxy.conf",
                purpose: "iRedMail's default HTTP and HTTPS sites again on 127.0.0.1:10080 and 127.0.0.1:10443 with PROXY, the client address from the header",
                contents: nginx_site(),
                executable: false,
            },
        ],
        restart: "bash /etc/postfix/ceres-proxy.sh && postfix check && postfix reload && doveconf -n >/dev/null && systemctl reload dovecot && nginx -t && systemctl reload nginx",
        notes: vec![
            "25 is relayed to 12525, not 10025: iRedMail's Amavis re-injects mail into Postfix on 127.0.0.1:10025.",
            "The stock services and listeners (25 with postscreen, 465, 587, 143, 993, 110, 995, nginx on 80 and 443) are left as they are for LAN clients; nothing is added to main.cf: the PROXY settings are per service.",
            "iRedMail's mynetworks trusts 127.0.0.1, where the home agent connects from: the PROXY services set mynetworks empty, and so does ceres-smtpd, the copy of `smtpd pass` that 12525's postscreen hands clients to. Relaying 25, 465 or 587 without PROXY would make every Internet client 127.0.0.1 to iRedMail: an open relay.",
            "4190 (ManageSieve) is not relayed: iRedMail listens for it on 127.0.0.1 only (for Roundcube), so it is not public without CERES either.",
            "Outbound: smtp/unix and relay/unix bind the home tunnel address (10.77.77.2 by default; --home-tunnel-address for yours) so the home agent sends the mail out through the VPS; with --home-tunnel-address6 they bind that for IPv6, otherwise they keep to IPv4. CERES_EGRESS_FROM stays unset.",
            "Dovecot 2.4 (iRedMail on Debian 13 and Ubuntu 26.04): iRedMail's 2.4 dovecot.conf has no include directory, and Dovecot 2.4 names a listener's address `listen`, not `address`. Append ceres-proxy.conf's lines to /etc/dovecot/dovecot.conf with `address` changed to `listen`; this variant is not checked here (no Dovecot 2.4 on this host).",
            "FreeBSD and OpenBSD: iRedMail keeps these under /usr/local/etc (Dovecot's include directory is /usr/local/etc/dovecot/iredmail); the script finds Postfix's directory itself.",
            "An iRedMail or distribution upgrade that replaces master.cf drops the copies: run the script again (it removes its earlier copies first).",
        ],
        bans: "iRedMail's Fail2Ban (jails postfix, dovecot, roundcube, sogo, nginx-http-auth, postfix-pregreet; action iptables-multiport or nftables-multiport on the host; ignoreip 127.0.0.0/8 and the private ranges, so never the home agent) reads the logs, where the PROXY services and the real_ip nginx site put the real client address: it counts the right one. But its ban matches packets by source on the home host, and a relayed client's packets arrive from the home agent on 127.0.0.1: the ban does not stop a relayed client (Postfix's anvil, Dovecot's auth penalty and iRedAPD, which work on the logged address, still act). To stop one, block it on the VPS: CERES has no ban feed to the VPS.",
        verified: "Facts read in iRedMail at commit e0fe4fc. Tested here (cargo nextest run -p cerectl stacks): ceres-proxy.sh run twice against a scratch Postfix 3.7 config laid out as iRedMail leaves it (Debian's main.cf and master.cf, postscreen on 25, iRedMail's submission, 465 and 127.0.0.1:10025 Amavis services) with postconf finding no warnings, each PROXY service once, carrying the stock service's options, an empty mynetworks and its PROXY setting, and nothing PROXY in main.cf; ceres-proxy.conf parsed by doveconf 2.3 on a copy of Debian's /etc/dovecot; the nginx site checked with nginx -t (1.22) among stand-ins for iRedMail's templates. End to end (cargo nextest run -p ceres-tests --test ctl_mailconfig, as root): the script from --write run on a running Debian Postfix laid out as iRedMail's, then 127.0.0.1:12525 reads a PROXY header, logs the client it names and relays for no one, not even for a claimed 127.0.0.1 (which iRedMail's stock smtpd pass would let relay). iRedMail itself is not installed here; Dovecot and nginx were not run with these files.",
        citations: vec![
            cite(
                "functions/postfix.sh",
                "master.cf = the distribution's + samples/postfix/master.cf; postscreen on smtp with smtpd pass; chroot n on Postfix 3; mynetworks + LOCAL_ADDRESS and [::1]; Postfix versions per distribution",
            ),
            cite(
                "samples/postfix/master.cf",
                "submission and 465 services (SASL, client restrictions, content_filter to Amavis); PH_LOCAL_ADDRESS:PH_POSTFIX_MAIL_REINJECT_PORT re-injection service",
            ),
            cite(
                "conf/postfix",
                "POSTFIX_MAIL_REINJECT_PORT='10025', POSTFIX_MLMMJ_REINJECT_PORT='10028'",
            ),
            cite(
                "conf/amavisd",
                "AMAVISD_ORIGINATING_PORT='10026', content filter smtp-amavis:[SMTP_SERVER]:10026",
            ),
            cite(
                "samples/postfix/main.cf",
                "mynetworks = 127.0.0.1; permit_mynetworks in the restrictions; iRedAPD policy service",
            ),
            cite(
                "samples/postfix/main.cf.postscreen",
                "postscreen_access_list = permit_mynetworks cidr:..., DNSBL sites",
            ),
            cite(
                "conf/global",
                "LOCAL_ADDRESS 127.0.0.1; MANAGESIEVE_BIND_HOST = LOCAL_ADDRESS, port 4190",
            ),
            cite(
                "samples/dovecot/dovecot.conf",
                "listen = * [::]; stock imap/pop3 listeners are Dovecot's defaults; ManageSieve on MANAGESIEVE_BIND_HOST; !include_try PH_DOVECOT_CONF_INCLUDE_DIR/*.conf at the end",
            ),
            cite(
                "conf/dovecot",
                "DOVECOT_CONF_INCLUDE_DIR='/etc/dovecot/iredmail'; DOVECOT_VERSION 2.3, 2.4 on trixie and resolute",
            ),
            cite(
                "samples/dovecot/dovecot-2.4-mariadb.conf",
                "Dovecot 2.4 config: no include; inet_listener address written as listen",
            ),
            cite(
                "samples/nginx/nginx.conf",
                "includes conf-enabled/*.conf and sites-enabled/*.conf",
            ),
            cite(
                "samples/nginx/sites-available/00-default-ssl.conf",
                "listen 443 ssl http2; root, index and the template includes of the HTTPS site",
            ),
            cite(
                "samples/nginx/sites-available/00-default.conf",
                "HTTP site: ACME challenge from the well-known directory, everything else redirected to HTTPS",
            ),
            cite(
                "conf/nginx",
                "HTTPD_CONF_ROOT /etc/nginx, sites-enabled, templates directory",
            ),
            cite(
                "conf/web_server",
                "HTTPD_DOCUMENTROOT /var/www/html on Linux; HTTPD_WELL_KNOWN_DIR /opt/www/well_known",
            ),
            cite(
                "samples/fail2ban/jail.local",
                "ignoreip = LOCAL_ADDRESS 127.0.0.0/8 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16",
            ),
            cite(
                "conf/fail2ban",
                "FAIL2BAN_ACTION iptables-multiport or nftables-multiport",
            ),
        ],
    }
}
