//! Starting the home agent: the data plane comes up from saved state
//! before (and without) the VPS, the background tasks start, and the
//! session is kept until shutdown, when everything is torn down in order.

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ceres_control::Credentials;
use ceres_pki::{Role, unix_secs};
use ceres_state::StateDir;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Planes;
use super::metrics::{self, MetricsCache};
use super::probes::{Probes, StackProbes, probe_loop};
use super::reconnect::keep_connected;
use super::renewal::renew_loop;
use super::{JOIN_HINT, SharedCreds, VERSION, current};
use crate::mail::HomeMail;
use crate::rotation::HomeRotation;
use crate::settings::HomeSettings;
use crate::tunnel::HomeTunnel;

/// Runs the home agent until `cancel`: keeps the session to the VPS up and
/// the certificate fresh. Returns when all its tasks have stopped.
pub async fn run(
    settings: HomeSettings,
    dir: StateDir,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // First: a family that cannot be registered is a bug, and nothing has
    // started yet that would need stopping.
    let mut families = metrics::registry()?;
    // With several uplinks, the first slot's page also carries the outbound
    // failover's families (one failover for the agent: one page shows it).
    let failover = settings
        .failover
        .as_ref()
        .filter(|_| settings.uplink_slot == 0)
        .map(|h| h.failover.clone());
    if failover.is_some() {
        families.register_all(&crate::failover::metrics::FAMILIES)?;
    }
    let creds: SharedCreds = Arc::new(Mutex::new(Credentials::load(&dir, Role::Home, JOIN_HINT)?));
    let started = SystemTime::now();
    let status_dir = dir.path().to_owned();
    // The status file outlives the other tasks' cancellation only until the
    // end of `run`: it is removed once everything else has stopped.
    let status_cancel = CancellationToken::new();
    let tunnel = Arc::new(HomeTunnel::new(&settings, &dir, &cancel)?);
    let mail = Arc::new(HomeMail::new(&settings, &dir, &cancel));
    let rotation = Arc::new(HomeRotation::load(&dir)?);
    // The filter before the tunnel: nothing enters through it unfiltered.
    mail.install_filter().await?;
    mail.check_postfix().await;
    // The data plane does not wait for the control plane.
    tunnel.start_saved().await;
    if let (Some(addrs), Some(relays)) = (tunnel.addresses().await, mail.saved_relays()) {
        mail.apply(&relays, addrs).await;
    }
    rotation.resume(&tunnel).await;
    let tracker = TaskTracker::new();
    let probes: Probes = Arc::new(Mutex::new(Vec::new()));
    let stack_probes: StackProbes = Arc::new(Mutex::new(None));
    let local = crate::local_status::SharedSession::default();
    crate::local_status::session_connecting(
        &local,
        settings
            .control_address
            .as_deref()
            .unwrap_or(&current(&creds).control_address),
    );
    let snapshot = crate::local_status::Snapshot::new(
        crate::local_status::AgentPart {
            version: VERSION.to_owned(),
            name: settings.name.clone(),
            started_at_unix: unix_secs(started),
            ..Default::default()
        },
        local.clone(),
        mail.clone(),
        probes.clone(),
        stack_probes.clone(),
    );
    let status_writer = TaskTracker::new();
    let writer_cancel = status_cancel.clone();
    status_writer.spawn(async move {
        let snapshot = Arc::new(snapshot);
        ceres_daemon::status_file::keep_written(
            status_dir,
            || {
                let s = snapshot.clone();
                async move { s.take().await }
            },
            writer_cancel,
        )
        .await;
    });
    let metrics_cache = MetricsCache::default();
    let mcache = metrics_cache.clone();
    tracker.spawn(ceres_daemon::metrics::start(
        settings.metrics_listen,
        Arc::new(move || {
            metrics::render(&families, &mcache.locked(), |page| {
                if let Some(f) = &failover {
                    crate::failover::metrics::sample(page, &f.status());
                }
            })
        }),
        cancel.clone(),
    ));
    tracker.spawn(probe_loop(
        mail.clone(),
        settings.clone(),
        probes.clone(),
        stack_probes.clone(),
        cancel.clone(),
    ));
    tracker.spawn(renew_loop(
        creds.clone(),
        dir,
        settings.clone(),
        cancel.clone(),
    ));
    let planes = Planes {
        tunnel: &tunnel,
        mail: &mail,
        rotation: &rotation,
        probes: &probes,
        stack_probes: &stack_probes,
        metrics: &metrics_cache,
        local: &local,
    };
    keep_connected(&creds, &settings, &planes, started, &cancel).await;
    tracker.close();
    tracker.wait().await;
    mail.shutdown().await;
    tunnel.shutdown().await;
    status_cancel.cancel();
    status_writer.close();
    status_writer.wait().await;
    Ok(())
}
