//! Mailu, read at master commit bbb1c20 (2024.06.1+392, 2026-07-26).
//!
//! Mailu's PROXY support (`PROXY_PROTOCOL`, a list of ports, or `mail`,
//! `all-but-http`, `all`: `core/base/libs/socrate/socrate/system.py`) turns
//! PROXY on for the **stock** listeners of the front container, not separate
//! ones: nginx's `listen 25 proxy_protocol` (`core/nginx/conf/nginx.conf`,
//! mail block), Dovecot's `haproxy = yes` on the stock `imap`, `imaps`,
//! `pop3`, `pop3s`, `submission`, `submissions`, `sieve` listeners
//! (`core/nginx/dovecot/proxy.conf`: the front runs a Dovecot proxy for
//! everything but 25 and HTTP). `REAL_IP_FROM` is the trusted list for all of
//! them (nginx `set_real_ip_from`, Dovecot `haproxy_trusted_networks`);
//! `docs/configuration.rst` says `REAL_IP_HEADER` "must be unset" with PROXY.
//!
//! So, per port:
//! - 465, 587, 993, 995, 143, 110, 4190: separate PROXY listeners are
//!   possible, because the front's Dovecot config ends with `!include_try
//!   /overrides/dovecot/proxy.conf` and the compose file mounts
//!   `overrides/nginx` at `/overrides` (`setup/flavors/compose/docker-compose.yml`).
//!   The recipe adds them there. Not at 10143, 10025 or 14190: the front
//!   already listens there for webmail (`imap-webmail`, `submission-webmail`,
//!   `sieve-webmail`) and the admin treats those as `WEBMAIL_PORTS`
//!   (`core/admin/mailu/internal/nginx.py`: IMAP allowed when disabled,
//!   webmail tokens). 143 and 4190 therefore go to 20143 and 24190. Routing to
//!   the back ends is by protocol (`Auth-Protocol`), so new ports need nothing
//!   else (`core/nginx/dovecot/login.lua`).
//! - 25: nginx's mail block takes no overrides (`include /overrides/*.conf`
//!   is inside the HTTP server), so there is no second SMTP listener; and 25
//!   cannot be relayed plain: Postfix's `mynetworks` holds `SUBNET`
//!   (`core/postfix/conf/main.cf`), Docker's userland proxy connects from the
//!   network's gateway inside it, and `docs/faq.rst` says that "causes an open
//!   relay". So 25 takes PROXY on the stock listener (`PROXY_PROTOCOL=25`),
//!   published on 127.0.0.1 only. Fetchmail copes (`optional/fetchmail/fetchmail.py`
//!   delivers to the hostname instead of the front when `PROXY_PROTOCOL_25`).
//! - 80, 443: PROXY only on the stock listeners; and with `REAL_IP_FROM`
//!   set, the HTTP block has `set_real_ip_from` without `real_ip_header`
//!   (nginx's default: X-Real-IP), so a web client relayed plain through the
//!   gateway could name its own address. Not relayed.
//!
//! Network: setup's default `SUBNET` 192.168.203.0/24
//! (`setup/templates/steps/compose/03_expose.html`), IPv6 off by default and
//! then a random ULA per install (`SUBNET6`, "We do NOT recommend that you
//! enable this!"). The compose file gives no gateway, so Docker uses the
//! subnet's first address, 192.168.203.1: the one source `REAL_IP_FROM` names.

use ceres_relay::stack::{MailStack, Opening, Protocol, Software, StackFacts};

use super::{Citation, DockerNet, Recipe, StackFile, TrustedProxy};

const REPO: &str = "Mailu/Mailu";
const COMMIT: &str = "bbb1c206f9c8e438bb7f7193bdd8eea2ed09d7fd";

/// Mailu's PROXY listeners and relays: the table the home agent's stack
/// probe checks too.
fn facts() -> &'static StackFacts {
    MailStack::Mailu.facts()
}

/// Separate PROXY listeners added to the front's Dovecot:
/// (login service, listener name, port, implicit TLS, public port).
pub fn dovecot_listeners() -> Vec<(&'static str, &'static str, u16, bool, u16)> {
    facts()
        .listeners()
        .filter(|l| l.software == Software::Dovecot)
        .map(|l| {
            let (service, name) = match l.protocol {
                Protocol::Imap => ("imap-login", "imap-ceres"),
                Protocol::Imaps => ("imap-login", "imaps-ceres"),
                Protocol::Pop3 => ("pop3-login", "pop3-ceres"),
                Protocol::Pop3s => ("pop3-login", "pop3s-ceres"),
                Protocol::Submission => ("submission-login", "submission-ceres"),
                Protocol::Submissions => ("submission-login", "submissions-ceres"),
                _ => ("managesieve-login", "sieve-ceres"),
            };
            let tls = l.protocol.opening() == Opening::ImplicitTls;
            (service, name, l.port, tls, l.public_port)
        })
        .collect()
}
/// The front's ports Mailu itself uses for webmail: never ours.
#[cfg(test)]
pub const WEBMAIL_PORTS: [u16; 3] = [10143, 10025, 14190];
/// Port 25: PROXY on the stock nginx listener.
pub fn smtp_port() -> u16 {
    facts().listener(Protocol::Smtp).map_or(25, |l| l.port)
}
/// Setup's default network: `SUBNET` 192.168.203.0/24, IPv6 off, from the
/// same table (`--docker-subnet4` for another `SUBNET`, `--docker-subnet6`
/// for `SUBNET6`).
pub const NET: DockerNet = DockerNet::default_of(MailStack::Mailu);

fn compose_override() -> String {
    let ports: String = std::iter::once(smtp_port())
        .chain(dovecot_listeners().iter().map(|d| d.2))
        .map(|p| format!("      - \"127.0.0.1:{p}:{p}\"\n"))
        .collect();
    format!(
        "# CERES: publish the front's PROXY listeners on the host's loopback only, where the\n\
         # home agent connects (CERES_MAIL_SERVER=127.0.0.1). 25 is Mailu's stock SMTP\n\
         # listener, which now needs a PROXY header (PROXY_PROTOCOL=25): publish it nowhere\n\
         # else, and drop it here if docker-compose.yml already publishes it on 127.0.0.1.\n\
         services:\n  front:\n    ports:\n{ports}"
    )
}

fn dovecot_proxy(net: DockerNet) -> String {
    let gateway = net.gateway();
    let mut s = format!(
        "# CERES: PROXY listeners next to the stock ones, in the front's Dovecot proxy\n\
         # (included last by Mailu's proxy.conf). Headers only from the Docker gateway\n\
         # {gateway}, where published ports connect from (same as REAL_IP_FROM).\n\
         haproxy_trusted_networks = {gateway}/32\n"
    );
    let mut service = "";
    for (svc, name, port, tls, _) in dovecot_listeners() {
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

fn env_keys(net: DockerNet) -> String {
    let gateway = net.gateway();
    format!(
        "# CERES: set these in mailu.env (replace existing lines of the same name).\n\
         # PROXY on the stock port 25 only: Mailu has no second SMTP listener.\n\
         PROXY_PROTOCOL=25\n\
         # The one address PROXY headers are taken from: the Docker network's gateway.\n\
         REAL_IP_FROM={gateway}/32\n\
         # Must stay empty with PROXY_PROTOCOL (Mailu's configuration reference).\n\
         REAL_IP_HEADER=\n"
    )
}

/// The recipe for Mailu on `net`.
pub fn recipe(net: DockerNet) -> Recipe {
    let cite = |path, fact| Citation {
        repo: REPO,
        path,
        commit: COMMIT,
        fact,
    };
    Recipe {
        stack: "mailu",
        title: "Mailu",
        version: "Mailu master 2024.06.1+392 (commit bbb1c20, 2026-07-26; front: nginx with the mail module, Dovecot 2.3 proxy)",
        relays: facts().relays(),
        mail_server: "127.0.0.1",
        egress_from: net.egress_from(),
        trusted_proxy: Some(TrustedProxy {
            address: net.gateway().to_string(),
            source: super::DOCKER_GATEWAY,
            find_with: "docker network inspect mailu_default --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' (the network is PROJECT_default; the project is the directory's name, mailu for /mailu)",
        }),
        files: vec![
            StackFile {
                path: "docker-compose.override.yml",
                purpose: "publishes the front's PROXY listeners (25, 20143, 10993, 10110, 10995, 10587, 10465, 24190) on 127.0.0.1 only; Docker Compose merges it with Mailu's docker-compose.yml; if you have this file already, add these ports to its front service",
                contents: compose_override(),
                executable: false,
            },
            StackFile {
                path: "overrides/nginx/dovecot/proxy.conf",
                purpose: "adds the front Dovecot's PROXY listeners next to the stock ones and trusts the gateway only; if you have this file already, add these lines",
                contents: dovecot_proxy(net),
                executable: false,
            },
            StackFile {
                path: "mailu.env.ceres",
                purpose: "the mailu.env keys CERES needs; copy them into mailu.env (a separate file so that --write never replaces your mailu.env)",
                contents: env_keys(net),
                executable: false,
            },
        ],
        restart: "cd /mailu && docker compose up -d",
        notes: vec![
            "Port 25 is the one stock listener that changes: Mailu's PROXY_PROTOCOL applies to the stock listeners and its nginx mail block takes no overrides, so there is no separate SMTP PROXY port. After this, 25 answers only connections with a PROXY header, and takes the address in it only from the gateway. Relaying 25 plain is not an option: Mailu's Postfix trusts its SUBNET, the gateway is in it, and Mailu's FAQ calls that an open relay.",
            "Publish 25 on 127.0.0.1 only: change docker-compose.yml's front ports so 25 is not published on another address (other ports keep the address Mailu's setup gave them, for LAN clients). Mailu's setup defaults that address to 127.0.0.1; then 25 is already there and the 25 line of the override must go.",
            "The other mail ports keep their stock listeners unchanged for LAN clients; the relays reach added listeners. 143 and 4190 map to 20143 and 24190 because 10143, 10025 and 14190 are Mailu's own webmail listeners, which the admin treats specially.",
            "80 and 443 are not relayed: Mailu offers PROXY only on the stock web listeners, and with REAL_IP_FROM set its HTTP block trusts an X-Real-IP header from the gateway, so a plain web relay would let any web client name its own address. Serve webmail through another route, or accept that by adding 80,443 to CERES_RELAYS knowingly.",
            "IPv6: Mailu's setup leaves it off by default (its own advice); with it on, SUBNET6 in mailu.env is a random ULA per install: give it as --docker-subnet6 and it joins CERES_EGRESS_FROM (IPv4 and IPv6 then both leave through the tunnel).",
            "A different SUBNET in mailu.env: give it as --docker-subnet4, and CERES_EGRESS_FROM, REAL_IP_FROM and haproxy_trusted_networks (its first address, the gateway) follow.",
            "Keep RELAYNETS free of the gateway and of the Docker network: it is added to Postfix's mynetworks.",
        ],
        bans: "Mailu ships no Fail2Ban (docs/faq.rst: it would have to change the host's firewall; the FAQ shows a host setup). Its own defence is the admin's authentication rate limit per client address and subnet (AUTH_RATELIMIT_IP, from the front's Client-Ip): with PROXY and REAL_IP_FROM = the gateway that is the real client address, so it works for relayed clients. A host Fail2Ban reading Mailu's logs sees the real address too, but its firewall ban matches packets by source, and a relayed client's packets come from the home agent: it does not stop one. To stop a relayed client, block it on the VPS: CERES has no ban feed to the VPS.",
        verified: "Facts read in Mailu at commit bbb1c20. Tested here (cargo nextest run -p cerectl stacks): the compose override parsed as YAML (every published port on 127.0.0.1: 25 and the added listeners, none of Mailu's webmail ports); the Dovecot override parsed by doveconf 2.3 on a copy of Debian's /etc/dovecot. Not run against a live Mailu.",
        citations: vec![
            cite(
                "core/base/libs/socrate/socrate/system.py",
                "PROXY_PROTOCOL: port list or mail/all-but-http/all, sets PROXY_PROTOCOL_<port>",
            ),
            cite(
                "core/nginx/conf/nginx.conf",
                "mail block: listen 25 proxy_protocol when PROXY_PROTOCOL_25, set_real_ip_from REAL_IP_FROM; HTTP block: set_real_ip_from REAL_IP_FROM, real_ip_header only with REAL_IP_HEADER or PROXY on 80/443; include /overrides/*.conf inside the HTTP server only",
            ),
            cite(
                "core/nginx/dovecot/proxy.conf",
                "front Dovecot: haproxy = yes on the stock listeners per PROXY_PROTOCOL_<port>; haproxy_trusted_networks = REAL_IP_FROM; webmail listeners 10143, 10025, 14190; !include_try /overrides/dovecot/proxy.conf",
            ),
            cite(
                "core/nginx/dovecot/login.lua",
                "proxy passdb asks the admin with Auth-Port = the local port and Auth-Protocol",
            ),
            cite(
                "core/admin/mailu/internal/nginx.py",
                "WEBMAIL_PORTS = 14190, 10143, 10025; back end chosen by protocol",
            ),
            cite(
                "core/postfix/conf/main.cf",
                "mynetworks = 127.0.0.1/32 SUBNET [SUBNET6] RELAYNETS",
            ),
            cite(
                "docs/configuration.rst",
                "PROXY_PROTOCOL needs REAL_IP_FROM and REAL_IP_HEADER unset; REAL_IP_FROM must name only trusted proxies",
            ),
            cite(
                "docs/faq.rst",
                "connections via Docker's userland proxy seem to come from the local network: open relay",
            ),
            cite(
                "setup/flavors/compose/docker-compose.yml",
                "service front publishes 80, 443, 25, 465, 587, 110, 995, 143, 993, 4190 on bind4; overrides/nginx mounted at /overrides; network default with subnet (and subnet6 if IPv6)",
            ),
            cite(
                "setup/templates/steps/compose/03_expose.html",
                "defaults: bind4 127.0.0.1, subnet 192.168.203.0/24, IPv6 off ('We do NOT recommend that you enable this!')",
            ),
            cite(
                "optional/fetchmail/fetchmail.py",
                "with PROXY_PROTOCOL_25 fetchmail delivers to the hostname, not the front",
            ),
            cite("docs/compose/setup.rst", "Mailu lives in /mailu"),
            cite(
                "core/admin/mailu/internal/nginx.py",
                "authentication takes the client address from the front's Client-Ip header; rate-limit replies",
            ),
            cite(
                "docs/faq.rst",
                "Fail2Ban is not included in Mailu; a host setup is described",
            ),
        ],
    }
}
