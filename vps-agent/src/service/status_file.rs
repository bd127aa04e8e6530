//! What `ceres-vps status` shows of the running agent: the part of the
//! local status file this agent keeps written.

use ceres_sync::Unpoison;
use std::sync::Arc;
use std::time::Duration;

use ceres_pki::unix_secs;

use super::{Ctx, VERSION};

/// The last egress status and when it was taken: it runs `nft`, so the
/// local status file (rewritten every 2 s) takes it again only every 10 s.
pub(super) type EgressCache =
    Arc<std::sync::Mutex<Option<(crate::local_status::EgressPart, std::time::Instant)>>>;

/// What `ceres-vps status` shows of the running agent.
pub(super) async fn local_status(
    ctx: Arc<Ctx>,
    cache: EgressCache,
) -> crate::local_status::AgentPart {
    use crate::local_status::{AgentPart, EgressPart, HomePart, RelayPart};
    let cached = cache
        .locked()
        .as_ref()
        .filter(|(_, at)| at.elapsed() < Duration::from_secs(10))
        .map(|(e, _)| e.clone());
    let egress = match cached {
        Some(e) => e,
        None => {
            let c = ctx.clone();
            let e = tokio::task::spawn_blocking(move || {
                EgressPart::from_proto(&c.relays.egress_status())
            })
            .await
            .unwrap_or_default();
            *cache.locked() = Some((e.clone(), std::time::Instant::now()));
            e
        }
    };
    AgentPart {
        version: VERSION.to_owned(),
        started_at_unix: unix_secs(ctx.started),
        control_address: ctx.settings.control_address.clone(),
        home: HomePart::from_proto(&ctx.hub.status()),
        relays: ctx
            .relays
            .report()
            .iter()
            .map(RelayPart::from_proto)
            .collect(),
        egress,
        checks: ctx.watch.local_checks(),
    }
}
