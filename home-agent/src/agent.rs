//! One agent, several uplinks (issue 16): one uplink runtime
//! ([`crate::session::run`]) per VPS in the store, each with its own state
//! directory, tunnel interface, input filter table and status file, and a
//! supervisor that reads the store every 2 s: a new entry (`join`) starts, a
//! removed one (`leave`) stops cleanly, the others are untouched.
//!
//! Metrics: each uplink serves its own page, slot N on the port of
//! `CERES_METRICS_LISTEN` + N (9478, 9479, … by default; the first slot is
//! the top state directory, as with one VPS). The first page also carries
//! the outbound failover's families.
//! Egress: one outbound failover (crate::failover) for the agent routes
//! outbound mail through the best uplink that answers; every uplink tells it
//! its tunnel addresses once it has them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use ceres_state::StateDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::failover::{Failover, Hook};
use crate::settings::HomeSettings;
use crate::uplinks::{self, Running};

/// How often the supervisor reads the store.
const POLL: Duration = Duration::from_secs(2);

struct Live {
    running: Running,
    priority: Arc<AtomicU16>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The settings of one uplink: its interface, slot and metrics endpoint
/// (the configured port + the slot; port 0, "any", stays 0).
pub fn uplink_settings(base: &HomeSettings, slot: u16) -> Result<HomeSettings, String> {
    let mut s = base.clone();
    s.tunnel_ifname = uplinks::ifname_for(&base.tunnel_ifname, slot)?;
    s.uplink_slot = slot;
    if let Some(mut addr) = base.metrics_listen.filter(|a| a.port() != 0) {
        let port = addr.port().checked_add(slot).ok_or_else(|| {
            format!(
                "uplink slot {slot} would serve metrics past port 65535 \
                 (CERES_METRICS_LISTEN={addr}): set a lower port, or off"
            )
        })?;
        addr.set_port(port);
        s.metrics_listen = Some(addr);
    }
    Ok(s)
}

/// Runs every uplink in the store under `dir` until `cancel`.
pub async fn run(
    settings: HomeSettings,
    dir: StateDir,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let store = uplinks::store(&dir);
    let failover = Failover::new(&settings);
    let failover_stop = CancellationToken::new();
    let failover_task = tokio::spawn(failover.clone().run(failover_stop.clone()));
    let mut live: BTreeMap<String, Live> = BTreeMap::new();
    loop {
        match store.list() {
            Err(e) => tracing::warn!(error = %e, "reading the uplinks failed; trying again"),
            Ok(entries) => {
                let running: Vec<Running> = live.values().map(|l| l.running.clone()).collect();
                let plan = uplinks::plan(&running, &entries);
                for name in &plan.stop {
                    if let Some(l) = live.remove(name) {
                        tracing::info!(uplink = %name, "uplink left: stopping it");
                        l.cancel.cancel();
                        let _ = l.task.await;
                    }
                }
                for (name, priority) in &plan.reprioritise {
                    if let Some(l) = live.get_mut(name) {
                        tracing::info!(uplink = %name, priority, "uplink priority changed");
                        l.running.priority = *priority;
                        l.priority.store(*priority, Ordering::Relaxed);
                        failover.set_priority(name, *priority).await;
                    }
                }
                let slots = if plan.start.is_empty() {
                    BTreeMap::new()
                } else {
                    match uplinks::assign_slots(&entries) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot assign tunnel interface slots");
                            BTreeMap::new()
                        }
                    }
                };
                for e in plan.start {
                    let Some(slot) = slots.get(&e.name).copied() else {
                        continue;
                    };
                    let priority = Arc::new(AtomicU16::new(e.priority));
                    let s = match uplink_settings(&settings, slot) {
                        Ok(mut s) => {
                            s.failover = Some(Hook {
                                failover: failover.clone(),
                                name: e.name.clone(),
                                priority: priority.clone(),
                            });
                            s
                        }
                        Err(msg) => {
                            tracing::error!(uplink = %e.name, "{msg}");
                            continue;
                        }
                    };
                    let udir = match e.state_dir() {
                        Ok(d) => d,
                        Err(err) => {
                            tracing::error!(uplink = %e.name, error = %err, "cannot open its directory");
                            continue;
                        }
                    };
                    let child = cancel.child_token();
                    let name = e.name.clone();
                    tracing::info!(uplink = %name, slot, ifname = %s.tunnel_ifname, "starting uplink");
                    let c = child.clone();
                    let task = tokio::spawn(async move {
                        if let Err(err) = crate::session::run(s, udir, c).await {
                            tracing::error!(uplink = %name, error = %format!("{err:#}"), "uplink stopped");
                        }
                    });
                    live.insert(
                        e.name.clone(),
                        Live {
                            running: Running {
                                name: e.name.clone(),
                                priority: e.priority,
                                dir: e.dir.clone(),
                            },
                            priority,
                            cancel: child,
                            task,
                        },
                    );
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    for (_, l) in live {
        l.cancel.cancel();
        let _ = l.task.await;
    }
    // Last: the uplinks have handed back their parts; the failover removes
    // what is left of the routing.
    failover_stop.cancel();
    let _ = failover_task.await;
    Ok(())
}

/// The directories of the uplinks (for `status`).
pub fn dirs(dir: &StateDir) -> Vec<(String, PathBuf, u16)> {
    let store = uplinks::store(dir);
    let Ok(entries) = store.list() else {
        return Vec::new();
    };
    let slots = uplinks::assign_slots(&entries).unwrap_or_default();
    entries
        .into_iter()
        .map(|e| {
            let slot = slots.get(&e.name).copied().unwrap_or(0);
            (e.name, e.dir, slot)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn further_uplinks_get_their_interface_and_the_next_metrics_port() {
        let tmp = tempfile::tempdir().unwrap();
        let mut base = crate::settings::HomeFlags::default()
            .resolve(&ceres_config::Layers::load_path(&tmp.path().join("none"), true).unwrap())
            .unwrap();
        base.metrics_listen = Some("127.0.0.1:9100".parse().unwrap());
        let first = uplink_settings(&base, 0).unwrap();
        assert_eq!(first.tunnel_ifname, "ceres0");
        assert_eq!(
            first.metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let second = uplink_settings(&base, 1).unwrap();
        assert_eq!(
            (second.tunnel_ifname.as_str(), second.uplink_slot),
            ("ceres1", 1)
        );
        assert_eq!(
            second.metrics_listen,
            Some("127.0.0.1:9101".parse().unwrap())
        );
        base.metrics_listen = Some("127.0.0.1:65535".parse().unwrap());
        let e = uplink_settings(&base, 1).unwrap_err();
        assert!(e.contains("CERES_METRICS_LISTEN"), "{e}");
        base.metrics_listen = None;
        assert_eq!(uplink_settings(&base, 1).unwrap().metrics_listen, None);
        base.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        assert_eq!(
            uplink_settings(&base, 2).unwrap().metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(crate::filter::table_for_slot(1), "ceres_tunnel_1");
        assert_eq!(crate::filter::table_for_slot(0), "ceres_tunnel");
    }
}
