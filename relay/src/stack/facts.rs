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

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Protocol::{
    Http, Https, Imap, Imaps, ManageSieve, Pop3, Pop3s, Smtp, Submission, Submissions,
};
use super::Software::{Dovecot, Nginx, Postfix, Stalwart};
use super::{DockerNetwork, MailStack, Protocol, ProxyListener, Software, StackFacts};
use crate::spec::DEFAULT_RELAYS;

const fn l(port: u16, public_port: u16, software: Software, protocol: Protocol) -> ProxyListener {
    ProxyListener {
        port,
        public_port,
        software,
        protocol,
    }
}

/// Every default relay, each to 10000 + its port: the targets
/// `cerectl mailserver-config postfix|dovecot|nginx --apply` set up.
const ON_HOST: [ProxyListener; 10] = [
    l(10025, 25, Postfix, Smtp),
    l(10465, 465, Postfix, Submissions),
    l(10587, 587, Postfix, Submission),
    l(10993, 993, Dovecot, Imaps),
    l(10143, 143, Dovecot, Imap),
    l(10995, 995, Dovecot, Pop3s),
    l(10110, 110, Dovecot, Pop3),
    l(14190, 4190, Dovecot, ManageSieve),
    l(10080, 80, Nginx, Http),
    l(10443, 443, Nginx, Https),
];

pub(super) static POSTFIX_DOVECOT: StackFacts = StackFacts {
    stack: MailStack::PostfixDovecot,
    relays: DEFAULT_RELAYS,
    listeners: &ON_HOST,
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

pub(super) static MAILCOW: StackFacts = StackFacts {
    stack: MailStack::Mailcow,
    relays: "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,80,443",
    listeners: &[
        l(10025, 25, Postfix, Smtp),
        l(10465, 465, Postfix, Submissions),
        l(10587, 587, Postfix, Submission),
        l(10143, 143, Dovecot, Imap),
        l(10993, 993, Dovecot, Imaps),
        l(10110, 110, Dovecot, Pop3),
        l(10995, 995, Dovecot, Pop3s),
        l(14190, 4190, Dovecot, ManageSieve),
    ],
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

pub(super) static DOCKER_MAILSERVER: StackFacts = StackFacts {
    stack: MailStack::DockerMailserver,
    relays: "25:12525/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2",
    listeners: &[
        l(12525, 25, Postfix, Smtp),
        l(10465, 465, Postfix, Submissions),
        l(10587, 587, Postfix, Submission),
        l(10143, 143, Dovecot, Imap),
        l(10993, 993, Dovecot, Imaps),
        l(10110, 110, Dovecot, Pop3),
        l(10995, 995, Dovecot, Pop3s),
        l(14190, 4190, Dovecot, ManageSieve),
    ],
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

pub(super) static MAILU: StackFacts = StackFacts {
    stack: MailStack::Mailu,
    relays: "25:25/proxy-v2,143:20143/proxy-v2,993:10993/proxy-v2,110:10110/proxy-v2,995:10995/proxy-v2,587:10587/proxy-v2,465:10465/proxy-v2,4190:24190/proxy-v2",
    listeners: &[
        l(25, 25, Nginx, Smtp),
        l(20143, 143, Dovecot, Imap),
        l(10993, 993, Dovecot, Imaps),
        l(10110, 110, Dovecot, Pop3),
        l(10995, 995, Dovecot, Pop3s),
        l(10587, 587, Dovecot, Submission),
        l(10465, 465, Dovecot, Submissions),
        l(24190, 4190, Dovecot, ManageSieve),
    ],
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

pub(super) static STALWART: StackFacts = StackFacts {
    stack: MailStack::Stalwart,
    relays: "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,443/proxy-v2",
    listeners: &[
        l(10025, 25, Stalwart, Smtp),
        l(10465, 465, Stalwart, Submissions),
        l(10587, 587, Stalwart, Submission),
        l(10993, 993, Stalwart, Imaps),
        l(10143, 143, Stalwart, Imap),
        l(10995, 995, Stalwart, Pop3s),
        l(10110, 110, Stalwart, Pop3),
        l(14190, 4190, Stalwart, ManageSieve),
        l(10443, 443, Stalwart, Https),
    ],
    setup: &[(
        Stalwart,
        "add it with the recipe's ceres-stalwart.ndjson plan (stalwart-cli apply, then restart Stalwart) and publish it on 127.0.0.1 in compose.yaml",
    )],
};

pub(super) static IREDMAIL: StackFacts = StackFacts {
    stack: MailStack::Iredmail,
    relays: "25:12525/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,80/proxy-v2,443/proxy-v2",
    listeners: &[
        l(12525, 25, Postfix, Smtp),
        l(10465, 465, Postfix, Submissions),
        l(10587, 587, Postfix, Submission),
        l(10143, 143, Dovecot, Imap),
        l(10993, 993, Dovecot, Imaps),
        l(10110, 110, Dovecot, Pop3),
        l(10995, 995, Dovecot, Pop3s),
        l(10080, 80, Nginx, Http),
        l(10443, 443, Nginx, Https),
    ],
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
