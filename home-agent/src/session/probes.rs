//! The mail-server probes: every forwarded port, and the stack's PROXY
//! listeners when `CERES_MAIL_STACK` names one, are probed on a schedule,
//! and the latest results wait here for the next report.

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::mail::HomeMail;
use crate::settings::HomeSettings;

/// The latest mail-server probe results, for reports.
pub(super) type Probes = Arc<Mutex<Vec<ceres_proto::MailProbe>>>;
/// The latest stack probe (`CERES_MAIL_STACK`), for reports.
pub(crate) type StackProbes = Arc<Mutex<Option<ceres_proto::StackProbe>>>;

/// Probes the mail server on every forwarded port, and the stack's PROXY
/// listeners when `CERES_MAIL_STACK` names one, now and then every
/// `CERES_PROBE_INTERVAL`, so status shows whether it answers and expects
/// PROXY. Each probe holds a connection for at most a few seconds.
pub(super) async fn probe_loop(
    mail: Arc<HomeMail>,
    settings: HomeSettings,
    out: Probes,
    stack_out: StackProbes,
    cancel: CancellationToken,
) {
    let server = settings.mail_server;
    let mut tick = tokio::time::interval(settings.probe_interval.max(Duration::from_secs(1)));
    // Logged when they change, not every round.
    let mut last_problems: Option<Vec<String>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let specs = mail.specs().await;
        let relayed = async {
            if specs.is_empty() {
                None
            } else {
                Some(crate::probe::probe(server, &specs).await)
            }
        };
        let stack = async {
            match settings.mail_stack {
                Some(stack) => Some((stack, crate::stack_probe::probe(server, stack).await)),
                None => None,
            }
        };
        let (relayed, stack) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = async { tokio::join!(relayed, stack) } => r,
        };
        match relayed {
            Some(results) => *out.locked() = results,
            // Not forwarding yet: look again soon.
            None => tick.reset_after(Duration::from_secs(2)),
        }
        if let Some((stack, results)) = stack {
            let probe = ceres_control::stack_report::to_proto(stack, &results);
            // The relays in effect decide what counts; before the first
            // session, none are known and every listener counts.
            let relays = if specs.is_empty() {
                stack.facts().relay_specs()
            } else {
                specs.clone()
            };
            if let Some(status) = ceres_control::stack_report::stack_status(&probe, &relays) {
                if last_problems.as_ref() != Some(&status.problems) {
                    if status.problems.is_empty() {
                        tracing::info!("{}", status.summary);
                    }
                    for p in &status.problems {
                        tracing::warn!("{p}");
                    }
                    last_problems = Some(status.problems);
                }
            }
            *stack_out.locked() = Some(probe);
        }
    }
}
