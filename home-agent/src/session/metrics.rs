//! The home agent's Prometheus page: its metric families, registered once
//! at start ([`registry`]), sampled at every scrape from whether the session
//! is up and the last report the session sent ([`render`]) — the page shows
//! what the VPS was told.

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex};

use ceres_agent::metrics::{Peer, agent_registry, sample_tunnel};
use ceres_daemon::metrics::{
    AnyFamily, Counter, Family, Gauge, MetricsError, Page, Registry, flag,
};
use ceres_proto::Report;

static VPS_CONNECTED: Family<Gauge, 0> = Family::gauge(
    "ceres_vps_connected",
    "1 while the session to the VPS is up",
    [],
);
static FORWARD_CONNECTIONS: Family<Counter, 1> = Family::counter(
    "ceres_forward_connections_total",
    "connections forwarded to the mail server",
    ["port"],
);
static FORWARD_ACTIVE: Family<Gauge, 1> = Family::gauge(
    "ceres_forward_connections_active",
    "forwarded connections open now",
    ["port"],
);
static MAIL_SERVER_REACHABLE: Family<Gauge, 1> = Family::gauge(
    "ceres_mail_server_reachable",
    "1 when home's probe reached the mail server on the port",
    ["port"],
);
static CERTIFICATE_EXPIRY: Family<Gauge, 1> = Family::gauge(
    "ceres_certificate_expiry_timestamp_seconds",
    "when this agent's certificate expires (renewed at 2/3 of its life)",
    ["cert"],
);

/// The home agent's own families, in the order the page lists them after
/// the session gauge and the tunnel's ([`agent_registry`]).
static FAMILIES: [&dyn AnyFamily; 4] = [
    &FORWARD_CONNECTIONS,
    &FORWARD_ACTIVE,
    &MAIL_SERVER_REACHABLE,
    &CERTIFICATE_EXPIRY,
];

/// The home agent's registry.
pub(super) fn registry() -> Result<Registry, MetricsError> {
    agent_registry(&VPS_CONNECTED, Peer::Vps, &FAMILIES)
}

/// What the page is sampled from.
#[derive(Debug, Default)]
pub(super) struct Reported {
    /// The session is up.
    connected: bool,
    /// The last report sent, if any (it outlives its session: counters
    /// stay on the page while home reconnects).
    last: Option<Report>,
}

/// Shared between the session, which fills it, and the metrics endpoint.
pub(super) type MetricsCache = Arc<Mutex<Reported>>;

/// The session sent `report`: the page shows it, and the session as up.
pub(super) fn reported(cache: &MetricsCache, report: &Report) {
    let mut r = cache.locked();
    r.connected = true;
    r.last = Some(report.clone());
}

/// The session ended.
pub(super) fn disconnected(cache: &MetricsCache) {
    cache.locked().connected = false;
}

/// The page for `reported` in the Prometheus text format; `more` samples
/// families registered besides the home agent's own (the failover's).
pub(super) fn render(
    registry: &Registry,
    reported: &Reported,
    more: impl FnOnce(&mut Page<'_>),
) -> String {
    let mut page = registry.page();
    page.set(&VPS_CONNECTED, [], flag(reported.connected));
    if let Some(r) = &reported.last {
        if let Some(t) = &r.tunnel {
            sample_tunnel(&mut page, t, r.sent_at_unix, Peer::Vps);
        }
        for f in &r.forwards {
            let port = f.target_port.to_string();
            page.set(&FORWARD_CONNECTIONS, [&port], f.total).set(
                &FORWARD_ACTIVE,
                [&port],
                f.active as f64,
            );
        }
        for p in &r.probes {
            page.set(
                &MAIL_SERVER_REACHABLE,
                [&p.port.to_string()],
                flag(p.reachable),
            );
        }
        page.set(
            &CERTIFICATE_EXPIRY,
            ["home"],
            r.certificate_not_after_unix as f64,
        );
    }
    more(&mut page);
    page.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family's header as the agent wrote it before the families
    /// were typed: scrapers and dashboards rely on these.
    const HEADERS: [(&str, &str, &str); 9] = [
        (
            "ceres_vps_connected",
            "gauge",
            "1 while the session to the VPS is up",
        ),
        (
            "ceres_tunnel_up",
            "gauge",
            "1 when a WireGuard handshake completed in the last 180 s",
        ),
        (
            "ceres_tunnel_last_handshake_age_seconds",
            "gauge",
            "seconds since the last WireGuard handshake",
        ),
        (
            "ceres_tunnel_rx_bytes_total",
            "counter",
            "bytes received from the VPS through the tunnel",
        ),
        (
            "ceres_tunnel_tx_bytes_total",
            "counter",
            "bytes sent to the VPS through the tunnel",
        ),
        (
            "ceres_forward_connections_total",
            "counter",
            "connections forwarded to the mail server",
        ),
        (
            "ceres_forward_connections_active",
            "gauge",
            "forwarded connections open now",
        ),
        (
            "ceres_mail_server_reachable",
            "gauge",
            "1 when home's probe reached the mail server on the port",
        ),
        (
            "ceres_certificate_expiry_timestamp_seconds",
            "gauge",
            "when this agent's certificate expires (renewed at 2/3 of its life)",
        ),
    ];

    fn report() -> Report {
        Report {
            sent_at_unix: 1_700_000_030,
            certificate_not_after_unix: 1_750_000_000,
            tunnel: Some(ceres_proto::TunnelReport {
                running: true,
                last_handshake_unix: 1_700_000_000,
                rx_bytes: 5,
                tx_bytes: 6,
                ..Default::default()
            }),
            forwards: vec![ceres_proto::RelayPort {
                port: 40000,
                target_port: 25,
                active: 2,
                total: 9,
                ..Default::default()
            }],
            probes: vec![
                ceres_proto::MailProbe {
                    port: 25,
                    reachable: true,
                    ..Default::default()
                },
                ceres_proto::MailProbe {
                    port: 993,
                    reachable: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn every_family_keeps_its_name_type_and_help_in_order() {
        let page = render(&registry().unwrap(), &Reported::default(), |_| {});
        let headers: Vec<(&str, &str, &str)> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|l| {
                let (name, help) = l.split_once(' ').unwrap();
                let kind = page
                    .lines()
                    .find_map(|t| t.strip_prefix(&format!("# TYPE {name} ")))
                    .unwrap();
                (name, kind, help)
            })
            .collect();
        assert_eq!(headers, HEADERS);
    }

    #[test]
    fn the_last_report_is_sampled_and_stays_after_the_session_ends() {
        let registry = registry().unwrap();
        let cache = MetricsCache::default();
        reported(&cache, &report());
        let page = render(&registry, &cache.lock().unwrap(), |_| {});
        for want in [
            "ceres_vps_connected 1\n",
            "ceres_tunnel_up 1\n",
            "ceres_tunnel_last_handshake_age_seconds 30\n",
            "ceres_tunnel_rx_bytes_total 5\n",
            "ceres_forward_connections_total{port=\"25\"} 9\n",
            "ceres_forward_connections_active{port=\"25\"} 2\n",
            "ceres_mail_server_reachable{port=\"25\"} 1\n",
            "ceres_mail_server_reachable{port=\"993\"} 0\n",
            "ceres_certificate_expiry_timestamp_seconds{cert=\"home\"} 1750000000\n",
        ] {
            assert!(page.contains(want), "{want:?} missing from:\n{page}");
        }
        ceres_testkit::promtool::check_metrics(&page);
        disconnected(&cache);
        let page = render(&registry, &cache.lock().unwrap(), |_| {});
        assert!(page.contains("ceres_vps_connected 0\n"), "{page}");
        assert!(
            page.contains("ceres_forward_connections_total{port=\"25\"} 9\n"),
            "{page}"
        );
    }

    #[test]
    fn before_the_first_report_only_the_session_gauge_has_a_sample() {
        let page = render(&registry().unwrap(), &Reported::default(), |_| {});
        let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["ceres_vps_connected 0"]);
        ceres_testkit::promtool::check_metrics(&page);
    }
}
