//! Home's mail plumbing: the forwarders from the tunnel address to the mail
//! server, and the policy routing that sends outbound mail into the tunnel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ceres_proto::{EgressStatus, RelayPort};
use ceres_relay::egress::{HomeEgress, Hook, HostSystem, blocking_chains};
use ceres_relay::{Forwarder, ForwarderConfig, RelaySpec, StatsHandle};
use ceres_state::StateDir;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::filter::HomeFilter;
use crate::settings::HomeSettings;
use crate::tunnel::TunnelAddrs;

/// The relay list last received from the VPS, so forwarders start at once
/// after a restart.
const RELAYS_FILE: &str = "relays";

/// Forwarders and egress at home.
#[derive(Debug)]
pub struct HomeMail {
    settings: HomeSettings,
    dir: StateDir,
    cancel: CancellationToken,
    filter: Arc<HomeFilter>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    key: Option<(String, TunnelAddrs)>,
    forwarder: Option<Running>,
    forward_error: Option<String>,
    egress: Option<HomeEgress>,
    egress_error: Option<String>,
    /// The addresses last given to the agent's failover (several uplinks).
    failover_addrs: Option<TunnelAddrs>,
    /// Postfix's `mail_version` here, read when the forwarders were last
    /// (re)applied; `None` when there is no `postconf` to ask.
    postfix_version: Option<String>,
}

#[derive(Debug)]
struct Running {
    specs: Vec<RelaySpec>,
    /// Where the forwarders listen: what the input filter lets the VPS reach.
    listen: Vec<SocketAddr>,
    stats: StatsHandle,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HomeMail {
    /// Nothing runs until [`HomeMail::apply`].
    pub fn new(settings: &HomeSettings, dir: &StateDir, cancel: &CancellationToken) -> Self {
        Self {
            settings: settings.clone(),
            dir: dir.clone(),
            cancel: cancel.clone(),
            filter: Arc::new(HomeFilter::new(
                &settings.tunnel_ifname,
                settings.tunnel,
                settings.uplink_slot,
            )),
            state: Mutex::new(State::default()),
        }
    }

    /// Installs the tunnel's input filter with nothing let in yet, before the
    /// tunnel comes up. An error here is fatal for the agent.
    pub async fn install_filter(&self) -> anyhow::Result<()> {
        self.replace_filter(Vec::new(), Vec::new()).await
    }

    async fn replace_filter(
        &self,
        vps: Vec<IpAddr>,
        services: Vec<SocketAddr>,
    ) -> anyhow::Result<()> {
        let filter = self.filter.clone();
        // `nft` is blocking work: off the async workers.
        tokio::task::spawn_blocking(move || filter.install(&HostSystem::default(), vps, services))
            .await
            .map_err(|e| anyhow::anyhow!("input filter task: {e}"))?
    }

    /// The input filter's state for the report.
    pub fn filter_status(&self) -> (ceres_proto::InputFilter, String) {
        self.filter.status()
    }

    /// The relay list saved by the last session, if any.
    pub fn saved_relays(&self) -> Option<String> {
        self.dir
            .read_optional(RELAYS_FILE)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    }

    /// (Re)starts the forwarders for `relays` on home's tunnel address
    /// (accepting only the VPS), lets the VPS reach exactly them through the
    /// input filter, and installs the egress routing once.
    pub async fn apply(&self, relays: &str, addrs: TunnelAddrs) {
        let (home_ip, vps_ip) = (addrs.home, addrs.vps);
        let mut st = self.state.lock().await;
        let key = (relays.to_owned(), addrs);
        if st.key.as_ref() != Some(&key) {
            if let Some(old) = st.forwarder.take() {
                old.stop.cancel();
                let _ = old.task.await;
            }
            match self.start_forwarder(relays, home_ip, vps_ip) {
                Ok(running) => {
                    st.forwarder = running;
                    st.forward_error = None;
                    // A synced write: off the async workers.
                    let (dir, saved) = (self.dir.clone(), relays.to_owned());
                    let _ =
                        ceres_daemon::blocking(move || dir.write(RELAYS_FILE, saved.as_bytes()))
                            .await;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot start the forwarders to the mail server");
                    st.forward_error = Some(format!("{e:#}"));
                }
            }
            let services = st
                .forwarder
                .as_ref()
                .map(|r| r.listen.clone())
                .unwrap_or_default();
            if let Err(e) = self.replace_filter(addrs.vps_all(), services).await {
                // The previous rules stay: the relays may fail until the
                // next try, but nothing else gets in. Status shows it.
                tracing::error!(error = %format!("{e:#}"), "cannot update the tunnel's input filter for the forwarders");
            }
            st.key = Some(key);
            // The relays decide which PROXY versions Postfix must read:
            // ask its version again with them (not per report or probe).
            st.postfix_version = Self::postfix_version().await;
        }
        // One of several uplinks: the agent's failover routes outbound mail
        // through whichever uplink is up; this one tells it its addresses.
        if let Some(hook) = &self.settings.failover {
            if self.settings.egress && self.settings.tunnel && st.failover_addrs != Some(addrs) {
                hook.failover
                    .upsert(crate::failover::Uplink {
                        name: hook.name.clone(),
                        priority: hook.priority(),
                        ifname: self.settings.tunnel_ifname.clone(),
                        addrs,
                    })
                    .await;
                st.failover_addrs = Some(addrs);
            }
            return;
        }
        if self.settings.egress && self.settings.tunnel && st.egress.is_none() {
            let mut egress = match addrs.home6 {
                Some(home6) => {
                    HomeEgress::dual_stack(self.settings.tunnel_ifname.clone(), home_ip, home6)
                }
                None => HomeEgress::new(self.settings.tunnel_ifname.clone(), home_ip),
            };
            if !self.settings.egress_from.is_empty() {
                egress.sources = self.settings.egress_from.clone();
            }
            egress.tcp_ports = self.settings.egress_ports.clone();
            // `ip` and `nft` run off the async workers; the state lock (a
            // tokio one) is held across them, so the report says installed
            // only once the rules are.
            let applied = ceres_daemon::blocking(move || {
                let r = egress.apply(&HostSystem::default());
                (egress, r)
            })
            .await;
            match applied {
                Ok((egress, Ok(()))) => {
                    tracing::info!(sources = ?egress.sources, ports = ?egress.tcp_ports, "outbound mail routed through the tunnel");
                    st.egress = Some(egress);
                    st.egress_error = None;
                }
                Ok((_, Err(e))) => {
                    tracing::error!(error = %e, "cannot install the egress routing: outbound mail keeps using the home line");
                    st.egress_error = Some(e.to_string());
                }
                Err(e) => st.egress_error = Some(e.to_string()),
            }
        }
    }

    fn start_forwarder(
        &self,
        relays: &str,
        home_ip: IpAddr,
        vps_ip: IpAddr,
    ) -> anyhow::Result<Option<Running>> {
        let specs = if relays.trim().is_empty() {
            Vec::new()
        } else {
            ceres_relay::parse_relays(relays)?
        };
        if specs.is_empty() {
            return Ok(None);
        }
        ceres_relay::raise_fd_limit().ok();
        let mut config = ForwarderConfig::new(home_ip, vps_ip, &specs);
        config.mail_server = self.settings.mail_server;
        config.max_per_port = self.settings.forward_max_per_port;
        let forwarder = Forwarder::bind(config)?;
        let stats = forwarder.stats();
        let listen = forwarder.local_addrs();
        let stop = self.cancel.child_token();
        let token = stop.clone();
        tracing::info!(relays, mail_server = %self.settings.mail_server, "forwarding to the mail server");
        let task = tokio::spawn(async move {
            if let Err(e) = forwarder.run(token).await {
                tracing::error!(error = %e, "forwarders stopped");
            }
        });
        Ok(Some(Running {
            specs,
            listen,
            stats,
            stop,
            task,
        }))
    }

    /// The relays being forwarded now.
    pub async fn specs(&self) -> Vec<RelaySpec> {
        self.state
            .lock()
            .await
            .forwarder
            .as_ref()
            .map(|r| r.specs.clone())
            .unwrap_or_default()
    }

    /// What a host firewall blocks on the tunnel interface while forwarders
    /// run (see [`ceres_relay::egress::DropChain`]); empty when nothing does,
    /// or when `nft` is not there to ask.
    pub async fn firewall_advice(&self) -> String {
        self.firewall_check().await.1
    }

    /// The chains [`HomeMail::firewall_advice`] is about, typed for the
    /// report, and the advice.
    pub async fn firewall_check(&self) -> (Vec<ceres_proto::FirewallFinding>, String) {
        if self.state.lock().await.forwarder.is_none() {
            return Default::default();
        }
        let ifname = self.settings.tunnel_ifname.clone();
        tokio::task::spawn_blocking(move || {
            let own = ceres_relay::egress::DEFAULT_FILTER_TABLE;
            match blocking_chains(&HostSystem::default(), Hook::Input, &ifname, Some(own)) {
                Ok(chains) => (
                    chains
                        .iter()
                        .map(ceres_control::wire::firewall_finding)
                        .collect(),
                    chains
                        .iter()
                        .map(|c| c.advice(&ifname))
                        .collect::<Vec<_>>()
                        .join("; and "),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the nftables chains");
                    Default::default()
                }
            }
        })
        .await
        .unwrap_or_default()
    }

    /// Counters, why the forwarders could not start (if so), and egress state
    /// for the report.
    pub async fn report(&self) -> (Vec<RelayPort>, String, EgressStatus) {
        use ceres_proto::{EgressState, EgressUplink, RelayState, compat};
        let st = self.state.lock().await;
        let mut forwards = st
            .forwarder
            .as_ref()
            .map(|r| ceres_agent::report::relay_ports(&r.stats.snapshot(), &r.specs))
            .unwrap_or_default();
        for f in &mut forwards {
            f.state = RelayState::Relaying.into();
        }
        let failover = self
            .settings
            .failover
            .as_ref()
            .filter(|_| self.settings.egress && self.settings.tunnel)
            .map(|hook| {
                let status = hook.failover.status();
                let mine = status.uplinks.iter().find(|u| u.name == hook.name);
                let role = match mine {
                    Some(u) if u.active => EgressUplink::Active,
                    Some(u) if u.healthy => EgressUplink::Standby,
                    Some(_) => EgressUplink::Down,
                    None => EgressUplink::Unspecified,
                };
                let state = match (mine.is_some(), status.error.is_empty()) {
                    (true, true) => (EgressState::Installed, String::new()),
                    (true, false) => (EgressState::Failed, status.error),
                    (false, _) => (EgressState::Pending, String::new()),
                };
                (state, role)
            });
        let uplink = failover.as_ref().map_or(EgressUplink::Unspecified, |f| f.1);
        let failover = failover.map(|f| f.0);
        let (state, error) = match (&st.egress_error, &st.egress) {
            _ if failover.is_some() => failover.unwrap_or((EgressState::Pending, String::new())),
            (_, Some(_)) => (EgressState::Installed, String::new()),
            (Some(e), None) => (EgressState::Failed, e.clone()),
            (None, None) if !self.settings.egress => {
                (EgressState::Disabled, compat::EGRESS_DISABLED.to_owned())
            }
            (None, None) if !self.settings.tunnel => (EgressState::TunnelOff, String::new()),
            (None, None) => (EgressState::Pending, String::new()),
        };
        let egress = EgressStatus {
            enabled: st.egress.is_some() || state == EgressState::Installed,
            tcp_ports: self
                .settings
                .egress_ports
                .iter()
                .map(|p| *p as u32)
                .collect(),
            sources: match (&st.egress, st.failover_addrs) {
                (Some(e), _) => e.sources.iter().map(|s| s.to_string()).collect(),
                // Through the failover: this uplink's own addresses, and
                // what CERES_EGRESS_FROM adds.
                (None, Some(a)) if state == EgressState::Installed => std::iter::once(a.home)
                    .chain(a.home6)
                    .map(|ip| ipnet::IpNet::from(ip).to_string())
                    .chain(self.settings.egress_from.iter().map(|n| n.to_string()))
                    .collect(),
                _ => Vec::new(),
            },
            error,
            // The VPS's fact: home does not decide it.
            ipv6: ceres_proto::Ipv6Egress::Unspecified.into(),
            state: state.into(),
            firewall_findings: Vec::new(),
            uplink: uplink.into(),
        };
        (
            forwards,
            st.forward_error.clone().unwrap_or_default(),
            egress,
        )
    }

    /// Reads Postfix's version now (once at start; [`HomeMail::apply`] reads
    /// it again with new relays).
    pub async fn check_postfix(&self) {
        let version = Self::postfix_version().await;
        self.state.lock().await.postfix_version = version;
    }

    /// `postconf` is a process to run: off the async workers.
    async fn postfix_version() -> Option<String> {
        tokio::task::spawn_blocking(crate::postfix::installed_version)
            .await
            .ok()
            .flatten()
    }

    /// Postfix's version and whether it reads what the relays send it.
    pub async fn postfix_report(&self) -> Option<ceres_proto::PostfixReport> {
        let st = self.state.lock().await;
        let specs = st
            .forwarder
            .as_ref()
            .map(|r| r.specs.as_slice())
            .unwrap_or_default();
        crate::postfix::check(st.postfix_version.as_deref(), specs)
    }

    /// Stops the forwarders and removes the routing and the input filter.
    pub async fn shutdown(&self) {
        let mut st = self.state.lock().await;
        if let Some(old) = st.forwarder.take() {
            old.stop.cancel();
            let _ = old.task.await;
        }
        if let (Some(hook), Some(_)) = (&self.settings.failover, st.failover_addrs.take()) {
            hook.failover.remove(&hook.name).await;
        }
        let filter = self.filter.clone();
        let _ = tokio::task::spawn_blocking(move || filter.remove()).await;
        if let Some(egress) = st.egress.take() {
            let removed =
                ceres_daemon::blocking(move || egress.remove(&HostSystem::default())).await;
            match removed {
                Ok(Ok(())) => tracing::info!("egress routing removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "removing the egress routing failed"),
                Err(e) => tracing::warn!(error = %e, "removing the egress routing failed"),
            }
        }
    }
}
