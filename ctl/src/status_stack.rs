//! `cerectl status`'s stack part: home's probe of its mail stack's PROXY
//! listeners (`CERES_MAIL_STACK`) judged against the VPS's relays, and its
//! lines on the terminal. The verdict itself is shared with `ceres-home
//! status` ([`ceres_control::stack_report`]); this file only feeds it the
//! VPS's view and draws it.

use ceres_control::stack_report::{StackStatus, listener_lines, stack_status};
use ceres_proto::{RelayPort, Report};
use ceres_relay::{ProxyMode, RelaySpec};

/// The stack's status from home's last report and the VPS's relays, its
/// problems inside; `None` when home names no stack.
pub fn part(relays: &[RelayPort], report: Option<&Report>) -> Option<StackStatus> {
    let probe = report.and_then(|r| r.stack.as_ref())?;
    let specs: Vec<RelaySpec> = relays.iter().filter_map(spec_of).collect();
    stack_status(probe, &specs)
}

/// A relay as the VPS reports it, as the spec it runs.
fn spec_of(r: &RelayPort) -> Option<RelaySpec> {
    // The typed mode (or, from an older VPS, its name, read in one place).
    let proxy = ceres_control::wire::port_proxy_mode(r).unwrap_or(ProxyMode::None);
    let mut spec = RelaySpec::new(u16::try_from(r.port).ok()?, proxy);
    spec.home_port = u16::try_from(r.target_port).ok()?;
    Some(spec)
}

/// The lines under the status's other parts: the summary with its mark,
/// then one line per listener.
pub fn render(s: &StackStatus, mark: &str, paint: impl Fn(bool, &str) -> String) -> String {
    let mut out = format!(
        "{mark} stack       {}\n",
        if s.ok {
            s.summary.clone()
        } else {
            paint(false, &s.summary)
        }
    );
    for line in listener_lines(s) {
        out.push_str(&format!("              {line}\n"));
    }
    if s.unknown > 0 {
        out.push_str(&format!(
            "              ({} listener results this cerectl cannot read: update it)\n",
            s.unknown
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ceres_control::stack_report::{ListenerResult, to_proto};
    use ceres_relay::stack::MailStack;
    use ceres_relay::stack::advice::ListenerState;

    use super::*;

    fn relay(port: u32, target: u32, proxy: &str) -> RelayPort {
        RelayPort {
            port,
            target_port: target,
            proxy: proxy.into(),
            ..Default::default()
        }
    }

    #[test]
    fn no_stack_no_part_and_the_vps_relays_decide_what_counts() {
        assert!(part(&[], Some(&Report::default())).is_none());
        let stack = MailStack::DockerMailserver;
        let results: Vec<ListenerResult> = stack
            .facts()
            .listeners()
            .map(|l| ListenerResult {
                listener: l,
                state: ListenerState::Ready,
                detail: "220-mail.example.com ESMTP".into(),
            })
            .collect();
        let report = Report {
            stack: Some(to_proto(stack, &results)),
            ..Default::default()
        };
        // The VPS relays 25 to 10025 (Amavis in DMS), 993 right.
        let relays = [relay(25, 10025, "proxy-v2"), relay(993, 10993, "proxy-v2")];
        let s = part(&relays, Some(&report)).unwrap();
        let p = s.problems.clone();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("use 25:12525/proxy-v2"), "{p:?}");
        let text = render(&s, "FAIL", |_, t| t.to_owned());
        assert!(text.starts_with("FAIL stack       docker-mailserver: PROXY listeners reachable, Postfix 12525 answers after a header, but CERES_RELAYS on the VPS does not reach them all\n"), "{text}");
        assert!(
            text.contains("10587 Postfix  submission   ← 587   not relayed"),
            "{text}"
        );
    }
}
