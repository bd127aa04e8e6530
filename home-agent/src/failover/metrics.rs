//! The failover's families on the home agent's Prometheus page (the first
//! uplink's page; registered only when the agent runs several uplinks).

use ceres_daemon::metrics::{AnyFamily, Counter, Family, Gauge, Page, flag};

use super::FailoverStatus;

static UPLINK_UP: Family<Gauge, 1> = Family::gauge(
    "ceres_home_uplink_up",
    "Whether the uplink's tunnel answers its probe.",
    ["uplink"],
);
static EGRESS_SWITCHES: Family<Counter, 0> = Family::counter(
    "ceres_home_egress_switches_total",
    "Changes of the uplink outbound mail leaves through.",
    [],
);
static UPLINK_ACTIVE: Family<Gauge, 1> = Family::gauge(
    "ceres_home_uplink_active",
    "1 for the uplink new outbound mail connections leave through now.",
    ["uplink"],
);

/// The failover's families, in page order.
pub static FAMILIES: [&dyn AnyFamily; 3] = [&UPLINK_UP, &UPLINK_ACTIVE, &EGRESS_SWITCHES];

/// Samples `status` into `page` (whose registry holds [`FAMILIES`]).
pub fn sample(page: &mut Page<'_>, status: &FailoverStatus) {
    for u in &status.uplinks {
        page.set(&UPLINK_UP, [&u.name], flag(u.healthy)).set(
            &UPLINK_ACTIVE,
            [&u.name],
            flag(u.active),
        );
    }
    page.set(&EGRESS_SWITCHES, [], status.switches);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::UplinkState;
    use ceres_daemon::metrics::Registry;

    #[test]
    fn every_uplink_is_sampled_with_its_name_escaped() {
        let mut r = Registry::new();
        r.register_all(&FAMILIES).unwrap();
        let up = |name: &str, healthy| UplinkState {
            name: name.into(),
            healthy,
            active: name == "b",
            ..Default::default()
        };
        let status = FailoverStatus {
            active: Some("b".into()),
            uplinks: vec![up("a", false), up("b", true), up("odd\"name", true)],
            switches: 2,
            ..Default::default()
        };
        let mut page = r.page();
        sample(&mut page, &status);
        let text = page.render();
        for line in [
            "# TYPE ceres_home_uplink_up gauge",
            "ceres_home_uplink_up{uplink=\"a\"} 0",
            "ceres_home_uplink_up{uplink=\"b\"} 1",
            "ceres_home_uplink_up{uplink=\"odd\\\"name\"} 1",
            "ceres_home_uplink_active{uplink=\"a\"} 0",
            "ceres_home_uplink_active{uplink=\"b\"} 1",
            "# TYPE ceres_home_egress_switches_total counter",
            "ceres_home_egress_switches_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
