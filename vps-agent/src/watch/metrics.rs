//! The watchdog's part of the Prometheus page: each check's state as a
//! gauge (`ceres_check_state`, what `deploy/prometheus/ceres-alerts.yml`
//! alerts on), since when, and the notifications sent per channel. The
//! agent registers these families ([`FAMILIES`]) and samples a
//! [`Snapshot`] of the watchdog into every scrape with [`sample`].

use ceres_daemon::metrics::{AnyFamily, Counter, Family, Gauge, Page};
use ceres_proto::{AlertChannel, AlertChannelKind};

use super::{CheckId, Level, Watch};

static CHECK_STATE: Family<Gauge, 1> = Family::gauge(
    "ceres_check_state",
    "state of each watchdog check: 0 ok, 1 warning, 2 failing (absent before its first run)",
    ["check"],
);
static CHECK_STATE_SINCE: Family<Gauge, 1> = Family::gauge(
    "ceres_check_state_since_timestamp_seconds",
    "when each watchdog check entered its current state",
    ["check"],
);
static ALERT_NOTIFICATIONS: Family<Counter, 3> = Family::counter(
    "ceres_alert_notifications_total",
    "notifications per alert channel, sent or failed (each try counts)",
    ["channel", "target", "outcome"],
);

/// The watchdog's families, in the order the page lists them.
pub static FAMILIES: [&dyn AnyFamily; 3] = [&CHECK_STATE, &CHECK_STATE_SINCE, &ALERT_NOTIFICATIONS];

/// What one scrape reads of the watchdog.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (check, level, since) of every check that has run.
    levels: Vec<(CheckId, Level, i64)>,
    /// The alert channels and their counters.
    channels: Vec<AlertChannel>,
}

impl Snapshot {
    /// The watchdog as of now.
    pub fn of(watch: &Watch) -> Self {
        Snapshot {
            levels: watch.levels(),
            channels: watch.channels(),
        }
    }
}

/// Samples `snap` into `page`.
pub fn sample(page: &mut Page<'_>, snap: &Snapshot) {
    for (id, level, since) in &snap.levels {
        let check = [id.as_str()];
        page.set(&CHECK_STATE, check, level.gauge())
            .set(&CHECK_STATE_SINCE, check, *since as f64);
    }
    for c in &snap.channels {
        let kind = match c.kind() {
            AlertChannelKind::Webhook => "webhook",
            AlertChannelKind::Email => "email",
            AlertChannelKind::Unspecified => "unknown",
        };
        for (outcome, n) in [("sent", c.sent), ("failed", c.failed)] {
            page.set(&ALERT_NOTIFICATIONS, [kind, &c.target, outcome], n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_daemon::metrics::Registry;

    #[test]
    fn checks_and_channels_are_sampled_with_their_labels() {
        let mut r = Registry::new();
        r.register_all(&FAMILIES).unwrap();
        let snap = Snapshot {
            levels: vec![
                (CheckId::Home, Level::Failing, 1_700_000_000),
                (CheckId::Spf, Level::Ok, 1_600_000_000),
            ],
            channels: vec![AlertChannel {
                kind: AlertChannelKind::Email as i32,
                target: "ops@example.net".into(),
                sent: 3,
                failed: 1,
                ..Default::default()
            }],
        };
        let mut page = r.page();
        sample(&mut page, &snap);
        let text = page.render();
        for want in [
            "# TYPE ceres_check_state gauge\n",
            "ceres_check_state{check=\"home\"} 2\n",
            "ceres_check_state{check=\"spf\"} 0\n",
            "ceres_check_state_since_timestamp_seconds{check=\"home\"} 1700000000\n",
            "# TYPE ceres_alert_notifications_total counter\n",
            "ceres_alert_notifications_total{channel=\"email\",target=\"ops@example.net\",outcome=\"sent\"} 3\n",
            "ceres_alert_notifications_total{channel=\"email\",target=\"ops@example.net\",outcome=\"failed\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        ceres_testkit::promtool::check_metrics(&text);
    }

    #[test]
    fn a_check_that_has_not_run_has_no_sample() {
        let mut r = Registry::new();
        r.register_all(&FAMILIES).unwrap();
        let mut page = r.page();
        sample(&mut page, &Snapshot::default());
        let text = page.render();
        assert!(text.contains("# TYPE ceres_check_state gauge\n"), "{text}");
        assert!(!text.contains("ceres_check_state{"), "{text}");
    }
}
