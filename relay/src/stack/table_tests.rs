//! The table as it was written out by hand before it was derived from one
//! row per port: every stack's `CERES_RELAYS` to the byte and its PROXY
//! listeners in order. Recipes, probes, status lines and docs print both,
//! so the derivation must reproduce them exactly.

use super::Protocol::{
    Http, Https, Imap, Imaps, ManageSieve, Pop3, Pop3s, Smtp, Submission, Submissions,
};
use super::Software::{Dovecot, Nginx, Postfix, Stalwart};
use super::{MailStack, Protocol, ProxyListener, Software};

fn l(port: u16, public_port: u16, software: Software, protocol: Protocol) -> ProxyListener {
    ProxyListener {
        port,
        public_port,
        software,
        protocol,
    }
}

/// What each stack's relays and listeners were, as written by hand.
fn written(stack: MailStack) -> (&'static str, Vec<ProxyListener>) {
    match stack {
        MailStack::PostfixDovecot => (
            "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,80/proxy-v2,443/proxy-v2",
            vec![
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
            ],
        ),
        MailStack::Mailcow => (
            "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,80,443",
            vec![
                l(10025, 25, Postfix, Smtp),
                l(10465, 465, Postfix, Submissions),
                l(10587, 587, Postfix, Submission),
                l(10143, 143, Dovecot, Imap),
                l(10993, 993, Dovecot, Imaps),
                l(10110, 110, Dovecot, Pop3),
                l(10995, 995, Dovecot, Pop3s),
                l(14190, 4190, Dovecot, ManageSieve),
            ],
        ),
        MailStack::DockerMailserver => (
            "25:12525/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2",
            vec![
                l(12525, 25, Postfix, Smtp),
                l(10465, 465, Postfix, Submissions),
                l(10587, 587, Postfix, Submission),
                l(10143, 143, Dovecot, Imap),
                l(10993, 993, Dovecot, Imaps),
                l(10110, 110, Dovecot, Pop3),
                l(10995, 995, Dovecot, Pop3s),
                l(14190, 4190, Dovecot, ManageSieve),
            ],
        ),
        MailStack::Mailu => (
            "25:25/proxy-v2,143:20143/proxy-v2,993:10993/proxy-v2,110:10110/proxy-v2,995:10995/proxy-v2,587:10587/proxy-v2,465:10465/proxy-v2,4190:24190/proxy-v2",
            vec![
                l(25, 25, Nginx, Smtp),
                l(20143, 143, Dovecot, Imap),
                l(10993, 993, Dovecot, Imaps),
                l(10110, 110, Dovecot, Pop3),
                l(10995, 995, Dovecot, Pop3s),
                l(10587, 587, Dovecot, Submission),
                l(10465, 465, Dovecot, Submissions),
                l(24190, 4190, Dovecot, ManageSieve),
            ],
        ),
        MailStack::Stalwart => (
            "25/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,4190/proxy-v2,443/proxy-v2",
            vec![
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
        ),
        MailStack::Iredmail => (
            "25:12525/proxy-v2,465/proxy-v2,587/proxy-v2,993/proxy-v2,143/proxy-v2,995/proxy-v2,110/proxy-v2,80/proxy-v2,443/proxy-v2",
            vec![
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
        ),
    }
}

#[test]
fn every_stack_relays_and_listens_as_the_hand_written_table_did() {
    for stack in MailStack::ALL {
        let f = stack.facts();
        let (relays, listeners) = written(stack);
        assert_eq!(f.relays(), relays, "{stack}: relays");
        assert_eq!(
            f.listeners().collect::<Vec<_>>(),
            listeners,
            "{stack}: listeners"
        );
    }
    assert_eq!(
        MailStack::PostfixDovecot.facts().relays(),
        crate::spec::DEFAULT_RELAYS
    );
}
