//! The table. Ports of the packaged stacks were read in their repositories
//! (the recipes in `ctl/src/mailconfig/stacks/` cite each file and commit):
//! - mailcow-dockerized @ 0642467: `data/conf/postfix/master.cf` (10025
//!   postscreen, 10465, 10587 with `*_upstream_proxy_protocol=haproxy`),
//!   `data/conf/dovecot/dovecot.conf` (`*_haproxy` listeners 10143, 10993,
//!   10110, 10995, 14190), `docker-compose.yml` (network 172.22.1.0/24,
//!   fd4d:6169:6c63:6f77::/64).
//! - docker-mailserver @ c9b015d:
//!   `docs/content/examples/tutorials/mailserver-behind-proxy.md` (separate
//!   PROXY ports, 10000 + the port, but 12525 for 25 because
//!   `target/amavis/postfix-amavis.cf` holds 10025 for Amavis); the subnets
//!   are the ones the recipe's compose override fixes (that page's
//!   172.16.42.0/24, `docs/content/config/advanced/ipv6.md`'s
//!   fd00:cafe:face:feed::/64).
//! - Mailu @ bbb1c20: PROXY on the front's stock 25 (`core/nginx/conf/nginx.conf`),
//!   added Dovecot proxy listeners beside Mailu's own webmail ports 10143,
//!   10025, 14190 (`core/nginx/dovecot/proxy.conf`), setup's default subnet
//!   192.168.203.0/24 (`setup/templates/steps/compose/03_expose.html`).
//! - Stalwart @ d72608f: its listeners are whatever its configuration adds;
//!   the recipe's plan adds `ceres-*` listeners at 10000 + the port for every
//!   mail port and 443 (no 80: Stalwart listens on none by default), each
//!   trusting the Docker gateway of the recipe's compose file, whose subnets
//!   (172.16.44.0/24, fd00:44::/64) are CERES's choice.
//! - iRedMail @ e0fe4fc: Postfix, Dovecot and nginx on the host; 25's PROXY
//!   service is 12525 because iRedMail's Amavis re-injects on 127.0.0.1:10025
//!   (`conf/postfix`, `POSTFIX_MAIL_REINJECT_PORT`), the rest 10000 + the
//!   port; ManageSieve is not relayed (iRedMail binds it to 127.0.0.1 only,
//!   `conf/global`).
//! - Postfix/Dovecot/nginx on the host: CERES's own convention
//!   ([`crate::spec::proxy_home_port`], 10000 + the port, on loopback).
//!
//! The recipes take their ports, relays and default networks from here; a
//! test in `ctl/src/mailconfig/stacks/tests.rs` holds every recipe's relays,
//! listeners and trusted address to this table.
//!
//! Each stack is one row per relayed port, in the order of its PROXY
//! listeners; its `CERES_RELAYS` and its listeners are both derived from
//! the rows ([`StackFacts::relays`], [`StackFacts::listeners`]). `proxy`
//! is a row by the convention (10000 + the port), `proxy_to` names another
//! home port, `plain` relays a port without PROXY to the stack's own
//! listener (see [`super::row`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Protocol::{
    Http, Https, Imap, Imaps, ManageSieve, Pop3, Pop3s, Smtp, Submission, Submissions,
};
use super::Software::{Dovecot, Nginx, Postfix, Stalwart};
use super::row::{plain, proxy, proxy_to};
use super::{DockerNetwork, MailStack, RelayStyle, StackFacts};

/// Every default relay, each to 10000 + its port: the targets
/// `cerectl mailserver-config postfix|dovecot|nginx --apply` set up.
pub(super) static POSTFIX_DOVECOT: StackFacts = StackFacts {
    stack: MailStack::PostfixDovecot,
    rows: &[
        proxy(25, Postfix, Smtp),
        proxy(465, Postfix, Submissions),
        proxy(587, Postfix, Submission),
        proxy(993, Dovecot, Imaps),
        proxy(143, Dovecot, Imap),
        proxy(995, Dovecot, Pop3s),
        proxy(110, Dovecot, Pop3),
        proxy(4190, Dovecot, ManageSieve),
        proxy(80, Nginx, Http),
        proxy(443, Nginx, Https),
    ],
    relay_style: RelayStyle::Default,
    setup: &[
        (
            Postfix,
            "add it with `cerectl mailserver-config postfix --apply`",
        ),
        (
            Dovecot,
            "add it with `cerectl mailserver-config dovecot --apply`",
        ),
        (
            Nginx,
            "add it with `cerectl mailserver-config nginx --apply`",
        ),
    ],
};

/// mailcow's `${IPV4_NETWORK:-172.22.1}.0/24` and
/// `${IPV6_NETWORK:-fd4d:6169:6c63:6f77::/64}`.
pub(super) const MAILCOW_NET: DockerNetwork = DockerNetwork {
    subnet4: (Ipv4Addr::new(172, 22, 1, 0), 24),
    subnet6: Some((
        Ipv6Addr::new(0xfd4d, 0x6169, 0x6c63, 0x6f77, 0, 0, 0, 0),
        64,
    )),
};

/// mailcow's own PROXY listeners; its nginx (80, 443) reads no header.
pub(super) static MAILCOW: StackFacts = StackFacts {
    stack: MailStack::Mailcow,
    rows: &[
        proxy(25, Postfix, Smtp),
        proxy(465, Postfix, Submissions),
        proxy(587, Postfix, Submission),
        proxy(143, Dovecot, Imap),
        proxy(993, Dovecot, Imaps),
        proxy(110, Dovecot, Pop3),
        proxy(995, Dovecot, Pop3s),
        proxy(4190, Dovecot, ManageSieve),
        plain(80, Nginx, Http),
        plain(443, Nginx, Https),
    ],
    relay_style: RelayStyle::Default,
    setup: &[
        (
            Postfix,
            "publish it on 127.0.0.1 in docker-compose.override.yml",
        ),
        (
            Dovecot,
            "publish it on 127.0.0.1 in docker-compose.override.yml",
        ),
    ],
};

/// The subnets the DMS recipe's compose override fixes: the PROXY page's
/// IPv4 subnet and the IPv6 page's ULA.
pub(super) const DOCKER_MAILSERVER_NET: DockerNetwork = DockerNetwork {
    subnet4: (Ipv4Addr::new(172, 16, 42, 0), 24),
    subnet6: Some((
        Ipv6Addr::new(0xfd00, 0xcafe, 0xface, 0xfeed, 0, 0, 0, 0),
        64,
    )),
};

/// 25 to 12525: DMS's 10025 is Amavis.
pub(super) static DOCKER_MAILSERVER: StackFacts = StackFacts {
    stack: MailStack::DockerMailserver,
    rows: &[
        proxy_to(25, 12525, Postfix, Smtp),
        proxy(465, Postfix, Submissions),
        proxy(587, Postfix, Submission),
        proxy(143, Dovecot, Imap),
        proxy(993, Dovecot, Imaps),
        proxy(110, Dovecot, Pop3),
        proxy(995, Dovecot, Pop3s),
        proxy(4190, Dovecot, ManageSieve),
    ],
    relay_style: RelayStyle::Default,
    setup: &[
        (
            Postfix,
            "add it with docker-data/dms/config/user-patches.sh and publish it on 127.0.0.1 in compose.override.yaml",
        ),
        (
            Dovecot,
            "add it in docker-data/dms/config/dovecot.cf and publish it on 127.0.0.1 in compose.override.yaml",
        ),
    ],
};

/// Mailu setup's default `SUBNET`, IPv6 off.
pub(super) const MAILU_NET: DockerNetwork = DockerNetwork {
    subnet4: (Ipv4Addr::new(192, 168, 203, 0), 24),
    subnet6: None,
};

/// PROXY on the nginx front's own 25; every other port an added Dovecot
/// proxy listener, 143 and 4190 at 20143 and 24190 because 10143 and 14190
/// are Mailu's webmail listeners.
pub(super) static MAILU: StackFacts = StackFacts {
    stack: MailStack::Mailu,
    rows: &[
        proxy_to(25, 25, Nginx, Smtp),
        proxy_to(143, 20143, Dovecot, Imap),
        proxy(993, Dovecot, Imaps),
        proxy(110, Dovecot, Pop3),
        proxy(995, Dovecot, Pop3s),
        proxy(587, Dovecot, Submission),
        proxy(465, Dovecot, Submissions),
        proxy_to(4190, 24190, Dovecot, ManageSieve),
    ],
    relay_style: RelayStyle::Explicit,
    setup: &[
        (
            Nginx,
            "set PROXY_PROTOCOL=25 in mailu.env and publish 25 on 127.0.0.1 in docker-compose.override.yml",
        ),
        (
            Dovecot,
            "add it in overrides/nginx/dovecot/proxy.conf and publish it on 127.0.0.1 in docker-compose.override.yml",
        ),
    ],
};

/// The network of the Stalwart recipe's compose file (CERES's choice:
/// Stalwart names none).
pub(super) const STALWART_NET: DockerNetwork = DockerNetwork {
    subnet4: (Ipv4Addr::new(172, 16, 44, 0), 24),
    subnet6: Some((Ipv6Addr::new(0xfd00, 0x44, 0, 0, 0, 0, 0, 0), 64)),
};

/// Every port Stalwart itself, no 80.
pub(super) static STALWART: StackFacts = StackFacts {
    stack: MailStack::Stalwart,
    rows: &[
        proxy(25, Stalwart, Smtp),
        proxy(465, Stalwart, Submissions),
        proxy(587, Stalwart, Submission),
        proxy(993, Stalwart, Imaps),
        proxy(143, Stalwart, Imap),
        proxy(995, Stalwart, Pop3s),
        proxy(110, Stalwart, Pop3),
        proxy(4190, Stalwart, ManageSieve),
        proxy(443, Stalwart, Https),
    ],
    relay_style: RelayStyle::Default,
    setup: &[(
        Stalwart,
        "add it with the recipe's ceres-stalwart.ndjson plan (stalwart-cli apply, then restart Stalwart) and publish it on 127.0.0.1 in compose.yaml",
    )],
};

/// 25 to 12525 (iRedMail's 10025 is Amavis); no 4190 (loopback only).
pub(super) static IREDMAIL: StackFacts = StackFacts {
    stack: MailStack::Iredmail,
    rows: &[
        proxy_to(25, 12525, Postfix, Smtp),
        proxy(465, Postfix, Submissions),
        proxy(587, Postfix, Submission),
        proxy(143, Dovecot, Imap),
        proxy(993, Dovecot, Imaps),
        proxy(110, Dovecot, Pop3),
        proxy(995, Dovecot, Pop3s),
        proxy(80, Nginx, Http),
        proxy(443, Nginx, Https),
    ],
    relay_style: RelayStyle::Default,
    setup: &[
        (
            Postfix,
            "add it with the recipe's /etc/postfix/ceres-proxy.sh",
        ),
        (
            Dovecot,
            "add it with the recipe's /etc/dovecot/iredmail/ceres-proxy.conf",
        ),
        (
            Nginx,
            "add it with the recipe's /etc/nginx/sites-enabled/ceres-proxy.conf",
        ),
    ],
};
