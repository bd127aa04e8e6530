//! Revocation that revokes: when the certificate lineage that owns home's
//! WireGuard key is revoked, the VPS cuts home off at once — peer, egress,
//! live sessions — and remembers it across restarts (`home-revoked.json`)
//! until a new home joins.
//!
//! `ceres-vps cert revoke` is another process: it only writes marks into
//! `<state>/revoked/` (see `certs.rs`). The running agent watches that
//! directory with inotify and acts on every change.

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
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(revoked);
        Ok(())
    }

    /// A new home joined: the note goes. Returns whether there was one.
    pub fn clear(&self) -> anyhow::Result<bool> {
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Ok(false);
        }
        self.dir.remove(HOME_REVOKED)?;
        *guard = None;
        Ok(true)
    }

    /// Whether home is revoked now.
    pub fn is_revoked(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// For `HomeStatus.access` and `.revocation`.
    pub fn status(&self) -> (HomeAccess, Option<HomeRevocation>) {
        match self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
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
