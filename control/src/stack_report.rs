//! The stack probe (`CERES_MAIL_STACK`) on the wire and in both status
//! commands: the home agent's typed results to and from the protocol, and
//! the verdict `cerectl status` and `ceres-home status` show — the same
//! listeners, relay checks and sentences in both, built from enums, never
//! from the other side's prose.

use ceres_proto as pb;
use ceres_relay::RelaySpec;
use ceres_relay::stack::advice::{
    ListenerState, RelayState, check_relays, listener_problem, ready_summary, relay_problem,
};
use ceres_relay::stack::{MailStack, Protocol, ProxyListener, Software};
use serde::{Deserialize, Serialize};

/// One listener's probe result, as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerResult {
    /// The listener.
    pub listener: ProxyListener,
    /// How it answered.
    pub state: ListenerState,
    /// The evidence (first line it sent, OS error).
    pub detail: String,
}

/// The agent's probe as sent in the report.
pub fn to_proto(stack: MailStack, results: &[ListenerResult]) -> pb::StackProbe {
    pb::StackProbe {
        stack: stack_to_proto(stack).into(),
        listeners: results
            .iter()
            .map(|r| pb::StackListenerProbe {
                port: u32::from(r.listener.port),
                public_port: u32::from(r.listener.public_port),
                software: software_to_proto(r.listener.software).into(),
                protocol: protocol_to_proto(r.listener.protocol).into(),
                state: state_to_proto(r.state).into(),
                detail: r.detail.clone(),
            })
            .collect(),
    }
}

/// The stack and the results a report carries; `None` for a stack or
/// values this build does not know (a newer agent): shown as unknown.
pub fn from_proto(p: &pb::StackProbe) -> Option<(MailStack, Vec<Option<ListenerResult>>)> {
    let stack = stack_from_proto(p.stack())?;
    let results = p
        .listeners
        .iter()
        .map(|l| {
            let port = u16::try_from(l.port).ok()?;
            let public_port = u16::try_from(l.public_port).ok()?;
            // This build's table first: its advice speaks of its facts.
            let listener = stack
                .facts()
                .listeners()
                .find(|f| f.port == port && f.public_port == public_port)
                .or_else(|| {
                    Some(ProxyListener {
                        port,
                        public_port,
                        software: software_from_proto(l.software())?,
                        protocol: protocol_from_proto(l.protocol())?,
                    })
                })?;
            Some(ListenerResult {
                listener,
                state: state_from_proto(l.state())?,
                detail: l.detail.clone(),
            })
        })
        .collect();
    Some((stack, results))
}

/// One listener in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// Its port on the mail server address.
    pub port: u16,
    /// The VPS port relayed to it.
    pub public_port: u16,
    /// The program.
    pub software: Software,
    /// What it speaks.
    pub protocol: Protocol,
    /// How it answered.
    pub state: ListenerState,
    /// Whether the VPS relays its public port (a listener of a port the VPS
    /// does not relay is shown, never counted as broken).
    pub relayed: bool,
    /// The evidence.
    pub detail: Option<String>,
}

/// One public port compared with the stack's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// The VPS port.
    pub public_port: u16,
    /// The stack's PROXY listener for it.
    pub expected_port: u16,
    /// Where the VPS relays it (`null`: not relayed).
    pub relayed_port: Option<u16>,
    /// The verdict.
    pub state: RelayState,
}

/// The stack's part of a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStatus {
    /// `CERES_MAIL_STACK` at home.
    pub stack: MailStack,
    /// No problem below.
    pub ok: bool,
    /// One line: "mailcow: PROXY listeners reachable, Postfix 10025 answers
    /// after a header", or what is not.
    pub summary: String,
    /// Every PROXY listener of the stack, in the table's order.
    pub listeners: Vec<ListenerStatus>,
    /// Listeners whose result this program cannot read (a newer agent).
    pub unknown: usize,
    /// The relays compared with the table.
    pub relays: Vec<RelayStatus>,
    /// What is wrong, each with its fix (also in the status's problems).
    pub problems: Vec<String>,
}

/// The status of the stack from a report's probe and the relays in effect.
pub fn stack_status(probe: &pb::StackProbe, relays: &[RelaySpec]) -> Option<StackStatus> {
    let (stack, results) = from_proto(probe)?;
    let relayed = |l: &ProxyListener| relays.iter().any(|r| r.public_port == l.public_port);
    let unknown = results.iter().filter(|r| r.is_none()).count();
    let known: Vec<ListenerResult> = results.into_iter().flatten().collect();
    let mut problems: Vec<String> = known
        .iter()
        .filter(|r| relayed(&r.listener))
        .filter_map(|r| listener_problem(stack, &r.listener, r.state, &r.detail))
        .collect();
    let checks = check_relays(stack, relays);
    problems.extend(checks.iter().filter_map(|c| relay_problem(stack, c)));
    let relayed_results: Vec<&ListenerResult> =
        known.iter().filter(|r| relayed(&r.listener)).collect();
    let ready: Vec<&ProxyListener> = relayed_results
        .iter()
        .filter(|r| r.state == ListenerState::Ready)
        .map(|r| &r.listener)
        .collect();
    let not_ready = relayed_results.len() - ready.len();
    let summary = if relayed_results.is_empty() {
        format!("{stack}: the VPS relays none of its PROXY listeners")
    } else if not_ready == 0 {
        let mut s = ready_summary(stack, &ready).unwrap_or_default();
        if checks.iter().any(|c| relay_problem(stack, c).is_some()) {
            s.push_str(", but CERES_RELAYS on the VPS does not reach them all");
        }
        s
    } else {
        format!(
            "{stack}: {not_ready} of {} relayed PROXY listeners not ready",
            relayed_results.len()
        )
    };
    Some(StackStatus {
        stack,
        ok: problems.is_empty(),
        summary,
        listeners: known
            .iter()
            .map(|r| ListenerStatus {
                port: r.listener.port,
                public_port: r.listener.public_port,
                software: r.listener.software,
                protocol: r.listener.protocol,
                state: r.state,
                relayed: relayed(&r.listener),
                detail: (!r.detail.is_empty()).then(|| r.detail.clone()),
            })
            .collect(),
        unknown,
        relays: checks
            .iter()
            .map(|c| RelayStatus {
                public_port: c.listener.public_port,
                expected_port: c.listener.port,
                relayed_port: c.relayed_port,
                state: c.state,
            })
            .collect(),
        problems,
    })
}

/// The status's lines for a terminal (after the summary), one per
/// listener: port, program, protocol, the VPS port, the state, evidence.
pub fn listener_lines(s: &StackStatus) -> Vec<String> {
    s.listeners
        .iter()
        .map(|l| {
            let state = if l.relayed {
                l.state.describe()
            } else {
                "not relayed"
            };
            format!(
                "{:<5} {:<8} {:<12} ← {:<5} {}{}",
                l.port,
                l.software.name(),
                l.protocol.name(),
                l.public_port,
                state,
                l.detail
                    .as_deref()
                    .map(|d| format!(" · {d}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn stack_to_proto(s: MailStack) -> pb::MailStack {
    match s {
        MailStack::PostfixDovecot => pb::MailStack::PostfixDovecot,
        MailStack::Mailcow => pb::MailStack::Mailcow,
        MailStack::DockerMailserver => pb::MailStack::DockerMailserver,
        MailStack::Mailu => pb::MailStack::Mailu,
        MailStack::Stalwart => pb::MailStack::Stalwart,
        MailStack::Iredmail => pb::MailStack::Iredmail,
    }
}

fn stack_from_proto(s: pb::MailStack) -> Option<MailStack> {
    MailStack::ALL.into_iter().find(|m| stack_to_proto(*m) == s)
}

fn software_to_proto(s: Software) -> pb::MailSoftware {
    match s {
        Software::Postfix => pb::MailSoftware::Postfix,
        Software::Dovecot => pb::MailSoftware::Dovecot,
        Software::Nginx => pb::MailSoftware::Nginx,
        Software::Stalwart => pb::MailSoftware::Stalwart,
    }
}

fn software_from_proto(s: pb::MailSoftware) -> Option<Software> {
    [
        Software::Postfix,
        Software::Dovecot,
        Software::Nginx,
        Software::Stalwart,
    ]
    .into_iter()
    .find(|x| software_to_proto(*x) == s)
}

const PROTOCOLS: [Protocol; 10] = [
    Protocol::Smtp,
    Protocol::Submission,
    Protocol::Submissions,
    Protocol::Imap,
    Protocol::Imaps,
    Protocol::Pop3,
    Protocol::Pop3s,
    Protocol::ManageSieve,
    Protocol::Http,
    Protocol::Https,
];

fn protocol_to_proto(p: Protocol) -> pb::MailProtocol {
    match p {
        Protocol::Smtp => pb::MailProtocol::Smtp,
        Protocol::Submission => pb::MailProtocol::Submission,
        Protocol::Submissions => pb::MailProtocol::Submissions,
        Protocol::Imap => pb::MailProtocol::Imap,
        Protocol::Imaps => pb::MailProtocol::Imaps,
        Protocol::Pop3 => pb::MailProtocol::Pop3,
        Protocol::Pop3s => pb::MailProtocol::Pop3s,
        Protocol::ManageSieve => pb::MailProtocol::Managesieve,
        Protocol::Http => pb::MailProtocol::Http,
        Protocol::Https => pb::MailProtocol::Https,
    }
}

fn protocol_from_proto(p: pb::MailProtocol) -> Option<Protocol> {
    PROTOCOLS.into_iter().find(|x| protocol_to_proto(*x) == p)
}

const STATES: [ListenerState; 7] = [
    ListenerState::Ready,
    ListenerState::NotListening,
    ListenerState::NoProxy,
    ListenerState::RefusesHeader,
    ListenerState::ClosesAtOnce,
    ListenerState::SilentAfterHeader,
    ListenerState::UnexpectedAnswer,
];

fn state_to_proto(s: ListenerState) -> pb::ListenerState {
    match s {
        ListenerState::Ready => pb::ListenerState::Ready,
        ListenerState::NotListening => pb::ListenerState::NotListening,
        ListenerState::NoProxy => pb::ListenerState::NoProxy,
        ListenerState::RefusesHeader => pb::ListenerState::RefusesHeader,
        ListenerState::ClosesAtOnce => pb::ListenerState::ClosesAtOnce,
        ListenerState::SilentAfterHeader => pb::ListenerState::SilentAfterHeader,
        ListenerState::UnexpectedAnswer => pb::ListenerState::UnexpectedAnswer,
    }
}

fn state_from_proto(s: pb::ListenerState) -> Option<ListenerState> {
    STATES.into_iter().find(|x| state_to_proto(*x) == s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ceres_relay::parse_relays;

    use super::*;

    fn results(stack: MailStack, state_of: impl Fn(u16) -> ListenerState) -> Vec<ListenerResult> {
        stack
            .facts()
            .listeners()
            .map(|l| ListenerResult {
                listener: l,
                state: state_of(l.port),
                detail: String::new(),
            })
            .collect()
    }

    #[test]
    fn every_value_survives_the_wire() {
        for stack in MailStack::ALL {
            for state in STATES {
                let r = results(stack, |_| state);
                let (back_stack, back) = from_proto(&to_proto(stack, &r)).unwrap();
                assert_eq!(back_stack, stack);
                let back: Vec<ListenerResult> = back.into_iter().map(Option::unwrap).collect();
                assert_eq!(back, r);
            }
        }
        for p in PROTOCOLS {
            assert_eq!(protocol_from_proto(protocol_to_proto(p)), Some(p));
        }
        // Nothing set (an agent without CERES_MAIL_STACK): no stack.
        assert!(from_proto(&pb::StackProbe::default()).is_none());
    }

    #[test]
    fn all_ready_says_so_and_names_the_smtp_listener() {
        let stack = MailStack::DockerMailserver;
        let p = to_proto(stack, &results(stack, |_| ListenerState::Ready));
        let s = stack_status(&p, &stack.facts().relay_specs()).unwrap();
        assert!(s.ok, "{:?}", s.problems);
        assert_eq!(
            s.summary,
            "docker-mailserver: PROXY listeners reachable, Postfix 12525 answers after a header"
        );
        assert_eq!(s.listeners.len(), 8);
        assert!(s.relays.iter().all(|r| r.state == RelayState::Matches));
        let lines = listener_lines(&s);
        assert!(
            lines[0]
                .starts_with("12525 Postfix  smtp         ← 25    answers after a PROXY header"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_missing_relayed_listener_is_a_problem_an_unrelayed_one_is_not() {
        let stack = MailStack::Mailcow;
        let p = to_proto(
            stack,
            &results(stack, |port| match port {
                10587 | 10110 => ListenerState::NotListening,
                _ => ListenerState::Ready,
            }),
        );
        // 110 is not relayed: only 10587 counts.
        let relays = parse_relays("25/proxy-v2,587/proxy-v2,993/proxy-v2").unwrap();
        let s = stack_status(&p, &relays).unwrap();
        assert!(!s.ok);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(
            s.problems[0].starts_with("mailcow: 10587 (Postfix submission, relayed from 587) not listening — publish it on 127.0.0.1 in docker-compose.override.yml"),
            "{:?}",
            s.problems
        );
        assert_eq!(
            s.summary,
            "mailcow: 1 of 3 relayed PROXY listeners not ready"
        );
        let pop3 = s.listeners.iter().find(|l| l.port == 10110).unwrap();
        assert!(!pop3.relayed);
        assert!(listener_lines(&s).iter().any(|l| l.contains("not relayed")));
    }

    #[test]
    fn a_relay_to_the_wrong_port_is_a_problem_with_the_entry() {
        let stack = MailStack::DockerMailserver;
        let p = to_proto(stack, &results(stack, |_| ListenerState::Ready));
        let s = stack_status(&p, &ceres_relay::default_relays()).unwrap();
        assert!(!s.ok);
        assert!(
            s.problems
                .iter()
                .any(|p| p.contains("use 25:12525/proxy-v2")),
            "{:?}",
            s.problems
        );
        let r = s.relays.iter().find(|r| r.public_port == 25).unwrap();
        assert_eq!(
            (r.relayed_port, r.state),
            (Some(10025), RelayState::OtherPort)
        );
    }

    #[test]
    fn values_of_a_newer_agent_are_counted_not_guessed() {
        let stack = MailStack::Mailu;
        let mut p = to_proto(stack, &results(stack, |_| ListenerState::Ready));
        p.listeners[0].state = 99;
        let s = stack_status(&p, &stack.facts().relay_specs()).unwrap();
        assert_eq!(s.unknown, 1);
        assert_eq!(s.listeners.len(), stack.facts().listeners().count() - 1);
    }

    #[test]
    fn json_round_trips_with_typed_values() {
        let stack = MailStack::PostfixDovecot;
        let p = to_proto(stack, &results(stack, |_| ListenerState::RefusesHeader));
        let s = stack_status(&p, &stack.facts().relay_specs()).unwrap();
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["stack"], "postfix-dovecot");
        assert_eq!(j["listeners"][0]["state"], "refuses_header");
        assert_eq!(j["listeners"][0]["software"], "postfix");
        assert_eq!(j["listeners"][7]["protocol"], "managesieve");
        assert_eq!(j["relays"][0]["state"], "matches");
        let back: StackStatus = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }
}
