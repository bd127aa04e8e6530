//! The agents' Prometheus metrics: families declared once with their type,
//! help and label names ([`Family`]), registered once per agent as a table
//! ([`Registry::register_all`]), sampled into a [`Page`] per scrape, and
//! served on `GET /metrics` in the text exposition format ([`start`]).

mod registry;
mod serve;

pub use registry::{AnyFamily, Counter, Family, Gauge, Kind, MetricsError, Page, Registry, flag};
pub use serve::{Render, serve, start};

use std::net::SocketAddr;

/// `off`/empty or `IP:PORT`.
#[derive(Debug, Clone, Copy)]
pub struct ListenSetting(pub Option<SocketAddr>);

impl std::str::FromStr for ListenSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(ListenSetting(None));
        }
        s.parse()
            .map(|a| ListenSetting(Some(a)))
            .map_err(|_| "expected IP:PORT or off".to_owned())
    }
}
