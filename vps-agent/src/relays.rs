//! The VPS's mail-port relays and outbound NAT, as the agent runs them.

use std::net::IpAddr;
use std::sync::Mutex;

use anyhow::Context;
use ceres_proto::{EgressStatus, RelayPort};
use ceres_relay::egress::{ForwardingState, HostSystem, VpsEgress};
use ceres_relay::{HomeReach, Listener, ListenerConfig, StatsHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::settings::VpsSettings;

/// Running relays and egress rules.
#[derive(Debug)]
pub struct VpsRelays {
    settings: crate::settings::RelaySettings,
    stats: Option<StatsHandle>,
    egress: Mutex<Option<(VpsEgress, ForwardingState)>>,
    egress_error: Option<String>,
}

/// The interface of the default route: where outbound mail leaves.
fn default_route_ifname() -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "route", "show", "default"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            if let Some(name) = words.next() {
                return Ok(name.to_owned());
            }
        }
    }
    anyhow::bail!("no IPv4 default route to find the public interface: set CERES_PUBLIC_IFNAME")
}

impl VpsRelays {
    /// Binds the relay ports and installs the egress rules. Relays need the
    /// tunnel (they connect to home's tunnel address), so with the tunnel off
    /// nothing is started.
    pub fn start(
        settings: &VpsSettings,
        reach: watch::Receiver<HomeReach>,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Self> {
        let rs = settings.relay.clone();
        let mut this = Self {
            settings: rs.clone(),
            stats: None,
            egress: Mutex::new(None),
            egress_error: None,
        };
        if !settings.tunnel.enabled {
            return Ok(this);
        }
        let home: IpAddr = settings.tunnel.home_address.addr();
        if !rs.relays.is_empty() {
            ceres_relay::raise_fd_limit().ok();
            let mut config = ListenerConfig::new(
                rs.listen.clone(),
                home,
                rs.relays.clone(),
                settings.mail_host.clone(),
            );
            config.idle_timeout = rs.idle_timeout;
            config.smtp_idle_timeout = rs.smtp_idle_timeout;
            config.limits = rs.limits;
            let listener = Listener::bind(config).context(
                "binding the relay ports (CERES_RELAYS on CERES_RELAY_LISTEN; ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            )?;
            tracing::info!(ports = %rs.relays.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(","), listen = ?rs.listen, "relays listening");
            this.stats = Some(listener.stats());
            let shutdown = cancel.child_token();
            tracker.spawn(async move {
                if let Err(e) = listener.run(reach, shutdown).await {
                    tracing::error!(error = %e, "relays stopped");
                }
            });
        }
        if rs.egress {
            match Self::install_egress(settings, home) {
                Ok(installed) => {
                    tracing::info!(ports = ?rs.egress_ports, public_if = %installed.0.public_if, "egress NAT installed (table inet ceres)");
                    if let Some(advice) = Self::forward_drop_advice(&installed.0) {
                        tracing::warn!("{advice}");
                    }
                    *this.egress.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(installed);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "egress not installed: home's outbound mail will not leave through the VPS");
                    this.egress_error = Some(format!("{e:#}"));
                }
            }
        }
        Ok(this)
    }

    fn install_egress(
        settings: &VpsSettings,
        home: IpAddr,
    ) -> anyhow::Result<(VpsEgress, ForwardingState)> {
        let public_if = match &settings.relay.public_ifname {
            Some(i) => i.clone(),
            None => default_route_ifname()?,
        };
        let mut egress = VpsEgress::new(settings.tunnel.ifname.clone(), public_if, home);
        egress.allowed_tcp_ports = settings.relay.egress_ports.clone();
        let state = egress
            .apply(&HostSystem::default())
            .context("installing the nftables egress rules")?;
        Ok((egress, state))
    }

    /// Per-port counters.
    pub fn report(&self) -> Vec<RelayPort> {
        match &self.stats {
            Some(s) => ceres_control::report::relay_ports(&s.snapshot(), &self.settings.relays),
            None => Vec::new(),
        }
    }

    /// What other tables' default-drop forward chains do to home's outbound
    /// mail, and how to fix it; `None` when nothing is in the way (or `nft`
    /// cannot tell).
    fn forward_drop_advice(egress: &VpsEgress) -> Option<String> {
        let drops = egress
            .foreign_forward_drops(&HostSystem::default())
            .inspect_err(|e| tracing::debug!(error = %e, "cannot list the nftables chains"))
            .ok()?;
        (!drops.is_empty()).then(|| {
            drops
                .iter()
                .map(|d| d.advice(&egress.tunnel_if))
                .collect::<Vec<_>>()
                .join("; and ")
        })
    }

    /// Egress state for status. Looks at the other firewall tables each time:
    /// Docker, for one, may install its default-drop forward chain after us.
    pub fn egress_status(&self) -> EgressStatus {
        let (installed, blocked) = self
            .egress
            .lock()
            .map(|g| match g.as_ref() {
                Some((egress, _)) => (true, Self::forward_drop_advice(egress)),
                None => (false, None),
            })
            .unwrap_or((false, None));
        EgressStatus {
            enabled: installed,
            tcp_ports: self
                .settings
                .egress_ports
                .iter()
                .map(|p| *p as u32)
                .collect(),
            sources: Vec::new(),
            error: match (&self.egress_error, self.settings.egress) {
                (Some(e), _) => e.clone(),
                (None, false) => "disabled (CERES_EGRESS=off)".into(),
                (None, true) if !installed => "not installed (tunnel off)".into(),
                _ => blocked.unwrap_or_default(),
            },
        }
    }

    /// Installs the egress rules again when they are enabled and not
    /// installed (a revoked home's were removed and a new home joined).
    /// Runs `nft`: call it off the async workers.
    pub fn ensure_egress(&self, settings: &VpsSettings) {
        if !settings.tunnel.enabled || !self.settings.egress || self.egress_error.is_some() {
            return;
        }
        let mut guard = self.egress.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return;
        }
        match Self::install_egress(settings, settings.tunnel.home_address.addr()) {
            Ok(installed) => {
                tracing::info!(ports = ?self.settings.egress_ports, "egress NAT installed again for the new home");
                *guard = Some(installed);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "egress not installed for the new home")
            }
        }
    }

    /// Removes the egress rules (other tables untouched) and restores sysctls.
    pub fn remove_egress(&self) {
        let taken = self.egress.lock().ok().and_then(|mut g| g.take());
        if let Some((egress, state)) = taken {
            match egress.remove(&HostSystem::default(), &state) {
                Ok(()) => tracing::info!("egress rules removed"),
                Err(e) => tracing::warn!(error = %e, "removing the egress rules failed"),
            }
        }
    }
}
