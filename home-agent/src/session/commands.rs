//! The commands the VPS sends down a session: pings (liveness only) and
//! the steps of a key rotation.

use std::sync::Arc;

use ceres_proto::vps_message;

use crate::rotation::HomeRotation;
use crate::tunnel::HomeTunnel;

/// Acts on one message from the VPS; anything but a command is ignored.
pub(super) async fn handle_command(
    msg: ceres_proto::VpsMessage,
    tunnel: &Arc<HomeTunnel>,
    rotation: &Arc<HomeRotation>,
) {
    use ceres_proto::command::Kind;
    let Some(vps_message::Kind::Command(cmd)) = msg.kind else {
        return;
    };
    match cmd.kind {
        Some(Kind::Ping(_)) | None => {}
        Some(Kind::RotatePrepare(p)) => {
            if let Err(e) = rotation.on_prepare(tunnel, p.rotation).await {
                tracing::error!(error = %format!("{e:#}"), "cannot prepare the key rotation");
            }
        }
        Some(Kind::RotateCommit(c)) => {
            rotation
                .on_commit(tunnel, c.rotation, &c.vps_public_key, &c.preshared_key)
                .await
        }
        Some(Kind::RotateAbort(a)) => rotation.on_abort(tunnel, a.rotation, &a.reason).await,
    }
}
