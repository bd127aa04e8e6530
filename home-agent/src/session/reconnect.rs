//! Keeping a session to the VPS: a failed or ended session is retried
//! after a capped, jittered backoff, which starts over after a session
//! that held.

use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::connection::{Planes, session};
use super::{SharedCreds, current};
use crate::backoff::Backoff;
use crate::settings::HomeSettings;

/// A session that held this long counts as healthy: the next failure starts
/// the backoff from the beginning again.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// First reconnect delay.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Runs sessions one after the other until `cancel`; each failure is
/// logged, shown in the local status and told to systemd.
pub(super) async fn keep_connected(
    creds: &SharedCreds,
    settings: &HomeSettings,
    planes: &Planes<'_>,
    started: SystemTime,
    cancel: &CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_BASE, settings.reconnect_max.max(BACKOFF_BASE));
    loop {
        let began = Instant::now();
        let result = session(creds, settings, planes, started, cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        if began.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let address = settings
            .control_address
            .clone()
            .unwrap_or_else(|| current(creds).control_address);
        match result {
            Ok(()) => {}
            Err(e) => {
                crate::local_status::session_down(planes.local, &address, e.to_string());
                tracing::warn!(vps = %address, error = %e, retry_in_ms = delay.as_millis() as u64, "no session with the VPS");
                ceres_daemon::notify(&format!(
                    "STATUS=not connected to the VPS at {address}: {e}"
                ));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
