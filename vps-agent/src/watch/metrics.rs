//! The watchdog's part of the Prometheus page: each check's state as a
//! gauge (`ceres_check_state`, what `deploy/prometheus/ceres-alerts.yml`
//! alerts on), since when, and the notifications sent per channel.

use ceres_daemon::metrics::{header, line};

use super::Watch;

/// Appends the watchdog's metrics to `out`.
pub fn render(watch: &Watch, out: &mut String) {
    let levels = watch.levels();
    header(
        out,
        "ceres_check_state",
        "gauge",
        "state of each watchdog check: 0 ok, 1 warning, 2 failing (absent before its first run)",
    );
    for (id, level, _) in &levels {
        line(
            out,
            "ceres_check_state",
            &[("check", id.as_str())],
            level.gauge(),
        );
    }
    header(
        out,
        "ceres_check_state_since_timestamp_seconds",
        "gauge",
        "when each watchdog check entered its current state",
    );
    for (id, _, since) in &levels {
        line(
            out,
            "ceres_check_state_since_timestamp_seconds",
            &[("check", id.as_str())],
            *since as f64,
        );
    }
    header(
        out,
        "ceres_alert_notifications_total",
        "counter",
        "notifications per alert channel, sent or failed (each try counts)",
    );
    for c in watch.channels() {
        let kind = match c.kind() {
            ceres_proto::AlertChannelKind::Webhook => "webhook",
            ceres_proto::AlertChannelKind::Email => "email",
            ceres_proto::AlertChannelKind::Unspecified => "unknown",
        };
        for (outcome, n) in [("sent", c.sent), ("failed", c.failed)] {
            line(
                out,
                "ceres_alert_notifications_total",
                &[
                    ("channel", kind),
                    ("target", &c.target),
                    ("outcome", outcome),
                ],
                n as f64,
            );
        }
    }
}
