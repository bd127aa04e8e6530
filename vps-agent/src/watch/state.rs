//! Each check's state and when to tell someone about it.
//!
//! The design, in full (docs/operations.md, "Watchdog and alerts", says the
//! same for users):
//!
//! - Each run of a check gives a level: ok, warning or failing. The state
//!   shown is the last run's, with `since` = when that level began.
//! - Only failing matters for notifications; warnings are shown, never sent.
//! - **Hold-down.** A *live* check ([`CheckId::is_live`]: home, relays,
//!   egress, home firewall, rotation) must be failing without a break for
//!   the hold (`CERES_ALERT_DELAY`) before "failing" is sent, and, once sent,
//!   not failing without a break for the same hold before "resolved" is sent.
//!   A home that restarts in seconds is never announced, and a resolution is
//!   only announced once it held. Checks of facts (DNS, blocklists,
//!   certificates) run minutes to hours apart: their hold is zero.
//! - **Dedup.** One "failing" per failure, one "resolved" per "failing";
//!   nothing in between except reminders, every `CERES_ALERT_REMIND` while
//!   it stays failing.
//! - **Budget.** At most `CERES_ALERT_MAX_PER_HOUR` "failing" notifications
//!   per check in any sliding hour. A failure over the budget is held back,
//!   not dropped: it is sent when the budget allows if the check is still
//!   failing then, and never if it resolved meanwhile. "Resolved" is never
//!   held (it answers a "failing" that was sent).
//!
//! So per check and hour there are at most `max_per_hour` "failing" and as
//! many "resolved" notifications, plus reminders, whatever the check does;
//! a check flapping faster than the hold sends none at all.
//!
//! Everything here takes the time as an argument ([`Stamp`]): no clock is
//! read, so tests drive it with a fake one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::check::{CheckId, Level, Observation};

/// The sliding window of the notification budget.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// A point in time: monotonic for the hold-downs (a wall-clock step must
/// neither fire nor swallow a notification), wall clock for what people read.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// For arithmetic.
    pub mono: Instant,
    /// Unix seconds, for display.
    pub unix: i64,
}

impl Stamp {
    /// Now, from the real clocks.
    pub fn now() -> Self {
        Self {
            mono: Instant::now(),
            unix: ceres_pki::unix_secs(std::time::SystemTime::now()),
        }
    }

    /// `d` later (tests step a clock with it).
    #[cfg(test)]
    pub fn after(self, d: Duration) -> Self {
        Self {
            mono: self.mono + d,
            unix: self.unix + i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// When to notify (from `CERES_ALERT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The hold-down of live checks, both ways.
    pub delay: Duration,
    /// Reminder interval while failing; `None`: no reminders.
    pub remind: Option<Duration>,
    /// "Failing" notifications per check per [`BUDGET_WINDOW`]; at least 1.
    pub max_per_hour: u32,
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The check is failing (after its hold).
    Failing,
    /// A check that was announced failing is not any more (after its hold).
    Resolved,
    /// Still failing, `CERES_ALERT_REMIND` after the last notification.
    Reminder,
    /// `cerectl alerts test`.
    Test,
}

impl EventKind {
    /// Upper-case word for titles.
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Failing => "FAILING",
            EventKind::Resolved => "RESOLVED",
            EventKind::Reminder => "STILL FAILING",
            EventKind::Test => "TEST",
        }
    }

    /// Lower-case word for machine-readable bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failing => "failing",
            EventKind::Resolved => "resolved",
            EventKind::Reminder => "reminder",
            EventKind::Test => "test",
        }
    }
}

/// A notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The check (`None` for a test notification).
    pub check: Option<CheckId>,
    /// Why it is sent.
    pub kind: EventKind,
    /// The check's last observation.
    pub observation: Observation,
    /// Since when the check has been at its current level, unix seconds.
    pub since_unix: i64,
    /// When the failure began (for "resolved": how long it lasted), unix seconds.
    pub failing_since_unix: i64,
    /// When the event was made, unix seconds.
    pub at_unix: i64,
    /// For "failing": whether this was the last one the budget allowed this
    /// hour (the message then says so, and when the next may come).
    pub budget_exhausted_until_unix: Option<i64>,
}

/// A check's state as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The last observation.
    pub observation: Observation,
    /// Since when at this level, unix seconds.
    pub since_unix: i64,
    /// The last run, unix seconds.
    pub last_run_unix: i64,
    /// A "failing" went out and its "resolved" not yet.
    pub notified: bool,
}

#[derive(Debug, Clone)]
struct Current {
    observation: Observation,
    since: Stamp,
    last_run: Stamp,
    /// Start of the unbroken run of failing observations (`None`: not failing).
    failing_since: Option<Stamp>,
    /// Start of the unbroken run of not-failing observations (`None`: failing).
    clear_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Notified {
    failing_since_unix: i64,
    /// The last "failing" or reminder: the next reminder counts from here.
    last_sent: Instant,
}

/// One check's state and its notification bookkeeping.
#[derive(Debug, Clone)]
pub struct Tracker {
    id: CheckId,
    hold: Duration,
    current: Option<Current>,
    notified: Option<Notified>,
    /// When "failing" notifications were sent, within the budget window.
    sent_failing: VecDeque<Instant>,
}

impl Tracker {
    /// A check not run yet; its hold from `policy`.
    pub fn new(id: CheckId, policy: &Policy) -> Self {
        Self {
            id,
            hold: if id.is_live() {
                policy.delay
            } else {
                Duration::ZERO
            },
            current: None,
            notified: None,
            sent_failing: VecDeque::new(),
        }
    }

    /// Records one run's result.
    pub fn observe(&mut self, observation: Observation, at: Stamp) {
        let failing = observation.level == Level::Failing;
        let next = match self.current.take() {
            None => Current {
                since: at,
                last_run: at,
                failing_since: failing.then_some(at),
                clear_since: (!failing).then_some(at.mono),
                observation,
            },
            Some(prev) => Current {
                since: if prev.observation.level == observation.level {
                    prev.since
                } else {
                    at
                },
                last_run: at,
                failing_since: if failing {
                    prev.failing_since.or(Some(at))
                } else {
                    None
                },
                clear_since: if failing {
                    None
                } else {
                    prev.clear_since.or(Some(at.mono))
                },
                observation,
            },
        };
        self.current = Some(next);
    }

    /// The notification due at `now`, if any (at most one per call: call
    /// again until `None`).
    pub fn poll(&mut self, now: Stamp, policy: &Policy) -> Option<Event> {
        let cur = self.current.as_ref()?;
        match (self.notified, cur.failing_since, cur.clear_since) {
            (None, Some(fs), _) if now.mono >= fs.mono + self.hold => {
                self.prune(now.mono);
                let max = policy.max_per_hour.max(1) as usize;
                if self.sent_failing.len() >= max {
                    return None;
                }
                self.sent_failing.push_back(now.mono);
                let exhausted = (self.sent_failing.len() >= max).then(|| {
                    let free =
                        self.sent_failing.front().copied().unwrap_or(now.mono) + BUDGET_WINDOW;
                    now.unix + secs(free.saturating_duration_since(now.mono))
                });
                self.notified = Some(Notified {
                    failing_since_unix: fs.unix,
                    last_sent: now.mono,
                });
                self.event(EventKind::Failing, fs.unix, exhausted, now)
            }
            (Some(n), None, Some(cs)) if now.mono >= cs + self.hold => {
                self.notified = None;
                self.event(EventKind::Resolved, n.failing_since_unix, None, now)
            }
            (Some(n), Some(_), _) if policy.remind.is_some_and(|r| now.mono >= n.last_sent + r) => {
                self.notified = Some(Notified {
                    last_sent: now.mono,
                    ..n
                });
                self.event(EventKind::Reminder, n.failing_since_unix, None, now)
            }
            _ => None,
        }
    }

    fn event(
        &self,
        kind: EventKind,
        failing_since_unix: i64,
        budget_exhausted_until_unix: Option<i64>,
        now: Stamp,
    ) -> Option<Event> {
        let cur = self.current.as_ref()?;
        Some(Event {
            check: Some(self.id),
            kind,
            observation: cur.observation.clone(),
            since_unix: cur.since.unix,
            failing_since_unix,
            at_unix: now.unix,
            budget_exhausted_until_unix,
        })
    }

    /// When [`poll`](Self::poll) may next have something, if ever (without
    /// a new observation).
    pub fn next_deadline(&self, policy: &Policy) -> Option<Instant> {
        let cur = self.current.as_ref()?;
        match (self.notified, cur.failing_since, cur.clear_since) {
            (None, Some(fs), _) => {
                let held = fs.mono + self.hold;
                let max = policy.max_per_hour.max(1) as usize;
                let budget = if self.sent_failing.len() >= max {
                    // The oldest send leaving the window frees a slot.
                    self.sent_failing.front().map(|t| *t + BUDGET_WINDOW)
                } else {
                    None
                };
                Some(budget.map_or(held, |b| b.max(held)))
            }
            (Some(_), None, Some(cs)) => Some(cs + self.hold),
            (Some(n), Some(_), _) => policy.remind.map(|r| n.last_sent + r),
            _ => None,
        }
    }

    /// What status shows; `None` before the first run.
    pub fn view(&self) -> Option<View> {
        let cur = self.current.as_ref()?;
        Some(View {
            observation: cur.observation.clone(),
            since_unix: cur.since.unix,
            last_run_unix: cur.last_run.unix,
            notified: self.notified.is_some(),
        })
    }

    fn prune(&mut self, now: Instant) {
        while self
            .sent_failing
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= BUDGET_WINDOW)
        {
            self.sent_failing.pop_front();
        }
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        delay: Duration::from_secs(60),
        remind: Some(Duration::from_secs(6 * 3600)),
        max_per_hour: 3,
    };

    /// A fake clock and one tracker, stepped a second at a time, with every
    /// notification it sent.
    struct Sim {
        t0: Stamp,
        now: Duration,
        tracker: Tracker,
        policy: Policy,
        sent: Vec<(u64, EventKind)>,
    }

    impl Sim {
        fn new(id: CheckId, policy: Policy) -> Self {
            Self {
                t0: Stamp {
                    mono: Instant::now(),
                    unix: 1_700_000_000,
                },
                now: Duration::ZERO,
                tracker: Tracker::new(id, &policy),
                policy,
                sent: Vec::new(),
            }
        }

        fn stamp(&self) -> Stamp {
            self.t0.after(self.now)
        }

        /// `secs` seconds of the check observing `level` every second.
        fn run(&mut self, level: Level, secs: u64) {
            for _ in 0..secs {
                let obs = Observation::one(level, level.as_str());
                self.tracker.observe(obs, self.stamp());
                self.drain();
                self.now += Duration::from_secs(1);
            }
        }

        /// Time passes with no new observation.
        fn idle(&mut self, secs: u64) {
            for _ in 0..secs {
                self.drain();
                self.now += Duration::from_secs(1);
            }
        }

        fn drain(&mut self) {
            let now = self.stamp();
            // Deadlines are never later than a due event.
            if let Some(d) = self.tracker.next_deadline(&self.policy) {
                let due = self.tracker.clone().poll(now, &self.policy).is_some();
                assert!(!due || d <= now.mono, "due before its deadline");
            }
            while let Some(e) = self.tracker.poll(now, &self.policy) {
                self.sent.push((self.now.as_secs(), e.kind));
            }
        }

        fn kinds(&self) -> Vec<EventKind> {
            self.sent.iter().map(|(_, k)| *k).collect()
        }
    }

    use EventKind::{Failing, Reminder, Resolved};

    #[test]
    fn a_failure_shorter_than_the_delay_is_never_told() {
        let mut s = Sim::new(CheckId::Home, POLICY);
        s.run(Level::Ok, 10);
        s.run(Level::Failing, 59);
        s.run(Level::Ok, 600);
        assert!(s.sent.is_empty(), "{:?}", s.sent);
    }

    #[test]
    fn one_failing_after_the_delay_and_one_resolved_after_it_held() {
        let mut s = Sim::new(CheckId::Home, POLICY);
        s.run(Level::Ok, 10);
        s.run(Level::Failing, 300);
        // Back for less than the hold, then failing again: still one failure.
        s.run(Level::Ok, 30);
        s.run(Level::Failing, 100);
        s.run(Level::Ok, 600);
        assert_eq!(s.kinds(), vec![Failing, Resolved]);
        // Failing sent when the failure had lasted the delay; resolved when
        // the recovery had.
        assert_eq!(s.sent[0].0, 10 + 60);
        assert_eq!(s.sent[1].0, 10 + 300 + 30 + 100 + 60);
        let view = s.tracker.view().unwrap();
        assert_eq!(view.observation.level, Level::Ok);
        assert!(!view.notified);
    }

    #[test]
    fn reminders_while_it_stays_failing_and_none_without_a_remind_interval() {
        let mut s = Sim::new(CheckId::Home, POLICY);
        s.run(Level::Failing, 13 * 3600);
        assert_eq!(s.kinds(), vec![Failing, Reminder, Reminder]);
        assert_eq!(s.sent[1].0, 60 + 6 * 3600);
        let quiet = Policy {
            remind: None,
            ..POLICY
        };
        let mut s = Sim::new(CheckId::Home, quiet);
        s.run(Level::Failing, 13 * 3600);
        assert_eq!(s.kinds(), vec![Failing]);
    }

    #[test]
    fn warnings_are_never_told_and_failing_to_warning_resolves() {
        let mut s = Sim::new(CheckId::Home, POLICY);
        s.run(Level::Warning, 600);
        assert!(s.sent.is_empty());
        s.run(Level::Failing, 120);
        s.run(Level::Warning, 120);
        assert_eq!(s.kinds(), vec![Failing, Resolved]);
        assert_eq!(s.tracker.view().unwrap().observation.level, Level::Warning);
    }

    #[test]
    fn checks_of_facts_are_told_at_once() {
        let mut s = Sim::new(CheckId::Spf, POLICY);
        s.run(Level::Ok, 5);
        s.run(Level::Failing, 1);
        assert_eq!(s.sent, vec![(5, Failing)]);
        s.run(Level::Ok, 1);
        assert_eq!(s.sent, vec![(5, Failing), (6, Resolved)]);
    }

    #[test]
    fn flapping_faster_than_the_delay_sends_nothing() {
        let mut s = Sim::new(CheckId::Home, POLICY);
        for _ in 0..60 {
            s.run(Level::Failing, 30);
            s.run(Level::Ok, 30);
        }
        assert!(s.sent.is_empty(), "{:?}", s.sent);
    }

    #[test]
    fn flapping_slower_than_the_delay_is_bounded_per_hour_and_ends_resolved() {
        // Down 90 s, up 90 s for two hours: 40 failures that each outlast
        // the delay; the budget lets 3 an hour through.
        let mut s = Sim::new(CheckId::Home, POLICY);
        for _ in 0..40 {
            s.run(Level::Failing, 90);
            s.run(Level::Ok, 90);
        }
        let failing: Vec<u64> = s
            .sent
            .iter()
            .filter(|(_, k)| *k == Failing)
            .map(|(t, _)| *t)
            .collect();
        // Per sliding hour, never more than the budget.
        for (i, t) in failing.iter().enumerate() {
            let in_hour = failing[i..].iter().filter(|u| **u < t + 3600).count();
            assert!(in_hour <= 3, "{failing:?}");
        }
        assert!(failing.len() >= 3 && failing.len() <= 6, "{failing:?}");
        // Strictly alternating, and the last word is "resolved".
        for pair in s.kinds().chunks(2) {
            assert_eq!(pair, &[Failing, Resolved][..pair.len()]);
        }
        assert_eq!(s.kinds().last(), Some(&Resolved));
    }

    #[test]
    fn a_failure_held_by_the_budget_is_sent_later_if_it_still_fails() {
        let policy = Policy {
            max_per_hour: 1,
            ..POLICY
        };
        let mut s = Sim::new(CheckId::Home, policy);
        s.run(Level::Failing, 120);
        s.run(Level::Ok, 120);
        assert_eq!(s.kinds(), vec![Failing, Resolved]);
        // The first failing said the budget is used up, and until when.
        let mut t = Sim::new(CheckId::Home, policy);
        t.tracker
            .observe(Observation::one(Level::Failing, "x"), t.stamp());
        let e = t
            .tracker
            .poll(t.stamp().after(Duration::from_secs(60)), &policy)
            .unwrap();
        assert_eq!(e.budget_exhausted_until_unix, Some(t.t0.unix + 60 + 3600));
        // A second failure within the hour waits for the budget...
        s.run(Level::Failing, 600);
        assert_eq!(s.kinds(), vec![Failing, Resolved]);
        // ...and goes out once the hour since the first is over.
        s.run(Level::Failing, 3600);
        assert_eq!(s.kinds(), vec![Failing, Resolved, Failing]);
        assert_eq!(s.sent[2].0, 60 + 3600);
        // A held failure that resolves before the budget frees is never sent.
        let mut u = Sim::new(CheckId::Home, policy);
        u.run(Level::Failing, 120);
        u.run(Level::Ok, 120);
        u.run(Level::Failing, 600);
        u.run(Level::Ok, 7200);
        u.idle(7200);
        assert_eq!(u.kinds(), vec![Failing, Resolved]);
    }
}
