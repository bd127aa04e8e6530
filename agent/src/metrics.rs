//! The tunnel's metric families, the same at both ends, and the layout
//! both agents' pages share: each agent builds its registry with
//! [`agent_registry`] and samples its tunnel report into every scrape with
//! [`sample_tunnel`].

use ceres_daemon::metrics::{
    AnyFamily, Counter, Family, Gauge, MetricsError, Page, Registry, flag,
};
use ceres_proto::TunnelReport;

/// A handshake at most this old means the tunnel is up: WireGuard
/// re-handshakes every 120 s while traffic flows, and keepalives keep it
/// flowing.
const UP_WITHIN_SECS: i64 = 180;

/// The other end of the tunnel, named in the byte counters' help texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The home agent (the VPS agent's page).
    Home,
    /// The VPS agent (the home agent's page).
    Vps,
}

static TUNNEL_UP: Family<Gauge, 0> = Family::gauge(
    "ceres_tunnel_up",
    "1 when a WireGuard handshake completed in the last 180 s",
    [],
);
static HANDSHAKE_AGE: Family<Gauge, 0> = Family::gauge(
    "ceres_tunnel_last_handshake_age_seconds",
    "seconds since the last WireGuard handshake",
    [],
);
static RX_FROM_HOME: Family<Counter, 0> = Family::counter(
    "ceres_tunnel_rx_bytes_total",
    "bytes received from home through the tunnel",
    [],
);
static TX_TO_HOME: Family<Counter, 0> = Family::counter(
    "ceres_tunnel_tx_bytes_total",
    "bytes sent to home through the tunnel",
    [],
);
static RX_FROM_VPS: Family<Counter, 0> = Family::counter(
    "ceres_tunnel_rx_bytes_total",
    "bytes received from the VPS through the tunnel",
    [],
);
static TX_TO_VPS: Family<Counter, 0> = Family::counter(
    "ceres_tunnel_tx_bytes_total",
    "bytes sent to the VPS through the tunnel",
    [],
);

/// The byte counters whose help texts name `peer`.
fn byte_families(peer: Peer) -> (&'static Family<Counter, 0>, &'static Family<Counter, 0>) {
    match peer {
        Peer::Home => (&RX_FROM_HOME, &TX_TO_HOME),
        Peer::Vps => (&RX_FROM_VPS, &TX_TO_VPS),
    }
}

/// The registry of the agent whose session and tunnel lead to `peer`, laid
/// out as both agents' pages are: the `session` gauge (1 while the session
/// to `peer` is up), the tunnel's families, then the agent's `own` table,
/// in its order. One table of its own is all an agent writes; a family
/// refused (a mistake in the agent's code) is the error.
pub fn agent_registry(
    session: &'static Family<Gauge, 0>,
    peer: Peer,
    own: &[&'static dyn AnyFamily],
) -> Result<Registry, MetricsError> {
    let (rx, tx) = byte_families(peer);
    let mut registry = Registry::new();
    registry
        .register_all(&[session, &TUNNEL_UP, &HANDSHAKE_AGE, rx, tx])?
        .register_all(own)?;
    Ok(registry)
}

/// Samples tunnel report `t`, as of `now_unix`; the handshake age is left
/// out while there has been no handshake.
pub fn sample_tunnel(page: &mut Page<'_>, t: &TunnelReport, now_unix: i64, peer: Peer) {
    let age = (t.last_handshake_unix > 0).then(|| (now_unix - t.last_handshake_unix).max(0));
    let up = t.running && age.is_some_and(|a| a < UP_WITHIN_SECS);
    page.set(&TUNNEL_UP, [], flag(up));
    if let Some(age) = age {
        page.set(&HANDSHAKE_AGE, [], age as f64);
    }
    let (rx, tx) = byte_families(peer);
    page.set(rx, [], t.rx_bytes).set(tx, [], t.tx_bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    static SESSION: Family<Gauge, 0> = Family::gauge("x_session_up", "session", []);
    static OWN_A: Family<Counter, 1> = Family::counter("x_a_total", "a", ["port"]);
    static OWN_B: Family<Gauge, 0> = Family::gauge("x_b", "b", []);

    #[test]
    fn the_session_gauge_comes_first_then_the_tunnel_then_the_agents_own() {
        let r = agent_registry(&SESSION, Peer::Home, &[&OWN_A, &OWN_B]).unwrap();
        let text = r.page().render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "x_session_up",
                "ceres_tunnel_up",
                "ceres_tunnel_last_handshake_age_seconds",
                "ceres_tunnel_rx_bytes_total",
                "ceres_tunnel_tx_bytes_total",
                "x_a_total",
                "x_b",
            ]
        );
    }

    #[test]
    fn an_own_family_clashing_with_the_tunnels_is_refused() {
        static CLASH: Family<Gauge, 0> = Family::gauge("ceres_tunnel_up", "again", []);
        assert_eq!(
            agent_registry(&SESSION, Peer::Vps, &[&OWN_B, &CLASH]).unwrap_err(),
            MetricsError::Duplicate("ceres_tunnel_up")
        );
    }

    #[test]
    fn a_recent_handshake_is_up_and_the_help_names_the_peer() {
        let r = agent_registry(&SESSION, Peer::Vps, &[]).unwrap();
        let mut page = r.page();
        let t = TunnelReport {
            running: true,
            last_handshake_unix: 1_000,
            rx_bytes: 7,
            tx_bytes: 9,
            ..Default::default()
        };
        sample_tunnel(&mut page, &t, 1_100, Peer::Vps);
        let text = page.render();
        for want in [
            "ceres_tunnel_up 1\n",
            "ceres_tunnel_last_handshake_age_seconds 100\n",
            "# HELP ceres_tunnel_rx_bytes_total bytes received from the VPS through the tunnel\n",
            "ceres_tunnel_rx_bytes_total 7\n",
            "ceres_tunnel_tx_bytes_total 9\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_stale_or_missing_handshake_is_down() {
        let r = agent_registry(&SESSION, Peer::Home, &[]).unwrap();
        let stale = TunnelReport {
            running: true,
            last_handshake_unix: 1_000,
            ..Default::default()
        };
        let mut page = r.page();
        sample_tunnel(&mut page, &stale, 1_000 + UP_WITHIN_SECS, Peer::Home);
        assert!(page.render().contains("ceres_tunnel_up 0\n"));
        let never = TunnelReport {
            running: true,
            ..Default::default()
        };
        let mut page = r.page();
        sample_tunnel(&mut page, &never, 5_000, Peer::Home);
        let text = page.render();
        assert!(text.contains("ceres_tunnel_up 0\n"), "{text}");
        assert!(
            !text.contains("\nceres_tunnel_last_handshake_age_seconds "),
            "{text}"
        );
        assert!(
            text.contains("bytes sent to home through the tunnel"),
            "{text}"
        );
    }
}
