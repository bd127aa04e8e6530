//! The `Admin` service: `cerectl status`, `cerectl rotate` and `cerectl
//! alerts test`.

use std::sync::Arc;
use std::time::SystemTime;

use ceres_pki::{Role, unix_secs};
use ceres_proto::admin_server::Admin;
use ceres_proto::{
    RotateRequest, RotateResponse, StatusRequest, StatusResponse, TestAlertsRequest,
    TestAlertsResponse, VpsStatus,
};
use tonic::{Request, Response, Status};

use super::rotation_schedule::ROTATE_WAIT;
use super::{Svc, VERSION, relays_text};

#[tonic::async_trait]
impl Admin for Svc {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.authorize(&req, Role::Admin)?;
        let ctx = &self.0;
        // Looking at the other firewall tables runs `nft`: off the async workers.
        let egress = {
            let ctx = Arc::clone(ctx);
            tokio::task::spawn_blocking(move || ctx.relays.egress_status())
                .await
                .map_err(|e| Status::internal(format!("egress status: {e}")))?
        };
        let now = SystemTime::now();
        let server_not_after = ctx
            .server_cert
            .read()
            .map(|c| unix_secs(c.info.not_after))
            .unwrap_or(0);
        Ok(Response::new(StatusResponse {
            vps: Some(VpsStatus {
                agent_version: VERSION.to_owned(),
                protocol_version: ceres_proto::PROTOCOL_VERSION,
                started_at_unix: unix_secs(ctx.started),
                uptime_secs: now
                    .duration_since(ctx.started)
                    .unwrap_or_default()
                    .as_secs(),
                public_ips: ctx
                    .settings
                    .public_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                domain: ctx.settings.domain.clone(),
                mail_host: ctx.settings.mail_host.clone(),
                control_address: ctx.settings.control_address.clone(),
                server_certificate_not_after_unix: server_not_after,
                now_unix: unix_secs(now),
                relays: relays_text(&ctx.settings),
                tunnel_vps_address: ctx.settings.tunnel.vps_address.to_string(),
                tunnel_home_address: ctx.settings.tunnel.home_address.to_string(),
                tunnel_vps_address6: crate::tunnel::net_text(ctx.settings.tunnel.vps_address6),
                tunnel_home_address6: crate::tunnel::net_text(ctx.settings.tunnel.home_address6),
                egress_ports: ctx
                    .settings
                    .relay
                    .egress_ports
                    .iter()
                    .map(|p| *p as u32)
                    .collect(),
            }),
            home: Some(ctx.home_status()),
            vps_tunnel: Some(ctx.tunnel.report()),
            relays: ctx.relays.report(),
            egress: Some(egress),
            rotation: Some(ctx.rotator.status()),
            checks: ctx.watch.checks(),
            alert_channels: ctx.watch.channels(),
        }))
    }

    async fn test_alerts(
        &self,
        req: Request<TestAlertsRequest>,
    ) -> Result<Response<TestAlertsResponse>, Status> {
        let who = self.authorize(&req, Role::Admin)?;
        tracing::info!(by = %who.name, "test notifications requested");
        Ok(Response::new(self.0.watch.test_alerts().await))
    }

    async fn rotate(
        &self,
        req: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        let who = self.authorize(&req, Role::Admin)?;
        let ctx = &self.0;
        if ctx.tunnel.engine().is_none() {
            return Err(Status::failed_precondition(
                "the tunnel is off (CERES_TUNNEL=off): nothing to rotate",
            ));
        }
        tracing::info!(by = %who.name, "key rotation requested");
        let id = ctx.rotator.begin().await?;
        let outcome = ctx.rotator.wait(id, ROTATE_WAIT).await;
        Ok(Response::new(RotateResponse {
            rotation: id,
            ok: outcome == "ok",
            message: outcome,
            finished_unix: unix_secs(SystemTime::now()),
        }))
    }
}
