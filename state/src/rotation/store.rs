//! The rotation on disk: `rotation.json` (where it stands) and
//! `wg.next.key` (our new private key), both 0600 in the state directory.
//!
//! The record keeps the field names each side wrote before the two shared
//! this code (`home_public` on the VPS, `vps_public` at home, `step` only on
//! the VPS), so an agent upgraded or downgraded in the middle of a rotation
//! reads the other version's file.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::phase::{Phase, Rotation, Transition, Write};
use super::{NewKeys, Secret, Side};
use crate::{StateDir, StateError};

/// Where the rotation stands.
pub const RECORD: &str = "rotation.json";
/// Our new private key while a rotation is in progress.
pub const NEXT_KEY: &str = "wg.next.key";

/// Why the rotation state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory refused (I/O, permissions).
    #[error(transparent)]
    State(#[from] StateError),
    /// A file is there but does not say anything this version can act on.
    /// The agent stops with it: guessing could leave the two sides on keys
    /// that do not match.
    #[error("{path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// The step as the record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Step {
    Prepared,
    Keyed,
    Staged,
}

/// `rotation.json`. Keys are base64, as WireGuard writes them.
#[derive(Serialize, Deserialize)]
struct Record {
    id: u64,
    /// Absent in home's files of older versions: staged when the VPS's
    /// key is there, keyed when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<Step>,
    #[serde(default)]
    started_unix: i64,
    /// The peer's new key, on the VPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    home_public: Option<String>,
    /// The peer's new key, at home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vps_public: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    psk: Option<String>,
}

/// One side's rotation files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: StateDir,
    side: Side,
}

fn decode(text: &str) -> Option<[u8; 32]> {
    let bytes = B64.decode(text.trim()).ok()?;
    bytes.as_slice().try_into().ok()
}

impl Store {
    /// The rotation files of `side` in `dir`.
    pub fn new(dir: &StateDir, side: Side) -> Self {
        Self {
            dir: dir.clone(),
            side,
        }
    }

    fn damaged(&self, name: &str, detail: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            path: self.dir.join(name),
            detail: detail.into(),
        }
    }

    /// Where the rotation stood when this side last wrote it: idle when
    /// there is no record (a next key nothing names is left over from a
    /// crash and ignored). A staged rotation comes back not installed.
    pub fn load(&self) -> Result<Rotation, StoreError> {
        let Some(bytes) = self.dir.read_optional(RECORD)? else {
            return Ok(Rotation::new(self.side));
        };
        let r: Record =
            serde_json::from_slice(&bytes).map_err(|e| self.damaged(RECORD, e.to_string()))?;
        if r.id == 0 {
            return Err(self.damaged(RECORD, "rotation id 0"));
        }
        let peer_text = match self.side {
            Side::Vps => r.home_public.as_deref(),
            Side::Home => r.vps_public.as_deref(),
        };
        let step = match (self.side, r.step) {
            (Side::Home, None) if peer_text.is_some() => Step::Staged,
            (Side::Home, None) => Step::Keyed,
            (_, Some(step)) => step,
            (Side::Vps, None) => return Err(self.damaged(RECORD, "no step")),
        };
        let (id, started_unix) = (r.id, r.started_unix);
        let phase = match (self.side, step) {
            (Side::Vps, Step::Prepared) => Phase::Prepared { id, started_unix },
            (Side::Home, Step::Keyed) => Phase::Keyed {
                id,
                started_unix,
                key: self.next_key()?,
            },
            (_, Step::Staged) => {
                let peer = peer_text
                    .and_then(decode)
                    .ok_or_else(|| self.damaged(RECORD, "the peer's new key is missing or bad"))?;
                let psk =
                    r.psk.as_deref().and_then(decode).ok_or_else(|| {
                        self.damaged(RECORD, "the pre-shared key is missing or bad")
                    })?;
                Phase::Staged {
                    id,
                    started_unix,
                    keys: NewKeys {
                        key: self.next_key()?,
                        peer,
                        psk: Secret(psk),
                    },
                    installed: false,
                }
            }
            (side, step) => {
                return Err(self.damaged(
                    RECORD,
                    format!("step {step:?} is not one the {side} agent takes"),
                ));
            }
        };
        Ok(Rotation::with_phase(self.side, phase))
    }

    /// Our new key, which the record names: its absence is damage.
    fn next_key(&self) -> Result<Secret, StoreError> {
        if !self.dir.exists(NEXT_KEY) {
            return Err(self.damaged(NEXT_KEY, "missing, but rotation.json names it"));
        }
        let text = self.dir.read_secret(NEXT_KEY)?;
        std::str::from_utf8(&text)
            .ok()
            .and_then(decode)
            .map(Secret)
            .ok_or_else(|| self.damaged(NEXT_KEY, "not a base64 WireGuard key"))
    }

    /// Puts `t` on disk, as [`Transition::write`] says. Blocking (each
    /// write is synced): call it off the async workers.
    pub fn write(&self, t: &Transition) -> Result<(), StoreError> {
        match t.write() {
            Write::Nothing => Ok(()),
            Write::Record => self.write_record(t.to()),
            Write::KeyThenRecord => {
                let key = match t.to() {
                    Phase::Keyed { key, .. } => key,
                    Phase::Staged { keys, .. } | Phase::Promoting { keys, .. } => &keys.key,
                    _ => return self.write_record(t.to()),
                };
                self.dir
                    .write(NEXT_KEY, format!("{}\n", B64.encode(key.0)).as_bytes())?;
                self.write_record(t.to())
            }
            Write::Remove => {
                self.dir.remove(RECORD)?;
                Ok(self.dir.remove(NEXT_KEY)?)
            }
        }
    }

    fn write_record(&self, phase: &Phase) -> Result<(), StoreError> {
        let (Some(id), Some(started_unix)) = (phase.id(), phase.started_unix()) else {
            return Ok(self.dir.remove(RECORD)?);
        };
        let mut r = Record {
            id,
            step: None,
            started_unix,
            home_public: None,
            vps_public: None,
            psk: None,
        };
        r.step = Some(match phase {
            Phase::Prepared { .. } => Step::Prepared,
            Phase::Keyed { .. } => Step::Keyed,
            _ => Step::Staged,
        });
        if let Some(keys) = phase.keys() {
            let peer = Some(B64.encode(keys.peer));
            match self.side {
                Side::Vps => r.home_public = peer,
                Side::Home => r.vps_public = peer,
            }
            r.psk = Some(B64.encode(keys.psk.0));
        }
        let json =
            serde_json::to_vec_pretty(&r).map_err(|e| self.damaged(RECORD, e.to_string()))?;
        Ok(self.dir.write(RECORD, &json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::CrashPoint;
    use crate::rotation::crash::armed;

    const NOW: i64 = 1_700_000_000;

    fn store(side: Side) -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        (tmp, Store::new(&dir, side))
    }

    /// Plans, writes and applies, as an agent does.
    fn run(
        s: &Store,
        r: &mut Rotation,
        plan: impl FnOnce(&Rotation) -> Result<Transition, crate::rotation::TransitionError>,
    ) {
        let t = plan(r).unwrap();
        s.write(&t).unwrap();
        r.apply(t).unwrap();
    }

    fn vps_steps(s: &Store, r: &mut Rotation) {
        run(s, r, |r| r.prepare(3, NOW));
        run(s, r, |r| {
            r.stage(3, Secret([1; 32]), [2; 32], Secret([3; 32]))
        });
        run(s, r, |r| r.installed(3));
        run(s, r, |r| r.promote(3));
        run(s, r, |r| r.finish(3));
    }

    fn home_steps(s: &Store, r: &mut Rotation) {
        run(s, r, |r| r.make_key(3, Secret([1; 32]), NOW));
        run(s, r, |r| r.commit(3, [2; 32], Secret([3; 32])));
        run(s, r, |r| r.installed(3));
        run(s, r, |r| r.promote(3));
        run(s, r, |r| r.finish(3));
    }

    fn staged() -> Phase {
        Phase::Staged {
            id: 3,
            started_unix: NOW,
            keys: NewKeys {
                key: Secret([1; 32]),
                peer: [2; 32],
                psk: Secret([3; 32]),
            },
            installed: false,
        }
    }

    /// Dies at `point` in the middle of a whole rotation; returns what a
    /// restarted agent loads.
    fn crash_at(side: Side, point: CrashPoint) -> Phase {
        let (_tmp, s) = store(side);
        let mut r = Rotation::new(side);
        armed::arm(Some(point));
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match side {
            Side::Vps => vps_steps(&s, &mut r),
            Side::Home => home_steps(&s, &mut r),
        }));
        armed::arm(None);
        assert!(died.is_err(), "{point} was never reached");
        s.load().unwrap().phase().clone()
    }

    #[test]
    fn a_restart_after_each_crash_point_resumes_from_what_was_written() {
        let prepared = Phase::Prepared {
            id: 3,
            started_unix: NOW,
        };
        let keyed = Phase::Keyed {
            id: 3,
            started_unix: NOW,
            key: Secret([1; 32]),
        };
        let cases = [
            (Side::Vps, CrashPoint::VpsPrepared, prepared),
            (Side::Vps, CrashPoint::VpsStaged, staged()),
            // Promoting is not on disk: the staged rotation comes back.
            (Side::Vps, CrashPoint::VpsPromoted, staged()),
            (Side::Home, CrashPoint::HomeKeyed, keyed),
            (Side::Home, CrashPoint::HomeCommitted, staged()),
            (Side::Home, CrashPoint::HomePromoted, staged()),
        ];
        for (side, point, want) in cases {
            assert_eq!(crash_at(side, point), want, "crash at {point}");
        }
    }

    #[test]
    fn a_whole_rotation_leaves_no_file_behind() {
        for side in [Side::Vps, Side::Home] {
            let (_tmp, s) = store(side);
            let mut r = Rotation::new(side);
            match side {
                Side::Vps => vps_steps(&s, &mut r),
                Side::Home => home_steps(&s, &mut r),
            }
            assert!(!s.dir.exists(RECORD) && !s.dir.exists(NEXT_KEY));
            assert_eq!(s.load().unwrap().phase(), &Phase::Idle);
        }
    }

    #[test]
    fn an_abort_removes_the_record_and_the_key() {
        let (_tmp, s) = store(Side::Home);
        let mut r = Rotation::new(Side::Home);
        run(&s, &mut r, |r| r.make_key(3, Secret([1; 32]), NOW));
        assert!(s.dir.exists(NEXT_KEY));
        run(&s, &mut r, |r| r.abort(3));
        assert!(!s.dir.exists(RECORD) && !s.dir.exists(NEXT_KEY));
    }

    #[test]
    fn the_next_key_is_written_0600_in_wireguard_form() {
        let (_tmp, s) = store(Side::Home);
        let mut r = Rotation::new(Side::Home);
        run(&s, &mut r, |r| r.make_key(3, Secret([1; 32]), NOW));
        let text = String::from_utf8(s.dir.read_secret(NEXT_KEY).unwrap()).unwrap();
        assert_eq!(text, format!("{}\n", B64.encode([1u8; 32])));
    }

    #[test]
    fn a_key_no_record_names_is_ignored() {
        // A crash between the key and the record of `make_key`.
        let (_tmp, s) = store(Side::Home);
        s.dir.write(NEXT_KEY, b"garbage").unwrap();
        assert_eq!(s.load().unwrap().phase(), &Phase::Idle);
    }

    #[test]
    fn files_of_the_versions_before_the_shared_machine_load() {
        let key = B64.encode([1u8; 32]);
        let (peer, psk) = (B64.encode([2u8; 32]), B64.encode([3u8; 32]));
        let cases = [
            (
                Side::Vps,
                format!(
                    r#"{{"id":3,"step":"prepared","started_unix":{NOW},"home_public":null,"psk":null}}"#
                ),
                Phase::Prepared {
                    id: 3,
                    started_unix: NOW,
                },
            ),
            (
                Side::Vps,
                format!(
                    r#"{{"id":3,"step":"staged","started_unix":{NOW},"home_public":"{peer}","psk":"{psk}"}}"#
                ),
                staged(),
            ),
            (
                Side::Home,
                r#"{"id":3,"vps_public":null,"psk":null}"#.to_owned(),
                Phase::Keyed {
                    id: 3,
                    started_unix: 0,
                    key: Secret([1; 32]),
                },
            ),
            (
                Side::Home,
                format!(r#"{{"id":3,"vps_public":"{peer}","psk":"{psk}"}}"#),
                match staged() {
                    Phase::Staged {
                        id,
                        keys,
                        installed,
                        ..
                    } => Phase::Staged {
                        id,
                        started_unix: 0,
                        keys,
                        installed,
                    },
                    _ => unreachable!(),
                },
            ),
        ];
        for (side, json, want) in cases {
            let (_tmp, s) = store(side);
            s.dir
                .write(NEXT_KEY, format!("{key}\n").as_bytes())
                .unwrap();
            s.dir.write(RECORD, json.as_bytes()).unwrap();
            assert_eq!(s.load().unwrap().phase(), &want, "{json}");
        }
    }

    /// The record as the versions before this one read it.
    #[derive(Deserialize)]
    #[allow(dead_code)] // only parsing is tested
    struct OldVpsRecord {
        id: u64,
        step: Step,
        started_unix: i64,
        #[serde(default)]
        home_public: Option<String>,
        #[serde(default)]
        psk: Option<String>,
    }

    #[derive(Deserialize)]
    struct OldHomeRecord {
        id: u64,
        #[serde(default)]
        vps_public: Option<String>,
        #[serde(default)]
        psk: Option<String>,
    }

    #[test]
    fn the_versions_before_read_what_this_one_writes() {
        let (_tmp, s) = store(Side::Vps);
        let mut r = Rotation::new(Side::Vps);
        run(&s, &mut r, |r| r.prepare(3, NOW));
        run(&s, &mut r, |r| {
            r.stage(3, Secret([1; 32]), [2; 32], Secret([3; 32]))
        });
        let old: OldVpsRecord = serde_json::from_slice(&s.dir.read(RECORD).unwrap()).unwrap();
        assert_eq!((old.step, old.started_unix), (Step::Staged, NOW));
        assert_eq!(old.home_public, Some(B64.encode([2u8; 32])));

        let (_tmp, s) = store(Side::Home);
        let mut r = Rotation::new(Side::Home);
        run(&s, &mut r, |r| r.make_key(3, Secret([1; 32]), NOW));
        let old: OldHomeRecord = serde_json::from_slice(&s.dir.read(RECORD).unwrap()).unwrap();
        assert_eq!((old.id, old.vps_public.as_deref()), (3, None));
        run(&s, &mut r, |r| r.commit(3, [2; 32], Secret([3; 32])));
        let old: OldHomeRecord = serde_json::from_slice(&s.dir.read(RECORD).unwrap()).unwrap();
        assert_eq!(old.vps_public, Some(B64.encode([2u8; 32])));
        assert_eq!(old.psk, Some(B64.encode([3u8; 32])));
    }

    #[test]
    fn damaged_files_are_refused_and_named() {
        let key = B64.encode([1u8; 32]);
        let cases: [(Side, &str, Option<&str>, &str); 7] = [
            (Side::Vps, r#"{"id": 3, "step": "stag"#, Some(&key), RECORD),
            (
                Side::Vps,
                r#"{"id": 3, "started_unix": 1}"#,
                Some(&key),
                RECORD,
            ),
            (
                Side::Vps,
                r#"{"id": 3, "step": "keyed"}"#,
                Some(&key),
                RECORD,
            ),
            (Side::Vps, r#"{"id": 0, "step": "prepared"}"#, None, RECORD),
            (
                Side::Vps,
                r#"{"id": 3, "step": "staged", "home_public": "AAAA", "psk": null}"#,
                Some(&key),
                RECORD,
            ),
            // The record names a key that is not there, or is not a key.
            (Side::Home, r#"{"id": 3}"#, None, NEXT_KEY),
            (Side::Home, r#"{"id": 3}"#, Some("not a key"), NEXT_KEY),
        ];
        for (side, json, next_key, bad) in cases {
            let (_tmp, s) = store(side);
            s.dir.write(RECORD, json.as_bytes()).unwrap();
            if let Some(k) = next_key {
                s.dir.write(NEXT_KEY, k.as_bytes()).unwrap();
            }
            match s.load() {
                Err(StoreError::Damaged { path, .. }) => {
                    assert_eq!(path, s.dir.join(bad), "{json}")
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_record_holds_no_private_key() {
        let (_tmp, s) = store(Side::Vps);
        let mut r = Rotation::new(Side::Vps);
        run(&s, &mut r, |r| r.prepare(3, NOW));
        run(&s, &mut r, |r| {
            r.stage(3, Secret([0xab; 32]), [2; 32], Secret([3; 32]))
        });
        let record = String::from_utf8(s.dir.read(RECORD).unwrap()).unwrap();
        assert!(!record.contains(&B64.encode([0xabu8; 32])), "{record}");
    }
}
