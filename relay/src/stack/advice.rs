//! From typed outcomes to what `cerectl status` and `ceres-home status`
//! say: the stack probe's per-listener state, the VPS relays compared with
//! the stack's table, and one sentence for each thing that is wrong, with
//! the fix. The sentences are made here, once, for both programs.

use serde::{Deserialize, Serialize};

use super::{MailStack, ProxyListener, Software};
use crate::spec::{ProxyMode, RelaySpec};

/// How one PROXY listener answered the home agent's probe: a plain
/// connection first, then one that starts with a PROXY v2 `LOCAL` header
/// (the header a proxy sends for its own health checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerState {
    /// Waits for a header without one, and answers in its protocol after one.
    Ready,
    /// Nothing accepts connections on the port.
    NotListening,
    /// Answers without a header: not a PROXY listener, so the relay's
    /// header would break every relayed connection.
    NoProxy,
    /// Closes the connection (or refuses) after a valid header: it does not
    /// take headers from the address the home agent reaches it from.
    RefusesHeader,
    /// Closes every connection at once, before any byte is sent: nothing
    /// serves the port behind a forwarder (a published Docker port whose
    /// container listener is missing), or a listener that takes headers
    /// from other addresses only (Dovecot outside haproxy_trusted_networks).
    ClosesAtOnce,
    /// Says nothing even after a header.
    SilentAfterHeader,
    /// Answers after the header, but not in the listener's protocol.
    UnexpectedAnswer,
}

impl ListenerState {
    /// A few words for a status line.
    pub fn describe(self) -> &'static str {
        match self {
            ListenerState::Ready => "answers after a PROXY header",
            ListenerState::NotListening => "NOT LISTENING",
            ListenerState::NoProxy => "ANSWERS WITHOUT A PROXY HEADER",
            ListenerState::RefusesHeader => "REFUSES THE PROXY HEADER",
            ListenerState::ClosesAtOnce => "CLOSES AT ONCE",
            ListenerState::SilentAfterHeader => "SILENT AFTER THE PROXY HEADER",
            ListenerState::UnexpectedAnswer => "WRONG PROTOCOL",
        }
    }
}

/// What the problem is when `listener` of `stack` is in `state`; `None`
/// when it is ready. `detail` is the probe's evidence (a banner, an OS
/// error), quoted as such.
pub fn listener_problem(
    stack: MailStack,
    listener: &ProxyListener,
    state: ListenerState,
    detail: &str,
) -> Option<String> {
    let facts = stack.facts();
    let setup = facts.setup_of(listener.software);
    let head = format!(
        "{stack}: {} ({} {}, relayed from {})",
        listener.port,
        listener.software.name(),
        listener.protocol.name(),
        listener.public_port
    );
    let tail = format!("(cerectl mailserver-config --stack {stack})");
    let evidence = if detail.is_empty() {
        String::new()
    } else {
        format!(" [{detail}]")
    };
    Some(match state {
        ListenerState::Ready => return None,
        ListenerState::NotListening => {
            format!("{head} not listening — {setup} {tail}{evidence}")
        }
        ListenerState::NoProxy => format!(
            "{head} answers without a PROXY header, so the relay's header breaks every relayed connection: the port must be the stack's PROXY listener — {setup} {tail}{evidence}"
        ),
        ListenerState::RefusesHeader => format!(
            "{head} drops the connection after a valid PROXY header — {} {tail}{evidence}",
            trust_fix(stack, listener.software)
        ),
        ListenerState::ClosesAtOnce => format!(
            "{head} closes every connection at once, before a PROXY header is sent: nothing serves the port behind it (a published port whose listener is missing) — {setup} — or it takes headers from other addresses only: {} {tail}{evidence}",
            trust_fix(stack, listener.software)
        ),
        ListenerState::SilentAfterHeader => format!(
            "{head} says nothing even after a PROXY header: something else holds the port, or it greets too slowly{} — {setup} {tail}{evidence}",
            if listener.software == Software::Postfix {
                " (Postfix's smtpd greets after the reverse DNS lookup of the address it sees: check the resolver where it runs)"
            } else {
                ""
            }
        ),
        ListenerState::UnexpectedAnswer => format!(
            "{head} answers after a PROXY header, but not in {}: another service holds the port — {setup} {tail}{evidence}",
            listener.protocol.name()
        ),
    })
}

fn trust_fix(stack: MailStack, software: Software) -> String {
    let from = stack.facts().trusted_from();
    // A Docker stack's gateway is its default network's; the recipe for
    // another subnet (--docker-subnet4) trusts that subnet's gateway.
    let trusted_from = if stack.network().is_some() {
        format!("the Docker network's gateway, {from} on the recipe's default network")
    } else {
        from.to_string()
    };
    match software {
        Software::Dovecot => format!(
            "Dovecot takes headers only from haproxy_trusted_networks, which must hold the address the home agent reaches it from ({trusted_from})"
        ),
        Software::Stalwart => format!(
            "Stalwart takes headers only from the listener's overrideProxyTrustedNetworks (the recipe's plan sets it), which must hold the address the home agent reaches it from ({trusted_from})"
        ),
        Software::Postfix => {
            "Postfix reads PROXY v2 from version 3.5 on; check the service's *_upstream_proxy_protocol = haproxy".to_owned()
        }
        Software::Nginx => {
            "nginx must have proxy_protocol on that listen line and nothing else in front".to_owned()
        }
    }
}

/// How the VPS relays a public port that the stack has a PROXY listener for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// With a PROXY header, to the listener's port.
    Matches,
    /// Not relayed (fine when the stack does not serve that protocol).
    NotRelayed,
    /// With a PROXY header, to another home port.
    OtherPort,
    /// Without a PROXY header: the stack would see every client as the agent.
    NoProxy,
}

/// One public port compared with the stack's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCheck {
    /// The listener the port should reach.
    pub listener: ProxyListener,
    /// The home port the VPS relays it to (`None`: not relayed).
    pub relayed_port: Option<u16>,
    /// The verdict.
    pub state: RelayState,
}

/// Compares the relays in effect (`CERES_RELAYS` on the VPS) with the
/// stack's PROXY listeners, one check per listener, in table order.
pub fn check_relays(stack: MailStack, relays: &[RelaySpec]) -> Vec<RelayCheck> {
    stack
        .facts()
        .listeners()
        .map(|l| {
            let relay = relays.iter().find(|r| r.public_port == l.public_port);
            let state = match relay {
                None => RelayState::NotRelayed,
                Some(r) if r.proxy == ProxyMode::None => RelayState::NoProxy,
                Some(r) if r.home_port != l.port => RelayState::OtherPort,
                Some(_) => RelayState::Matches,
            };
            RelayCheck {
                listener: l,
                relayed_port: relay.map(|r| r.home_port),
                state,
            }
        })
        .collect()
}

/// What is wrong with a relay, and the entry that fixes it; `None` when it
/// matches or is simply not relayed.
pub fn relay_problem(stack: MailStack, check: &RelayCheck) -> Option<String> {
    let l = &check.listener;
    let want = format!("{}:{}/proxy-v2", l.public_port, l.port);
    let what = format!(
        "{stack}'s {} {} PROXY listener is {}",
        l.software.name(),
        l.protocol.name(),
        l.port
    );
    let tail = format!(
        "in CERES_RELAYS on the VPS (the whole line: cerectl mailserver-config --stack {stack})"
    );
    match (check.state, check.relayed_port) {
        (RelayState::OtherPort, Some(home)) => Some(format!(
            "{stack}: the VPS relays {} to home port {home}, but {what}: use {want} {tail}",
            l.public_port
        )),
        (RelayState::NoProxy, Some(home)) => Some(format!(
            "{stack}: the VPS relays {} to home port {home} without a PROXY header, so the stack sees every client as the home agent; {what}: use {want} {tail}",
            l.public_port
        )),
        _ => None,
    }
}

/// The one-line verdict for a stack whose relayed listeners are all ready
/// (`None` otherwise): "PROXY listeners reachable, Postfix 10025 answers
/// after a header", naming the SMTP listener when there is one.
pub fn ready_summary(stack: MailStack, ready: &[&ProxyListener]) -> Option<String> {
    let named = ready
        .iter()
        .find(|l| l.public_port == 25)
        .or_else(|| ready.first())?;
    Some(format!(
        "{stack}: PROXY listeners reachable, {} {} answers after a header",
        named.software.name(),
        named.port
    ))
}
