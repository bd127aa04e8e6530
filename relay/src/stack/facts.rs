//! The table. Ports of the packaged stacks were read in their repositories
//! (the recipes in `ctl/src/mailconfig/stacks/` cite each file and commit):
//! - mailcow-dockerized @ 0642467: `data/conf/postfix/master.cf` (10025
//!   postscreen, 10465, 10587 with `*_upstream_proxy_protocol=haproxy`),
//!   `data/conf/dovecot/dovecot.conf` (`*_haproxy` listeners 10143, 10993,
//!   10110, 10995, 14190), `docker-compose.yml` (network 172.22.1.0/24).
//! - docker-mailserver @ c9b015d:
//!   `docs/content/examples/tutorials/mailserver-behind-proxy.md` (separate
//!   PROXY ports, 10000 + the port, but 12525 for 25 because
//!   `target/amavis/postfix-amavis.cf` holds 10025 for Amavis); the subnet is
//!   the one the recipe's compose override fixes.
//! - Mailu @ bbb1c20: PROXY on the front's stock 25 (`core/nginx/conf/nginx.conf`),
//!   added Dovecot proxy listeners beside Mailu's own webmail ports 10143,
//!   10025, 14190 (`core/nginx/dovecot/proxy.conf`), setup's default subnet
//!   192.168.203.0/24 (`setup/templates/steps/compose/03_expose.html`).
//! - Postfix/Dovecot/nginx on the host, Stalwart and iRedMail: CERES's own
//!   convention ([`crate::spec::proxy_home_port`], 10000 + the port, on
//!   loopback), because their listeners are whatever their configuration
//!   adds: Stalwart's listeners are free (its docs' own proxy example
//!   forwards 25 to 10025), iRedMail is Postfix, Dovecot and nginx on the host.
//!   Their `--stack` recipes are written separately; a test in
//!   `ctl/src/mailconfig/stacks/tests.rs` holds every recipe's relays and
//!   trusted address to this table, so the two cannot disagree.

use super::Protocol::{
    Http, Https, Imap, Imaps, ManageSieve, Pop3, Pop3s, Smtp, Submission, Submissions,
};
use super::Software::{Dovecot, Nginx, Postfix, Stalwart};
use super::{MailStack, Protocol, ProxyListener, Software, StackFacts};
use crate::spec::DEFAULT_RELAYS;

const fn l(port: u16, public_port: u16, software: Software, protocol: Protocol) -> ProxyListener {
    ProxyListener {
        port,
        public_port,
        software,
        protocol,
    }
}

/// Every default relay, each to 10000 + its port, served by `mail`, `web`.
const fn convention(mail: Software, imap: Software, web: Software) -> [ProxyListener; 10] {
    [
        l(10025, 25, mail, Smtp),
        l(10465, 465, mail, Submissions),
        l(10587, 587, mail, Submission),
        l(10993, 993, imap, Imaps),
        l(10143, 143, imap, Imap),
        l(10995, 995, imap, Pop3s),
        l(10110, 110, imap, Pop3),
        l(14190, 4190, imap, ManageSieve),
        l(10080, 80, web, Http),
        l(10443, 443, web, Https),
    ]
}

const ON_HOST: [ProxyListener; 10] = convention(Postfix, Dovecot, Nginx);

pub(super) static POSTFIX_DOVECOT: StackFacts = StackFacts {
    stack: MailStack::PostfixDovecot,
    relays: DEFAULT_RELAYS,
    listeners: &ON_HOST,
    trusted_from: "127.0.0.1",
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
    trusted_from: "172.22.1.1",
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
    trusted_from: "172.16.42.1",
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
    trusted_from: "192.168.203.1",
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

const STALWART_LISTENERS: [ProxyListener; 10] = convention(Stalwart, Stalwart, Stalwart);

pub(super) static STALWART: StackFacts = StackFacts {
    stack: MailStack::Stalwart,
    relays: DEFAULT_RELAYS,
    listeners: &STALWART_LISTENERS,
    trusted_from: "127.0.0.1",
    setup: &[(
        Stalwart,
        "add a Stalwart listener on it that takes PROXY headers from the home agent's address only",
    )],
};

pub(super) static IREDMAIL: StackFacts = StackFacts {
    stack: MailStack::Iredmail,
    relays: DEFAULT_RELAYS,
    listeners: &ON_HOST,
    trusted_from: "127.0.0.1",
    setup: &[
        (
            Postfix,
            "add the PROXY service to /etc/postfix/master.cf as `cerectl mailserver-config --stack iredmail` prints it",
        ),
        (
            Dovecot,
            "add the PROXY listener to Dovecot as `cerectl mailserver-config --stack iredmail` prints it",
        ),
        (
            Nginx,
            "add the PROXY listener to nginx as `cerectl mailserver-config --stack iredmail` prints it",
        ),
    ],
};
