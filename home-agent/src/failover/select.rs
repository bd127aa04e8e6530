//! The choice of the active uplink as a pure state machine: probe results
//! and membership changes go in with the time they happened, the switches
//! come out. No clock, no I/O, so every transition is unit-tested.
//!
//! Rules:
//! - An uplink is **down** after [`MISSES_DOWN`] missed probes in a row.
//! - A down uplink is **recovering** from its first answered probe and comes
//!   back **up** only after answering every probe for the hold-down; one miss
//!   while recovering makes it down again (the hold-down restarts).
//! - An uplink never seen up is up on its first answer during the start
//!   window (the first hold-down after the selector's first uplink): the
//!   first choice at start needs no hold-down. After the window it is
//!   recovering like a returning one: a freshly joined VPS, even a better
//!   one, proves itself for the hold-down before it takes traffic from a
//!   working uplink.
//! - Active = the up uplink with the lowest (priority, name). None up: keep
//!   the last active (mail queues at home rather than leaking out of the
//!   home line); if it was removed, the best remaining by priority.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Missed probes in a row that make an uplink down.
pub const MISSES_DOWN: u32 = 3;

/// How an uplink's tunnel looks to the selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet.
    Unknown,
    /// Answering; eligible.
    Up,
    /// Answering again since `since`, not yet for the hold-down.
    Recovering {
        /// First answer of this run of answers.
        since: Instant,
    },
    /// Missed [`MISSES_DOWN`] probes in a row (or one while recovering).
    Down,
}

/// One uplink in the selector.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Lower is preferred.
    pub priority: u16,
    /// Its health.
    pub health: Health,
    /// Since when `health` is up / not up (for the status).
    pub since: Instant,
    /// Missed probes in a row.
    pub misses: u32,
    /// Last probe result in words.
    pub detail: String,
    /// It has been up at some time.
    pub ever_up: bool,
}

/// A change of the active uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The previous active uplink.
    pub from: Option<String>,
    /// The new one.
    pub to: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// The state machine. See the module docs for the rules.
#[derive(Debug, Clone)]
pub struct Selector {
    holddown: Duration,
    uplinks: BTreeMap<String, Entry>,
    active: Option<String>,
    started: Option<Instant>,
    /// How many times the active uplink changed.
    pub switches: u64,
    /// When it last changed.
    pub last_switch: Option<Instant>,
}

impl Selector {
    /// No uplinks, nothing active.
    pub fn new(holddown: Duration) -> Self {
        Self {
            holddown,
            uplinks: BTreeMap::new(),
            active: None,
            started: None,
            switches: 0,
            last_switch: None,
        }
    }

    /// The active uplink.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// Whether any uplink is up (false: the active one is kept although down).
    pub fn any_up(&self) -> bool {
        self.uplinks.values().any(|e| e.health == Health::Up)
    }

    /// The uplinks by name.
    pub fn uplinks(&self) -> &BTreeMap<String, Entry> {
        &self.uplinks
    }

    /// Adds an uplink or changes its priority.
    pub fn upsert(&mut self, name: &str, priority: u16, now: Instant) -> Option<Switch> {
        self.started.get_or_insert(now);
        match self.uplinks.get_mut(name) {
            Some(e) if e.priority == priority => return None,
            Some(e) => e.priority = priority,
            None => {
                self.uplinks.insert(
                    name.to_owned(),
                    Entry {
                        priority,
                        health: Health::Unknown,
                        since: now,
                        misses: 0,
                        detail: "not probed yet".into(),
                        ever_up: false,
                    },
                );
            }
        }
        self.reselect(now, &format!("{name} added or its priority changed"))
    }

    /// Removes an uplink.
    pub fn remove(&mut self, name: &str, now: Instant) -> Option<Switch> {
        self.uplinks.remove(name)?;
        self.reselect(now, &format!("{name} removed"))
    }

    /// A probe of `name` answered (`ok`) or not, with `detail` in words.
    pub fn probe(&mut self, name: &str, ok: bool, detail: &str, now: Instant) -> Option<Switch> {
        let starting = self
            .started
            .is_none_or(|t| now.duration_since(t) < self.holddown);
        let holddown = self.holddown;
        let e = self.uplinks.get_mut(name)?;
        e.detail = detail.to_owned();
        let before = e.health;
        if ok {
            e.misses = 0;
            e.health = match e.health {
                Health::Up => Health::Up,
                Health::Unknown if starting => Health::Up,
                Health::Unknown | Health::Down => Health::Recovering { since: now },
                Health::Recovering { since } if now.duration_since(since) >= holddown => Health::Up,
                r @ Health::Recovering { .. } => r,
            };
            // A zero hold-down: up on the first answer.
            if let Health::Recovering { since } = e.health
                && now.duration_since(since) >= holddown
            {
                e.health = Health::Up;
            }
        } else {
            e.misses = e.misses.saturating_add(1);
            e.health = match e.health {
                Health::Recovering { .. } => Health::Down,
                Health::Up | Health::Unknown if e.misses >= MISSES_DOWN => Health::Down,
                h => h,
            };
        }
        let up_before = before == Health::Up;
        let up_now = e.health == Health::Up;
        if up_before != up_now {
            e.since = now;
        }
        e.ever_up |= up_now;
        let reason = match (before, e.health) {
            (Health::Up, Health::Down) => format!("{name} down: {detail}"),
            (_, Health::Up) if before != Health::Up => format!("{name} up: {detail}"),
            _ => format!("{name} probed: {detail}"),
        };
        self.reselect(now, &reason)
    }

    fn best(&self, only_up: bool) -> Option<String> {
        self.uplinks
            .iter()
            .filter(|(_, e)| !only_up || e.health == Health::Up)
            .min_by(|(an, a), (bn, b)| (a.priority, an).cmp(&(b.priority, bn)))
            .map(|(n, _)| n.clone())
    }

    fn reselect(&mut self, now: Instant, reason: &str) -> Option<Switch> {
        let next = self.best(true).or_else(|| {
            // None up: keep the last active while it exists and has been up
            // (before any probe, the best by priority).
            match &self.active {
                Some(a) if self.uplinks.get(a).is_some_and(|e| e.ever_up) => Some(a.clone()),
                _ => self.best(false),
            }
        });
        if next == self.active {
            return None;
        }
        let from = std::mem::replace(&mut self.active, next.clone());
        // The first choice is not a switch.
        if from.is_some() {
            self.switches += 1;
            self.last_switch = Some(now);
        }
        let reason = if self.any_up() {
            reason.to_owned()
        } else {
            format!("{reason}; no uplink is up")
        };
        Some(Switch {
            from,
            to: next,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HOLD: Duration = Duration::from_secs(30);
    const TICK: Duration = Duration::from_secs(2);

    struct Lab {
        s: Selector,
        now: Instant,
    }

    impl Lab {
        fn new() -> Self {
            Self {
                s: Selector::new(HOLD),
                now: Instant::now(),
            }
        }
        /// One probe round: every listed uplink answers or not, time advances.
        fn round(&mut self, results: &[(&str, bool)]) -> Vec<Switch> {
            self.now += TICK;
            results
                .iter()
                .filter_map(|(n, ok)| self.s.probe(n, *ok, "t", self.now))
                .collect()
        }
        fn rounds(&mut self, n: usize, results: &[(&str, bool)]) -> Vec<Switch> {
            (0..n).flat_map(|_| self.round(results)).collect()
        }
        fn two() -> Self {
            let mut l = Self::new();
            l.s.upsert("a", 10, l.now);
            l.s.upsert("b", 20, l.now);
            l.round(&[("a", true), ("b", true)]);
            l
        }
    }

    #[test]
    fn start_picks_the_best_answering_uplink_without_holddown() {
        let mut l = Lab::new();
        // Added before any probe: the best by priority is chosen at once
        // (nothing better to keep), so routing is never without a mark.
        assert_eq!(
            l.s.upsert("b", 20, l.now).map(|s| s.to),
            Some(Some("b".into()))
        );
        l.s.upsert("a", 10, l.now);
        assert_eq!(l.s.active(), Some("a"));
        l.round(&[("a", true), ("b", true)]);
        assert_eq!(l.s.active(), Some("a"));
        assert!(l.s.any_up());
    }

    #[test]
    fn start_with_the_primary_dead_settles_on_the_secondary() {
        let mut l = Lab::new();
        l.s.upsert("a", 10, l.now);
        l.s.upsert("b", 20, l.now);
        let sw = l.rounds(3, &[("a", false), ("b", true)]);
        assert_eq!(l.s.active(), Some("b"), "{sw:?}");
        assert_eq!(l.s.uplinks()["a"].health, Health::Down);
        // a, down, needs the hold-down to take over once it answers.
        l.rounds(15, &[("a", true), ("b", true)]);
        assert_eq!(l.s.active(), Some("b"));
        let sw = l.round(&[("a", true), ("b", true)]);
        assert_eq!(l.s.active(), Some("a"), "{sw:?}");
    }

    #[test]
    fn fails_over_after_three_misses_and_not_before() {
        let mut l = Lab::two();
        assert!(l.rounds(2, &[("a", false), ("b", true)]).is_empty());
        assert_eq!(l.s.active(), Some("a"));
        let sw = l.round(&[("a", false), ("b", true)]);
        assert_eq!(
            sw,
            vec![Switch {
                from: Some("a".into()),
                to: Some("b".into()),
                reason: "a down: t".into()
            }]
        );
        assert_eq!(l.s.switches, 1);
    }

    #[test]
    fn a_miss_between_answers_resets_the_count() {
        let mut l = Lab::two();
        for _ in 0..5 {
            l.rounds(2, &[("a", false), ("b", true)]);
            l.round(&[("a", true), ("b", true)]);
        }
        assert_eq!(l.s.active(), Some("a"));
        assert_eq!(l.s.switches, 0);
    }

    #[test]
    fn comes_back_only_after_the_holddown() {
        let mut l = Lab::two();
        l.rounds(3, &[("a", false), ("b", true)]);
        assert_eq!(l.s.active(), Some("b"));
        // First answer at t0; up once t0 + 30s is reached (15 more ticks).
        l.round(&[("a", true), ("b", true)]);
        assert!(l.rounds(14, &[("a", true), ("b", true)]).is_empty());
        assert_eq!(l.s.active(), Some("b"));
        let sw = l.round(&[("a", true), ("b", true)]);
        assert_eq!(sw.len(), 1, "{sw:?}");
        assert_eq!(sw[0].to.as_deref(), Some("a"));
        assert_eq!(l.s.switches, 2);
    }

    #[test]
    fn a_flap_during_holddown_restarts_it() {
        let mut l = Lab::two();
        l.rounds(3, &[("a", false), ("b", true)]);
        l.rounds(10, &[("a", true), ("b", true)]);
        // One miss while recovering: down again, no switch (b stays).
        assert!(l.round(&[("a", false), ("b", true)]).is_empty());
        assert_eq!(l.s.uplinks()["a"].health, Health::Down);
        // The 20s already answered do not count: a full hold-down again.
        l.rounds(15, &[("a", true), ("b", true)]);
        assert_eq!(l.s.active(), Some("b"));
        l.round(&[("a", true), ("b", true)]);
        assert_eq!(l.s.active(), Some("a"));
    }

    #[test]
    fn all_down_keeps_the_last_active_and_says_so() {
        let mut l = Lab::two();
        l.rounds(3, &[("a", false), ("b", true)]);
        assert_eq!(l.s.active(), Some("b"));
        let sw = l.rounds(3, &[("a", false), ("b", false)]);
        assert!(sw.is_empty(), "{sw:?}");
        assert_eq!(l.s.active(), Some("b"));
        assert!(!l.s.any_up());
        // b answers again: it is active already, no switch, no hold-down
        // needed for staying.
        assert!(l.round(&[("a", false), ("b", true)]).is_empty());
        // Whichever returns first after its hold-down gets the traffic.
        l.rounds(15, &[("a", true), ("b", true)]);
        assert_eq!(l.s.active(), Some("b"));
    }

    #[test]
    fn removing_the_active_moves_to_the_next_up() {
        let mut l = Lab::two();
        let sw = l.s.remove("a", l.now).unwrap();
        assert_eq!(
            (sw.from.as_deref(), sw.to.as_deref()),
            (Some("a"), Some("b"))
        );
        assert_eq!(l.s.remove("a", l.now), None, "already gone");
        assert_eq!(l.s.remove("b", l.now).unwrap().to, None);
        assert_eq!(l.s.active(), None);
    }

    #[test]
    fn removing_the_active_when_none_is_up_falls_back_by_priority() {
        let mut l = Lab::two();
        l.s.upsert("c", 30, l.now);
        l.round(&[("c", true)]);
        l.rounds(3, &[("a", false), ("b", false), ("c", false)]);
        // The last to go down is kept.
        assert_eq!(l.s.active(), Some("c"));
        let sw = l.s.remove("c", l.now).unwrap();
        assert_eq!(sw.to.as_deref(), Some("a"));
        assert!(sw.reason.ends_with("no uplink is up"), "{}", sw.reason);
    }

    #[test]
    fn a_priority_change_between_up_uplinks_switches_at_once() {
        let mut l = Lab::two();
        let sw = l.s.upsert("b", 5, l.now).unwrap();
        assert_eq!(sw.to.as_deref(), Some("b"));
        assert_eq!(l.s.upsert("b", 5, l.now), None, "unchanged");
    }

    #[test]
    fn equal_priorities_are_ordered_by_name() {
        let mut l = Lab::new();
        l.s.upsert("y", 10, l.now);
        l.s.upsert("x", 10, l.now);
        l.round(&[("x", true), ("y", true)]);
        assert_eq!(l.s.active(), Some("x"));
    }

    #[test]
    fn a_new_better_uplink_serves_the_holddown_first() {
        let mut l = Lab::two();
        // After the start window.
        l.now += HOLD;
        l.s.upsert("z", 1, l.now);
        assert_eq!(l.s.active(), Some("a"));
        // First answer, then 15 more: 30s.
        l.rounds(15, &[("a", true), ("b", true), ("z", true)]);
        assert_eq!(l.s.active(), Some("a"));
        l.round(&[("a", true), ("b", true), ("z", true)]);
        assert_eq!(l.s.active(), Some("z"));
    }

    #[test]
    fn probes_of_unknown_names_are_ignored() {
        let mut l = Lab::two();
        assert_eq!(l.s.probe("nope", false, "t", l.now), None);
    }
}
