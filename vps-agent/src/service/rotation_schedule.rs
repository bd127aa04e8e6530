//! Key rotation over time: rotations start on schedule (with jitter), an
//! unfinished one is abandoned after [`ROTATE_WAIT`], and a rotation is made
//! permanent as soon as home handshakes with the new keys.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ceres_pki::unix_secs;

use super::Ctx;
use crate::rotation::FailReason;

/// How long `cerectl rotate` waits for a rotation, and how long a rotation
/// may stay unfinished before it is abandoned (the current keys stay).
pub(super) const ROTATE_WAIT: Duration = Duration::from_secs(30);

/// When the engine moves to staged keys (home handshook with them), the
/// rotation is made permanent — even if home's RotateDone never arrives.
pub(super) async fn watch_promotions(ctx: Arc<Ctx>) {
    let Some(engine) = ctx.tunnel.engine() else {
        return;
    };
    let mut rx = engine.watch_rotation();
    let mut seen = rx.borrow().rotations;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let now = rx.borrow().rotations;
        if now != seen {
            seen = now;
            ctx.rotator.finish(&ctx.tunnel, None, false).await;
        }
    }
}

/// Rotates on schedule (with jitter), and abandons a rotation home never
/// completes, keeping the current keys.
pub(super) async fn rotation_schedule(ctx: Arc<Ctx>) {
    if ctx.tunnel.engine().is_none() {
        return;
    }
    let every = ctx.settings.rotate_every;
    let mut jitter = every.mul_f64(rand_fraction() / 10.0);
    let mut done = ctx.rotator.subscribe_done();
    loop {
        let due = ctx.rotator.next_due() + jitter;
        let wake = match ctx.rotator.pending() {
            // Check a pending rotation when it would time out.
            Some((_, started)) => {
                SystemTime::UNIX_EPOCH + Duration::from_secs(started.max(0) as u64) + ROTATE_WAIT
            }
            None => due,
        };
        let sleep = wake
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(200));
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            // A rotation ended (or failed): plan the next one from now.
            _ = done.changed() => {}
        }
        let now = SystemTime::now();
        if let Some((id, started)) = ctx.rotator.pending() {
            let started = SystemTime::UNIX_EPOCH + Duration::from_secs(started.max(0) as u64);
            if now.duration_since(started).unwrap_or_default() >= ROTATE_WAIT {
                let _ = ctx
                    .rotator
                    .fail(&ctx.tunnel, id, FailReason::TimedOut)
                    .await;
            }
            continue;
        }
        if now >= ctx.rotator.next_due() + jitter && ctx.hub.is_connected() {
            match ctx.rotator.begin().await {
                Ok(id) => tracing::info!(rotation = id, "scheduled key rotation started"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "scheduled key rotation could not start"
                ),
            }
            jitter = every.mul_f64(rand_fraction() / 10.0);
        }
    }
}

fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // A fraction in [0, 1) from the std hasher's random keys: no extra dependency for jitter.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_secs(SystemTime::now()) as u64);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
