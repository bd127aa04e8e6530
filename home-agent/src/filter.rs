//! Home's input filter on the tunnel interface (issue 11): whoever controls the
//! VPS reaches nothing at home but the forwarders. Installed at start with no
//! services (nothing new gets in until the forwarders run), replaced each time
//! the forwarders are bound (their ports are kernel-picked), removed on a clean
//! shutdown. The rules are [`ceres_relay::egress::TunnelFilter`]; this is the
//! agent's bookkeeping around them.

use ceres_sync::Unpoison;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use anyhow::Context;
use ceres_proto::InputFilter;
use ceres_relay::egress::{HostSystem, System, TunnelFilter};

/// What the admin is told when `nft` refuses the filter.
pub const NFT_HINT: &str = "the home agent needs nftables (`nft`, Debian package nftables) and root or \
     CAP_NET_ADMIN to filter what enters through the tunnel; CERES_TUNNEL=off runs without the tunnel";

/// The filter as installed, and the last failure to replace it.
#[derive(Debug)]
pub struct HomeFilter {
    /// Its nftables table (per uplink).
    table: String,
    tunnel_if: String,
    enabled: bool,
    /// What the report reads: never held while `nft` runs.
    state: Mutex<State>,
    /// Installs and removals one at a time. They run `nft` (in the blocking
    /// pool) holding only this, so the report does not wait for them.
    changing: Mutex<()>,
}

/// The input filter's table of uplink `slot`: the first keeps today's name.
pub fn table_for_slot(slot: u16) -> String {
    let base = ceres_relay::egress::DEFAULT_FILTER_TABLE;
    if slot == 0 {
        base.to_owned()
    } else {
        format!("{base}_{slot}")
    }
}

#[derive(Debug, Default)]
struct State {
    installed: Option<TunnelFilter>,
    error: Option<String>,
}

impl HomeFilter {
    /// Nothing installed yet; `enabled` is false when the tunnel is off.
    /// `slot`: the uplink's interface slot; slot 0 uses the default table
    /// (`ceres_tunnel`), slot n `ceres_tunnel_n`, so each uplink's filter is
    /// replaced or removed alone.
    pub fn new(tunnel_if: &str, enabled: bool, slot: u16) -> Self {
        Self {
            table: table_for_slot(slot),
            tunnel_if: tunnel_if.to_owned(),
            enabled,
            state: Mutex::new(State::default()),
            changing: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Installs (or replaces) the filter: from the tunnel, only `vps` may open
    /// connections, and only to `services`. Blocking (runs `nft`).
    pub fn install(
        &self,
        sys: &dyn System,
        vps: Vec<IpAddr>,
        services: Vec<SocketAddr>,
    ) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let mut filter = TunnelFilter::new(self.tunnel_if.clone(), vps);
        filter.table = self.table.clone();
        filter.services = services;
        // Nothing reaches the LAN or containers through home either.
        filter.guard_forward = true;
        let _one = self.changing.locked();
        if self.lock().installed.as_ref() == Some(&filter) {
            return Ok(());
        }
        let result = filter.apply(sys).with_context(|| {
            format!(
                "installing the tunnel's input filter (nftables table inet {}): {NFT_HINT}",
                filter.table
            )
        });
        let mut st = self.lock();
        match &result {
            Ok(()) => {
                tracing::info!(table = %filter.table, services = ?filter.services, "tunnel input filter installed: from the tunnel only the VPS to the forwarders");
                st.installed = Some(filter);
                st.error = None;
            }
            Err(e) => st.error = Some(format!("{e:#}")),
        }
        result
    }

    /// For the report.
    pub fn status(&self) -> (InputFilter, String) {
        let st = self.lock();
        match (&st.error, &st.installed, self.enabled) {
            (_, _, false) => (InputFilter::Off, String::new()),
            (Some(e), _, true) => (InputFilter::Failed, e.clone()),
            (None, Some(_), true) => (InputFilter::Installed, String::new()),
            // Installed at start or the agent does not start; not reached.
            (None, None, true) => (InputFilter::Failed, "not installed".into()),
        }
    }

    /// Removes the filter (clean shutdown). Blocking.
    pub fn remove(&self) {
        let _one = self.changing.locked();
        let taken = self.lock().installed.take();
        if let Some(filter) = taken {
            match filter.remove(&HostSystem::default()) {
                Ok(()) => tracing::info!("tunnel input filter removed"),
                Err(e) => tracing::warn!(error = %e, "removing the tunnel input filter failed"),
            }
        }
    }
}
