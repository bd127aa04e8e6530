//! Outbound failover across uplinks (issue 16): mail from home leaves
//! through the highest-priority uplink whose tunnel is up; when it fails,
//! new connections move to the next within seconds, and back after a
//! hold-down. One [`Failover`] per agent owns the egress routing for all
//! uplinks; each uplink tells it its tunnel addresses with [`Failover::upsert`].
//!
//! Rooms: [`select`] decides (pure, unit-tested), [`probe`] asks an uplink
//! whether it answers, `runtime` applies the decision to the routing, and
//! [`metrics`] puts it on the first uplink's Prometheus page.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::settings::HomeSettings;
use crate::tunnel::TunnelAddrs;

pub mod metrics;
pub mod probe;
mod runtime;
pub mod select;

pub use runtime::Failover;

/// One uplink as the failover sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Its name (the VPS's name in the store).
    pub name: String,
    /// Lower is preferred.
    pub priority: u16,
    /// Its tunnel interface.
    pub ifname: String,
    /// Its tunnel addresses (as its VPS decided them).
    pub addrs: TunnelAddrs,
}

/// An uplink's handle on the agent's failover: its name and its priority
/// (which the supervisor changes in place when `ceres-home priority` does).
#[derive(Debug, Clone)]
pub struct Hook {
    /// The failover.
    pub failover: Arc<Failover>,
    /// The uplink's name.
    pub name: String,
    /// Its priority now.
    pub priority: Arc<std::sync::atomic::AtomicU16>,
}

impl Hook {
    /// Its priority now.
    pub fn priority(&self) -> u16 {
        self.priority.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What one uplink looks like to the failover now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UplinkState {
    /// Its name.
    pub name: String,
    /// Its priority.
    pub priority: u16,
    /// Its tunnel interface.
    pub ifname: String,
    /// Its tunnel answers (probe answered recently).
    pub healthy: bool,
    /// Outbound mail leaves through it now.
    pub active: bool,
    /// Since when (unix seconds) `healthy` has had its current value.
    pub since_unix: i64,
    /// Human detail (why down, last probe result).
    pub detail: String,
}

/// The failover as a whole, for the status file and the reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailoverStatus {
    /// The uplink outbound mail leaves through now, if any.
    pub active: Option<String>,
    /// Every uplink, by priority.
    pub uplinks: Vec<UplinkState>,
    /// How many times the active uplink changed since start.
    pub switches: u64,
    /// When it last changed (unix seconds; 0: never).
    pub last_switch_unix: i64,
    /// Why the routing could not be installed, if so.
    pub error: String,
}

/// Keeps `CancellationToken` and `Arc` in the contract's imports documented:
/// [`Failover::new`] returns an `Arc`, [`Failover::run`] takes a token.
#[allow(dead_code)]
type Contract = (Arc<Failover>, CancellationToken, HomeSettings, TunnelAddrs);
