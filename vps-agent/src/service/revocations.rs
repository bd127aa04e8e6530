//! Acting on `ceres-vps cert revoke`: at start (a home revoked while the
//! agent was stopped does not come back) and at once while it runs.

use std::sync::Arc;

use super::Ctx;
use crate::revocation::{HomeRevocations, RevocationWatch};
use crate::rotation::{FailReason, Rotator};
use crate::state::VpsState;

/// At start, before the tunnel loads home's peer: if the lineage that owns
/// it was revoked while the agent was stopped, the peer and a pending
/// rotation are dropped and home is noted as revoked.
pub(super) fn forget_revoked_home(
    state: &VpsState,
    rotator: &Rotator,
    revocations: &HomeRevocations,
) -> anyhow::Result<()> {
    let dir = &state.dir;
    let Some(owner) = crate::tunnel::stored_owner(dir)? else {
        return Ok(());
    };
    if !crate::certs::lineage_revoked(dir, &owner.lineage) {
        return Ok(());
    }
    rotator.forget_pending()?;
    crate::tunnel::forget_stored(dir)?;
    revocations.set(crate::revocation::revoked_now(
        dir,
        &owner.name,
        &owner.lineage,
    ))?;
    tracing::warn!(name = %owner.name, lineage = %owner.lineage, "home's certificate was revoked while the agent was stopped: its WireGuard peer is not loaded");
    Ok(())
}

/// Acts on `ceres-vps cert revoke` at once: ends live sessions of revoked
/// certificates and, when the lineage owning home's WireGuard key is
/// revoked, removes the peer and the egress rules and notes home as revoked.
pub(super) async fn watch_revocations(ctx: Arc<Ctx>, watch: RevocationWatch) {
    // Once at start too: marks written while the watch was being set up.
    enforce_revocations(&ctx).await;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = watch.changed() => if let Err(e) = r {
                tracing::error!(error = %e, "cannot watch the revocation directory; revocations now take effect at the next connection only");
                return;
            },
        }
        enforce_revocations(&ctx).await;
    }
}

async fn enforce_revocations(ctx: &Arc<Ctx>) {
    let dir = &ctx.state.dir;
    if let Some(serial) = ctx
        .hub
        .end_revoked(|serial| crate::certs::is_revoked(dir, serial))
    {
        tracing::warn!(serial, "home session ended: its certificate was revoked");
    }
    let Some(owner) = ctx
        .tunnel
        .owner()
        .filter(|o| crate::certs::lineage_revoked(dir, &o.lineage))
    else {
        return;
    };
    // The note first: from the moment anything of home's goes, status says
    // why (and a restart half-way finishes the job from it).
    let note = crate::revocation::revoked_now(dir, &owner.name, &owner.lineage);
    let c = Arc::clone(ctx);
    match ceres_daemon::blocking(move || c.revocations.set(note)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "cannot record that home was revoked")
        }
        Err(e) => tracing::error!(error = %e, "cannot record that home was revoked"),
    }
    if let Some((id, _)) = ctx.rotator.pending() {
        let _ = ctx
            .rotator
            .fail(&ctx.tunnel, id, FailReason::HomeRevoked)
            .await;
    }
    match ctx.tunnel.remove_home().await {
        Ok(key) => {
            tracing::warn!(name = %owner.name, lineage = %owner.lineage, home_key = ?key, "home's certificate was revoked: its WireGuard peer is removed")
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "removing the revoked home's peer from the state failed")
        }
    }
    // `nft` runs: off the async workers.
    let c = Arc::clone(ctx);
    let _ = tokio::task::spawn_blocking(move || c.relays.remove_egress()).await;
}
