//! docker-mailserver (DMS), read at commit c9b015d (v15.1.0+81, 2026-08-19).
//!
//! DMS's own page on PROXY protocol
//! (`docs/content/examples/tutorials/mailserver-behind-proxy.md`) gives two
//! ways: PROXY on the existing service ports, which its warning says breaks
//! "direct connections to DMS from other containers" — and which would make
//! the stock ports demand headers from LAN clients too — or **separate PROXY
//! ports**, "the original service ports and add 10000", except port 25:
//! "Port 10025 is already assigned in DMS to Amavis" (`target/amavis/postfix-amavis.cf`:
//! `127.0.0.1:10025 inet … smtpd`), so 25's PROXY service is 12525. CERES takes
//! the separate ports; the VPS relays 25 to 12525 by name.
//!
//! New master.cf services need DMS's `user-patches.sh` (the page's example:
//! `postconf -Mf submission/inet | sed … >> /etc/postfix/master.cf`, then
//! `postconf -P 10587/inet/smtpd_upstream_proxy_protocol=haproxy`; for 25
//! `postscreen_upstream_proxy_protocol` and a shared `postscreen_cache_map =
//! proxy:btree:$data_directory/postscreen_cache`); `postfix-master.cf` only
//! changes existing services (`docs/content/config/advanced/override-defaults/postfix.md`:
//! "Each line in this file will be passed to `postconf -P`"). The script here
//! is the page's, plus: `mynetworks=` on each PROXY service (a relayed client
//! is trusted by nothing), a copy of the stock `smtpd pass` service with
//! `mynetworks=` that 12525's postscreen hands clients to
//! (`smtpd_service_name`, postconf(5): "The internal service that
//! postscreen(8) hands off allowed connections to") — `mynetworks=` on the
//! postscreen service alone leaves the smtpd behind it trusting DMS's
//! mynetworks — and removing earlier copies first so a container restart
//! (which reruns the script on the same master.cf) adds no duplicates.
//! `target/scripts/startup/setup-stack.sh` runs
//! `/tmp/docker-mailserver/user-patches.sh`, i.e. `docker-data/dms/config/`.
//!
//! Dovecot: `docker-data/dms/config/dovecot.cf` is copied to
//! `/etc/dovecot/local.conf` (`target/scripts/startup/setup.d/dovecot.sh`);
//! the page's listeners `imap-proxyprotocol` 10143, `imaps-proxyprotocol`
//! 10993 (`ssl = yes`), `pop3-proxyprotocol` 10110, `pop3s-proxyprotocol`
//! 10995, `sieve-proxyprotocol` 14190, with `haproxy_trusted_networks` = the
//! proxy's address.
//!
//! Network: the example `compose.yaml` defines none (the Compose default
//! network, subnet from Docker's pool — unknown in advance), so the override
//! fixes the `default` network to the page's `172.16.42.0/24` and the IPv6
//! ULA example of `docs/content/config/advanced/ipv6.md`
//! (`fd00:cafe:face:feed::/64`, `enable_ipv6: true`; that page's tip
//! "Override the implicit `default` network"). The gateway, 172.16.42.1, is
//! where Docker's port publishing connects from (ipv6.md: connections are
//! "proxied through the IPv4 or IPv6 gateway address of it's connected
//! network"). `PERMIT_DOCKER` stays `none` (the default,
//! `target/scripts/startup/variables-stack.sh`): mynetworks trusts no Docker
//! network, so not the gateway either.

use ceres_relay::stack::{MailStack, Opening, Protocol, Software, StackFacts};

use super::{Citation, DockerNet, Recipe, StackFile, TrustedProxy};

const REPO: &str = "docker-mailserver/docker-mailserver";
const COMMIT: &str = "c9b015ddc869b277c16dd20ef4a70e595c72d022";

/// DMS's PROXY ports and relays: the table the home agent's stack probe
/// checks too.
fn facts() -> &'static StackFacts {
    MailStack::DockerMailserver.facts()
}

/// Postfix's PROXY services: (port, the stock service it copies — DMS's
/// `target/postfix/master.cf` names them as the protocols are named).
pub fn postfix_services() -> Vec<(u16, &'static str)> {
    facts()
        .listeners()
        .filter(|l| l.software == Software::Postfix)
        .map(|l| (l.port, l.protocol.name()))
        .collect()
}

/// Dovecot's PROXY listeners: (login service, listener name as DMS's page
/// names it, port, implicit TLS).
pub fn dovecot_listeners() -> Vec<(&'static str, &'static str, u16, bool)> {
    facts()
        .listeners()
        .filter(|l| l.software == Software::Dovecot)
        .map(|l| {
            let (service, name) = match l.protocol {
                Protocol::Imap => ("imap-login", "imap-proxyprotocol"),
                Protocol::Imaps => ("imap-login", "imaps-proxyprotocol"),
                Protocol::Pop3 => ("pop3-login", "pop3-proxyprotocol"),
                Protocol::Pop3s => ("pop3-login", "pop3s-proxyprotocol"),
                _ => ("managesieve-login", "sieve-proxyprotocol"),
            };
            let tls = l.protocol.opening() == Opening::ImplicitTls;
            (service, name, l.port, tls)
        })
        .collect()
}

/// The port of 25's PROXY service (12525: DMS's 10025 is Amavis).
fn smtp_proxy_port() -> u16 {
    facts().listener(Protocol::Smtp).map_or(0, |l| l.port)
}

/// The network the override gives DMS: the subnet of DMS's PROXY page and
/// the IPv6 ULA of its IPv6 page, from the same table (`--docker-subnet4/6`
/// for others).
pub const NET: DockerNet = DockerNet::default_of(MailStack::DockerMailserver);
/// The copy of the stock `smtpd pass` service that 12525's postscreen hands
/// clients to, so that they meet an smtpd trusting no network.
pub const PASS_SERVICE: &str = "smtpd-proxyprotocol";

fn compose_override(net: DockerNet) -> String {
    let ports: String = postfix_services()
        .iter()
        .map(|(p, _)| *p)
        .chain(dovecot_listeners().iter().map(|d| d.2))
        .map(|p| format!("      - \"127.0.0.1:{p}:{p}\"\n"))
        .collect();
    let subnets: String = net
        .egress_from()
        .iter()
        .map(|s| format!("        - subnet: \"{s}\"\n"))
        .collect();
    format!(
        "# CERES: publish DMS's PROXY ports on the host's loopback only, where the home\n\
         # agent connects (CERES_MAIL_SERVER=127.0.0.1); the stock ports stay as compose.yaml\n\
         # publishes them. The network gets fixed subnets so that home's CERES_EGRESS_FROM\n\
         # and Dovecot's haproxy_trusted_networks (the gateway, {}) are known.\n\
         services:\n  mailserver:\n    ports:\n{ports}\
         \nnetworks:\n  default:\n    enable_ipv6: {}\n    ipam:\n      config:\n{subnets}",
        net.gateway(),
        net.subnet6.is_some(),
    )
}

fn user_patches() -> String {
    let mut s = String::from(
        "#!/bin/bash\n\
         # CERES: PROXY services next to the stock ones, from DMS's \"Mail Server behind a\n\
         # Proxy\" page (separate ports; 25's is 12525, DMS's 10025 is Amavis). Each trusts\n\
         # no network (mynetworks=): a relayed client is only what its header says.\n\
         # 12525's postscreen hands clients to a copy of the stock `smtpd pass` service\n\
         # with the same empty mynetworks (smtpd_service_name), not to the stock one.\n\
         # DMS reruns this on every start, on the same master.cf after a restart: drop\n\
         # the copies of an earlier run first.\n\
         set -euo pipefail\n",
    );
    let services = postfix_services();
    let list: Vec<String> = services
        .iter()
        .map(|(p, _)| format!("{p}/inet"))
        .chain(std::iter::once(format!("{PASS_SERVICE}/pass")))
        .collect();
    s.push_str(&format!(
        "for s in {}; do\n\
         \x20 if [[ -n \"$(postconf -M \"$s\" 2>/dev/null)\" ]]; then postconf -MX \"$s\"; fi\n\
         done\n",
        list.join(" ")
    ));
    for (port, stock) in &services {
        s.push_str(&format!(
            "postconf -Mf {stock}/inet | sed -e 's/^{stock} /{port} /' >> /etc/postfix/master.cf\n"
        ));
    }
    s.push_str(&format!(
        "postconf -Mf smtpd/pass | sed -e 's/^smtpd /{PASS_SERVICE} /' >> /etc/postfix/master.cf\n"
    ));
    // 25's copy is postscreen (DMS's smtp service), handing clients to the
    // pass copy; the others are smtpd.
    let mut params = Vec::new();
    for (port, stock) in &services {
        if *stock == "smtp" {
            params.push(format!(
                "{port}/inet/postscreen_upstream_proxy_protocol=haproxy"
            ));
            params.push(format!(
                "{port}/inet/syslog_name=postfix/smtpd-proxyprotocol"
            ));
            params.push(format!("{port}/inet/mynetworks="));
            params.push(format!("{port}/inet/smtpd_service_name={PASS_SERVICE}"));
            params.push(format!(
                "{PASS_SERVICE}/pass/syslog_name=postfix/smtpd-proxyprotocol"
            ));
            params.push(format!("{PASS_SERVICE}/pass/mynetworks="));
        } else {
            params.push(format!("{port}/inet/smtpd_upstream_proxy_protocol=haproxy"));
            params.push(format!(
                "{port}/inet/syslog_name=postfix/{stock}-proxyprotocol"
            ));
            params.push(format!("{port}/inet/mynetworks="));
        }
    }
    s.push_str("postconf -P \\\n");
    s.push_str(
        &params
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join(" \\\n"),
    );
    s.push_str(&format!(
        "\n# Two postscreen services (25 and {}) share one cache through proxymap.\n\
         postconf 'postscreen_cache_map = proxy:btree:$data_directory/postscreen_cache'\n",
        smtp_proxy_port()
    ));
    s
}

fn dovecot_cf(net: DockerNet) -> String {
    let gateway = net.gateway();
    let mut s = format!(
        "# CERES: PROXY listeners next to the stock ones (DMS's \"Mail Server behind a Proxy\"\n\
         # page, separate ports). Headers are taken only from the Docker gateway {gateway},\n\
         # where Docker's port publishing connects from.\n\
         haproxy_trusted_networks = {gateway}/32\n"
    );
    let mut service = "";
    for (svc, name, port, tls) in dovecot_listeners() {
        if svc != service {
            if !service.is_empty() {
                s.push_str("}\n");
            }
            s.push_str(&format!("service {svc} {{\n"));
            service = svc;
        }
        s.push_str(&format!(
            "  inet_listener {name} {{\n    port = {port}\n    haproxy = yes\n{}  }}\n",
            if tls { "    ssl = yes\n" } else { "" }
        ));
    }
    s.push_str("}\n");
    s
}

/// The recipe for DMS on `net`.
pub fn recipe(net: DockerNet) -> Recipe {
    let cite = |path, fact| Citation {
        repo: REPO,
        path,
        commit: COMMIT,
        fact,
    };
    Recipe {
        stack: "docker-mailserver",
        title: "docker-mailserver",
        version: "docker-mailserver v15.1.0+81 (commit c9b015d, 2026-08-19; image based on debian:13-slim)",
        relays: facts().relays(),
        mail_server: "127.0.0.1",
        egress_from: net.egress_from(),
        trusted_proxy: Some(TrustedProxy {
            address: net.gateway().to_string(),
            source: super::DOCKER_GATEWAY,
            find_with: "docker network inspect $(docker inspect mailserver --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}') --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}'",
        }),
        files: vec![
            StackFile {
                path: "compose.override.yaml",
                purpose: "publishes the PROXY ports on 127.0.0.1 only and fixes the network's subnets; Docker Compose merges it with compose.yaml (the service is `mailserver` there); if you have this file already, merge by hand",
                contents: compose_override(net),
                executable: false,
            },
            StackFile {
                path: "docker-data/dms/config/user-patches.sh",
                purpose: "adds the Postfix PROXY services 12525 (postscreen), 10465 and 10587, copies of the stock smtp, submissions and submission services, and smtpd-proxyprotocol, the copy of `smtpd pass` that 12525 hands clients to; if you have this file already, append the lines after `set -euo pipefail`",
                contents: user_patches(),
                executable: true,
            },
            StackFile {
                path: "docker-data/dms/config/dovecot.cf",
                purpose: "adds the Dovecot PROXY listeners 10143, 10993, 10110, 10995, 14190 and trusts the gateway only; if you have this file already, add these lines",
                contents: dovecot_cf(net),
                executable: false,
            },
        ],
        restart: "docker compose down && docker compose up -d   # down: the network's subnets change",
        notes: vec![
            "No web server in DMS: 80 and 443 are not relayed (add them, plain, for a web server of your own).",
            "POP3 and ManageSieve listeners only serve when DMS has them on (ENABLE_POP3=1, ENABLE_MANAGESIEVE=1); drop 110, 995 and 4190 from CERES_RELAYS otherwise.",
            "Keep PERMIT_DOCKER=none (DMS's default): with `network` or `connected-networks`, the Docker gateway — where every relayed and published connection comes from — would be in mynetworks for the stock services.",
            "Inside the container the PROXY services listen on all its addresses (Docker's publishing cannot reach its loopback): other containers on the network reach them too; keep that network to the mail containers.",
            "A network of your own instead of the override's (another subnet, or no IPv6): give --docker-subnet4 and --docker-subnet6 (or off), and the override, dovecot.cf and CERES_EGRESS_FROM follow.",
            "12525's postscreen hands each client to smtpd-proxyprotocol (smtpd_service_name), a copy of the stock `smtpd pass` with an empty mynetworks: the stock one trusts DMS's mynetworks, which a PROXY header naming such an address would otherwise reach.",
        ],
        bans: "DMS's Fail2Ban (ENABLE_FAIL2BAN=1 with NET_ADMIN; target/fail2ban/jail.local: dovecot and postfix jails, banaction nftables-allports, ignoreip 127.0.0.1/8) reads the mail log in the container. Through the PROXY services Postfix and Dovecot log the real client address, so it counts the right one — but it bans with nftables inside the container by source address, and a relayed client's packets arrive from the Docker gateway: the ban does not stop a relayed client (Postfix's and Dovecot's own rate limits and auth penalties, which work on the logged address, still do). Add the gateway to ignoreip in docker-data/dms/config/fail2ban-jail.cf so that no log line naming it can ever block every relayed client at once. To stop a relayed client, block it on the VPS: CERES has no ban feed to the VPS.",
        verified: "Facts read in docker-mailserver at commit c9b015d. Tested here (cargo nextest run -p cerectl stacks): user-patches.sh run twice against a scratch Postfix 3.7 config (Debian's main.cf and master.cf plus DMS's stock smtp/submission/submissions services) with postconf -c finding no warnings, each PROXY service once and 12525 handing off to smtpd-proxyprotocol, a pass service with an empty mynetworks (the same hand-off runs end to end in the iRedMail test of ctl_mailconfig); dovecot.cf parsed by doveconf 2.3 on a copy of Debian's /etc/dovecot as local.conf; the compose override parsed as YAML. End to end in the namespace lab (cargo nextest run -p ceres-tests --test stack_lab), configured only from this output: DMS's layout emulated on Debian 12's Postfix 3.7 and Dovecot 2.3 (a container namespace on the override's subnets, Docker's NAT and a docker-proxy from the gateway for the 127.0.0.1 ports, DMS's stock smtp/submission/submissions services and SASL socket, the files applied as DMS's start-up scripts apply them); mail in on 25 (IPv4, IPv6) and submission on 587 logged with the client's address, IMAP on 993 and 143 logged in with it, the container network's outbound mail leaving from the VPS's IPv4 and IPv6, CERES_MAIL_STACK's probe passing, LAN hosts refused. DMS's own image (Debian 13, Dovecot 2.4) not run here.",
        citations: vec![
            cite(
                "docs/content/examples/tutorials/mailserver-behind-proxy.md",
                "separate PROXY ports: original + 10000, 25 → 12525 (10025 is Amavis); user-patches.sh with postconf -Mf/-P; postscreen_cache_map shared; dovecot.cf listeners *-proxyprotocol and haproxy_trusted_networks; 'Postfix has no concept of trusted proxies'",
            ),
            cite(
                "target/amavis/postfix-amavis.cf",
                "127.0.0.1:10025 inet ... smtpd (Amavis re-injection)",
            ),
            cite(
                "target/postfix/master.cf",
                "stock services smtp (postscreen), submission, submissions",
            ),
            cite(
                "docs/content/config/advanced/override-defaults/postfix.md",
                "postfix-master.cf lines go to postconf -P (existing services only)",
            ),
            cite(
                "target/scripts/startup/setup-stack.sh",
                "runs /tmp/docker-mailserver/user-patches.sh",
            ),
            cite(
                "target/scripts/startup/setup.d/dovecot.sh",
                "copies /tmp/docker-mailserver/dovecot.cf to /etc/dovecot/local.conf",
            ),
            cite(
                "compose.yaml",
                "service `mailserver`, ports 25, 143, 465, 587, 993, ./docker-data/dms/config/ mounted at /tmp/docker-mailserver/; no networks",
            ),
            cite(
                "docs/content/config/advanced/ipv6.md",
                "enable_ipv6 with subnet fd00:cafe:face:feed::/64; overriding the implicit default network; connections proxied through the network's gateway",
            ),
            cite(
                "target/scripts/startup/setup.d/networking.sh",
                "PERMIT_DOCKER decides mynetworks",
            ),
            cite(
                "target/scripts/startup/variables-stack.sh",
                "PERMIT_DOCKER defaults to none",
            ),
            cite(
                "target/fail2ban/jail.local",
                "ignoreip = 127.0.0.1/8, banaction = nftables-allports, dovecot and postfix jails",
            ),
            cite(
                "docs/content/config/security/fail2ban.md",
                "ENABLE_FAIL2BAN needs NET_ADMIN; fail2ban-jail.cf is copied to /etc/fail2ban/jail.d/user-jail.local",
            ),
        ],
    }
}
