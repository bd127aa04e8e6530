//! One session with the VPS: Hello, Welcome (tunnel parameters and
//! relays applied), then reports up every interval and commands down,
//! until the VPS goes silent or away, or the agent stops.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ceres_pki::unix_secs;
use ceres_proto::agent_client::AgentClient;
use ceres_proto::{Hello, HomeMessage, home_message, vps_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::commands::handle_command;
use super::metrics::{self, MetricsCache};
use super::probes::{Probes, StackProbes};
use super::report::Reporter;
use super::{SharedCreds, VERSION, current};
use crate::mail::HomeMail;
use crate::rotation::HomeRotation;
use crate::settings::HomeSettings;
use crate::tunnel::HomeTunnel;

/// Errors ending one session attempt.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Cred(#[from] ceres_control::CredError),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("the VPS closed the session")]
    Closed,
    #[error("the VPS did not start the session properly")]
    NoWelcome,
    #[error("nothing heard from the VPS for three report intervals")]
    Silent,
}

/// The data-plane parts a session reports on and steers.
pub(super) struct Planes<'a> {
    pub(super) tunnel: &'a Arc<HomeTunnel>,
    pub(super) mail: &'a HomeMail,
    pub(super) rotation: &'a Arc<HomeRotation>,
    pub(super) probes: &'a Probes,
    pub(super) stack_probes: &'a StackProbes,
    pub(super) metrics: &'a MetricsCache,
    pub(super) local: &'a crate::local_status::SharedSession,
}

/// One session, from dialling the VPS to its end: `Ok` when `cancel` ended
/// it, the reason otherwise.
pub(super) async fn session(
    creds: &SharedCreds,
    settings: &HomeSettings,
    planes: &Planes<'_>,
    started: SystemTime,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let Planes {
        tunnel,
        mail,
        rotation,
        metrics,
        local,
        ..
    } = *planes;
    // Whatever ends this session, the gauge says so.
    struct Disconnected<'a>(&'a MetricsCache);
    impl Drop for Disconnected<'_> {
        fn drop(&mut self) {
            metrics::disconnected(self.0);
        }
    }
    let _disconnected = Disconnected(metrics);
    let c = current(creds);
    let channel = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        ch = c.connect(settings.control_address.as_deref()) => ch?,
    };
    let (tx, rx) = mpsc::channel::<HomeMessage>(8);
    let hello = HomeMessage {
        kind: Some(home_message::Kind::Hello(Hello {
            protocol_version: ceres_proto::PROTOCOL_VERSION,
            min_protocol_version: ceres_proto::MIN_PROTOCOL_VERSION,
            agent_version: VERSION.to_owned(),
            hostname: settings.name.clone(),
            started_at_unix: unix_secs(started),
            wg_public_key: tunnel.public_key().as_bytes().to_vec(),
            pending_rotation: rotation.pending_id(),
        })),
    };
    let _ = tx.send(hello).await;
    rotation.attach(tx.clone());
    let mut inbound = AgentClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = match inbound.message().await? {
        Some(m) => match m.kind {
            Some(vps_message::Kind::Welcome(w)) => w,
            _ => return Err(SessionError::NoWelcome),
        },
        None => return Err(SessionError::Closed),
    };
    let interval = Duration::from_secs(welcome.report_interval_secs.max(1) as u64);
    if welcome.tunnel.is_none() {
        tunnel.note_vps_start(welcome.vps_started_at_unix).await;
    }
    if let Some(params) = welcome.tunnel {
        if let Err(e) = tunnel.apply(params, welcome.vps_started_at_unix).await {
            // The session stays up (status shows the error); the tunnel is retried on the next session.
            tracing::error!(error = %format!("{e:#}"), "cannot bring the tunnel up");
        }
    }
    if let Some(addrs) = tunnel.addresses().await {
        mail.apply(&welcome.relays, addrs).await;
    }
    let address = settings
        .control_address
        .clone()
        .unwrap_or(c.control_address.clone());
    tracing::info!(vps = %address, vps_version = %welcome.vps_agent_version, protocol = welcome.protocol_version, "connected to the VPS");
    ceres_daemon::notify(&format!("STATUS=connected to the VPS at {address}"));
    crate::local_status::session_up(local, &address);
    let mut tick = tokio::time::interval(interval);
    // The VPS pings every interval; three silent intervals mean the
    // connection is dead even if TCP has not noticed (home's address changed).
    let silent_limit = interval * 3 + Duration::from_secs(2);
    let mut last_heard = tokio::time::Instant::now();
    let mut reporter = Reporter::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(last_heard + silent_limit) => return Err(SessionError::Silent),
            _ = tick.tick() => {
                let report = reporter.report(creds, settings, planes, started).await;
                metrics::reported(metrics, &report);
                if tx.send(HomeMessage { kind: Some(home_message::Kind::Report(report)) }).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            msg = inbound.message() => match msg? {
                Some(m) => {
                    last_heard = tokio::time::Instant::now();
                    handle_command(m, tunnel, rotation).await;
                }
                None => return Err(SessionError::Closed),
            },
        }
    }
}
