#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use super::advice::{
    ListenerState, RelayState, check_relays, listener_problem, ready_summary, relay_problem,
};
use super::*;
use crate::spec::{ProxyMode, default_relays, parse_relays};

/// The relays and the listeners say the same thing: every PROXY relay goes
/// to a listener of the same public port, every listener is relayed with
/// PROXY, plain relays reach no PROXY listener.
#[test]
fn every_stack_relays_exactly_to_its_proxy_listeners() {
    for stack in MailStack::ALL {
        let f = stack.facts();
        assert_eq!(f.stack, stack);
        let relays = parse_relays(&f.relays()).unwrap();
        assert_eq!(relays, f.relay_specs());
        let proxied: BTreeSet<(u16, u16)> = relays
            .iter()
            .filter(|r| r.proxy != ProxyMode::None)
            .map(|r| (r.public_port, r.home_port))
            .collect();
        let listeners: BTreeSet<(u16, u16)> =
            f.listeners().map(|l| (l.public_port, l.port)).collect();
        assert_eq!(proxied, listeners, "{stack}");
        assert_eq!(
            listeners.len(),
            f.listeners().count(),
            "{stack}: duplicates"
        );
        for r in relays.iter().filter(|r| r.proxy == ProxyMode::None) {
            assert!(
                !f.listeners().any(|l| l.port == r.home_port),
                "{stack}: plain relay {} lands on a PROXY listener",
                r.public_port
            );
        }
        for l in f.listeners() {
            assert!(
                f.setup.iter().any(|(s, _)| *s == l.software),
                "{stack}: no setup advice for {}",
                l.software.name()
            );
        }
        // Docker stacks trust their network's gateway, host stacks loopback.
        match stack.network() {
            Some(net) => assert_eq!(f.trusted_from(), std::net::IpAddr::V4(net.gateway())),
            None => assert!(f.trusted_from().is_loopback(), "{stack}"),
        }
        assert!(
            check_relays(stack, &relays)
                .iter()
                .all(|c| c.state == RelayState::Matches)
        );
    }
}

#[test]
fn stack_facts_keep_the_stacks_own_ports() {
    // 10025 is DMS's and iRedMail's Amavis re-injection port.
    for stack in [MailStack::DockerMailserver, MailStack::Iredmail] {
        let f = stack.facts();
        assert!(f.listeners().all(|l| l.port != 10025), "{stack}");
        assert_eq!(f.listener(Protocol::Smtp).unwrap().port, 12525, "{stack}");
    }
    // iRedMail keeps ManageSieve on 127.0.0.1: not relayed.
    assert!(
        MailStack::Iredmail
            .facts()
            .listener(Protocol::ManageSieve)
            .is_none()
    );
    // Stalwart serves every protocol itself and has no port 80.
    let stalwart = MailStack::Stalwart.facts();
    assert!(
        stalwart
            .listeners()
            .all(|l| l.software == Software::Stalwart)
    );
    assert!(stalwart.listener(Protocol::Http).is_none());
    assert_eq!(stalwart.listener(Protocol::Smtp).unwrap().port, 10025);
    let mailu = MailStack::Mailu.facts();
    // Mailu's own webmail listeners on the front.
    for webmail in [10143, 10025, 14190] {
        assert!(mailu.listeners().all(|l| l.port != webmail));
    }
    assert_eq!(
        MailStack::Mailcow
            .facts()
            .ports(Software::Postfix)
            .collect::<Vec<_>>(),
        [10025, 10465, 10587]
    );
    assert_eq!(
        MailStack::PostfixDovecot.facts().relay_specs(),
        default_relays()
    );
}

/// The default networks are networks (no host bits), and their gateways
/// the addresses the Docker-stack recipes have always trusted.
#[test]
fn default_networks_are_networks_with_the_expected_gateways() {
    for stack in MailStack::ALL {
        let Some(net) = stack.network() else {
            continue;
        };
        let (a4, p4) = net.subnet4;
        assert!((8..=30).contains(&p4), "{stack}");
        assert_eq!(u32::from(a4) & !(u32::MAX << (32 - p4)), 0, "{stack}");
        if let Some((a6, p6)) = net.subnet6 {
            assert!((8..=126).contains(&p6), "{stack}");
            assert_eq!(u128::from(a6) & !(u128::MAX << (128 - p6)), 0, "{stack}");
        }
    }
    let gw = |s: MailStack| s.facts().trusted_from().to_string();
    assert_eq!(gw(MailStack::Mailcow), "172.22.1.1");
    assert_eq!(gw(MailStack::DockerMailserver), "172.16.42.1");
    assert_eq!(gw(MailStack::Mailu), "192.168.203.1");
    assert_eq!(gw(MailStack::Stalwart), "172.16.44.1");
    assert_eq!(gw(MailStack::Iredmail), "127.0.0.1");
    assert!(MailStack::PostfixDovecot.network().is_none());
}

#[test]
fn names_parse_back_and_an_unknown_one_lists_the_choices() {
    for stack in MailStack::ALL {
        assert_eq!(stack.name().parse::<MailStack>().unwrap(), stack);
        assert_eq!(stack.to_string(), stack.name());
    }
    let e = "mail-cow".parse::<MailStack>().unwrap_err().to_string();
    assert!(e.contains("\"mail-cow\""), "{e}");
    assert!(
        e.contains("postfix-dovecot, mailcow, docker-mailserver, mailu, stalwart, iredmail"),
        "{e}"
    );
}

#[test]
fn relays_that_miss_the_stack_are_named_with_the_entry_that_fixes_them() {
    // The default relays against docker-mailserver: 25 goes to 10025 (Amavis).
    let checks = check_relays(MailStack::DockerMailserver, &default_relays());
    let smtp = checks
        .iter()
        .find(|c| c.listener.public_port == 25)
        .unwrap();
    assert_eq!(smtp.state, RelayState::OtherPort);
    assert_eq!(smtp.relayed_port, Some(10025));
    let p = relay_problem(MailStack::DockerMailserver, smtp).unwrap();
    assert!(p.contains("use 25:12525/proxy-v2"), "{p}");
    assert!(p.contains("--stack docker-mailserver"), "{p}");
    assert!(
        checks
            .iter()
            .filter(|c| c.listener.public_port != 25)
            .all(|c| c.state == RelayState::Matches)
    );
    // Not relayed is no problem; plain is.
    let few = parse_relays("25:12525/proxy-v2,587:10587").unwrap();
    let checks = check_relays(MailStack::DockerMailserver, &few);
    let state = |p| {
        checks
            .iter()
            .find(|c| c.listener.public_port == p)
            .unwrap()
            .state
    };
    assert_eq!(state(25), RelayState::Matches);
    assert_eq!(state(587), RelayState::NoProxy);
    assert_eq!(state(993), RelayState::NotRelayed);
    for c in &checks {
        let p = relay_problem(MailStack::DockerMailserver, c);
        assert_eq!(p.is_some(), c.state == RelayState::NoProxy, "{c:?}");
    }
}

#[test]
fn listener_problems_name_the_port_the_program_and_the_fix() {
    let stack = MailStack::Mailcow;
    let l = stack.facts().listener(Protocol::Submission).unwrap();
    assert!(listener_problem(stack, &l, ListenerState::Ready, "").is_none());
    let p = listener_problem(stack, &l, ListenerState::NotListening, "connection refused").unwrap();
    assert_eq!(
        p,
        "mailcow: 10587 (Postfix submission, relayed from 587) not listening — publish it on 127.0.0.1 in docker-compose.override.yml (cerectl mailserver-config --stack mailcow) [connection refused]"
    );
    let imaps = stack.facts().listener(Protocol::Imaps).unwrap();
    let p = listener_problem(stack, &imaps, ListenerState::RefusesHeader, "").unwrap();
    assert!(
        p.contains("haproxy_trusted_networks") && p.contains("172.22.1.1"),
        "{p}"
    );
    for state in [
        ListenerState::NoProxy,
        ListenerState::SilentAfterHeader,
        ListenerState::UnexpectedAnswer,
    ] {
        let p = listener_problem(stack, &l, state, "x").unwrap();
        assert!(p.starts_with("mailcow: 10587 (Postfix submission"), "{p}");
    }
}

#[test]
fn the_ready_summary_names_the_smtp_listener() {
    let f = MailStack::Mailcow.facts();
    let listeners: Vec<ProxyListener> = f.listeners().collect();
    let all: Vec<&ProxyListener> = listeners.iter().collect();
    assert_eq!(
        ready_summary(MailStack::Mailcow, &all).unwrap(),
        "mailcow: PROXY listeners reachable, Postfix 10025 answers after a header"
    );
    assert!(ready_summary(MailStack::Mailcow, &[]).is_none());
}
