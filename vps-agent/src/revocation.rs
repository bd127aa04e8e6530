//! Revocation that revokes: when the certificate lineage that owns home's
//! WireGuard key is revoked, the VPS cuts home off at once — peer, egress,
//! live sessions — and remembers it across restarts (`home-revoked.json`)
//! until a new home joins.
//!
//! `ceres-vps cert revoke` is another process: it only writes marks into
//! `<state>/revoked/` (see `certs.rs`). The running agent watches that
//! directory with inotify and acts on every change.

use ceres_sync::Unpoison;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Mutex;

use ceres_pki::unix_secs;
use ceres_proto::{HomeAccess, HomeRevocation};
use ceres_state::StateDir;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::certs;

const HOME_REVOKED: &str = "home-revoked.json";

/// The revocation that cut home off, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedHome {
    /// Enrolment name of the revoked certificate.
    pub name: String,
    /// A revoked serial of the lineage (the one the session used, if any).
    pub serial: String,
    /// The lineage.
    pub lineage: String,
    /// When the VPS acted on it.
    pub revoked_unix: i64,
}

/// What [`HomeRevocations::clear_for`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleared {
    /// The note is gone: a new home.
    Yes,
    /// There was no note.
    NothingToClear,
    /// The connecting home is of the revoked lineage: the note stays.
    RevokedLineage,
}

/// Whether home is revoked, persisted.
#[derive(Debug)]
pub struct HomeRevocations {
    dir: StateDir,
    current: Mutex<Option<RevokedHome>>,
}

impl HomeRevocations {
    /// Loads the mark. A damaged one stops the agent (a config/state error):
    /// dropping it silently would show a revoked home as merely away.
    pub fn load(dir: &StateDir) -> anyhow::Result<Self> {
        let current = match dir.read_optional(HOME_REVOKED)? {
            None => None,
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                ceres_config::ConfigError::DamagedState {
                    path: dir.join(HOME_REVOKED),
                    detail: e.to_string(),
                    advice: "it only records that home was revoked (the revocation itself is in \
                             revoked/): remove it and restart to clear the note"
                        .into(),
                }
            })?),
        };
        Ok(Self {
            dir: dir.clone(),
            current: Mutex::new(current),
        })
    }

    /// Records that home was revoked.
    pub fn set(&self, revoked: RevokedHome) -> anyhow::Result<()> {
        self.dir
            .write(HOME_REVOKED, &serde_json::to_vec_pretty(&revoked)?)?;
        *self.current.locked() = Some(revoked);
        Ok(())
    }

    /// A home of `lineage` connected: the note goes unless it is that
    /// lineage's own (a session of the revoked home that raced its
    /// revocation is not a new home). Decided under the note's lock.
    pub fn clear_for(&self, lineage: Option<&str>) -> anyhow::Result<Cleared> {
        let mut guard = self.current.locked();
        match guard.as_ref() {
            None => return Ok(Cleared::NothingToClear),
            Some(r) if lineage.is_some_and(|l| l.eq_ignore_ascii_case(&r.lineage)) => {
                return Ok(Cleared::RevokedLineage);
            }
            Some(_) => {}
        }
        self.dir.remove(HOME_REVOKED)?;
        *guard = None;
        Ok(Cleared::Yes)
    }

    /// Whether home is revoked now.
    pub fn is_revoked(&self) -> bool {
        self.current.locked().is_some()
    }

    /// For `HomeStatus.access` and `.revocation`.
    pub fn status(&self) -> (HomeAccess, Option<HomeRevocation>) {
        match self.current.locked().as_ref() {
            Some(r) => (
                HomeAccess::Revoked,
                Some(HomeRevocation {
                    name: r.name.clone(),
                    serial: r.serial.clone(),
                    lineage: r.lineage.clone(),
                    revoked_unix: r.revoked_unix,
                }),
            ),
            None => (HomeAccess::Allowed, None),
        }
    }
}

/// A revocation of `lineage`, made now.
pub fn revoked_now(dir: &StateDir, name: &str, lineage: &str) -> RevokedHome {
    // The serial shown: the newest revoked one of the lineage.
    let serial = certs::list(dir)
        .ok()
        .and_then(|l| {
            l.into_iter()
                .filter(|(i, _)| i.lineage() == lineage)
                .map(|(i, _)| i.serial)
                .next_back()
        })
        .unwrap_or_else(|| lineage.to_owned());
    RevokedHome {
        name: name.to_owned(),
        serial,
        lineage: lineage.to_owned(),
        revoked_unix: unix_secs(std::time::SystemTime::now()),
    }
}

/// inotify on the revocation directory, for tokio.
#[derive(Debug)]
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Changes in `<state>/revoked/`: [`RevocationWatch::changed`] returns when
/// a mark is added (the state writes are temp file + rename, so a rename
/// into the directory is the event).
#[derive(Debug)]
pub struct RevocationWatch {
    fd: AsyncFd<Watch>,
}

impl RevocationWatch {
    /// Starts watching (creating the directory if needed).
    pub fn new(dir: &StateDir) -> anyhow::Result<Self> {
        let revoked = dir.subdir(certs::REVOKED_DIR)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            revoked.path(),
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CREATE,
        )?;
        // SAFETY: `Watch` owns the inotify descriptor (nix's `Inotify` holds
        // an `OwnedFd`) for as long as the `AsyncFd` holds the `Watch`, and
        // `as_raw_fd` always returns that same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(Watch(inotify), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits for the next change (several at once count as one).
    pub async fn changed(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A session of the revoked home that raced its revocation must not clear
    /// the note (found in the merged suite: home reconnected between the
    /// handshake's check and the watcher's note, and was taken for a new home).
    #[test]
    fn only_another_lineage_clears_the_revoked_note() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let r = HomeRevocations::load(&dir).unwrap();
        assert_eq!(r.clear_for(Some("aa")).unwrap(), Cleared::NothingToClear);
        r.set(RevokedHome {
            name: "home".into(),
            serial: "aa01".into(),
            lineage: "AA".into(),
            revoked_unix: 1,
        })
        .unwrap();
        assert_eq!(r.clear_for(Some("aa")).unwrap(), Cleared::RevokedLineage);
        assert!(r.is_revoked());
        assert!(
            HomeRevocations::load(&dir).unwrap().is_revoked(),
            "still on disk"
        );
        assert_eq!(r.clear_for(Some("bb")).unwrap(), Cleared::Yes);
        assert!(!r.is_revoked());
        assert!(!HomeRevocations::load(&dir).unwrap().is_revoked());
    }
}
