//! The VPS agent's Prometheus page: its metric families, registered once at
//! start ([`registry`]), and a scrape: a [`Snapshot`] of the running agent
//! sampled into them ([`render`]).

use std::time::SystemTime;

use ceres_agent::metrics::{Peer, agent_registry, sample_tunnel};
use ceres_daemon::metrics::{AnyFamily, Counter, Family, Gauge, MetricsError, Registry, flag};
use ceres_pki::unix_secs;
use ceres_proto::{RelayPort, RotationStatus, TunnelReport};

use super::Ctx;
use crate::watch;

static HOME_CONNECTED: Family<Gauge, 0> = Family::gauge(
    "ceres_home_connected",
    "1 while the home agent's session is up",
    [],
);
static DROPPED_DATAGRAMS: Family<Counter, 0> = Family::counter(
    "ceres_tunnel_dropped_datagrams_total",
    "WireGuard datagrams dropped (garbage, replays, unknown keys)",
    [],
);
static RELAY_ACTIVE: Family<Gauge, 1> = Family::gauge(
    "ceres_relay_connections_active",
    "relayed connections open now",
    ["port"],
);
static RELAY_CONNECTIONS: Family<Counter, 1> = Family::counter(
    "ceres_relay_connections_total",
    "relayed connections accepted",
    ["port"],
);
static RELAY_BYTES_IN: Family<Counter, 1> =
    Family::counter("ceres_relay_bytes_in_total", "bytes from clients", ["port"]);
static RELAY_BYTES_OUT: Family<Counter, 1> =
    Family::counter("ceres_relay_bytes_out_total", "bytes to clients", ["port"]);
static RELAY_UNAVAILABLE: Family<Counter, 1> = Family::counter(
    "ceres_relay_unavailable_total",
    "connections turned away while home was away (421 or close)",
    ["port"],
);
static RELAY_REFUSED: Family<Counter, 2> = Family::counter(
    "ceres_relay_refused_total",
    "connections refused by limits, by reason",
    ["port", "reason"],
);
static ROTATIONS: Family<Counter, 0> = Family::counter(
    "ceres_rotations_total",
    "completed WireGuard key rotations since the CA was made",
    [],
);
static KEYS_AGE: Family<Gauge, 0> = Family::gauge(
    "ceres_keys_age_seconds",
    "age of the current WireGuard keys",
    [],
);
static ROTATION_LAST_FAILED: Family<Gauge, 0> = Family::gauge(
    "ceres_rotation_last_failed",
    "1 when the last rotation failed",
    [],
);
static CERTIFICATE_EXPIRY: Family<Gauge, 1> = Family::gauge(
    "ceres_certificate_expiry_timestamp_seconds",
    "when a certificate expires (renewed at 2/3 of its life)",
    ["cert"],
);

/// The VPS agent's own families, in the order the page lists them after
/// the session gauge and the tunnel's ([`agent_registry`]).
static FAMILIES: [&dyn AnyFamily; 11] = [
    &DROPPED_DATAGRAMS,
    &RELAY_ACTIVE,
    &RELAY_CONNECTIONS,
    &RELAY_BYTES_IN,
    &RELAY_BYTES_OUT,
    &RELAY_UNAVAILABLE,
    &RELAY_REFUSED,
    &ROTATIONS,
    &KEYS_AGE,
    &ROTATION_LAST_FAILED,
    &CERTIFICATE_EXPIRY,
];

/// The VPS agent's registry; the watchdog's families end the page.
pub(super) fn registry() -> Result<Registry, MetricsError> {
    let mut r = agent_registry(&HOME_CONNECTED, Peer::Home, &FAMILIES)?;
    r.register_all(&watch::metrics::FAMILIES)?;
    Ok(r)
}

/// What one scrape reads from the running agent.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    now_unix: i64,
    home_connected: bool,
    tunnel: TunnelReport,
    relays: Vec<RelayPort>,
    rotation: RotationStatus,
    /// `None` while the certificate's lock is poisoned.
    server_cert_not_after_unix: Option<i64>,
    /// 0 while home has not reported its certificate.
    home_cert_not_after_unix: i64,
    /// The watchdog's checks and alert channels.
    watch: watch::metrics::Snapshot,
}

impl Snapshot {
    /// The agent as of now.
    pub(super) fn of(ctx: &Ctx) -> Self {
        Snapshot {
            now_unix: unix_secs(SystemTime::now()),
            home_connected: ctx.hub.is_connected(),
            tunnel: ctx.tunnel.report(),
            relays: ctx.relays.report(),
            rotation: ctx.rotator.status(),
            server_cert_not_after_unix: ctx
                .server_cert
                .read()
                .ok()
                .map(|c| unix_secs(c.info.not_after)),
            home_cert_not_after_unix: ctx.hub.status().certificate_not_after_unix,
            watch: watch::metrics::Snapshot::of(&ctx.watch),
        }
    }
}

/// The page for `snap` in the Prometheus text format.
pub(super) fn render(registry: &Registry, snap: &Snapshot) -> String {
    let mut page = registry.page();
    page.set(&HOME_CONNECTED, [], flag(snap.home_connected));
    sample_tunnel(&mut page, &snap.tunnel, snap.now_unix, Peer::Home);
    page.set(&DROPPED_DATAGRAMS, [], snap.tunnel.dropped);
    for p in &snap.relays {
        let port = p.port.to_string();
        page.set(&RELAY_ACTIVE, [&port], p.active as f64)
            .set(&RELAY_CONNECTIONS, [&port], p.total)
            .set(&RELAY_BYTES_IN, [&port], p.bytes_in)
            .set(&RELAY_BYTES_OUT, [&port], p.bytes_out)
            .set(&RELAY_UNAVAILABLE, [&port], p.unavailable);
        for c in &p.refused_by {
            let reason = ceres_control::refusal::relay_refusal(c.reason())
                .map_or("unknown", ceres_relay::Refusal::as_str);
            page.set(&RELAY_REFUSED, [&port, reason], c.count);
        }
    }
    let r = &snap.rotation;
    page.set(&ROTATIONS, [], r.completed)
        .set(
            &KEYS_AGE,
            [],
            (snap.now_unix - r.keys_since_unix).max(0) as f64,
        )
        .set(
            &ROTATION_LAST_FAILED,
            [],
            flag(r.effective_result() == ceres_proto::RotationOutcome::Failed),
        );
    if let Some(not_after) = snap.server_cert_not_after_unix {
        page.set(&CERTIFICATE_EXPIRY, ["server"], not_after as f64);
    }
    if snap.home_cert_not_after_unix > 0 {
        page.set(
            &CERTIFICATE_EXPIRY,
            ["home"],
            snap.home_cert_not_after_unix as f64,
        );
    }
    watch::metrics::sample(&mut page, &snap.watch);
    page.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family's header as the agent wrote it before the families
    /// were typed: scrapers and dashboards rely on these.
    const HEADERS: [(&str, &str, &str); 19] = [
        (
            "ceres_home_connected",
            "gauge",
            "1 while the home agent's session is up",
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
            "bytes received from home through the tunnel",
        ),
        (
            "ceres_tunnel_tx_bytes_total",
            "counter",
            "bytes sent to home through the tunnel",
        ),
        (
            "ceres_tunnel_dropped_datagrams_total",
            "counter",
            "WireGuard datagrams dropped (garbage, replays, unknown keys)",
        ),
        (
            "ceres_relay_connections_active",
            "gauge",
            "relayed connections open now",
        ),
        (
            "ceres_relay_connections_total",
            "counter",
            "relayed connections accepted",
        ),
        (
            "ceres_relay_bytes_in_total",
            "counter",
            "bytes from clients",
        ),
        ("ceres_relay_bytes_out_total", "counter", "bytes to clients"),
        (
            "ceres_relay_unavailable_total",
            "counter",
            "connections turned away while home was away (421 or close)",
        ),
        (
            "ceres_relay_refused_total",
            "counter",
            "connections refused by limits, by reason",
        ),
        (
            "ceres_rotations_total",
            "counter",
            "completed WireGuard key rotations since the CA was made",
        ),
        (
            "ceres_keys_age_seconds",
            "gauge",
            "age of the current WireGuard keys",
        ),
        (
            "ceres_rotation_last_failed",
            "gauge",
            "1 when the last rotation failed",
        ),
        (
            "ceres_certificate_expiry_timestamp_seconds",
            "gauge",
            "when a certificate expires (renewed at 2/3 of its life)",
        ),
        (
            "ceres_check_state",
            "gauge",
            "state of each watchdog check: 0 ok, 1 warning, 2 failing (absent before its first run)",
        ),
        (
            "ceres_check_state_since_timestamp_seconds",
            "gauge",
            "when each watchdog check entered its current state",
        ),
        (
            "ceres_alert_notifications_total",
            "counter",
            "notifications per alert channel, sent or failed (each try counts)",
        ),
    ];

    fn busy() -> Snapshot {
        Snapshot {
            now_unix: 1_700_000_100,
            home_connected: true,
            tunnel: TunnelReport {
                running: true,
                last_handshake_unix: 1_700_000_000,
                rx_bytes: 10,
                tx_bytes: 20,
                dropped: 3,
                ..Default::default()
            },
            relays: vec![
                RelayPort {
                    port: 25,
                    active: 1,
                    total: 7,
                    bytes_in: 100,
                    bytes_out: 200,
                    unavailable: 2,
                    refused_by: vec![ceres_proto::RefusalCount {
                        reason: ceres_proto::RefusalReason::Rate as i32,
                        count: 4,
                    }],
                    ..Default::default()
                },
                RelayPort {
                    port: 587,
                    ..Default::default()
                },
            ],
            rotation: RotationStatus {
                completed: 2,
                keys_since_unix: 1_700_000_000,
                last_outcome: "failed: not completed in time".into(),
                last_result: ceres_proto::RotationOutcome::Failed.into(),
                last_failure: "not completed in time".into(),
                ..Default::default()
            },
            server_cert_not_after_unix: Some(1_800_000_000),
            home_cert_not_after_unix: 1_750_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn every_family_keeps_its_name_type_and_help_in_order() {
        let page = render(&registry().unwrap(), &Snapshot::default());
        let headers: Vec<(String, String, String)> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|l| {
                let (name, help) = l.split_once(' ').unwrap();
                let kind = page
                    .lines()
                    .find_map(|t| t.strip_prefix(&format!("# TYPE {name} ")))
                    .unwrap();
                (name.to_owned(), kind.to_owned(), help.to_owned())
            })
            .collect();
        let want: Vec<(String, String, String)> = HEADERS
            .iter()
            .map(|(n, k, h)| ((*n).to_owned(), (*k).to_owned(), (*h).to_owned()))
            .collect();
        assert_eq!(headers, want);
    }

    #[test]
    fn a_busy_agent_is_sampled_with_its_labels() {
        let page = render(&registry().unwrap(), &busy());
        for want in [
            "ceres_home_connected 1\n",
            "ceres_tunnel_up 1\n",
            "ceres_tunnel_last_handshake_age_seconds 100\n",
            "ceres_tunnel_rx_bytes_total 10\n",
            "ceres_tunnel_dropped_datagrams_total 3\n",
            "ceres_relay_connections_active{port=\"25\"} 1\n",
            "ceres_relay_connections_total{port=\"25\"} 7\n",
            "ceres_relay_connections_total{port=\"587\"} 0\n",
            "ceres_relay_bytes_in_total{port=\"25\"} 100\n",
            "ceres_relay_bytes_out_total{port=\"25\"} 200\n",
            "ceres_relay_unavailable_total{port=\"25\"} 2\n",
            "ceres_relay_refused_total{port=\"25\",reason=\"rate\"} 4\n",
            "ceres_rotations_total 2\n",
            "ceres_keys_age_seconds 100\n",
            "ceres_rotation_last_failed 1\n",
            "ceres_certificate_expiry_timestamp_seconds{cert=\"server\"} 1800000000\n",
            "ceres_certificate_expiry_timestamp_seconds{cert=\"home\"} 1750000000\n",
        ] {
            assert!(page.contains(want), "{want:?} missing from:\n{page}");
        }
        ceres_testkit::promtool::check_metrics(&page);
    }

    #[test]
    fn an_idle_agent_leaves_out_what_it_does_not_know() {
        let page = render(&registry().unwrap(), &Snapshot::default());
        assert!(page.contains("ceres_home_connected 0\n"), "{page}");
        assert!(page.contains("ceres_rotation_last_failed 0\n"), "{page}");
        // No home certificate reported, no handshake yet.
        assert!(!page.contains("{cert=\"home\"}"), "{page}");
        assert!(
            !page.contains("\nceres_tunnel_last_handshake_age_seconds "),
            "{page}"
        );
        ceres_testkit::promtool::check_metrics(&page);
    }

    /// The flag follows the typed outcome; an agent's wording does not
    /// decide it, and a status of the previous release (only the sentence)
    /// still reads right.
    #[test]
    fn the_rotation_failed_flag_is_the_typed_outcome() {
        use ceres_proto::RotationOutcome;
        let flag_of = |rotation: RotationStatus| {
            let page = render(
                &registry().unwrap(),
                &Snapshot {
                    rotation,
                    ..Default::default()
                },
            );
            page.lines()
                .find_map(|l| l.strip_prefix("ceres_rotation_last_failed "))
                .unwrap()
                .to_owned()
        };
        let typed = |outcome: RotationOutcome, text: &str| RotationStatus {
            last_result: outcome.into(),
            last_outcome: text.into(),
            ..Default::default()
        };
        assert_eq!(flag_of(typed(RotationOutcome::Ok, "failed: reworded")), "0");
        assert_eq!(flag_of(typed(RotationOutcome::Failed, "gave up")), "1");
        assert_eq!(flag_of(typed(RotationOutcome::Never, "")), "0");
        let old = |text: &str| typed(RotationOutcome::Unspecified, text);
        assert_eq!(flag_of(old("failed: home went away")), "1");
        assert_eq!(flag_of(old("ok")), "0");
        assert_eq!(flag_of(old("")), "0");
    }
}
