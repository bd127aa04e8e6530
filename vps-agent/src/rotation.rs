//! Key rotation on the VPS: the coordinator of the make-before-break
//! exchange (see `ceres.proto`). Where the rotation stands is the state
//! machine both agents share ([`ceres_state::rotation`]): every step is on
//! disk before it is acted on, so a crash at any point converges after a
//! restart instead of splitting the pair. What only the VPS keeps — the
//! history of home keys used before, the rotation ids, the outcome of the
//! last rotation — is here.

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ceres_pki::unix_secs;
use ceres_proto::{
    Command, RotateAbort, RotateCommit, RotatePrepare, RotationStatus, VpsMessage, command,
    vps_message,
};
use ceres_state::StateDir;
use ceres_state::rotation::{
    CrashPoint, NewKeys, Phase, Rotation, Secret, Side, Store, StoreError, Transition,
    TransitionError, Write, crash_point,
};
use ceres_tunnel::{PresharedKey, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::tunnel::VpsTunnel;

const HISTORY: &str = "rotation-history.json";
/// Home keys remembered to refuse a replayed rotation.
const KEY_MEMORY: usize = 32;

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

/// Why home's new key is refused. The rotation is abandoned (home is told)
/// and the current keys stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHomeKey {
    /// All zeros: no shared secret with it.
    #[error("the new home key is all zeros")]
    AllZeros,
    /// The key home uses now: nothing would rotate.
    #[error("the new home key is the current one")]
    Current,
    /// A key of an earlier rotation: a replayed rotation.
    #[error("the new home key was used before (replayed rotation)")]
    UsedBefore,
}

/// Why a rotation is abandoned. The history, status and home's
/// RotateAbort say it in words (its text); code passes and matches the
/// variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// Home's new key was refused.
    #[error(transparent)]
    BadHomeKey(#[from] BadHomeKey),
    /// The tunnel engine could not stage the new keys.
    #[error("{0}")]
    Engine(String),
    /// Home did not complete the rotation in time.
    #[error("not completed in time")]
    TimedOut,
    /// Home's certificate was revoked.
    #[error("home revoked")]
    HomeRevoked,
    /// Home abandoned the rotation, saying why.
    #[error("home gave up: {0}")]
    HomeGaveUp(String),
}

/// Why a rotation could not start or take a step. The service decides what
/// a client sees of each (`service/errors.rs`).
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Keys rotate with home's help: it must be connected.
    #[error("the home agent is not connected: keys rotate when it is")]
    HomeAway,
    /// The home session went away while the rotation was being started.
    #[error("the home session ended")]
    SessionEnded,
    /// A RotateKey whose key is not a key.
    #[error("the new home key must be 32 bytes")]
    KeyLength,
    /// Home's new key was refused; the rotation is abandoned.
    #[error("rotation {id}: {why}")]
    BadHomeKey {
        /// The rotation.
        id: u64,
        /// Why.
        why: BadHomeKey,
    },
    /// The tunnel refused the new keys; the rotation is abandoned.
    #[error("rotation {id}: the tunnel refused the new keys: {detail}")]
    Engine {
        /// The rotation.
        id: u64,
        /// The engine's reason.
        detail: String,
    },
    /// The message does not fit where the rotation stands (stale, replayed,
    /// another key for a staged rotation): nothing changes.
    #[error(transparent)]
    Refused(#[from] TransitionError),
    /// The rotation state could not be written.
    #[error("rotation state: {0}")]
    Store(#[from] StoreError),
    /// The agent is stopping.
    #[error(transparent)]
    ShuttingDown(#[from] ceres_daemon::ShuttingDown),
}

/// Where the rotation stands, what the VPS remembers of earlier ones, and
/// the home session to talk to: one lock, taken briefly.
#[derive(Debug)]
struct State {
    machine: Rotation,
    history: History,
    home: Option<HomeTx>,
}

/// The rotation coordinator.
#[derive(Debug)]
pub struct Rotator {
    store: Store,
    dir: StateDir,
    every: Duration,
    /// Transitions one at a time: held from planning a step to applying it,
    /// across its disk write (which runs off the async workers) and the
    /// engine calls that go with it. Readers do not take it.
    turn: Arc<tokio::sync::Mutex<()>>,
    state: Arc<Mutex<State>>,
    /// Completed rotations, for waiters (cerectl rotate).
    done: watch::Sender<(u64, String)>,
    /// Test hook: runs in `on_home_key` just before it looks at the pending
    /// rotation, so a test can put a concurrent `fail` exactly there.
    #[cfg(test)]
    before_claim: Mutex<Hook>,
}

/// The turn, owned: a step's blocking work carries it, so a caller that
/// goes away (an RPC whose client hung up) cannot let another step in
/// before the write it started is applied.
type Turn = tokio::sync::OwnedMutexGuard<()>;

/// Writes the history (synced): blocking. A failure is logged and the
/// rotation goes on: the current keys are right either way.
fn save_history(dir: &StateDir, h: &History) {
    let saved = serde_json::to_vec_pretty(h)
        .map_err(anyhow::Error::from)
        .and_then(|json| Ok(dir.write(HISTORY, &json)?));
    if let Err(e) = saved {
        tracing::error!(error = %format!("{e:#}"), "cannot save the rotation history");
    }
}

/// Puts `t` on disk, then makes it the phase: blocking. A rotation being
/// dropped is dropped even if its files could not be removed (the keys in
/// use do not change; a record left behind is resumed after a restart and
/// times out there).
fn write_and_apply(store: &Store, state: &Mutex<State>, t: Transition) -> Result<(), RotateError> {
    match store.write(&t) {
        Ok(()) => {}
        Err(e) if t.write() == Write::Remove => {
            tracing::error!(error = %e, "cannot remove the rotation state")
        }
        Err(e) => return Err(e.into()),
    }
    state.locked().machine.apply(t)?;
    Ok(())
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

fn damaged(path: std::path::PathBuf, detail: String, advice: &str) -> anyhow::Error {
    ceres_config::ConfigError::DamagedState {
        path,
        detail,
        advice: advice.to_owned(),
    }
    .into()
}

fn msg(kind: command::Kind) -> VpsMessage {
    VpsMessage {
        kind: Some(vps_message::Kind::Command(Command { kind: Some(kind) })),
    }
}

fn prepare_msg(id: u64) -> VpsMessage {
    msg(command::Kind::RotatePrepare(RotatePrepare { rotation: id }))
}

fn commit_msg(id: u64, keys: &NewKeys) -> VpsMessage {
    msg(command::Kind::RotateCommit(RotateCommit {
        rotation: id,
        vps_public_key: our_key(keys).public_key().as_bytes().to_vec(),
        preshared_key: keys.psk.0.to_vec(),
    }))
}

fn our_key(keys: &NewKeys) -> PrivateKey {
    PrivateKey::from(keys.key.0)
}

impl Rotator {
    /// Loads persisted state. A file that exists but does not parse stops
    /// the agent with a message naming it: the history holds the home keys
    /// used before (what refuses a replayed rotation) and the rotation ids,
    /// and the pending file says which keys the engine must accept — reset
    /// silently, either would weaken what it guards.
    pub fn load(dir: &StateDir, every: Duration) -> anyhow::Result<Self> {
        let store = Store::new(dir, Side::Vps);
        let machine = store.load().map_err(|e| match e {
            StoreError::Damaged { path, detail } => damaged(
                path,
                detail,
                "restore it from a backup; or, with the VPS agent stopped, remove rotation.json \
                 together with wg.next.key and restart both agents: the rotation in progress is \
                 abandoned and the current keys stay",
            ),
            other => other.into(),
        })?;
        let mut history: History = match dir.read_optional(HISTORY)? {
            None => History::default(),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                damaged(
                    dir.join(HISTORY),
                    e.to_string(),
                    "restore it from a backup; removing it makes the VPS forget which home keys \
                     were used before, so a replayed rotation would no longer be refused",
                )
            })?,
        };
        if history.keys_since_unix == 0 {
            history.keys_since_unix = unix_secs(SystemTime::now());
        }
        Ok(Self {
            store,
            dir: dir.clone(),
            every,
            turn: Arc::new(tokio::sync::Mutex::new(())),
            state: Arc::new(Mutex::new(State {
                machine,
                history,
                home: None,
            })),
            done: watch::Sender::new((0, String::new())),
            #[cfg(test)]
            before_claim: Mutex::new(Hook::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    async fn turn(&self) -> Turn {
        self.turn.clone().lock_owned().await
    }

    /// Runs `work` (synced writes, and the steps that publish them) off the
    /// async workers, carrying the turn: one piece that finishes even if
    /// the caller is dropped meanwhile (an RPC whose client hung up), so no
    /// other step can come between a write and its publication. Hands the
    /// turn back.
    async fn off_workers<T, F>(&self, turn: Turn, work: F) -> Result<(T, Turn), RotateError>
    where
        F: FnOnce(&Store, &Mutex<State>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (store, state) = (self.store.clone(), self.state.clone());
        Ok(ceres_daemon::blocking(move || (work(&store, &state), turn)).await?)
    }

    /// Applies a step that lives in this process only (nothing to write).
    fn take_in_memory(&self, t: Transition) {
        debug_assert_eq!(t.write(), Write::Nothing);
        if let Err(e) = self.lock().machine.apply(t) {
            tracing::error!(error = %e, "rotation state");
        }
    }

    /// Re-installs a rotation that was staged before a restart: whichever
    /// keys home uses after its own restart, the engine accepts them.
    pub fn resume(&self, tunnel: &VpsTunnel) {
        let phase = self.lock().machine.phase().clone();
        let Phase::Staged { id, keys, .. } = phase else {
            return;
        };
        match tunnel.stage_rotation(
            our_key(&keys),
            PublicKey(keys.peer),
            PresharedKey(keys.psk.0),
        ) {
            Ok(()) => {
                let planned = self.lock().machine.installed(id);
                if let Ok(t) = planned {
                    self.take_in_memory(t);
                }
                tracing::info!(
                    rotation = id,
                    "resumed the key rotation staged before the restart"
                )
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot resume the staged rotation")
            }
        }
    }

    /// A home session started: remember its channel and repeat a pending step.
    pub async fn attach(&self, tunnel: &VpsTunnel, tx: HomeTx, home_pending: u64) {
        let (phase, last_completed) = {
            let mut st = self.lock();
            st.home = Some(tx.clone());
            (st.machine.phase().clone(), st.history.last_completed_id)
        };
        let repeat = match phase {
            Phase::Prepared { id, .. } => Some(prepare_msg(id)),
            Phase::Staged { id, keys, .. } | Phase::Promoting { id, keys, .. } => {
                Some(commit_msg(id, &keys))
            }
            Phase::Idle if home_pending != 0 && home_pending == last_completed => {
                // We finished it (home handshook with the new keys) but home
                // went away before making them permanent: its new keys are
                // our current ones, so repeat the commit.
                tunnel.current_psk().map(|psk| {
                    msg(command::Kind::RotateCommit(RotateCommit {
                        rotation: home_pending,
                        vps_public_key: tunnel.public_key().as_bytes().to_vec(),
                        preshared_key: psk.0.to_vec(),
                    }))
                })
            }
            Phase::Idle if home_pending != 0 => {
                // Home holds a rotation we never staged (we crashed first, or
                // aborted it): tell it to drop it.
                Some(msg(command::Kind::RotateAbort(RotateAbort {
                    rotation: home_pending,
                    reason: "unknown to the VPS".into(),
                })))
            }
            // Home's own steps (never ours).
            Phase::Idle | Phase::Keyed { .. } => None,
        };
        if let Some(m) = repeat {
            let _ = tx.send(Ok(m)).await;
        }
    }

    /// Starts a rotation (or returns the one in progress).
    pub async fn begin(&self) -> Result<u64, RotateError> {
        let tx = self.lock().home.clone().ok_or(RotateError::HomeAway)?;
        let id = {
            let turn = self.turn().await;
            let (t, history) = {
                let st = self.lock();
                if let Some(id) = st.machine.phase().id() {
                    return Ok(id);
                }
                let mut h = st.history.clone();
                h.next_id += 1;
                (
                    st.machine
                        .prepare(h.next_id, unix_secs(SystemTime::now()))?,
                    h,
                )
            };
            let (id, dir) = (history.next_id, self.dir.clone());
            let (taken, _turn) = self
                .off_workers(turn, move |store, state| {
                    // The id is used once even if the agent dies right after.
                    save_history(&dir, &history);
                    state.locked().history = history;
                    write_and_apply(store, state, t)
                })
                .await?;
            taken?;
            id
        };
        tx.send(Ok(prepare_msg(id)))
            .await
            .map_err(|_| RotateError::SessionEnded)?;
        Ok(id)
    }

    /// What is wrong with `home` as the new key of a prepared rotation.
    fn check_home_key(&self, key: &[u8; 32], current: Option<&str>) -> Option<BadHomeKey> {
        let text = PublicKey(*key).to_string();
        if *key == [0u8; 32] {
            Some(BadHomeKey::AllZeros)
        } else if current == Some(text.as_str()) {
            Some(BadHomeKey::Current)
        } else if self.lock().history.used_home_keys.contains(&text) {
            Some(BadHomeKey::UsedBefore)
        } else {
            None
        }
    }

    /// Home sent its new key: make ours and the PSK, stage, commit.
    ///
    /// The step is planned, written, applied and installed in the engine
    /// under the turn: a `fail` (timeout, home's abort) racing this either
    /// comes first — and this is refused — or after, and undoes a staged
    /// rotation. It can never be undone by this.
    pub async fn on_home_key(
        &self,
        tunnel: &VpsTunnel,
        id: u64,
        home_key: &[u8],
    ) -> Result<(), RotateError> {
        let key32: [u8; 32] = home_key.try_into().map_err(|_| RotateError::KeyLength)?;
        #[cfg(test)]
        {
            let hook = self.before_claim.locked().0.take();
            if let Some(hook) = hook {
                hook();
            }
        }
        let turn = self.turn().await;
        let current = tunnel.home_key();
        let prepared =
            matches!(self.lock().machine.phase(), Phase::Prepared { id: p, .. } if *p == id);
        if let Some(why) = prepared
            .then(|| self.check_home_key(&key32, current.as_deref()))
            .flatten()
        {
            drop(turn);
            let _ = self.fail(tunnel, id, why.into()).await;
            return Err(RotateError::BadHomeKey { id, why });
        }
        let (key, psk) = (PrivateKey::generate(), PresharedKey::generate());
        let planned = self
            .lock()
            .machine
            .stage(id, Secret(key.to_bytes()), key32, Secret(psk.0));
        let t = match planned {
            Ok(t) => t,
            Err(TransitionError::Repeated { .. }) => {
                // Home's key again (it reconnected): commit again.
                let (phase, tx) = {
                    let st = self.lock();
                    (st.machine.phase().clone(), st.home.clone())
                };
                drop(turn);
                if let (Some(keys), Some(tx)) = (phase.keys(), tx) {
                    let _ = tx.send(Ok(commit_msg(id, keys))).await;
                }
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(
                    rotation = id,
                    reason = %e,
                    "rotation message refused; the current keys stay"
                );
                return Err(e.into());
            }
        };
        // Persist before acting: our key first, then the step that names it.
        let (taken, turn) = self
            .off_workers(turn, move |store, state| write_and_apply(store, state, t))
            .await?;
        taken?;
        if let Err(e) = tunnel.stage_rotation(key.clone(), PublicKey(key32), psk.clone()) {
            drop(turn);
            let detail = format!("{e:#}");
            let _ = self
                .fail(tunnel, id, FailReason::Engine(detail.clone()))
                .await;
            return Err(RotateError::Engine { id, detail });
        }
        let planned = self.lock().machine.installed(id);
        if let Ok(t) = planned {
            self.take_in_memory(t);
        }
        drop(turn);
        let tx = self.lock().home.clone();
        if let Some(tx) = tx {
            let commit = RotateCommit {
                rotation: id,
                vps_public_key: key.public_key().as_bytes().to_vec(),
                preshared_key: psk.0.to_vec(),
            };
            let _ = tx.send(Ok(msg(command::Kind::RotateCommit(commit)))).await;
        }
        crash_point(CrashPoint::VpsCommitted);
        Ok(())
    }

    /// The engine moved to the staged keys (home handshook with them), or
    /// home said it is done: make them permanent.
    pub async fn finish(&self, tunnel: &VpsTunnel, id: Option<u64>, commit: bool) {
        // Under the turn: the promotion watcher and home's RotateDone may
        // both arrive, and only one may finish.
        let turn = self.turn().await;
        let planned = {
            let st = self.lock();
            let Phase::Staged {
                id: staged, keys, ..
            } = st.machine.phase()
            else {
                return;
            };
            if id.is_some_and(|i| i != *staged) {
                return;
            }
            // Only when the engine really runs on this rotation's key (a late
            // notification must not finalize the next rotation early), unless
            // home says it is done and we commit explicitly.
            if !commit
                && tunnel
                    .engine()
                    .is_some_and(|e| e.public_key() != our_key(keys).public_key())
            {
                return;
            }
            st.machine.promote(*staged)
        };
        let Ok(t) = planned else {
            return;
        };
        let (Some(id), Some(keys)) = (t.to().id(), t.to().keys().cloned()) else {
            return;
        };
        self.take_in_memory(t);
        let (key, home) = (our_key(&keys), PublicKey(keys.peer));
        let old_home = tunnel.home_key();
        if let Err(e) = tunnel
            .finalize_rotation(&key, home, &PresharedKey(keys.psk.0), commit)
            .await
        {
            tracing::error!(error = %format!("{e:#}"), "cannot save the rotated keys");
            let planned = self.lock().machine.unpromote(id);
            if let Ok(t) = planned {
                self.take_in_memory(t);
            }
            return;
        }
        let planned = self.lock().machine.finish(id);
        let (dir, now) = (self.dir.clone(), unix_secs(SystemTime::now()));
        let finished = self
            .off_workers(turn, move |store, state| {
                if let Ok(t) = planned {
                    let _ = write_and_apply(store, state, t);
                }
                let h = {
                    let mut st = state.locked();
                    let h = &mut st.history;
                    h.completed += 1;
                    h.last_completed_id = id;
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
                    h.clone()
                };
                save_history(&dir, &h);
            })
            .await;
        if let Err(e) = finished {
            tracing::error!(error = %e, "cannot record the finished rotation");
        }
        tracing::info!(
            rotation = id,
            vps_key = %key.public_key(),
            home_key = %home,
            "WireGuard keys and PSK rotated without dropping the tunnel"
        );
        self.done.send_replace((id, "ok".into()));
    }

    /// Gives up on rotation `id`: engine, files, history, and home are told.
    /// Refused (nothing to undo) when `id` is not in progress, or is being
    /// made permanent.
    pub async fn fail(
        &self,
        tunnel: &VpsTunnel,
        id: u64,
        reason: FailReason,
    ) -> Result<(), RotateError> {
        {
            // Under the turn (see `on_home_key`): the engine is told and the
            // files removed before another step can be planned.
            let turn = self.turn().await;
            let planned = self.lock().machine.abort(id);
            let t = match planned {
                Ok(t) => t,
                Err(e) => {
                    // A stale abort (a finished or replaced rotation): nothing to undo.
                    tracing::debug!(
                        rotation = id,
                        reason = %reason,
                        "ignoring an abort for a rotation not in progress"
                    );
                    return Err(e.into());
                }
            };
            if let Some(engine) = tunnel.engine() {
                engine.abort_rotation();
            }
            let (dir, now, failure) = (
                self.dir.clone(),
                unix_secs(SystemTime::now()),
                reason.to_string(),
            );
            let failed = self
                .off_workers(turn, move |store, state| {
                    let _ = write_and_apply(store, state, t);
                    let h = {
                        let mut st = state.locked();
                        st.history.last_unix = now;
                        st.history.last_outcome =
                            format!("{}{failure}", ceres_proto::compat::ROTATION_FAILED_PREFIX);
                        st.history.last_result = Some(LastResult::Failed);
                        st.history.last_failure = failure;
                        st.history.clone()
                    };
                    save_history(&dir, &h);
                })
                .await;
            if let Err(e) = failed {
                tracing::error!(error = %e, "cannot record the failed rotation");
            }
        }
        tracing::warn!(
            rotation = id,
            reason = %reason,
            "key rotation abandoned; the current keys stay"
        );
        let tx = self.lock().home.clone();
        if let Some(tx) = tx {
            let abort = RotateAbort {
                rotation: id,
                reason: reason.to_string(),
            };
            let _ = tx.send(Ok(msg(command::Kind::RotateAbort(abort)))).await;
        }
        self.done.send_replace((id, format!("failed: {reason}")));
        Ok(())
    }

    /// Drops a pending rotation before the tunnel starts (its home was
    /// revoked while the agent was stopped): nothing to tell anyone.
    pub fn forget_pending(&self) -> anyhow::Result<()> {
        let mut st = self.lock();
        let t = st.machine.forget();
        // At start, before anything runs: two unlinks, nothing synced.
        self.store.write(&t)?;
        st.machine.apply(t)?;
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

    /// Whether new keys are staged (a rotation past its first step, or
    /// being made permanent).
    pub fn staged(&self) -> bool {
        matches!(
            self.lock().machine.phase(),
            Phase::Staged { .. } | Phase::Promoting { .. }
        )
    }

    /// The pending rotation's id and start, if any. One being made
    /// permanent is done as far as waiting and timing out go.
    pub fn pending(&self) -> Option<(u64, i64)> {
        match self.lock().machine.phase() {
            Phase::Prepared { id, started_unix }
            | Phase::Staged {
                id, started_unix, ..
            } => Some((*id, *started_unix)),
            _ => None,
        }
    }

    /// When the next scheduled rotation is due.
    pub fn next_due(&self) -> SystemTime {
        let since = self.lock().history.keys_since_unix;
        SystemTime::UNIX_EPOCH + Duration::from_secs(since.max(0) as u64) + self.every
    }

    /// Status for cerectl.
    pub fn status(&self) -> RotationStatus {
        let (h, phase) = {
            let st = self.lock();
            (st.history.clone(), st.machine.phase().clone())
        };
        use ceres_proto::{RotationOutcome, RotationStep, compat};
        let (pending, step) = match phase {
            Phase::Prepared { id, .. } => (id, RotationStep::Prepared),
            Phase::Staged { id, .. } => (id, RotationStep::Staged),
            _ => (0, RotationStep::Unspecified),
        };
        let mut status = RotationStatus {
            last_unix: h.last_unix,
            last_outcome: h.last_outcome,
            next_unix: unix_secs(self.next_due()),
            pending,
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

    fn command_of(m: Option<Result<VpsMessage, Status>>) -> Option<command::Kind> {
        match m {
            Some(Ok(VpsMessage {
                kind: Some(vps_message::Kind::Command(Command { kind })),
            })) => kind,
            _ => None,
        }
    }

    fn is_abort(m: Option<Result<VpsMessage, Status>>) -> bool {
        matches!(command_of(m), Some(command::Kind::RotateAbort(_)))
    }

    fn bad_key(e: RotateError) -> BadHomeKey {
        match e {
            RotateError::BadHomeKey { why, .. } => why,
            other => panic!("not a refused home key: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_rotation_keys_are_refused_and_the_current_keys_stay() {
        let (_tmp, tunnel, rotator, mut rx) = setup().await;
        let current = PrivateKey::generate().public_key();
        tunnel
            .params_for(current.as_bytes(), &owner())
            .await
            .unwrap();

        // All zeros.
        let id = rotator.begin().await.unwrap();
        rx.recv().await; // RotatePrepare
        let err = rotator
            .on_home_key(&tunnel, id, &[0u8; 32])
            .await
            .unwrap_err();
        assert_eq!(bad_key(err), BadHomeKey::AllZeros);
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
        assert_eq!(bad_key(err), BadHomeKey::Current);
        assert!(is_abort(rx.recv().await));

        // A key from an earlier rotation (replay).
        let old = PrivateKey::generate().public_key();
        rotator.lock().history.used_home_keys.push(old.to_string());
        let id = rotator.begin().await.unwrap();
        rx.recv().await;
        let err = rotator
            .on_home_key(&tunnel, id, old.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(bad_key(err), BadHomeKey::UsedBefore);

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
            matches!(
                err,
                RotateError::Refused(TransitionError::NotInProgress { id: i }) if i == id - 1
            ),
            "{err:?}"
        );
        // Wrong length.
        let err = rotator
            .on_home_key(&tunnel, id, &[1u8; 5])
            .await
            .unwrap_err();
        assert!(matches!(err, RotateError::KeyLength), "{err:?}");
        assert_eq!(tunnel.home_key(), Some(current.to_string()));
        assert_eq!(rotator.status().completed, 0);
        // Refusals left the last rotation prepared, as it was.
        assert_eq!(rotator.status().pending, id);
        assert_eq!(rotator.status().pending_step, "prepared");
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
            .await
            .unwrap();
        let id = rotator.begin().await.unwrap();
        rx.recv().await; // RotatePrepare
        // The timeout fires exactly while home's key is being handled.
        {
            let (r, t) = (rotator.clone(), tunnel.clone());
            rotator.before_claim.lock().unwrap().0 = Some(Box::new(move || {
                futures::executor::block_on(r.fail(&t, id, FailReason::TimedOut)).unwrap();
            }));
        }
        let new_home = PrivateKey::generate().public_key();
        let err = rotator
            .on_home_key(&tunnel, id, new_home.as_bytes())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RotateError::Refused(TransitionError::NotInProgress { .. })
            ),
            "{err:?}"
        );
        // Home was told to abort once, and nothing took that back.
        let mut aborts = 0;
        while let Ok(m) = rx.try_recv() {
            match command_of(Some(m)) {
                Some(command::Kind::RotateAbort(_)) => aborts += 1,
                Some(command::Kind::RotateCommit(_)) => panic!("a failed rotation was committed"),
                _ => {}
            }
        }
        assert_eq!(aborts, 1);
        assert_eq!(rotator.pending(), None, "the failed rotation came back");
        assert!(!rotator.staged());
        let status = rotator.status();
        assert_eq!(status.last_outcome, "failed: not completed in time");
        assert_eq!(status.last_result(), ceres_proto::RotationOutcome::Failed);
        assert_eq!(status.last_failure, "not completed in time");
        assert!(
            !tmp.path()
                .join("state")
                .join(ceres_state::rotation::NEXT_KEY)
                .exists()
        );
        // A second abort of it (a late timeout) has nothing to undo.
        assert!(matches!(
            rotator.fail(&tunnel, id, FailReason::TimedOut).await,
            Err(RotateError::Refused(TransitionError::NotInProgress { id: stale })) if stale == id
        ));
    }

    #[tokio::test]
    async fn a_new_session_hears_the_pending_step_again() {
        let (_tmp, tunnel, rotator, mut rx) = setup().await;
        let id = rotator.begin().await.unwrap();
        assert!(matches!(
            command_of(rx.recv().await),
            Some(command::Kind::RotatePrepare(RotatePrepare { rotation })) if rotation == id
        ));
        // A second begin joins the rotation in progress.
        assert_eq!(rotator.begin().await.unwrap(), id);
        let (tx, mut rx2) = mpsc::channel(4);
        rotator.attach(&tunnel, tx, 0).await;
        assert!(matches!(
            command_of(rx2.recv().await),
            Some(command::Kind::RotatePrepare(RotatePrepare { rotation })) if rotation == id
        ));
        // A home that holds a rotation the VPS does not know drops it.
        rotator
            .fail(&tunnel, id, FailReason::HomeGaveUp("test".into()))
            .await
            .unwrap();
        let (tx, mut rx3) = mpsc::channel(4);
        rotator.attach(&tunnel, tx, id + 5).await;
        match command_of(rx3.recv().await) {
            Some(command::Kind::RotateAbort(a)) => assert_eq!(a.rotation, id + 5),
            other => panic!("{other:?}"),
        }
    }

    /// `cerectl rotate` hanging up while the rotation is being started (its
    /// RPC is dropped) leaves memory and disk agreeing, and the next home
    /// session hears of it.
    #[tokio::test]
    async fn a_rotation_started_by_a_dropped_request_is_whole() {
        let (tmp, tunnel, rotator, _rx) = setup().await;
        {
            let begin = rotator.begin();
            tokio::pin!(begin);
            let _ = futures::poll!(&mut begin);
        }
        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let id = loop {
            if let Some((id, _)) = rotator.pending() {
                break id;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the rotation on disk never became the one in memory: {:?}",
                Store::new(&dir, Side::Vps).load().unwrap().phase()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            Store::new(&dir, Side::Vps).load().unwrap().phase().id(),
            Some(id)
        );
        let (tx, mut rx) = mpsc::channel(4);
        rotator.attach(&tunnel, tx, 0).await;
        assert!(matches!(
            command_of(rx.recv().await),
            Some(command::Kind::RotatePrepare(RotatePrepare { rotation })) if rotation == id
        ));
    }

    #[tokio::test]
    async fn a_staged_rotation_survives_a_restart_and_is_committed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        // As a VPS that died right after staging left it.
        let store = Store::new(&dir, Side::Vps);
        let mut machine = Rotation::new(Side::Vps);
        let keys = NewKeys {
            key: Secret(PrivateKey::generate().to_bytes()),
            peer: PrivateKey::generate().public_key().0,
            psk: Secret(PresharedKey::generate().0),
        };
        let t = machine.prepare(9, 100).unwrap();
        store.write(&t).unwrap();
        machine.apply(t).unwrap();
        let t = machine
            .stage(9, keys.key.clone(), keys.peer, keys.psk.clone())
            .unwrap();
        store.write(&t).unwrap();
        machine.apply(t).unwrap();
        let rotator = Rotator::load(&dir, Duration::from_secs(60)).unwrap();
        assert!(rotator.staged());
        assert_eq!(rotator.pending(), Some((9, 100)));
        assert_eq!(rotator.status().pending_step, "staged");
        let settings = crate::settings::TunnelSettings {
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
        let (tx, mut rx) = mpsc::channel(4);
        rotator.attach(&tunnel, tx, 9).await;
        match command_of(rx.recv().await) {
            Some(command::Kind::RotateCommit(c)) => {
                assert_eq!(c.rotation, 9);
                assert_eq!(c.vps_public_key, our_key(&keys).public_key().0.to_vec());
                assert_eq!(c.preshared_key, keys.psk.0.to_vec());
            }
            other => panic!("{other:?}"),
        }
        // Home's key again (it reconnected): the same commit, no new keys.
        rotator.on_home_key(&tunnel, 9, &keys.peer).await.unwrap();
        assert!(matches!(
            command_of(rx.recv().await),
            Some(command::Kind::RotateCommit(c)) if c.vps_public_key == our_key(&keys).public_key().0.to_vec()
        ));
        // Another key for it is refused, and changes nothing.
        let err = rotator
            .on_home_key(&tunnel, 9, &PrivateKey::generate().public_key().0)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RotateError::Refused(TransitionError::DifferentKeys { id: 9 })
            ),
            "{err:?}"
        );
        assert_eq!(rotator.pending(), Some((9, 100)));
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
        // And a rotation staged (as the state machine leaves it on disk).
        let store = Store::new(&dir, Side::Vps);
        let mut machine = Rotation::new(Side::Vps);
        let t = machine.prepare(4, 1_700_000_100).unwrap();
        store.write(&t).unwrap();
        machine.apply(t).unwrap();
        let t = machine
            .stage(
                4,
                Secret(PrivateKey::generate().to_bytes()),
                PrivateKey::generate().public_key().0,
                Secret(PresharedKey::generate().0),
            )
            .unwrap();
        store.write(&t).unwrap();
        machine.apply(t).unwrap();
        let status = Rotator::load(&dir, Duration::from_secs(60))
            .unwrap()
            .status();
        assert_eq!(status.last_result(), RotationOutcome::Failed);
        assert_eq!(status.last_failure, "home went away");
        assert_eq!(status.last_outcome, "failed: home went away");
        assert_eq!((status.pending, status.step()), (4, RotationStep::Staged));
        assert_eq!(status.pending_step, "staged");
    }

    #[test]
    fn damaged_rotation_files_refuse_to_load_and_name_the_file() {
        for name in [HISTORY, ceres_state::rotation::RECORD] {
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
        assert!(matches!(
            rotator.begin().await.unwrap_err(),
            RotateError::HomeAway
        ));
    }
}
