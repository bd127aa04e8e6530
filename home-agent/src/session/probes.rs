//! The mail-server probes: every forwarded port is probed on a schedule,
//! and the latest results wait here for the next report.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::mail::HomeMail;

/// The latest mail-server probe results, for reports.
pub(super) type Probes = Arc<Mutex<Vec<ceres_proto::MailProbe>>>;

/// Probes the mail server on every forwarded port, now and then every
/// `every` (CERES_PROBE_INTERVAL), so status shows whether it answers and
/// expects PROXY. Each probe holds a connection for at most a few seconds.
pub(super) async fn probe_loop(
    mail: Arc<HomeMail>,
    server: std::net::IpAddr,
    every: Duration,
    out: Probes,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let specs = mail.specs().await;
        if specs.is_empty() {
            // Not forwarding yet: look again soon.
            tick.reset_after(Duration::from_secs(2));
            continue;
        }
        let results = tokio::select! {
            _ = cancel.cancelled() => return,
            r = crate::probe::probe(server, &specs) => r,
        };
        *out.lock().unwrap_or_else(|p| p.into_inner()) = results;
    }
}
