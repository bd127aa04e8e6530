//! Mail-in-a-Box, read at tag v75 (commit b162b96, 2026-04-20): not a
//! relayed stack. This is a statement of what works and what does not, not a
//! recipe; every claim is cited.
//!
//! - No PROXY protocol anywhere: `git grep -i 'proxy_protocol\|haproxy'` finds
//!   nothing in the repository at v75, so no listener can learn a relayed
//!   client's address.
//! - Setup owns Postfix: `setup/mail-postfix.sh` sets main.cf keys and the
//!   `smtps`/`submission`/`authclean` master.cf services with
//!   `tools/editconf.py`, which "comments-out existing setting values … and
//!   adds new values", on every setup run (setup is also how MIAB upgrades).
//!   It sets `smtp_bind_address="$PRIVATE_IP"`, so the tunnel address that the
//!   hand-built recipe binds outbound mail to is reset to the LAN address.
//! - A plain relay is an open relay: MIAB never sets `mynetworks`, and uses
//!   `permit_mynetworks` in `smtpd_relay_restrictions`; Postfix's default at
//!   compatibility level ≥ 2 is `mynetworks_style = host` (checked here with
//!   `postconf -d`), i.e. the box's own addresses. The home agent on the box
//!   connects from one of those, so every Internet client would be trusted to
//!   relay. On another host it would be one address for every client:
//!   spamhaus `reject_rbl_client`, postgrey and fail2ban (`setup/system.sh`)
//!   then act on the agent, not the sender.
//! - DNS and checks assume the box holds the public address: nsd serves the
//!   zones on `$PRIVATE_IP` (`setup/dns.sh`), the zone's A/AAAA records are
//!   `PUBLIC_IP`/`PUBLIC_IPV6` (`management/dns_update.py`), and the status
//!   checks want glue ns1/ns2 → PUBLIC_IP, PTR of PUBLIC_IP = the hostname and
//!   every public service (53, 25, 465, 587, 993, 4190, 80, 443) answering on
//!   PUBLIC_IP (`management/status_checks.py`). A VPS front carries TCP relays
//!   only: nsd's UDP 53 is not relayed.
//! - It installs on a whole Ubuntu 22.04 machine only (`setup/preflight.sh`).
//!
//! Conclusion: run Mail-in-a-Box on the VPS itself (it is built for a machine
//! holding the public address), without CERES; or use a stack with PROXY
//! listeners (mailcow, docker-mailserver, Mailu) at home.

use super::{Citation, Recipe};

const REPO: &str = "mail-in-a-box/mailinabox";
const COMMIT: &str = "b162b96da2b9bbaf48d1d2862af16431c1386ad1";

/// The statement, in the recipe's shape: no relays, no files.
pub fn recipe() -> Recipe {
    let cite = |path, fact| Citation {
        repo: REPO,
        path,
        commit: COMMIT,
        fact,
    };
    Recipe {
        stack: "mail-in-a-box",
        title: "Mail-in-a-Box (not supported behind CERES)",
        version: "Mail-in-a-Box v75 (commit b162b96, 2026-04-20; Ubuntu 22.04, Postfix 3.6)",
        relays: String::new(),
        mail_server: "",
        egress_from: Vec::new(),
        trusted_proxy: None,
        files: Vec::new(),
        restart: "nothing to restart: there is no recipe",
        notes: vec![
            "What works: Mail-in-a-Box on the VPS itself, installed as its own docs say (a whole Ubuntu 22.04 machine holding the public address, its nameserver, its PTR). CERES is then not needed for mail.",
            "What does not: Mail-in-a-Box at home behind the VPS. It has no PROXY protocol support anywhere (no proxy_protocol or haproxy setting in the repository), so no listener can learn a relayed client's address.",
            "Relaying plain is refused, not offered: Mail-in-a-Box never sets mynetworks and lets permit_mynetworks relay, and Postfix's default (mynetworks_style = host) trusts the box's own addresses. The home agent on the box connects from one of them, so every Internet client could relay through it: an open relay. With the agent on another host every client would be that one address, and spamhaus checks, greylisting and fail2ban would act on the agent.",
            "Edits do not last: setup/mail-postfix.sh rewrites the Postfix keys and services it owns with tools/editconf.py on every setup run (setup is how Mail-in-a-Box upgrades), including smtp_bind_address = the LAN address, so outbound mail would not stay on the tunnel address.",
            "DNS does not fit a VPS front: Mail-in-a-Box is the domain's nameserver (nsd on port 53, UDP and TCP) and publishes PUBLIC_IP in its zones; its status checks want glue records, PTR and every public port on PUBLIC_IP. CERES relays TCP ports; it does not carry nsd's UDP 53.",
        ],
        bans: "Mail-in-a-Box installs fail2ban (setup/system.sh); behind a relay it would see one address for every client, which is one more reason it is not relayed.",
        verified: "Facts read in mailinabox at tag v75 (commit b162b96). Tested here (cargo nextest run -p cerectl stacks): Postfix 3.7's default mynetworks_style is host at compatibility_level 3.6 (postconf -d on Debian's main.cf), which the open-relay statement rests on. Mail-in-a-Box itself not run.",
        citations: vec![
            cite(
                "setup/mail-postfix.sh",
                "tools/editconf.py sets main.cf keys (smtp_bind_address=$PRIVATE_IP, inet_interfaces=all, smtpd_relay_restrictions=permit_sasl_authenticated,permit_mynetworks,reject_unauth_destination) and the smtps/submission/authclean master.cf services; no mynetworks; no PROXY setting",
            ),
            cite(
                "tools/editconf.py",
                "comments out existing values of the settings it is given and writes its own",
            ),
            cite(
                "setup/dns.sh",
                "nsd configured by setup ('Do not edit. Overwritten by Mail-in-a-Box setup.'), ip-address $PRIVATE_IP/$PRIVATE_IPV6, ufw_allow domain",
            ),
            cite(
                "management/dns_update.py",
                "zone A/AAAA records are PUBLIC_IP/PUBLIC_IPV6",
            ),
            cite(
                "management/status_checks.py",
                "public services 53, 25, 465, 587, 993, 4190, 80, 443 must answer on PUBLIC_IP; glue ns1/ns2 -> PUBLIC_IP; PTR of PUBLIC_IP must be PRIMARY_HOSTNAME",
            ),
            cite("setup/system.sh", "installs fail2ban"),
            cite("setup/preflight.sh", "Ubuntu 22.04 only"),
        ],
    }
}
