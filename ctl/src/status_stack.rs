//! `cerectl status`'s stack part: home's probe of its mail stack's PROXY
//! listeners (`CERES_MAIL_STACK`) judged against the VPS's relays, and its
//! lines on the terminal. The verdict itself is shared with `ceres-home
//! status` ([`ceres_control::stack_report`]); this file only feeds it the
//! VPS's view and draws it.

use ceres_control::stack_report::{StackStatus, listener_lines, stack_status};
use ceres_proto::{RelayPort, Report};
use ceres_relay::{ProxyMode, RelaySpec};

/// The stack's status from home's last report and the VPS's relays, and
/// its problems (also inside the part); `None` when home names no stack.
pub fn part(relays: &[RelayPort], report: Option<&Report>) -> (Option<StackStatus>, Vec<String>) {
    let Some(probe) = report.and_then(|r| r.stack.as_ref()) else {
        return (None, Vec::new());
    };
    let specs: Vec<RelaySpec> = relays.iter().filter_map(spec_of).collect();
    let status = stack_status(probe, &specs);
    let problems = status
        .as_ref()
        .map(|s| s.problems.clone())
        .unwrap_or_default();
    (status, problems)
}

/// A relay as the VPS reports it, as the spec it runs.
fn spec_of(r: &RelayPort) -> Option<RelaySpec> {
    let proxy = match r.proxy.as_str() {
        "proxy-v1" => ProxyMode::V1,
        "proxy-v2" => ProxyMode::V2,
        _ => ProxyMode::None,
    };
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
        let (s, p) = part(&[], Some(&Report::default()));
        assert!(s.is_none() && p.is_empty());
        let stack = MailStack::DockerMailserver;
        let results: Vec<ListenerResult> = stack
            .facts()
            .listeners
            .iter()
            .map(|l| ListenerResult {
                listener: *l,
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
        let (s, p) = part(&relays, Some(&report));
        let s = s.unwrap();
        assert_eq!(p, s.problems);
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
