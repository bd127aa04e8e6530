//! The VPS's mail-port relays and outbound NAT, as the agent runs them.

use ceres_sync::Unpoison;
use std::net::IpAddr;
use std::sync::Mutex;

use anyhow::Context;
use ceres_proto::{EgressStatus, Ipv6Egress, RelayPort};
use ceres_relay::egress::{ForwardingState, HostSystem, TunnelFilter, VpsEgress};
use ceres_relay::{HomeReach, Listener, ListenerConfig, StatsHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::settings::VpsSettings;

/// Running relays, the tunnel's input filter and the egress rules.
#[derive(Debug)]
pub struct VpsRelays {
    settings: crate::settings::RelaySettings,
    stats: Option<StatsHandle>,
    /// Whether home and its forwarders are there: each port's state.
    reach: watch::Receiver<HomeReach>,
    filter: Mutex<Option<TunnelFilter>>,
    egress: Mutex<Option<(VpsEgress, ForwardingState)>>,
    ipv6: Ipv6Egress,
    /// Egress was removed because home was revoked (not because the tunnel
    /// is off): said so in the status.
    removed_for_revocation: std::sync::atomic::AtomicBool,
}

/// What to tell the admin when `nft` refused a filter: which tool and the fix.
const NFT_HINT: &str = "the VPS agent needs nftables (`nft`, Debian package nftables) and root or CAP_NET_ADMIN; \
     CERES_TUNNEL=off runs the control plane alone";

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
            reach: reach.clone(),
            filter: Mutex::new(None),
            egress: Mutex::new(None),
            ipv6: Ipv6Egress::Off,
            removed_for_revocation: std::sync::atomic::AtomicBool::new(false),
        };
        if !settings.tunnel.enabled {
            return Ok(this);
        }
        let home: IpAddr = settings.tunnel.home_address.addr();
        let home6: Option<IpAddr> = settings.tunnel.home_address6.map(|n| n.addr());
        // The filter first: whatever fails after it, home reaches nothing on
        // the VPS through the tunnel.
        let mut filter = TunnelFilter::new(
            settings.tunnel.ifname.clone(),
            std::iter::once(home).chain(home6).collect(),
        );
        // Until egress is in place, nothing is forwarded from the tunnel.
        filter.guard_forward = true;
        filter.apply(&HostSystem::default()).with_context(|| {
            format!(
                "installing the tunnel's input filter (nftables table inet {}): {NFT_HINT}",
                filter.table
            )
        })?;
        tracing::info!(table = %filter.table, "tunnel input filter installed: home reaches nothing on the VPS but replies");
        *this.filter.locked_mut() = Some(filter.clone());
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
        if !rs.egress {
            return Ok(this);
        }
        let (installed, ipv6) = Self::install_egress(settings, home, home6)?;
        tracing::info!(ports = ?rs.egress_ports, public_if = %installed.0.public_if, ipv6 = ?ipv6, "egress NAT installed (table inet ceres)");
        let (_, advice) = Self::forward_drops(&installed.0);
        if !advice.is_empty() {
            tracing::warn!("{advice}");
        }
        this.ipv6 = ipv6;
        *this.egress.locked_mut() = Some(installed);
        // The egress table's forward chain now decides what home may send on.
        filter.guard_forward = false;
        filter.apply(&HostSystem::default()).with_context(|| {
            format!(
                "replacing the tunnel's input filter (nftables table inet {}): {NFT_HINT}",
                filter.table
            )
        })?;
        *this.filter.locked_mut() = Some(filter);
        Ok(this)
    }

    /// Installs egress; a failure is fatal (the caller exits with it): a VPS
    /// that was asked to send home's mail and silently does not is worse
    /// than one that does not start and says why.
    fn install_egress(
        settings: &VpsSettings,
        home: IpAddr,
        home6: Option<IpAddr>,
    ) -> anyhow::Result<((VpsEgress, ForwardingState), Ipv6Egress)> {
        let public_if = match &settings.relay.public_ifname {
            Some(i) => i.clone(),
            None => default_route_ifname()?,
        };
        let sys = HostSystem::default();
        let mut egress = VpsEgress::new(settings.tunnel.ifname.clone(), public_if.clone(), home);
        egress.allowed_tcp_ports = settings.relay.egress_ports.clone();
        let ipv6 = match home6 {
            None => Ipv6Egress::TunnelIpv4Only,
            Some(home6) => match ceres_relay::egress::public_ipv6(&sys, &public_if)
                .context("looking for the VPS's public IPv6 address")?
            {
                Some(public6) => {
                    tracing::info!(%public6, "home's IPv6 mail leaves from the VPS's public IPv6");
                    egress.home_addrs.push(home6);
                    Ipv6Egress::Available
                }
                None => {
                    tracing::warn!(public_if = %public_if, "the VPS has no global IPv6 address and default route: home's mail leaves over IPv4 only");
                    Ipv6Egress::NoPublicIpv6
                }
            },
        };
        let state = egress.apply(&sys).with_context(|| {
            format!(
                "installing the nftables egress rules (table inet {}): {NFT_HINT}; \
                 CERES_EGRESS=off runs without sending home's mail",
                egress.table
            )
        })?;
        Ok(((egress, state), ipv6))
    }

    /// Per-port counters, and whether each port relays now.
    pub fn report(&self) -> Vec<RelayPort> {
        use ceres_proto::RelayState;
        let Some(stats) = &self.stats else {
            return Vec::new();
        };
        let mut ports = ceres_agent::report::relay_ports(&stats.snapshot(), &self.settings.relays);
        let reach = self.reach.borrow();
        for p in &mut ports {
            let home_port = u16::try_from(p.target_port).unwrap_or_default();
            p.state = match (reach.up, reach.port_for(home_port)) {
                (false, _) => RelayState::HomeDown,
                (true, None) => RelayState::NoForwarder,
                (true, Some(_)) => RelayState::Relaying,
            } as i32;
        }
        ports
    }

    /// Other tables' default-drop forward chains in the way of home's
    /// outbound mail, and what they do with how to fix it (empty when
    /// nothing is in the way, or `nft` cannot tell).
    fn forward_drops(egress: &VpsEgress) -> (Vec<ceres_proto::FirewallFinding>, String) {
        let drops = egress
            .foreign_forward_drops(&HostSystem::default())
            .inspect_err(|e| tracing::debug!(error = %e, "cannot list the nftables chains"))
            .unwrap_or_default();
        let advice = drops
            .iter()
            .map(|d| d.advice(&egress.tunnel_if))
            .collect::<Vec<_>>()
            .join("; and ");
        (
            drops
                .iter()
                .map(ceres_control::wire::firewall_finding)
                .collect(),
            advice,
        )
    }

    /// Egress state for status. Looks at the other firewall tables each time:
    /// Docker, for one, may install its default-drop forward chain after us.
    pub fn egress_status(&self) -> EgressStatus {
        use ceres_proto::{EgressState, compat};
        let (installed, (findings, advice)) = self
            .egress
            .lock()
            .map(|g| match g.as_ref() {
                Some((egress, _)) => (true, Self::forward_drops(egress)),
                None => (false, Default::default()),
            })
            .unwrap_or_default();
        let revoked = self
            .removed_for_revocation
            .load(std::sync::atomic::Ordering::Relaxed);
        let (state, error) = match (self.settings.egress, installed) {
            (false, _) => (EgressState::Disabled, compat::EGRESS_DISABLED.to_owned()),
            (true, false) if revoked => (EgressState::Revoked, compat::EGRESS_REVOKED.to_owned()),
            (true, false) => (EgressState::TunnelOff, compat::EGRESS_TUNNEL_OFF.to_owned()),
            (true, true) if findings.is_empty() => (EgressState::Installed, String::new()),
            (true, true) => (EgressState::Blocked, advice),
        };
        EgressStatus {
            enabled: installed,
            tcp_ports: self
                .settings
                .egress_ports
                .iter()
                .map(|p| *p as u32)
                .collect(),
            sources: Vec::new(),
            error,
            ipv6: self.ipv6.into(),
            state: state.into(),
            firewall_findings: findings,
            // Home's fact: the VPS does not decide it.
            uplink: ceres_proto::EgressUplink::Unspecified.into(),
        }
    }

    /// Installs the egress rules again when they are enabled and not
    /// installed (a revoked home's were removed and a new home joined), and
    /// lets the egress table decide forwarding again.
    /// Runs `nft`: call it off the async workers.
    pub fn ensure_egress(&self, settings: &VpsSettings) {
        if !settings.tunnel.enabled || !self.settings.egress {
            return;
        }
        let mut guard = self.egress.locked();
        if guard.is_some() {
            return;
        }
        let home = settings.tunnel.home_address.addr();
        let home6 = settings.tunnel.home_address6.map(|n| n.addr());
        match Self::install_egress(settings, home, home6) {
            Ok((installed, _)) => {
                tracing::info!(ports = ?self.settings.egress_ports, "egress NAT installed again for the new home");
                *guard = Some(installed);
                drop(guard);
                self.removed_for_revocation
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.guard_forward(false);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "egress not installed for the new home")
            }
        }
    }

    /// Removes the egress rules (a revoked home's): the tunnel input filter
    /// stays, and forwards nothing from the tunnel until egress is back.
    pub fn remove_egress(&self) {
        let taken = self.egress.lock().ok().and_then(|mut g| g.take());
        if let Some((egress, state)) = taken {
            match egress.remove(&HostSystem::default(), &state) {
                Ok(()) => tracing::info!("egress rules removed"),
                Err(e) => tracing::warn!(error = %e, "removing the egress rules failed"),
            }
        }
        self.removed_for_revocation
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.guard_forward(true);
    }

    /// Replaces the input filter with its forward guard on or off.
    fn guard_forward(&self, on: bool) {
        let mut guard = self.filter.locked();
        if let Some(filter) = guard.as_mut() {
            filter.guard_forward = on;
            if let Err(e) = filter.apply(&HostSystem::default()) {
                tracing::error!(error = %e, table = %filter.table, "replacing the tunnel's input filter failed");
            }
        }
    }

    /// Removes the egress rules and the tunnel's input filter (other tables
    /// untouched) and restores sysctls. The tunnel device is gone by then, or
    /// about to be: the filter has nothing left to guard.
    pub fn remove_rules(&self) {
        let taken = self.egress.lock().ok().and_then(|mut g| g.take());
        if let Some((egress, state)) = taken {
            match egress.remove(&HostSystem::default(), &state) {
                Ok(()) => tracing::info!("egress rules removed"),
                Err(e) => tracing::warn!(error = %e, "removing the egress rules failed"),
            }
        }
        let taken = self.filter.lock().ok().and_then(|mut g| g.take());
        if let Some(filter) = taken {
            match filter.remove(&HostSystem::default()) {
                Ok(()) => tracing::info!("tunnel input filter removed"),
                Err(e) => tracing::warn!(error = %e, "removing the tunnel input filter failed"),
            }
        }
    }
}
