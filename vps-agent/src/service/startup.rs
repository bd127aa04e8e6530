//! Starting the VPS agent: state, tunnel, relays and the background tasks
//! are wired into one context, the three services are served on the
//! control listener, and everything is drained and torn down on shutdown.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ceres_control::TlsIncoming;
use ceres_control::server::SharedServerConfig;
use ceres_proto::admin_server::AdminServer;
use ceres_proto::agent_server::AgentServer;
use ceres_proto::enrollment_server::EnrollmentServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::enrol_limit::FailureLimit;
use super::revocations::{forget_revoked_home, watch_revocations};
use super::rotation_schedule::{rotation_schedule, watch_promotions};
use super::status_file::{EgressCache, local_status};
use super::{Ctx, Svc, metrics, renewal};
use crate::hub::Hub;
use crate::relays::VpsRelays;
use crate::revocation::{HomeRevocations, RevocationWatch};
use crate::rotation::Rotator;
use crate::settings::VpsSettings;
use crate::state::{ServerCert, VpsState};
use crate::tokens::TokenStore;
use crate::tunnel::VpsTunnel;

/// How long open connections may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The TLS configuration of the control listener with `cert`.
pub(super) fn tls_config(
    state: &VpsState,
    cert: &ServerCert,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(Arc::new(ceres_pki::tls::server_config(
        state.ca.cert_der(),
        &cert.cert_pem,
        cert.key_pem(),
    )?))
}

/// Runs the VPS agent on `listener` until `cancel`.
///
/// Returns once every task it started has finished.
pub async fn run(
    settings: VpsSettings,
    state: VpsState,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // First: a family that cannot be registered is a bug, and nothing has
    // started yet that would need stopping.
    let families = metrics::registry()?;
    let tokens = TokenStore::open(state.tokens_dir()?)?;
    tokens.collect_garbage();
    let server_cert = state.server_cert(&settings)?;
    let shared: SharedServerConfig = Arc::new(RwLock::new(tls_config(&state, &server_cert)?));
    let tracker = TaskTracker::new();
    let rotator = Rotator::load(&state.dir, settings.rotate_every)?;
    let revocations = HomeRevocations::load(&state.dir)?;
    // Revoked while the agent was stopped: the peer is not brought back.
    forget_revoked_home(&state, &rotator, &revocations)?;
    let watch = RevocationWatch::new(&state.dir)?;
    let tunnel = VpsTunnel::start(&settings.tunnel, &state.dir, &cancel).await?;
    let hub = Hub::default();
    // `nft` and `ip` run: off the async workers.
    let relays = {
        let (s, reach, c, t) = (
            settings.clone(),
            hub.home_reach(),
            cancel.clone(),
            tracker.clone(),
        );
        ceres_daemon::blocking(move || VpsRelays::start(&s, reach, &c, &t)).await??
    };
    let relays = if revocations.is_revoked() {
        tracing::warn!("home is revoked: no egress for it until a new home joins");
        ceres_daemon::blocking(move || {
            relays.remove_egress();
            relays
        })
        .await?
    } else {
        relays
    };
    rotator.resume(&tunnel);
    let watchdog = crate::watch::Watch::new(&settings, &cancel, &tracker);
    let ctx = Arc::new(Ctx {
        watch: watchdog,
        tunnel,
        relays,
        rotator,
        revocations,
        enroll_limit: FailureLimit::default(),
        settings,
        state,
        tokens,
        hub,
        started: SystemTime::now(),
        server_cert: RwLock::new(server_cert),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    });
    let revoked_dir = ctx.state.dir.clone();
    let revoked: ceres_control::server::RevocationCheck =
        Arc::new(move |serial: &str| crate::certs::is_revoked(&revoked_dir, serial));
    tracker.spawn(watch_revocations(ctx.clone(), watch));
    ctx.watch.start(ctx.clone());
    let limits = ctx.settings.control_limits;
    let incoming = TlsIncoming::spawn(
        listener,
        shared.clone(),
        revoked,
        limits,
        cancel.clone(),
        &tracker,
    );
    tracker.spawn(renewal::renew_server_cert(ctx.clone(), shared));
    tracker.spawn(watch_promotions(ctx.clone()));
    let mctx = ctx.clone();
    tracker.spawn(ceres_daemon::metrics::start(
        ctx.settings.metrics_listen,
        Arc::new(move || metrics::render(&families, &metrics::Snapshot::of(&mctx))),
        cancel.clone(),
    ));
    tracker.spawn(rotation_schedule(ctx.clone()));
    let sctx = ctx.clone();
    let egress_cache: EgressCache = Arc::default();
    tracker.spawn(ceres_daemon::status_file::keep_written(
        ctx.state.dir.path().to_owned(),
        move || local_status(sctx.clone(), egress_cache.clone()),
        cancel.clone(),
    ));
    let svc = Svc(ctx.clone());
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_streams))
        .add_service(EnrollmentServer::new(svc.clone()))
        .add_service(AgentServer::new(svc.clone()))
        .add_service(AdminServer::new(svc))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    // Draining is bounded: a client that keeps its connection open after
    // GOAWAY must not hold the agent (and systemd's stop job) hostage.
    let drain_deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        r = serve => r,
        _ = drain_deadline => {
            tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "connections still open after the drain timeout: closing them");
            Ok(())
        }
    };
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let c = Arc::clone(&ctx);
    let _ = ceres_daemon::blocking(move || c.relays.remove_rules()).await;
    match Arc::try_unwrap(ctx) {
        Ok(ctx) => ctx.tunnel.shutdown().await,
        Err(_) => tracing::warn!(
            "tunnel still referenced at shutdown; the device goes away with the process"
        ),
    }
    result.map_err(Into::into)
}
