//! The server certificate's renewal: a renewed certificate is swapped in
//! for new connections without a restart.

use std::sync::Arc;
use std::time::Duration;

use ceres_control::server::SharedServerConfig;

use super::Ctx;
use super::startup::tls_config;

/// Re-checks the server certificate twice a day and swaps in a renewed one
/// for new connections.
pub(super) async fn renew_server_cert(ctx: Arc<Ctx>, shared: SharedServerConfig) {
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(12 * 3600)) => {}
        }
        let current = ctx.server_cert.read().map(|c| c.info.fingerprint).ok();
        // A renewal signs and writes (synced): off the async workers.
        let c = ctx.clone();
        let Ok(checked) = ceres_daemon::blocking(move || c.state.server_cert(&c.settings)).await
        else {
            return;
        };
        match checked {
            Ok(cert) if Some(cert.info.fingerprint) != current => {
                match tls_config(&ctx.state, &cert) {
                    Ok(cfg) => {
                        if let Ok(mut w) = shared.write() {
                            *w = cfg;
                        }
                        if let Ok(mut w) = ctx.server_cert.write() {
                            *w = cert;
                        }
                        tracing::info!("server certificate renewed");
                    }
                    Err(e) => tracing::error!(error = %e, "renewed server certificate unusable"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "server certificate renewal failed; will retry"),
        }
    }
}
