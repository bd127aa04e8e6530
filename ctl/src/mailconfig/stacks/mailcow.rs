//! mailcow-dockerized, read at commit 0642467 (tag 2026-07a + 5, 2026-08-05).
//!
//! mailcow already ships PROXY listeners next to its stock ones, at the very
//! numbers CERES's default relays dial (`10000 + PORT`), so the default
//! `CERES_RELAYS` needs no mapping for the mail ports:
//! - Postfix (`data/conf/postfix/master.cf`): `10025 inet … postscreen -o
//!   postscreen_upstream_proxy_protocol=haproxy`, `10465 … smtpd -o
//!   smtpd_upstream_proxy_protocol=haproxy -o smtpd_tls_wrappermode=yes`,
//!   `10587 … smtpd -o smtpd_upstream_proxy_protocol=haproxy` — each with the
//!   SASL/TLS `-o` lines of its stock twin, `chroot` `n`;
//! - Dovecot (`data/conf/dovecot/dovecot.conf`): `inet_listener imap_haproxy`
//!   10143, `imaps_haproxy` 10993 (`ssl = yes`), `pop3_haproxy` 10110,
//!   `pop3s_haproxy` 10995, `sieve_haproxy` 14190, all `haproxy = yes`; no
//!   `haproxy_trusted_networks` is set anywhere in the repository, and
//!   `helper-scripts/docker-compose.override.yml.d/HAPROXY/docker-compose.override.yml`
//!   says "Set haproxy_trusted_networks in Dovecots extra.conf!".
//!
//! None of them is published by `docker-compose.yml` (postfix-mailcow
//! publishes `${SMTP_PORT:-25}:25`, `${SMTPS_PORT:-465}:465`,
//! `${SUBMISSION_PORT:-587}:587`; dovecot-mailcow `${IMAP_PORT:-143}:143`,
//! `${IMAPS_PORT:-993}:993`, `${POP_PORT:-110}:110`, `${POPS_PORT:-995}:995`,
//! `${SIEVE_PORT:-4190}:4190`); mailcow's HAPROXY helper publishes them on
//! `127.0.0.1` by default but lets mailcow.conf move them (`SMTP_PORT_HAPROXY`
//! …). The override here pins them to 127.0.0.1: a PROXY port published
//! anywhere else lets any host that reaches it claim any client address.
//!
//! nginx-mailcow has no separate PROXY listener: `NGINX_USE_PROXY_PROTOCOL`
//! (`data/Dockerfiles/nginx/bootstrap.py`) turns `proxy_protocol` on for the
//! stock `listen {{ HTTP_PORT }}` / `{{ HTTPS_PORT }}` lines
//! (`data/conf/nginx/templates/nginx.conf.j2`) and switches `real_ip_header`
//! for the whole site (`sites-default.conf.j2`), so LAN clients would need a
//! header too. 80 and 443 are therefore relayed plain.
//!
//! The network (`docker-compose.yml`, `networks: mailcow-network`): bridge
//! `br-mailcow`, `enable_ipv6: ${ENABLE_IPV6:-true}`, subnets
//! `${IPV4_NETWORK:-172.22.1}.0/24` and `${IPV6_NETWORK:-fd4d:6169:6c63:6f77::/64}`.
//! Docker gives a bridge network without an explicit `gateway` the subnet's
//! first address, 172.22.1.1: the source of connections Docker's port
//! publishing (docker-proxy, or the hairpin NAT without it) makes to a
//! container, so it is the one address Dovecot may take PROXY headers from.
//!
//! Overrides: `data/conf/dovecot/extra.conf` (`!include_try
//! /etc/dovecot/extra.conf` at the end of dovecot.conf, ignored by git per
//! `.gitignore`); `data/conf/postfix/extra.cf` (appended to main.cf by
//! `data/Dockerfiles/postfix/postfix.sh`) — not needed here;
//! `docker-compose.override.yml` (the name the HAPROXY helper uses, merged
//! by Docker Compose).

use ceres_relay::stack::{MailStack, Software, StackFacts};

use super::{Citation, DockerNet, Recipe, StackFile, TrustedProxy};

const REPO: &str = "mailcow/mailcow-dockerized";
const COMMIT: &str = "06424670fa5d60fee851f58bfc49f66086d5f0a6";

/// mailcow's PROXY listeners and relays: the table the home agent's stack
/// probe checks too.
fn facts() -> &'static StackFacts {
    MailStack::Mailcow.facts()
}

/// The PROXY ports of `software`'s container (Postfix 10025/10465/10587,
/// Dovecot's `*_haproxy` listeners).
pub fn proxy_ports(software: Software) -> Vec<u16> {
    facts().ports(software).collect()
}

/// mailcow's default network, `${IPV4_NETWORK:-172.22.1}.0/24` and
/// `${IPV6_NETWORK:-fd4d:6169:6c63:6f77::/64}`, from the same table
/// (`--docker-subnet4/6` for others).
pub const NET: DockerNet = DockerNet::default_of(MailStack::Mailcow);

fn compose_override() -> String {
    let ports = |software| {
        proxy_ports(software)
            .iter()
            .map(|p| format!("        - \"127.0.0.1:{p}:{p}\"\n"))
            .collect::<String>()
    };
    format!(
        "# CERES: publish mailcow's own PROXY listeners on the host's loopback only,\n\
         # where the home agent connects (CERES_MAIL_SERVER=127.0.0.1). Never on\n\
         # another address: whoever reaches a PROXY port can claim any client address.\n\
         # The stock ports (25, 465, 587, 143, 993, ...) stay as mailcow publishes them.\n\
         services:\n\
         \n    postfix-mailcow:\n      ports:\n{}\
         \n    dovecot-mailcow:\n      ports:\n{}",
        ports(Software::Postfix),
        ports(Software::Dovecot),
    )
}

fn dovecot_extra(net: DockerNet) -> String {
    format!(
        "# CERES: Dovecot reads PROXY headers on mailcow's *_haproxy listeners only from\n\
         # the address Docker's port publishing connects from: mailcow-network's gateway\n\
         # (`ip -4 addr show br-mailcow` shows it). Nothing else is trusted.\n\
         haproxy_trusted_networks = {}/32\n",
        net.gateway()
    )
}

/// The recipe for mailcow on `net`.
pub fn recipe(net: DockerNet) -> Recipe {
    let cite = |path, fact| Citation {
        repo: REPO,
        path,
        commit: COMMIT,
        fact,
    };
    Recipe {
        stack: "mailcow",
        title: "mailcow (dockerized)",
        version: "mailcow-dockerized 2026-07a+5 (commit 0642467, 2026-08-05): postfix-mailcow 3.10.12-1, dovecot-mailcow 2.3.21.1-2, nginx-mailcow 1.30.4-1",
        relays: facts().relays(),
        mail_server: "127.0.0.1",
        egress_from: net.egress_from(),
        trusted_proxy: Some(TrustedProxy {
            address: net.gateway().to_string(),
            source: super::DOCKER_GATEWAY,
            find_with: "ip -4 addr show br-mailcow (mailcow names its bridge br-mailcow; the address there is the gateway)",
        }),
        files: vec![
            StackFile {
                path: "docker-compose.override.yml",
                purpose: "publishes mailcow's PROXY listeners (Postfix 10025/10465/10587, Dovecot 10143/10993/10110/10995/14190) on 127.0.0.1 only; if you have this file already, add these ports to its services",
                contents: compose_override(),
                executable: false,
            },
            StackFile {
                path: "data/conf/dovecot/extra.conf",
                purpose: "lets Dovecot take PROXY headers from the Docker gateway only; if you have this file already, add the line",
                contents: dovecot_extra(net),
                executable: false,
            },
        ],
        restart: "cd /opt/mailcow-dockerized && docker compose up -d",
        notes: vec![
            "No Postfix file: mailcow's master.cf already has the PROXY services 10025 (postscreen), 10465 and 10587 with the SASL/TLS options of their stock twins; they are left as mailcow ships them. Relayed clients arrive with their public address, never in mailcow's mynetworks (mynetworks_style = subnet: its own Docker network).",
            "80 and 443 are relayed plain: mailcow's NGINX_USE_PROXY_PROTOCOL switches the stock listeners (and LAN clients) to PROXY too, so it stays off. Web clients then reach nginx-mailcow from the Docker gateway; webmail and autodiscover logs show that address.",
            "mailcow.conf may move the network (IPV4_NETWORK, IPV6_NETWORK, ENABLE_IPV6): give them as --docker-subnet4 IPV4_NETWORK.0/24 and --docker-subnet6 IPV6_NETWORK (or off with ENABLE_IPV6=false), and CERES_EGRESS_FROM and extra.conf follow.",
            "Keep SNAT_TO_SOURCE and SNAT6_TO_SOURCE in mailcow.conf at n (mailcow's default): netfilter-mailcow would otherwise rewrite the source of mail leaving mailcow-network, and home's CERES_EGRESS_FROM sends out through the tunnel by that source.",
            "mailcow's 10025 postscreen hands clients to its stock smtpd, whose mynetworks is mailcow-network (mynetworks_style = subnet): a PROXY header naming an address inside that subnet would be trusted to relay. The home agent passes on only the headers the VPS writes from the real TCP peer; keep the VPS's relays on its public address so no host on a private network of the VPS's provider can connect to them.",
            "mailcow.conf's SMTP_PORT, IMAPS_PORT, ... (the stock published ports) stay as they are, for LAN clients.",
        ],
        bans: "netfilter-mailcow (host network, privileged; data/Dockerfiles/netfilter/main.py) reads the failures Postfix, Dovecot and SOGo publish to Redis (F2B_CHANNEL) and bans the address in its MAILCOW chain (INPUT and FORWARD); it never bans private or loopback addresses, so never the Docker gateway. Through the PROXY listeners Postfix and Dovecot log the real client address, so it counts the right one — but its ban drops packets from that address on the home host, and a relayed client's packets reach mailcow from the home agent: the ban does not stop a relayed client (Postfix's and Dovecot's own rate limits and auth penalties, which work on the logged address, still do). Web logins relayed plain (80, 443) show the gateway and are not banned at all. To stop a relayed client, block it on the VPS: CERES has no ban feed to the VPS.",
        verified: "Facts read in mailcow-dockerized at commit 0642467. Tested here (cargo nextest run -p cerectl stacks): the compose override parsed as YAML (every published PROXY port on 127.0.0.1, each a port mailcow's master.cf or dovecot.conf has as a PROXY listener), extra.conf parsed by doveconf 2.3 on a copy of Debian's /etc/dovecot. Not run against a live mailcow.",
        citations: vec![
            cite(
                "data/conf/postfix/master.cf",
                "PROXY services 10025 (postscreen, postscreen_upstream_proxy_protocol=haproxy), 10465, 10587 (smtpd_upstream_proxy_protocol=haproxy)",
            ),
            cite(
                "data/conf/dovecot/dovecot.conf",
                "inet_listener imap_haproxy 10143, imaps_haproxy 10993, pop3_haproxy 10110, pop3s_haproxy 10995, sieve_haproxy 14190 (haproxy = yes); !include_try /etc/dovecot/extra.conf",
            ),
            cite(
                "docker-compose.yml",
                "published ports of postfix-mailcow and dovecot-mailcow; mailcow-network subnets ${IPV4_NETWORK:-172.22.1}.0/24 and ${IPV6_NETWORK:-fd4d:6169:6c63:6f77::/64}, enable_ipv6 ${ENABLE_IPV6:-true}; image versions",
            ),
            cite(
                "helper-scripts/docker-compose.override.yml.d/HAPROXY/docker-compose.override.yml",
                "mailcow's own override publishing the PROXY ports on 127.0.0.1; 'Set haproxy_trusted_networks in Dovecots extra.conf!'",
            ),
            cite(
                "data/conf/postfix/main.cf",
                "mynetworks_style = subnet; extra.cf for persistent overrides",
            ),
            cite(
                "data/Dockerfiles/nginx/bootstrap.py",
                "NGINX_USE_PROXY_PROTOCOL, TRUSTED_PROXIES",
            ),
            cite(
                "data/conf/nginx/templates/nginx.conf.j2",
                "proxy_protocol is added to the stock listen lines, not a separate port",
            ),
            cite(
                "data/Dockerfiles/netfilter/main.py",
                "bans from F2B_CHANNEL into the MAILCOW chain of INPUT and FORWARD; get_ip skips private and loopback addresses; SNAT_TO_SOURCE",
            ),
            cite(
                ".gitignore",
                "data/conf/dovecot/extra.conf, data/conf/postfix/extra.cf and data/conf/nginx/*.custom are the user's files",
            ),
        ],
    }
}
