//! Key rotation on the VPS: the coordinator of the make-before-break
//! exchange (see `ceres.proto`), with every step persisted first so a crash
//! at any point converges after restart instead of splitting the pair.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ceres_pki::{Masked, unix_secs};
use ceres_proto::{
    Command, RotateAbort, RotateCommit, RotatePrepare, RotationStatus, VpsMessage, command,
    vps_message,
};
use ceres_state::StateDir;
use ceres_tunnel::{PresharedKey, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::tunnel::VpsTunnel;

const PENDING: &str = "rotation.json";
const HISTORY: &str = "rotation-history.json";
const NEXT_KEY: &str = "wg.next.key";
/// Home keys remembered to refuse a replayed rotation.
const KEY_MEMORY: usize = 32;

/// Steps of a rotation, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// RotatePrepare sent; waiting for home's new key.
    Prepared,
    /// Our new key and the PSK made and staged; RotateCommit sent.
    Staged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    id: u64,
    step: Step,
    started_unix: i64,
    #[serde(default)]
    home_public: Option<String>,
    #[serde(default)]
    psk: Option<Masked<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct History {
    next_id: u64,
    #[serde(default)]
    last_completed_id: u64,
    completed: u64,
    last_unix: i64,
    /// For people, and for the previous release reading this file.
    last_outcome: String,
    /// How the last rotation ended (absent in a file of the previous
    /// release: then `last_outcome` tells, see [`ceres_proto::compat`]).
    #[serde(default)]
    last_result: Option<LastResult>,
    /// Why it failed.
    #[serde(default)]
    last_failure: String,
    keys_since_unix: i64,
    used_home_keys: Vec<String>,
}

/// How a rotation ended, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LastResult {
    Ok,
    Failed,
}

/// A channel to the current home session.
pub type HomeTx = mpsc::Sender<Result<VpsMessage, Status>>;

/// The rotation coordinator.
#[derive(Debug)]
pub struct Rotator {
    dir: StateDir,
    every: Duration,
    pending: Mutex<Option<Pending>>,
    history: Mutex<History>,
    home: Mutex<Option<HomeTx>>,
    /// Completed rotations, for waiters (cerectl rotate).
    done: watch::Sender<(u64, String)>,
    /// Set while a finished rotation is being made permanent: the pending
    /// record is already claimed but the new keys are not in place yet, so
    /// a Welcome must not carry (old) tunnel parameters in that window.
    finishing: std::sync::atomic::AtomicBool,
    /// Test hook: runs in `on_home_key` just before it looks at the pending
    /// rotation, so a test can put a concurrent `fail` exactly there.
    #[cfg(test)]
    before_claim: Mutex<Hook>,
}

/// A test hook (see `Rotator::before_claim`).
#[cfg(test)]
#[derive(Default)]
struct Hook(Option<Box<dyn FnOnce() + Send>>);

#[cfg(test)]
impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// A JSON state file, `None` when absent; damaged: a config/state error
/// (exit 78) that names the file and says what to do.
fn read_json<T: serde::de::DeserializeOwned>(
    dir: &StateDir,
    name: &str,
    advice: &str,
) -> anyhow::Result<Option<T>> {
    let Some(bytes) = dir.read_optional(name)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ceres_config::ConfigError::DamagedState {
            path: dir.join(name),
            detail: e.to_string(),
            advice: advice.to_owned(),
        }
        .into()
    })
}

fn msg(kind: command::Kind) -> VpsMessage {
    VpsMessage {
        kind: Some(vps_message::Kind::Command(Command { kind: Some(kind) })),
    }
}

/// Test hook: `CERESTEST_CRASH_AT=<step>` aborts the process right after
/// that step was persisted, so tests can prove recovery from each point.
fn crash_point(step: &str) {
    if std::env::var("CERESTEST_CRASH_AT").as_deref() == Ok(step) {
        eprintln!("CERESTEST_CRASH_AT={step}: aborting on purpose");
        std::process::abort();
    }
}

impl Rotator {
    /// Loads persisted state. A file that exists but does not parse stops
    /// the agent with a message naming it: the history holds the home keys
    /// used before (what refuses a replayed rotation) and the rotation ids,
    /// and the pending file says which keys the engine must accept — reset
    /// silently, either would weaken what it guards.
    pub fn load(dir: &StateDir, every: Duration) -> anyhow::Result<Self> {
        let pending: Option<Pending> = read_json(
            dir,
            PENDING,
            "restore it from a backup; or, with the VPS agent stopped, remove it together \
             with wg.next.key and restart both agents: the rotation in progress is \
             abandoned and the current keys stay",
        )?;
        let mut history: History = read_json(
            dir,
            HISTORY,
            "restore it from a backup; removing it makes the VPS forget which home keys \
             were used before, so a replayed rotation would no longer be refused",
        )?
        .unwrap_or_default();
        if history.keys_since_unix == 0 {
            history.keys_since_unix = unix_secs(SystemTime::now());
        }
        Ok(Self {
            dir: dir.clone(),
            every,
            pending: Mutex::new(pending),
            history: Mutex::new(history),
            home: Mutex::new(None),
            done: watch::Sender::new((0, String::new())),
            finishing: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            before_claim: Mutex::new(Hook::default()),
        })
    }

    fn save_pending(&self, p: &Option<Pending>) -> Result<(), Status> {
        match p {
            Some(p) => self
                .dir
                .write(PENDING, &serde_json::to_vec_pretty(p).unwrap_or_default()),
            None => self.dir.remove(PENDING),
        }
        .map_err(|e| Status::internal(e.to_string()))
    }

    fn save_history(&self, h: &History) {
        if let Err(e) = self
            .dir
            .write(HISTORY, &serde_json::to_vec_pretty(h).unwrap_or_default())
        {
            tracing::error!(error = %e, "cannot save the rotation history");
        }
    }

    /// Re-installs a rotation that was staged before a restart: whichever
    /// keys home uses after its own restart, the engine accepts them.
    pub fn resume(&self, tunnel: &VpsTunnel) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(
            p @ Pending {
                step: Step::Staged, ..
            },
        ) = pending
        {
            match self.staged_keys(&p) {
                Ok((key, home, psk)) => match tunnel.stage_rotation(key, home, psk) {
                    Ok(()) => tracing::info!(
                        rotation = p.id,
                        "resumed the key rotation staged before the restart"
                    ),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot resume the staged rotation")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "staged rotation state damaged; it will be replaced")
                }
            }
        }
    }

    fn staged_keys(&self, p: &Pending) -> Result<(PrivateKey, PublicKey, PresharedKey), Status> {
        let bad = |what: &str| Status::internal(format!("rotation state: {what}"));
        let text = self
            .dir
            .read_secret(NEXT_KEY)
            .map_err(|e| Status::internal(e.to_string()))?;
        let key: PrivateKey = std::str::from_utf8(&text)
            .map_err(|_| bad("key"))?
            .trim()
            .parse()
            .map_err(|_| bad("key"))?;
        let home: PublicKey = p
            .home_public
            .as_deref()
            .ok_or_else(|| bad("home key"))?
            .parse()
            .map_err(|_| bad("home key"))?;
        let psk: PresharedKey = p
            .psk
            .as_ref()
            .ok_or_else(|| bad("psk"))?
            .0
            .parse()
            .map_err(|_| bad("psk"))?;
        Ok((key, home, psk))
    }

    /// A home session started: remember its channel and repeat a pending step.
    pub async fn attach(&self, tunnel: &VpsTunnel, tx: HomeTx, home_pending: u64) {
        *self.home.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match pending {
            Some(p) if p.step == Step::Prepared => {
                let _ = tx
                    .send(Ok(msg(command::Kind::RotatePrepare(RotatePrepare {
                        rotation: p.id,
                    }))))
                    .await;
            }
            Some(p) => {
                if let Ok((key, _, psk)) = self.staged_keys(&p) {
                    let commit = RotateCommit {
                        rotation: p.id,
                        vps_public_key: key.public_key().as_bytes().to_vec(),
                        preshared_key: psk.0.to_vec(),
                    };
                    let _ = tx.send(Ok(msg(command::Kind::RotateCommit(commit)))).await;
                }
            }
            None if home_pending != 0 && home_pending == self.last_completed() => {
                // We finished it (home handshook with the new keys) but home
                // went away before making them permanent: its new keys are
                // our current ones, so repeat the commit.
                if let Some(psk) = tunnel.current_psk() {
                    let commit = RotateCommit {
                        rotation: home_pending,
                        vps_public_key: tunnel.public_key().as_bytes().to_vec(),
                        preshared_key: psk.0.to_vec(),
                    };
                    let _ = tx.send(Ok(msg(command::Kind::RotateCommit(commit)))).await;
                }
            }
            None if home_pending != 0 => {
                // Home holds a rotation we never staged (we crashed first, or
                // aborted it): tell it to drop it.
                let abort = RotateAbort {
                    rotation: home_pending,
                    reason: "unknown to the VPS".into(),
                };
                let _ = tx.send(Ok(msg(command::Kind::RotateAbort(abort)))).await;
            }
            None => {}
        }
    }

    fn last_completed(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_completed_id
    }

    /// Starts a rotation (or returns the one in progress).
    pub async fn begin(&self) -> Result<u64, Status> {
        let tx = self.home.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else {
            return Err(Status::unavailable(
                "the home agent is not connected: keys rotate when it is",
            ));
        };
        let id = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = pending.as_ref() {
                return Ok(p.id);
            }
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.next_id += 1;
            let id = h.next_id;
            self.save_history(&h);
            let p = Pending {
                id,
                step: Step::Prepared,
                started_unix: unix_secs(SystemTime::now()),
                home_public: None,
                psk: None,
            };
            self.save_pending(&Some(p.clone()))?;
            *pending = Some(p);
            id
        };
        crash_point("vps-prepared");
        tx.send(Ok(msg(command::Kind::RotatePrepare(RotatePrepare {
            rotation: id,
        }))))
        .await
        .map_err(|_| Status::unavailable("the home session ended"))?;
        Ok(id)
    }

    /// Home sent its new key: make ours and the PSK, stage, commit.
    ///
    /// The pending rotation is checked and claimed (persisted as staged, and
    /// staged in the engine) under one lock: a `fail` (timeout, home's
    /// abort) racing this either comes first — and this refuses — or after,
    /// and undoes a staged rotation. It can never be undone by this.
    pub async fn on_home_key(
        &self,
        tunnel: &VpsTunnel,
        id: u64,
        home_key: &[u8],
    ) -> Result<(), Status> {
        let key32: [u8; 32] = home_key
            .try_into()
            .map_err(|_| Status::invalid_argument("the new home key must be 32 bytes"))?;
        let home_public = PublicKey(key32);
        let home_text = home_public.to_string();
        #[cfg(test)]
        {
            let hook = self
                .before_claim
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .take();
            if let Some(hook) = hook {
                hook();
            }
        }
        /// What to do once the lock is released.
        enum Next {
            Refuse(&'static str),
            Fail(String),
            /// Send this commit; `fresh`: this call staged the rotation.
            Commit(RotateCommit, bool),
            Nothing,
        }
        let next = {
            let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut().filter(|p| p.id == id) {
                None => Next::Refuse("no such rotation in progress (stale or replayed)"),
                Some(p) if p.step == Step::Staged => {
                    if p.home_public.as_deref() == Some(home_text.as_str()) {
                        // A repeat (home reconnected): commit again.
                        match self.staged_keys(p) {
                            Ok((key, _, psk)) => Next::Commit(
                                RotateCommit {
                                    rotation: id,
                                    vps_public_key: key.public_key().as_bytes().to_vec(),
                                    preshared_key: psk.0.to_vec(),
                                },
                                false,
                            ),
                            Err(_) => Next::Nothing,
                        }
                    } else {
                        Next::Refuse("a different key for a rotation already staged")
                    }
                }
                Some(_) if key32 == [0u8; 32] => Next::Fail("the new home key is all zeros".into()),
                Some(_) if tunnel.home_key().as_deref() == Some(home_text.as_str()) => {
                    Next::Fail("the new home key is the current one".into())
                }
                Some(_)
                    if self
                        .history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .used_home_keys
                        .contains(&home_text) =>
                {
                    Next::Fail("the new home key was used before (replayed rotation)".into())
                }
                Some(p) => {
                    let key = PrivateKey::generate();
                    let psk = PresharedKey::generate();
                    // Persist before acting: key first, then the step that names it.
                    self.dir
                        .write(NEXT_KEY, format!("{}\n", key.to_base64()).as_bytes())
                        .map_err(|e| Status::internal(e.to_string()))?;
                    let staged = Pending {
                        step: Step::Staged,
                        home_public: Some(home_text),
                        psk: Some(Masked(psk.to_base64())),
                        ..p.clone()
                    };
                    self.save_pending(&Some(staged.clone()))?;
                    *p = staged;
                    crash_point("vps-staged");
                    match tunnel.stage_rotation(key.clone(), home_public, psk.clone()) {
                        Ok(()) => Next::Commit(
                            RotateCommit {
                                rotation: id,
                                vps_public_key: key.public_key().as_bytes().to_vec(),
                                preshared_key: psk.0.to_vec(),
                            },
                            true,
                        ),
                        Err(e) => Next::Fail(format!("{e:#}")),
                    }
                }
            }
        };
        match next {
            Next::Refuse(reason) => self.refuse(id, reason).await,
            Next::Fail(reason) => self.fail(tunnel, id, &reason).await,
            Next::Nothing => Ok(()),
            Next::Commit(commit, fresh) => {
                let tx = self.home.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(tx) = tx {
                    let _ = tx.send(Ok(msg(command::Kind::RotateCommit(commit)))).await;
                }
                if fresh {
                    crash_point("vps-committed");
                }
                Ok(())
            }
        }
    }

    /// The engine moved to the staged keys (home handshook with them), or
    /// home said it is done: make them permanent.
    pub fn finish(&self, tunnel: &VpsTunnel, id: Option<u64>, commit: bool) {
        // Check and claim in one critical section: the promotion watcher and
        // home's RotateDone may both arrive, and only one may finish.
        let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = guard
            .clone()
            .filter(|p| p.step == Step::Staged && id.is_none_or(|i| i == p.id))
        else {
            return;
        };
        let (key, home, psk) = match self.staged_keys(&p) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot finish the rotation");
                return;
            }
        };
        // Only when the engine really runs on this rotation's key (a late
        // notification must not finalize the next rotation early), unless
        // home says it is done and we commit explicitly.
        if !commit
            && tunnel
                .engine()
                .is_some_and(|e| e.public_key() != key.public_key())
        {
            return;
        }
        self.finishing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        *guard = None;
        drop(guard);
        // Cleared on every way out of this function.
        struct Finished<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _finished = Finished(&self.finishing);
        crash_point("vps-promoted");
        let old_home = tunnel.home_key();
        if let Err(e) = tunnel.finalize_rotation(&key, home, &psk, commit) {
            tracing::error!(error = %format!("{e:#}"), "cannot save the rotated keys");
            return;
        }
        let _ = self.dir.remove(NEXT_KEY);
        let _ = self.save_pending(&None);
        let now = unix_secs(SystemTime::now());
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.completed += 1;
        h.last_completed_id = p.id;
        h.last_unix = now;
        h.keys_since_unix = now;
        h.last_outcome = ceres_proto::compat::ROTATION_OK.into();
        h.last_result = Some(LastResult::Ok);
        h.last_failure.clear();
        if let Some(old) = old_home {
            h.used_home_keys.push(old);
        }
        let excess = h.used_home_keys.len().saturating_sub(KEY_MEMORY);
        h.used_home_keys.drain(..excess);
        self.save_history(&h);
        tracing::info!(
            rotation = p.id,
            vps_key = %key.public_key(),
            home_key = %home,
            "WireGuard keys and PSK rotated without dropping the tunnel"
        );
        self.done.send_replace((p.id, "ok".into()));
    }

    async fn refuse(&self, id: u64, reason: &str) -> Result<(), Status> {
        tracing::warn!(
            rotation = id,
            reason,
            "rotation message refused; the current keys stay"
        );
        Err(Status::failed_precondition(format!(
            "rotation {id}: {reason}"
        )))
    }

    /// Gives up on rotation `id`: engine, files, history, and home are told.
    pub async fn fail(&self, tunnel: &VpsTunnel, id: u64, reason: &str) -> Result<(), Status> {
        // Check and claim in one critical section (see `on_home_key`): the
        // engine is told and the files removed under the same lock, so a
        // rotation cannot be staged between the two.
        let ours = {
            let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let ours = guard.as_ref().is_some_and(|p| p.id == id);
            if ours {
                *guard = None;
                if let Some(engine) = tunnel.engine() {
                    engine.abort_rotation();
                }
                let _ = self.dir.remove(NEXT_KEY);
                let _ = self.save_pending(&None);
            }
            ours
        };
        if !ours {
            // A stale abort (a finished or replaced rotation): nothing to undo.
            tracing::debug!(
                rotation = id,
                reason,
                "ignoring an abort for a rotation not in progress"
            );
            return Err(Status::failed_precondition(format!(
                "rotation {id} is not in progress"
            )));
        }
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.last_unix = unix_secs(SystemTime::now());
            h.last_outcome = format!("{}{reason}", ceres_proto::compat::ROTATION_FAILED_PREFIX);
            h.last_result = Some(LastResult::Failed);
            h.last_failure = reason.to_owned();
            self.save_history(&h);
        }
        tracing::warn!(
            rotation = id,
            reason,
            "key rotation abandoned; the current keys stay"
        );
        let tx = self.home.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx {
            let abort = RotateAbort {
                rotation: id,
                reason: reason.to_owned(),
            };
            let _ = tx.send(Ok(msg(command::Kind::RotateAbort(abort)))).await;
        }
        self.done.send_replace((id, format!("failed: {reason}")));
        Err(Status::failed_precondition(format!(
            "rotation {id}: {reason}"
        )))
    }

    /// Drops a pending rotation before the tunnel starts (its home was
    /// revoked while the agent was stopped): nothing to tell anyone.
    pub fn forget_pending(&self) -> anyhow::Result<()> {
        let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if guard.take().is_some() {
            self.dir.remove(NEXT_KEY)?;
            self.dir.remove(PENDING)?;
        }
        Ok(())
    }

    /// Waits for rotation `id` to end; returns its outcome.
    pub async fn wait(&self, id: u64, timeout: Duration) -> String {
        let mut rx = self.done.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|(done, _)| *done == id)).await {
            Ok(Ok(v)) => v.1.clone(),
            _ => "still in progress (home has not completed it yet)".into(),
        }
    }

    /// Follows finished rotations.
    pub fn subscribe_done(&self) -> watch::Receiver<(u64, String)> {
        self.done.subscribe()
    }

    /// Whether new keys are staged (a rotation past its first step).
    pub fn staged(&self) -> bool {
        self.finishing.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|p| p.step == Step::Staged)
    }

    /// The pending rotation's id and age, if any.
    pub fn pending(&self) -> Option<(u64, i64)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| (p.id, p.started_unix))
    }

    /// When the next scheduled rotation is due.
    pub fn next_due(&self) -> SystemTime {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(h.keys_since_unix.max(0) as u64);
        base + self.every
    }

    /// Status for cerectl.
    pub fn status(&self) -> RotationStatus {
        let h = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let p = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        use ceres_proto::{RotationOutcome, RotationStep, compat};
        let step = p
            .as_ref()
            .map_or(RotationStep::Unspecified, |p| match p.step {
                Step::Prepared => RotationStep::Prepared,
                Step::Staged => RotationStep::Staged,
            });
        let mut status = RotationStatus {
            last_unix: h.last_unix,
            last_outcome: h.last_outcome,
            next_unix: unix_secs(self.next_due()),
            pending: p.as_ref().map(|p| p.id).unwrap_or(0),
            pending_step: compat::step_name(step).to_owned(),
            completed: h.completed,
            keys_since_unix: h.keys_since_unix,
            last_result: RotationOutcome::Unspecified.into(),
            last_failure: h.last_failure,
            step: step.into(),
        };
        // A history written by the previous release has only the sentence.
        status.last_result = match h.last_result {
            Some(LastResult::Ok) => RotationOutcome::Ok,
            Some(LastResult::Failed) => RotationOutcome::Failed,
            None => {
                status.last_failure = status.effective_failure().to_owned();
                status.effective_result()
            }
        }
        .into();
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TunnelSettings;

    async fn setup() -> (
        tempfile::TempDir,
        VpsTunnel,
        Rotator,
        mpsc::Receiver<Result<VpsMessage, Status>>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        let settings = TunnelSettings {
            enabled: false,
            ifname: "ceres-test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            endpoint: "127.0.0.1:51820".into(),
            vps_address: "10.77.77.1/24".parse().unwrap(),
            home_address: "10.77.77.2/24".parse().unwrap(),
            vps_address6: None,
            home_address6: None,
            mtu: 1420,
            uapi_dir: tmp.path().join("uapi"),
        };
        let tunnel = VpsTunnel::start(&settings, &dir, &tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        let rotator = Rotator::load(&dir, Duration::from_secs(3600)).unwrap();
        let (tx, rx) = mpsc::channel(16);
        rotator.attach(&tunnel, tx, 0).await;
        (tmp, tunnel, rotator, rx)
    }

    fn is_abort(m: Option<Result<VpsMessage, Status>>) -> bool {
        matches!(
            m,
            Some(Ok(VpsMessage {
                kind: Some(vps_message::Kind::Command(Command {
                    kind: Some(command::Kind::RotateAbort(_))
                }))
            }))
        )
    }

    #[tokio::test]
    async fn bad_rotation_keys_are_refused_and_the_current_keys_stay() {
        let (_tmp, tunnel, rotator, mut rx) = setup().await;
        let current = PrivateKey::generate().public_key();
        tunnel.params_for(current.as_bytes(), &owner()).unwrap();

        // All zeros.
        let id = rotator.begin().await.unwrap();
        rx.recv().await; // RotatePrepare
        let err = rotator
            .on_home_key(&tunnel, id, &[0u8; 32])
            .await
            .unwrap_err();
        assert!(err.message().contains("all zeros"), "{}", err.message());
        assert!(is_abort(rx.recv().await));
        let status = rotator.status();
        assert!(status.last_outcome.starts_with("failed"));
        assert_eq!(status.last_result(), ceres_proto::RotationOutcome::Failed);
        assert!(status.last_failure.contains("all zeros"), "{status:?}");
        assert_eq!(
            tunnel.home_key(),
            Some(current.to_string()),
            "current key changed"
        );

        // The current key.
        let id = rotator.begin().await.unwrap();
        rx.recv().await;
        let err = rotator
            .on_home_key(&tunnel, id, current.as_bytes())
            .await
            .unwrap_err();
        assert!(err.message().contains("current one"), "{}", err.message());
        assert!(is_abort(rx.recv().await));

        // A key from an earlier rotation (replay).
        let old = PrivateKey::generate().public_key();
        rotator
            .history
            .lock()
            .unwrap()
            .used_home_keys
            .push(old.to_string());
        let id = rotator.begin().await.unwrap();
        rx.recv().await;
        let err = rotator
            .on_home_key(&tunnel, id, old.as_bytes())
            .await
            .unwrap_err();
        assert!(err.message().contains("used before"), "{}", err.message());

        // A stale rotation id (replayed message).
        let id = rotator.begin().await.unwrap();
        rx.recv().await;
        let err = rotator
            .on_home_key(
                &tunnel,
                id - 1,
                PrivateKey::generate().public_key().as_bytes(),
            )
            .await
            .unwrap_err();
        assert!(
            err.message().contains("no such rotation"),
            "{}",
            err.message()
        );
        // Wrong length.
        let err = rotator
            .on_home_key(&tunnel, id, &[1u8; 5])
            .await
            .unwrap_err();
        assert!(err.message().contains("32 bytes"), "{}", err.message());
        assert_eq!(tunnel.home_key(), Some(current.to_string()));
        assert_eq!(rotator.status().completed, 0);
    }

    fn owner() -> crate::tunnel::Owner {
        crate::tunnel::Owner {
            lineage: "01".into(),
            name: "home".into(),
        }
    }

    #[tokio::test]
    async fn a_rotation_failed_while_home_key_arrives_stays_failed() {
        let (tmp, tunnel, rotator, mut rx) = setup().await;
        let (tunnel, rotator) = (std::sync::Arc::new(tunnel), std::sync::Arc::new(rotator));
        tunnel
            .params_for(PrivateKey::generate().public_key().as_bytes(), &owner())
            .unwrap();
        let id = rotator.begin().await.unwrap();
        rx.recv().await; // RotatePrepare
        // The timeout fires exactly while home's key is being handled.
        {
            let (r, t) = (rotator.clone(), tunnel.clone());
            rotator.before_claim.lock().unwrap().0 = Some(Box::new(move || {
                let _ = futures::executor::block_on(r.fail(&t, id, "not completed in time"));
            }));
        }
        let new_home = PrivateKey::generate().public_key();
        let err = rotator
            .on_home_key(&tunnel, id, new_home.as_bytes())
            .await
            .unwrap_err();
        assert!(
            err.message().contains("no such rotation"),
            "{}",
            err.message()
        );
        // Home was told to abort once, and nothing took that back.
        let mut aborts = 0;
        while let Ok(m) = rx.try_recv() {
            if is_abort(Some(m.clone())) {
                aborts += 1;
            }
            assert!(
                !matches!(
                    m,
                    Ok(VpsMessage {
                        kind: Some(vps_message::Kind::Command(Command {
                            kind: Some(command::Kind::RotateCommit(_))
                        }))
                    })
                ),
                "a failed rotation was committed"
            );
        }
        assert_eq!(aborts, 1);
        assert_eq!(rotator.pending(), None, "the failed rotation came back");
        assert!(!rotator.staged());
        let status = rotator.status();
        assert_eq!(status.last_outcome, "failed: not completed in time");
        assert_eq!(status.last_result(), ceres_proto::RotationOutcome::Failed);
        assert_eq!(status.last_failure, "not completed in time");
        assert!(!tmp.path().join("state").join(NEXT_KEY).exists());
    }

    #[test]
    fn status_is_typed_also_from_a_history_of_the_previous_release() {
        use ceres_proto::{RotationOutcome, RotationStep};
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let status = Rotator::load(&dir, Duration::from_secs(60))
            .unwrap()
            .status();
        assert_eq!(status.last_result(), RotationOutcome::Never);
        assert_eq!(status.step(), RotationStep::Unspecified);
        // Written before `last_result` existed: only the sentence.
        dir.write(
            HISTORY,
            br#"{"next_id": 4, "completed": 2, "last_unix": 1700000000,
                "last_outcome": "failed: home went away", "keys_since_unix": 1690000000,
                "used_home_keys": []}"#,
        )
        .unwrap();
        dir.write(
            PENDING,
            br#"{"id": 4, "step": "staged", "started_unix": 1700000100}"#,
        )
        .unwrap();
        let status = Rotator::load(&dir, Duration::from_secs(60))
            .unwrap()
            .status();
        assert_eq!(status.last_result(), RotationOutcome::Failed);
        assert_eq!(status.last_failure, "home went away");
        assert_eq!(status.last_outcome, "failed: home went away");
        assert_eq!(status.step(), RotationStep::Staged);
        assert_eq!(status.pending_step, "staged");
    }

    #[test]
    fn damaged_rotation_files_refuse_to_load_and_name_the_file() {
        for name in [HISTORY, PENDING] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = StateDir::open(tmp.path().join("s")).unwrap();
            dir.write(name, b"{\"next_id\": 3, \"used_home_ke").unwrap();
            let err = Rotator::load(&dir, Duration::from_secs(60)).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(name) && text.contains("damaged"), "{text}");
            assert!(
                err.chain().any(|c| c.is::<ceres_config::ConfigError>()),
                "not a config/state error (exit 78): {text}"
            );
        }
    }

    #[tokio::test]
    async fn rotation_needs_a_connected_home() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let rotator = Rotator::load(&dir, Duration::from_secs(60)).unwrap();
        assert_eq!(
            rotator.begin().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}
