//! The certificate's renewal: two thirds into its life, retried with
//! backoff, and the renewed credentials shared with the next session.

use ceres_sync::Unpoison;
use std::time::{Duration, SystemTime};

use ceres_control::Credentials;
use ceres_pki::{Role, unix_secs};
use ceres_state::StateDir;
use tokio_util::sync::CancellationToken;

use super::{JOIN_HINT, SharedCreds, current};
use crate::backoff::Backoff;
use crate::settings::HomeSettings;

/// Renews the certificate two thirds into its life; retries with backoff.
pub(super) async fn renew_loop(
    creds: SharedCreds,
    dir: StateDir,
    settings: HomeSettings,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
    loop {
        let c = current(&creds);
        let wait = match c.renew_at() {
            Ok(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the certificate; renewal stopped");
                return;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let renewed: anyhow::Result<Credentials> =
            match c.renew(settings.control_address.as_deref()).await {
                // The synced writes run off the async workers.
                Ok(fresh) => {
                    let (d, f) = (dir.clone(), fresh.clone());
                    match ceres_daemon::blocking(move || f.save(&d, Role::Home)).await {
                        Ok(saved) => saved.map(|()| fresh).map_err(Into::into),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            };
        match renewed {
            Ok(fresh) => {
                let until = fresh.info().map(|i| unix_secs(i.not_after)).unwrap_or(0);
                tracing::info!(not_after_unix = until, "certificate renewed");
                *creds.locked() = fresh;
                backoff.reset();
            }
            Err(e) => {
                let expired = c
                    .info()
                    .map(|i| i.not_after <= SystemTime::now())
                    .unwrap_or(false);
                let delay = backoff.next_delay();
                if expired {
                    tracing::error!(error = %e, "the certificate has expired and cannot be renewed: {JOIN_HINT}");
                } else {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "certificate renewal failed");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
