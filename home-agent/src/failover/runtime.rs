//! The failover at run time: the selector ([`super::select`]) fed by the
//! probes ([`super::probe`]), and the egress routing
//! ([`ceres_relay::egress::FailoverEgress`]) kept in step with its choice.
//! Every `ip`/`nft` call and every probe runs off the async workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ceres_relay::egress::{FailoverEgress, HostSystem, MAX_UPLINKS, UplinkRoute};
use ceres_sync::Unpoison;
use tokio_util::sync::CancellationToken;

use super::select::{Health, Selector, Switch};
use super::{FailoverStatus, Uplink, UplinkState};
use crate::settings::HomeSettings;

/// Longest wait for one echo reply.
const ECHO_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Inner {
    selector: Selector,
    /// Uplinks by name, with their routing slot.
    uplinks: BTreeMap<String, (Uplink, u8)>,
    /// Something is installed (cleanup needed).
    installed: bool,
    error: String,
    seq: u16,
}

/// The egress routing for all uplinks and the choice between them.
#[derive(Debug)]
pub struct Failover {
    settings: HomeSettings,
    inner: Mutex<Inner>,
    /// One routing change at a time, in the order they were decided.
    changing: tokio::sync::Mutex<()>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_of(at: Instant, now: Instant) -> i64 {
    let ago = i64::try_from(now.saturating_duration_since(at).as_secs()).unwrap_or(0);
    unix_now() - ago
}

fn log_switch(sw: &Switch) {
    tracing::info!(
        from = sw.from.as_deref().unwrap_or("none"),
        to = sw.to.as_deref().unwrap_or("none"),
        reason = %sw.reason,
        "outbound mail switched uplink"
    );
}

/// What to do to the routing after a change of the state.
enum Change {
    /// Everything from scratch (first uplink: replaces leftovers).
    Apply,
    /// One uplink's routes (new or changed), then the nft table.
    Install(UplinkRoute),
    /// One uplink's routes removed, then the nft table.
    Uninstall(u8),
    /// Only which mark new connections get.
    Switch,
    /// Everything removed.
    RemoveAll,
}

impl Failover {
    /// Nothing is installed until the first [`Failover::upsert`].
    pub fn new(settings: &HomeSettings) -> Arc<Self> {
        Arc::new(Self {
            settings: settings.clone(),
            inner: Mutex::new(Inner {
                selector: Selector::new(settings.uplink_holddown),
                uplinks: BTreeMap::new(),
                installed: false,
                error: String::new(),
                seq: 0,
            }),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    fn egress(&self, inner: &Inner) -> FailoverEgress {
        let mut e = FailoverEgress::new(
            self.settings.egress_from.clone(),
            self.settings.egress_ports.clone(),
        );
        e.uplinks = inner
            .uplinks
            .values()
            .map(|(u, slot)| route(u, *slot))
            .collect();
        e.active = inner
            .selector
            .active()
            .and_then(|a| inner.uplinks.get(a))
            .map(|(_, slot)| *slot);
        e
    }

    /// Carries out `change` with the routing as the state is now.
    async fn enact(&self, change: Change) {
        if !self.settings.egress {
            return;
        }
        let _one = self.changing.lock().await;
        let egress = {
            let mut inner = self.inner.locked();
            if !matches!(change, Change::RemoveAll) {
                inner.installed = true;
            }
            self.egress(&inner)
        };
        let result = ceres_daemon::blocking(move || {
            let sys = HostSystem::default();
            match change {
                Change::Apply => egress.apply(&sys),
                Change::Install(u) => egress.install_uplink(&sys, &u),
                Change::Uninstall(slot) => egress.uninstall_uplink(&sys, slot),
                Change::Switch => egress.switch(&sys),
                Change::RemoveAll => egress.remove_all(&sys),
            }
        })
        .await;
        let error = match result {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "outbound failover routing");
                format!("outbound routing: {e}")
            }
            Err(e) => e.to_string(),
        };
        self.inner.locked().error = error;
    }

    /// An uplink's tunnel is configured, or its addresses or priority changed.
    pub async fn upsert(&self, uplink: Uplink) {
        let change = {
            let mut inner = self.inner.locked();
            let first = inner.uplinks.is_empty() && !inner.installed;
            let (slot, routing_same) = match inner.uplinks.get(&uplink.name) {
                Some((old, slot)) => (
                    Some(*slot),
                    old.ifname == uplink.ifname && old.addrs == uplink.addrs,
                ),
                None => {
                    let used: Vec<u8> = inner.uplinks.values().map(|(_, s)| *s).collect();
                    ((0..MAX_UPLINKS).find(|s| !used.contains(s)), false)
                }
            };
            let Some(slot) = slot else {
                inner.error = format!(
                    "uplink {}: at most {MAX_UPLINKS} uplinks route outbound mail; leave one first",
                    uplink.name
                );
                return;
            };
            let sw = inner
                .selector
                .upsert(&uplink.name, uplink.priority, Instant::now());
            if let Some(sw) = &sw {
                log_switch(sw);
            }
            let r = route(&uplink, slot);
            inner.uplinks.insert(uplink.name.clone(), (uplink, slot));
            if first {
                Some(Change::Apply)
            } else if !routing_same {
                Some(Change::Install(r))
            } else {
                sw.map(|_| Change::Switch)
            }
        };
        if let Some(change) = change {
            self.enact(change).await;
        }
    }

    /// `ceres-home priority NAME N` took effect: the same uplink with its new
    /// priority (nothing happens for one whose tunnel is not configured yet;
    /// its first [`Failover::upsert`] carries the priority).
    pub async fn set_priority(&self, name: &str, priority: u16) {
        let known = self
            .inner
            .locked()
            .uplinks
            .get(name)
            .map(|(u, _)| u.clone());
        if let Some(mut uplink) = known {
            uplink.priority = priority;
            self.upsert(uplink).await;
        }
    }

    /// An uplink is gone (`leave`) or its tunnel stopped for good.
    pub async fn remove(&self, name: &str) {
        let change = {
            let mut inner = self.inner.locked();
            let Some((_, slot)) = inner.uplinks.remove(name) else {
                return;
            };
            if let Some(sw) = inner.selector.remove(name, Instant::now()) {
                log_switch(&sw);
            }
            if inner.uplinks.is_empty() {
                Change::RemoveAll
            } else {
                Change::Uninstall(slot)
            }
        };
        self.enact(change).await;
    }

    /// Probes the uplinks and switches the routing until `cancel`; removes
    /// the routing before it returns.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.settings.uplink_probe_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.probe_round(interval.min(ECHO_WAIT)).await;
        }
        let installed = self.inner.locked().installed;
        if installed {
            self.enact(Change::RemoveAll).await;
        }
    }

    /// Probes every uplink once (at the same time) and acts on the results.
    async fn probe_round(&self, wait: Duration) {
        let (targets, seq) = {
            let mut inner = self.inner.locked();
            inner.seq = inner.seq.wrapping_add(1);
            let t: Vec<(String, String, std::net::IpAddr, std::net::IpAddr)> = inner
                .uplinks
                .values()
                .map(|(u, _)| (u.name.clone(), u.ifname.clone(), u.addrs.home, u.addrs.vps))
                .collect();
            (t, inner.seq)
        };
        let mut set = tokio::task::JoinSet::new();
        for (name, ifname, home, vps) in targets {
            set.spawn_blocking(move || (name, super::probe::echo(&ifname, home, vps, seq, wait)));
        }
        let mut switched = false;
        while let Some(r) = set.join_next().await {
            let Ok((name, result)) = r else { continue };
            let (ok, detail) = match result {
                Ok(rtt) => (true, format!("echo reply in {} ms", rtt.as_millis())),
                Err(why) => (false, why),
            };
            let mut inner = self.inner.locked();
            if let Some(sw) = inner.selector.probe(&name, ok, &detail, Instant::now()) {
                log_switch(&sw);
                switched = true;
            }
        }
        if switched {
            self.enact(Change::Switch).await;
        }
    }

    /// Now.
    pub fn status(&self) -> FailoverStatus {
        let inner = self.inner.locked();
        let now = Instant::now();
        let sel = &inner.selector;
        let mut uplinks: Vec<UplinkState> = inner
            .uplinks
            .values()
            .map(|(u, _)| {
                let e = sel.uplinks().get(&u.name);
                let health = e.map(|e| e.health);
                let state = match health {
                    Some(Health::Recovering { since }) => format!(
                        "answering for {}s of the {}s hold-down; ",
                        now.saturating_duration_since(since).as_secs(),
                        self.settings.uplink_holddown.as_secs()
                    ),
                    Some(Health::Down) => "down; ".into(),
                    _ => String::new(),
                };
                UplinkState {
                    name: u.name.clone(),
                    priority: u.priority,
                    ifname: u.ifname.clone(),
                    healthy: health == Some(Health::Up),
                    active: sel.active() == Some(u.name.as_str()),
                    since_unix: e.map_or(0, |e| unix_of(e.since, now)),
                    detail: format!("{state}{}", e.map_or("", |e| e.detail.as_str())),
                }
            })
            .collect();
        uplinks.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let mut error = inner.error.clone();
        if sel.active().is_some() && !sel.any_up() {
            let note = "no uplink answers: outbound mail stays on the last active uplink \
                        (it queues at home rather than leave through the home line)";
            error = if error.is_empty() {
                note.into()
            } else {
                format!("{error}; {note}")
            };
        }
        FailoverStatus {
            active: sel.active().map(str::to_owned),
            uplinks,
            switches: sel.switches,
            last_switch_unix: sel.last_switch.map_or(0, |t| unix_of(t, now)),
            error,
        }
    }
}

fn route(u: &Uplink, slot: u8) -> UplinkRoute {
    UplinkRoute {
        slot,
        ifname: u.ifname.clone(),
        home: u.addrs.home,
        home6: u.addrs.home6,
    }
}
