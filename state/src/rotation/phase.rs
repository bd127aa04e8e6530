//! Where one side's rotation stands, and the checked moves between phases.

use super::crash::{CrashPoint, crash_point};
use super::{NewKeys, Secret, Side};

/// Where a rotation stands on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No rotation in progress: the current keys are the only ones.
    Idle,
    /// VPS: RotatePrepare sent; waiting for home's new key. On disk.
    Prepared {
        /// The rotation.
        id: u64,
        /// When it started (Unix seconds): it times out from here.
        started_unix: i64,
    },
    /// Home: our new key is made and sent; waiting for the VPS's commit.
    /// On disk (the key first, then the record naming it).
    Keyed {
        /// The rotation.
        id: u64,
        /// When it started here (Unix seconds).
        started_unix: i64,
        /// Our new private key.
        key: Secret,
    },
    /// Every new key is known and on disk: ours, the peer's, the PSK.
    Staged {
        /// The rotation.
        id: u64,
        /// When it started (Unix seconds).
        started_unix: i64,
        /// The new keys.
        keys: NewKeys,
        /// The engine carries them beside the current ones, in this
        /// process (false after a restart until they are installed again).
        installed: bool,
    },
    /// The new keys are being made the current ones. Only one promotion
    /// runs (the VPS hears of the handshake and of home's RotateDone), and
    /// nothing may abandon the rotation meanwhile. Not on disk: the files
    /// still say staged, so a crash here resumes the staged rotation.
    Promoting {
        /// The rotation.
        id: u64,
        /// When it started (Unix seconds).
        started_unix: i64,
        /// The new keys.
        keys: NewKeys,
    },
}

impl Phase {
    /// The rotation in progress, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            Phase::Idle => None,
            Phase::Prepared { id, .. }
            | Phase::Keyed { id, .. }
            | Phase::Staged { id, .. }
            | Phase::Promoting { id, .. } => Some(*id),
        }
    }

    /// When the rotation in progress started.
    pub fn started_unix(&self) -> Option<i64> {
        match self {
            Phase::Idle => None,
            Phase::Prepared { started_unix, .. }
            | Phase::Keyed { started_unix, .. }
            | Phase::Staged { started_unix, .. }
            | Phase::Promoting { started_unix, .. } => Some(*started_unix),
        }
    }

    /// The new keys, once all are known (staged or promoting).
    pub fn keys(&self) -> Option<&NewKeys> {
        match self {
            Phase::Staged { keys, .. } | Phase::Promoting { keys, .. } => Some(keys),
            _ => None,
        }
    }

    /// The phase's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Prepared { .. } => "prepared",
            Phase::Keyed { .. } => "keyed",
            Phase::Staged { .. } => "staged",
            Phase::Promoting { .. } => "promoting",
        }
    }
}

/// What must be on disk before a transition takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Nothing: the step lives in this process only.
    Nothing,
    /// The record (`rotation.json`) is replaced.
    Record,
    /// Our new key (`wg.next.key`) first, then the record naming it: a
    /// crash in between leaves a key no record names, which is ignored.
    KeyThenRecord,
    /// The record goes, then the key: a record naming a missing key would
    /// be damage, a key without a record is ignored.
    Remove,
}

/// A checked move from one phase to the next. It takes effect in two
/// steps: [`super::Store::write`] puts it on disk (blocking I/O: the agents
/// run it off their async workers), then [`Rotation::apply`] makes it the
/// current phase and passes its crash point.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a transition takes effect only once written and applied"]
pub struct Transition {
    from: Phase,
    to: Phase,
    write: Write,
    crash: Option<CrashPoint>,
}

impl Transition {
    /// The phase it moves to.
    pub fn to(&self) -> &Phase {
        &self.to
    }

    /// What must be on disk first.
    pub fn write(&self) -> Write {
        self.write
    }

    /// Where the end-to-end tests may stop the agent once it is applied.
    pub fn crash_point(&self) -> Option<CrashPoint> {
        self.crash
    }
}

/// Why a transition is refused. The phase is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Id 0 means "no rotation" in the protocol.
    #[error("rotation id 0 is reserved (it means no rotation)")]
    ZeroId,
    /// A message for a rotation this side does not have: stale, replayed,
    /// or already ended.
    #[error("rotation {id} is not in progress (stale or replayed)")]
    NotInProgress {
        /// The rotation asked for.
        id: u64,
    },
    /// Another rotation is in progress: one at a time.
    #[error("rotation {current} is already in progress")]
    Busy {
        /// The one in progress.
        current: u64,
    },
    /// The rotation is already at (or past) this step with these keys: a
    /// repeated message, after a reconnection.
    #[error("rotation {id} is already at this step")]
    Repeated {
        /// The rotation.
        id: u64,
    },
    /// The rotation is already staged with other keys: the keys of a
    /// rotation never change once staged.
    #[error("rotation {id} is already staged with different keys")]
    DifferentKeys {
        /// The rotation.
        id: u64,
    },
    /// Promotion needs a staged rotation.
    #[error("rotation {id} is not staged")]
    NotStaged {
        /// The rotation asked for.
        id: u64,
    },
    /// The rotation is being made permanent: it can no longer be abandoned.
    #[error("rotation {id} is being made permanent")]
    Promoting {
        /// The rotation.
        id: u64,
    },
    /// The step belongs to the other side (a bug in the caller).
    #[error("the {side} agent has no {step} step")]
    WrongSide {
        /// This side.
        side: Side,
        /// The step asked for.
        step: &'static str,
    },
    /// The phase changed between planning the transition and applying it
    /// (a bug in the caller: transitions must be serialised).
    #[error("the rotation moved on from {planned} to {now} before this step was applied")]
    Stale {
        /// The phase it was planned from.
        planned: &'static str,
        /// The phase now.
        now: &'static str,
    },
}

/// One side's rotation: the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    side: Side,
    phase: Phase,
}

impl Rotation {
    /// No rotation in progress.
    pub fn new(side: Side) -> Self {
        Self::with_phase(side, Phase::Idle)
    }

    pub(crate) fn with_phase(side: Side, phase: Phase) -> Self {
        Self { side, phase }
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Where the rotation stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    fn only(&self, side: Side, step: &'static str) -> Result<(), TransitionError> {
        if self.side == side {
            Ok(())
        } else {
            Err(TransitionError::WrongSide {
                side: self.side,
                step,
            })
        }
    }

    fn to(&self, to: Phase, write: Write, crash: Option<CrashPoint>) -> Transition {
        Transition {
            from: self.phase.clone(),
            to,
            write,
            crash,
        }
    }

    /// The crash point of this side's promotion.
    fn promoted_point(&self) -> CrashPoint {
        match self.side {
            Side::Vps => CrashPoint::VpsPromoted,
            Side::Home => CrashPoint::HomePromoted,
        }
    }

    /// VPS: starts rotation `id` (RotatePrepare goes out next).
    /// From idle only: one rotation at a time.
    pub fn prepare(&self, id: u64, now_unix: i64) -> Result<Transition, TransitionError> {
        self.only(Side::Vps, "prepare")?;
        if id == 0 {
            return Err(TransitionError::ZeroId);
        }
        match &self.phase {
            Phase::Idle => Ok(self.to(
                Phase::Prepared {
                    id,
                    started_unix: now_unix,
                },
                Write::Record,
                Some(CrashPoint::VpsPrepared),
            )),
            p => Err(TransitionError::Busy {
                current: p.id().unwrap_or_default(),
            }),
        }
    }

    /// Home: our new key for rotation `id` (RotateKey goes out next). The
    /// VPS runs one rotation at a time, so a new id replaces whatever was
    /// pending here — except a rotation being promoted.
    pub fn make_key(
        &self,
        id: u64,
        key: Secret,
        now_unix: i64,
    ) -> Result<Transition, TransitionError> {
        self.only(Side::Home, "make-key")?;
        if id == 0 {
            return Err(TransitionError::ZeroId);
        }
        match &self.phase {
            Phase::Promoting { id: current, .. } => {
                Err(TransitionError::Busy { current: *current })
            }
            p if p.id() == Some(id) => Err(TransitionError::Repeated { id }),
            _ => Ok(self.to(
                Phase::Keyed {
                    id,
                    started_unix: now_unix,
                    key,
                },
                Write::KeyThenRecord,
                Some(CrashPoint::HomeKeyed),
            )),
        }
    }

    /// A repeat of the step that staged rotation `id`: the same peer key
    /// (and PSK, when given) is a repeat, another is refused.
    fn restage(
        &self,
        id: u64,
        peer: &[u8; 32],
        psk: Option<&Secret>,
    ) -> Result<Transition, TransitionError> {
        match self.phase.keys() {
            Some(k) if k.peer == *peer && psk.is_none_or(|p| *p == k.psk) => {
                Err(TransitionError::Repeated { id })
            }
            _ => Err(TransitionError::DifferentKeys { id }),
        }
    }

    /// VPS: home's new key arrived for rotation `id`; `key` and `psk` are
    /// ours, made for it. From prepared (RotateCommit goes out next).
    pub fn stage(
        &self,
        id: u64,
        key: Secret,
        peer: [u8; 32],
        psk: Secret,
    ) -> Result<Transition, TransitionError> {
        self.only(Side::Vps, "stage")?;
        match &self.phase {
            Phase::Prepared {
                id: current,
                started_unix,
            } if *current == id => Ok(self.to(
                Phase::Staged {
                    id,
                    started_unix: *started_unix,
                    keys: NewKeys { key, peer, psk },
                    installed: false,
                },
                Write::KeyThenRecord,
                Some(CrashPoint::VpsStaged),
            )),
            Phase::Staged { id: current, .. } | Phase::Promoting { id: current, .. }
                if *current == id =>
            {
                self.restage(id, &peer, None)
            }
            _ => Err(TransitionError::NotInProgress { id }),
        }
    }

    /// Home: the VPS committed rotation `id` with its new key and the PSK.
    /// From keyed (the keys are installed next).
    pub fn commit(
        &self,
        id: u64,
        peer: [u8; 32],
        psk: Secret,
    ) -> Result<Transition, TransitionError> {
        self.only(Side::Home, "commit")?;
        match &self.phase {
            Phase::Keyed {
                id: current,
                started_unix,
                key,
            } if *current == id => Ok(self.to(
                Phase::Staged {
                    id,
                    started_unix: *started_unix,
                    keys: NewKeys {
                        key: key.clone(),
                        peer,
                        psk,
                    },
                    installed: false,
                },
                Write::Record,
                Some(CrashPoint::HomeCommitted),
            )),
            Phase::Staged { id: current, .. } | Phase::Promoting { id: current, .. }
                if *current == id =>
            {
                self.restage(id, &peer, Some(&psk))
            }
            _ => Err(TransitionError::NotInProgress { id }),
        }
    }

    /// Both: the engine now carries the staged keys of rotation `id`.
    pub fn installed(&self, id: u64) -> Result<Transition, TransitionError> {
        match &self.phase {
            Phase::Staged {
                id: current,
                started_unix,
                keys,
                installed: false,
            } if *current == id => Ok(self.to(
                Phase::Staged {
                    id,
                    started_unix: *started_unix,
                    keys: keys.clone(),
                    installed: true,
                },
                Write::Nothing,
                None,
            )),
            Phase::Staged {
                id: current,
                installed: true,
                ..
            } if *current == id => Err(TransitionError::Repeated { id }),
            _ => Err(TransitionError::NotStaged { id }),
        }
    }

    /// Both: the staged keys of rotation `id` carry traffic (or the peer
    /// said it is done): claim the rotation for promotion.
    pub fn promote(&self, id: u64) -> Result<Transition, TransitionError> {
        match &self.phase {
            Phase::Staged {
                id: current,
                started_unix,
                keys,
                ..
            } if *current == id => Ok(self.to(
                Phase::Promoting {
                    id,
                    started_unix: *started_unix,
                    keys: keys.clone(),
                },
                Write::Nothing,
                Some(self.promoted_point()),
            )),
            Phase::Promoting { id: current, .. } if *current == id => {
                Err(TransitionError::Promoting { id })
            }
            _ => Err(TransitionError::NotStaged { id }),
        }
    }

    /// Both: making rotation `id` permanent failed (its keys could not be
    /// saved): back to staged, installed, so it can be retried or abandoned.
    pub fn unpromote(&self, id: u64) -> Result<Transition, TransitionError> {
        match &self.phase {
            Phase::Promoting {
                id: current,
                started_unix,
                keys,
            } if *current == id => Ok(self.to(
                Phase::Staged {
                    id,
                    started_unix: *started_unix,
                    keys: keys.clone(),
                    installed: true,
                },
                Write::Nothing,
                None,
            )),
            _ => Err(TransitionError::NotInProgress { id }),
        }
    }

    /// Both: rotation `id`'s keys are the current ones now: done.
    pub fn finish(&self, id: u64) -> Result<Transition, TransitionError> {
        match &self.phase {
            Phase::Promoting { id: current, .. } if *current == id => {
                Ok(self.to(Phase::Idle, Write::Remove, None))
            }
            _ => Err(TransitionError::NotInProgress { id }),
        }
    }

    /// Both: abandons rotation `id`; the current keys stay. A rotation
    /// being promoted can no longer be abandoned.
    pub fn abort(&self, id: u64) -> Result<Transition, TransitionError> {
        match &self.phase {
            Phase::Promoting { id: current, .. } if *current == id => {
                Err(TransitionError::Promoting { id })
            }
            p if p.id() == Some(id) => Ok(self.to(Phase::Idle, Write::Remove, None)),
            _ => Err(TransitionError::NotInProgress { id }),
        }
    }

    /// Both: drops whatever is pending, before anything runs (the agent
    /// starts without the peer the rotation was for).
    pub fn forget(&self) -> Transition {
        let write = match self.phase {
            Phase::Idle => Write::Nothing,
            _ => Write::Remove,
        };
        self.to(Phase::Idle, write, None)
    }

    /// Makes `t` the current phase (after [`super::Store::write`] put it on
    /// disk), then passes its crash point. Refused if the phase moved on
    /// since `t` was planned: the caller did not serialise its transitions.
    pub fn apply(&mut self, t: Transition) -> Result<(), TransitionError> {
        if t.from != self.phase {
            return Err(TransitionError::Stale {
                planned: t.from.name(),
                now: self.phase.name(),
            });
        }
        self.phase = t.to;
        if let Some(point) = t.crash {
            crash_point(point);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn secret(b: u8) -> Secret {
        Secret([b; 32])
    }

    fn keys(key: u8, peer: u8, psk: u8) -> NewKeys {
        NewKeys {
            key: secret(key),
            peer: [peer; 32],
            psk: secret(psk),
        }
    }

    /// A machine in `phase`, on `side`.
    fn at(side: Side, phase: Phase) -> Rotation {
        Rotation::with_phase(side, phase)
    }

    fn staged(id: u64, installed: bool) -> Phase {
        Phase::Staged {
            id,
            started_unix: NOW,
            keys: keys(1, 2, 3),
            installed,
        }
    }

    fn promoting(id: u64) -> Phase {
        Phase::Promoting {
            id,
            started_unix: NOW,
            keys: keys(1, 2, 3),
        }
    }

    /// Plans and applies a transition; checks where it went and what it writes.
    fn step(
        r: &mut Rotation,
        plan: impl FnOnce(&Rotation) -> Result<Transition, TransitionError>,
        write: Write,
        to: &Phase,
    ) {
        let t = plan(r).unwrap();
        assert_eq!(t.write(), write, "{t:?}");
        assert_eq!(t.to(), to, "{t:?}");
        r.apply(t).unwrap();
        assert_eq!(r.phase(), to);
    }

    #[test]
    fn a_vps_rotation_goes_prepared_staged_promoting_idle() {
        let mut r = Rotation::new(Side::Vps);
        let t = r.prepare(7, NOW).unwrap();
        assert_eq!(t.crash_point(), Some(CrashPoint::VpsPrepared));
        step(
            &mut r,
            |_| Ok(t),
            Write::Record,
            &Phase::Prepared {
                id: 7,
                started_unix: NOW,
            },
        );
        let t = r.stage(7, secret(1), [2; 32], secret(3)).unwrap();
        assert_eq!(t.crash_point(), Some(CrashPoint::VpsStaged));
        step(&mut r, |_| Ok(t), Write::KeyThenRecord, &staged(7, false));
        step(&mut r, |r| r.installed(7), Write::Nothing, &staged(7, true));
        let t = r.promote(7).unwrap();
        assert_eq!(t.crash_point(), Some(CrashPoint::VpsPromoted));
        step(&mut r, |_| Ok(t), Write::Nothing, &promoting(7));
        step(&mut r, |r| r.finish(7), Write::Remove, &Phase::Idle);
    }

    #[test]
    fn a_home_rotation_goes_keyed_staged_promoting_idle() {
        let mut r = Rotation::new(Side::Home);
        let t = r.make_key(7, secret(1), NOW).unwrap();
        assert_eq!(t.crash_point(), Some(CrashPoint::HomeKeyed));
        step(
            &mut r,
            |_| Ok(t),
            Write::KeyThenRecord,
            &Phase::Keyed {
                id: 7,
                started_unix: NOW,
                key: secret(1),
            },
        );
        let t = r.commit(7, [2; 32], secret(3)).unwrap();
        assert_eq!(t.crash_point(), Some(CrashPoint::HomeCommitted));
        // The key was written with the previous step: only the record now.
        step(&mut r, |_| Ok(t), Write::Record, &staged(7, false));
        step(&mut r, |r| r.installed(7), Write::Nothing, &staged(7, true));
        let t = r.promote(7).unwrap();
        assert_eq!(t.crash_point(), Some(CrashPoint::HomePromoted));
        step(&mut r, |_| Ok(t), Write::Nothing, &promoting(7));
        step(&mut r, |r| r.finish(7), Write::Remove, &Phase::Idle);
    }

    #[test]
    fn each_side_has_only_its_own_steps() {
        let home = Rotation::new(Side::Home);
        let vps = Rotation::new(Side::Vps);
        let wrong = |side, step| Err(TransitionError::WrongSide { side, step });
        assert_eq!(home.prepare(1, NOW), wrong(Side::Home, "prepare"));
        assert_eq!(
            home.stage(1, secret(1), [2; 32], secret(3)),
            wrong(Side::Home, "stage")
        );
        assert_eq!(
            vps.make_key(1, secret(1), NOW),
            wrong(Side::Vps, "make-key")
        );
        assert_eq!(
            vps.commit(1, [2; 32], secret(3)),
            wrong(Side::Vps, "commit")
        );
    }

    #[test]
    fn id_zero_means_none_and_is_refused() {
        assert_eq!(
            Rotation::new(Side::Vps).prepare(0, NOW),
            Err(TransitionError::ZeroId)
        );
        assert_eq!(
            Rotation::new(Side::Home).make_key(0, secret(1), NOW),
            Err(TransitionError::ZeroId)
        );
    }

    #[test]
    fn prepare_runs_one_rotation_at_a_time() {
        for phase in [
            Phase::Prepared {
                id: 4,
                started_unix: NOW,
            },
            staged(4, true),
            promoting(4),
        ] {
            assert_eq!(
                at(Side::Vps, phase).prepare(5, NOW),
                Err(TransitionError::Busy { current: 4 })
            );
        }
    }

    #[test]
    fn a_new_prepare_replaces_what_home_had_pending_but_not_a_promotion() {
        let keyed = Phase::Keyed {
            id: 4,
            started_unix: NOW,
            key: secret(9),
        };
        for phase in [Phase::Idle, keyed.clone(), staged(4, true)] {
            let t = at(Side::Home, phase).make_key(5, secret(1), NOW).unwrap();
            assert_eq!(t.to().id(), Some(5));
            assert_eq!(t.write(), Write::KeyThenRecord);
        }
        // The same id again: a repeat (home sends the key it has).
        assert_eq!(
            at(Side::Home, keyed).make_key(4, secret(1), NOW),
            Err(TransitionError::Repeated { id: 4 })
        );
        assert_eq!(
            at(Side::Home, staged(4, false)).make_key(4, secret(1), NOW),
            Err(TransitionError::Repeated { id: 4 })
        );
        assert_eq!(
            at(Side::Home, promoting(4)).make_key(5, secret(1), NOW),
            Err(TransitionError::Busy { current: 4 })
        );
    }

    #[test]
    fn stage_needs_this_rotation_prepared_and_never_changes_its_keys() {
        let prepared = Phase::Prepared {
            id: 4,
            started_unix: NOW,
        };
        // Another id, or nothing prepared: stale or replayed.
        for phase in [Phase::Idle, prepared.clone()] {
            assert_eq!(
                at(Side::Vps, phase).stage(3, secret(1), [2; 32], secret(3)),
                Err(TransitionError::NotInProgress { id: 3 })
            );
        }
        for phase in [staged(4, true), promoting(4)] {
            let r = at(Side::Vps, phase);
            // Home's key again (it reconnected): a repeat, whatever our
            // fresh key and PSK would have been.
            assert_eq!(
                r.stage(4, secret(8), [2; 32], secret(9)),
                Err(TransitionError::Repeated { id: 4 })
            );
            assert_eq!(
                r.stage(4, secret(1), [7; 32], secret(3)),
                Err(TransitionError::DifferentKeys { id: 4 })
            );
        }
    }

    #[test]
    fn commit_needs_this_rotation_keyed_and_never_changes_its_keys() {
        let keyed = Phase::Keyed {
            id: 4,
            started_unix: NOW,
            key: secret(1),
        };
        for phase in [Phase::Idle, keyed] {
            assert_eq!(
                at(Side::Home, phase).commit(3, [2; 32], secret(3)),
                Err(TransitionError::NotInProgress { id: 3 })
            );
        }
        for phase in [staged(4, false), promoting(4)] {
            let r = at(Side::Home, phase);
            assert_eq!(
                r.commit(4, [2; 32], secret(3)),
                Err(TransitionError::Repeated { id: 4 })
            );
            assert_eq!(
                r.commit(4, [7; 32], secret(3)),
                Err(TransitionError::DifferentKeys { id: 4 })
            );
            assert_eq!(
                r.commit(4, [2; 32], secret(8)),
                Err(TransitionError::DifferentKeys { id: 4 })
            );
        }
    }

    #[test]
    fn installed_marks_a_staged_rotation_once() {
        for side in [Side::Vps, Side::Home] {
            assert_eq!(
                at(side, staged(4, true)).installed(4),
                Err(TransitionError::Repeated { id: 4 })
            );
            for phase in [Phase::Idle, staged(5, false), promoting(4)] {
                assert_eq!(
                    at(side, phase).installed(4),
                    Err(TransitionError::NotStaged { id: 4 })
                );
            }
        }
    }

    #[test]
    fn only_one_promotion_runs_and_only_of_a_staged_rotation() {
        for side in [Side::Vps, Side::Home] {
            // Installed or not (a VPS that restarted and failed to install
            // it still promotes when home says it is done).
            for installed in [false, true] {
                assert!(at(side, staged(4, installed)).promote(4).is_ok());
            }
            assert_eq!(
                at(side, promoting(4)).promote(4),
                Err(TransitionError::Promoting { id: 4 })
            );
            let prepared_or_keyed = match side {
                Side::Vps => Phase::Prepared {
                    id: 4,
                    started_unix: NOW,
                },
                Side::Home => Phase::Keyed {
                    id: 4,
                    started_unix: NOW,
                    key: secret(1),
                },
            };
            for phase in [Phase::Idle, prepared_or_keyed, staged(5, true)] {
                assert_eq!(
                    at(side, phase).promote(4),
                    Err(TransitionError::NotStaged { id: 4 })
                );
            }
        }
    }

    #[test]
    fn a_failed_promotion_goes_back_to_staged() {
        for side in [Side::Vps, Side::Home] {
            let mut r = at(side, promoting(4));
            step(&mut r, |r| r.unpromote(4), Write::Nothing, &staged(4, true));
            assert_eq!(
                r.unpromote(4),
                Err(TransitionError::NotInProgress { id: 4 })
            );
            // And can be abandoned from there.
            step(&mut r, |r| r.abort(4), Write::Remove, &Phase::Idle);
        }
    }

    #[test]
    fn finish_needs_the_promotion() {
        for side in [Side::Vps, Side::Home] {
            for phase in [Phase::Idle, staged(4, true), promoting(5)] {
                assert_eq!(
                    at(side, phase).finish(4),
                    Err(TransitionError::NotInProgress { id: 4 })
                );
            }
        }
    }

    #[test]
    fn abort_drops_this_rotation_at_any_step_before_promotion() {
        let pending = [
            (
                Side::Vps,
                Phase::Prepared {
                    id: 4,
                    started_unix: NOW,
                },
            ),
            (Side::Vps, staged(4, false)),
            (Side::Vps, staged(4, true)),
            (
                Side::Home,
                Phase::Keyed {
                    id: 4,
                    started_unix: NOW,
                    key: secret(1),
                },
            ),
            (Side::Home, staged(4, true)),
        ];
        for (side, phase) in pending {
            let mut r = at(side, phase.clone());
            // A stale abort (another rotation) changes nothing.
            assert_eq!(r.abort(3), Err(TransitionError::NotInProgress { id: 3 }));
            step(&mut r, |r| r.abort(4), Write::Remove, &Phase::Idle);
            assert_eq!(r.abort(4), Err(TransitionError::NotInProgress { id: 4 }));
        }
        for side in [Side::Vps, Side::Home] {
            assert_eq!(
                at(side, promoting(4)).abort(4),
                Err(TransitionError::Promoting { id: 4 })
            );
        }
    }

    #[test]
    fn forget_drops_anything_and_writes_only_when_there_is_something() {
        let mut r = at(Side::Vps, staged(4, true));
        step(&mut r, |r| Ok(r.forget()), Write::Remove, &Phase::Idle);
        step(&mut r, |r| Ok(r.forget()), Write::Nothing, &Phase::Idle);
    }

    #[test]
    fn a_transition_planned_from_an_old_phase_is_not_applied() {
        let mut r = at(
            Side::Vps,
            Phase::Prepared {
                id: 4,
                started_unix: NOW,
            },
        );
        let stage = r.stage(4, secret(1), [2; 32], secret(3)).unwrap();
        // Abandoned in between (a caller that failed to serialise).
        r.apply(r.abort(4).unwrap()).unwrap();
        assert_eq!(
            r.apply(stage),
            Err(TransitionError::Stale {
                planned: "prepared",
                now: "idle"
            })
        );
        assert_eq!(r.phase(), &Phase::Idle);
    }

    #[test]
    fn debug_of_a_phase_shows_no_secret() {
        let p = Phase::Staged {
            id: 1,
            started_unix: NOW,
            keys: NewKeys {
                key: Secret([0xab; 32]),
                peer: [2; 32],
                psk: Secret([0xcd; 32]),
            },
            installed: true,
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("171") && !shown.contains("205"), "{shown}");
        assert!(shown.contains("MASKED"), "{shown}");
    }
}
