//! The `Agent` service: home's one long-lived session. It starts with
//! Hello (version, WireGuard key, pending rotation), is answered with
//! Welcome (tunnel parameters, relays), then carries reports up and
//! commands down until home goes quiet, leaves or is replaced.

use std::pin::Pin;
use std::time::Duration;

use ceres_control::caller;
use ceres_pki::{Role, unix_secs};
use ceres_proto::agent_server::Agent;
use ceres_proto::{HomeMessage, VpsMessage, Welcome, home_message, vps_message};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Svc, VERSION, relays_text};
use crate::rotation::FailReason;
use crate::tunnel::Owner;

/// A home agent that sends nothing (not even its Hello) for this long is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Missed reports before the VPS gives up on a session.
const MISSED_REPORTS: u32 = 3;

/// What the session sends home: Welcome, then commands (pings, rotation steps).
type SessionStream = Pin<Box<dyn Stream<Item = Result<VpsMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Svc {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<HomeMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let cert = self.authorize(&req, Role::Home)?;
        let remote = caller(&req)?.remote;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let Some(HomeMessage {
            kind: Some(home_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("a session must start with Hello"));
        };
        let version = ceres_proto::negotiate(hello.min_protocol_version, hello.protocol_version)
            .map_err(|m| {
                tracing::warn!(%remote, agent_version = %hello.agent_version, "home agent refused: {m}");
                Status::failed_precondition(format!("ceres-vps {VERSION}: {m}"))
            })?;
        let ctx = self.0.clone();
        let owner = Owner {
            lineage: crate::certs::lineage_of(&ctx.state.dir, &cert.serial),
            name: cert.name.clone(),
        };
        // A home whose certificate is not revoked connects: if home was
        // revoked, this is the new home joining. Its egress comes back.
        // Checked again here, not only at the handshake: a session of the
        // revoked home that raced its own revocation must not clear it.
        if crate::certs::is_revoked(&ctx.state.dir, &cert.serial) {
            return Err(Status::permission_denied(
                "this certificate is revoked (ceres-vps cert revoke): join again with a new token",
            ));
        }
        if ctx.revocations.is_revoked() {
            tracing::info!(name = %owner.name, lineage = %owner.lineage, "a new home joined after a revocation");
            match ctx.revocations.clear_for(Some(&owner.lineage)) {
                Ok(crate::revocation::Cleared::Yes) => {
                    let c = ctx.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || c.relays.ensure_egress(&c.settings))
                            .await;
                }
                Ok(crate::revocation::Cleared::NothingToClear) => {}
                Ok(crate::revocation::Cleared::RevokedLineage) => {
                    return Err(Status::permission_denied(
                        "this certificate's lineage is revoked: join again with a new token",
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot clear the revoked-home note")
                }
            }
        }
        // While a rotation is under way (either side says so) the keys are
        // settled by the rotation messages; a Welcome with the old keys
        // would undo home's half of it.
        let tunnel = if hello.wg_public_key.is_empty()
            || hello.pending_rotation != 0
            || ctx.rotator.staged()
        {
            None
        } else {
            Some(ctx.tunnel.params_for(&hello.wg_public_key, &owner).await?)
        };
        let interval = ctx.settings.report_interval;
        let ticket = ctx.hub.connect(
            hello.clone(),
            remote,
            version,
            unix_secs(cert.not_after),
            &cert.serial,
            &ctx.cancel,
        );
        tracing::info!(%remote, hostname = %hello.hostname, agent_version = %hello.agent_version, protocol = version, "home agent connected");
        let (tx, rx) = mpsc::channel(16);
        let welcome = VpsMessage {
            kind: Some(vps_message::Kind::Welcome(Welcome {
                protocol_version: version,
                vps_agent_version: VERSION.to_owned(),
                report_interval_secs: interval.as_secs().max(1) as u32,
                tunnel,
                vps_started_at_unix: unix_secs(ctx.started),
                relays: relays_text(&ctx.settings),
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        ctx.rotator
            .attach(&ctx.tunnel, tx.clone(), hello.pending_rotation)
            .await;
        ctx.tracker.clone().spawn(async move {
            // A deadline counted from the last message home sent, not a
            // sleep started afresh on every pass: pings go out more often
            // than reports come in, so a fresh sleep never expired and a
            // hung home that keeps TCP open stayed "connected" forever.
            let stale_after = interval * MISSED_REPORTS;
            let deadline = tokio::time::sleep(stale_after);
            tokio::pin!(deadline);
            let mut ping = tokio::time::interval(interval);
            let ping_msg = VpsMessage {
                kind: Some(vps_message::Kind::Command(ceres_proto::Command {
                    kind: Some(ceres_proto::command::Kind::Ping(ceres_proto::Ping {})),
                })),
            };
            let reason = loop {
                tokio::select! {
                    _ = ticket.cancel.cancelled() => break "replaced, revoked or shutting down",
                    _ = &mut deadline => break "no report in time",
                    _ = ping.tick() => {
                        // Never wait here: a home that reads nothing fills
                        // the channel, and waiting would hold off the deadline.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(ping_msg.clone())) {
                            break "home closed the session";
                        }
                    }
                    msg = inbound.message() => {
                        deadline.as_mut().reset(tokio::time::Instant::now() + stale_after);
                        match msg {
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::Report(r)) })) => ctx.hub.report(ticket.id, r),
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::RotateKey(k)) })) => {
                            let _ = ctx.rotator.on_home_key(&ctx.tunnel, k.rotation, &k.home_public_key).await;
                        }
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::RotateDone(d)) })) => {
                            ctx.rotator.finish(&ctx.tunnel, Some(d.rotation), true).await;
                        }
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::RotateAbort(a)) })) => {
                            let _ = ctx.rotator.fail(&ctx.tunnel, a.rotation, FailReason::HomeGaveUp(a.reason)).await;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break "home closed the session",
                        Err(_) => break "connection lost",
                        }
                    }
                }
            };
            ctx.hub.disconnect(ticket.id);
            tracing::info!(%remote, reason, "home agent session ended");
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
