//! Key rotation on the VPS: the coordinator of the make-before-break
//! exchange (see `ceres.proto`), with every step persisted first so a crash
//! at any point converges after restart instead of splitting the pair.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ceres_pki::unix_secs;
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
    psk: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct History {
    next_id: u64,
    #[serde(default)]
    last_completed_id: u64,
    completed: u64,
    last_unix: i64,
    last_outcome: String,
    keys_since_unix: i64,
    used_home_keys: Vec<String>,
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
    /// Loads persisted state.
    pub fn load(dir: &StateDir, every: Duration) -> Self {
        let read = |name: &str| dir.read_optional(name).ok().flatten();
        let pending: Option<Pending> = read(PENDING).and_then(|b| serde_json::from_slice(&b).ok());
        let mut history: History = read(HISTORY)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if history.keys_since_unix == 0 {
            history.keys_since_unix = unix_secs(SystemTime::now());
        }
        Self {
            dir: dir.clone(),
            every,
            pending: Mutex::new(pending),
            history: Mutex::new(history),
            home: Mutex::new(None),
            done: watch::Sender::new((0, String::new())),
            finishing: std::sync::atomic::AtomicBool::new(false),
        }
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
            .as_deref()
            .ok_or_else(|| bad("psk"))?
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
        let current = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(mut p) = current.filter(|p| p.id == id) else {
            return self
                .refuse(id, "no such rotation in progress (stale or replayed)")
                .await;
        };
        if p.step == Step::Staged {
            if p.home_public.as_deref() == Some(home_text.as_str()) {
                // A repeat (home reconnected): commit again.
                let tx = self.home.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let (Some(tx), Ok((key, _, psk))) = (tx, self.staged_keys(&p)) {
                    let commit = RotateCommit {
                        rotation: id,
                        vps_public_key: key.public_key().as_bytes().to_vec(),
                        preshared_key: psk.0.to_vec(),
                    };
                    let _ = tx.send(Ok(msg(command::Kind::RotateCommit(commit)))).await;
                }
                return Ok(());
            }
            return self
                .refuse(id, "a different key for a rotation already staged")
                .await;
        }
        if key32 == [0u8; 32] {
            return self.fail(tunnel, id, "the new home key is all zeros").await;
        }
        if tunnel.home_key().as_deref() == Some(home_text.as_str()) {
            return self
                .fail(tunnel, id, "the new home key is the current one")
                .await;
        }
        if self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .used_home_keys
            .contains(&home_text)
        {
            return self
                .fail(
                    tunnel,
                    id,
                    "the new home key was used before (replayed rotation)",
                )
                .await;
        }
        let key = PrivateKey::generate();
        let psk = PresharedKey::generate();
        // Persist before acting: key first, then the step that names it.
        self.dir
            .write(NEXT_KEY, format!("{}\n", key.to_base64()).as_bytes())
            .map_err(|e| Status::internal(e.to_string()))?;
        p.step = Step::Staged;
        p.home_public = Some(home_text);
        p.psk = Some(psk.to_base64());
        self.save_pending(&Some(p.clone()))?;
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        crash_point("vps-staged");
        if let Err(e) = tunnel.stage_rotation(key.clone(), home_public, psk.clone()) {
            return self.fail(tunnel, id, &format!("{e:#}")).await;
        }
        let tx = self.home.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx {
            let commit = RotateCommit {
                rotation: id,
                vps_public_key: key.public_key().as_bytes().to_vec(),
                preshared_key: psk.0.to_vec(),
            };
            let _ = tx.send(Ok(msg(command::Kind::RotateCommit(commit)))).await;
        }
        crash_point("vps-committed");
        Ok(())
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
        h.last_outcome = "ok".into();
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
        let ours = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p.id == id);
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
        if let Some(engine) = tunnel.engine() {
            engine.abort_rotation();
        }
        let _ = self.dir.remove(NEXT_KEY);
        let _ = self.save_pending(&None);
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.last_unix = unix_secs(SystemTime::now());
            h.last_outcome = format!("failed: {reason}");
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
        RotationStatus {
            last_unix: h.last_unix,
            last_outcome: h.last_outcome,
            next_unix: unix_secs(self.next_due()),
            pending: p.as_ref().map(|p| p.id).unwrap_or(0),
            pending_step: p
                .map(|p| format!("{:?}", p.step).to_lowercase())
                .unwrap_or_default(),
            completed: h.completed,
            keys_since_unix: h.keys_since_unix,
        }
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
        let rotator = Rotator::load(&dir, Duration::from_secs(3600));
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
        tunnel.params_for(current.as_bytes()).unwrap();

        // All zeros.
        let id = rotator.begin().await.unwrap();
        rx.recv().await; // RotatePrepare
        let err = rotator
            .on_home_key(&tunnel, id, &[0u8; 32])
            .await
            .unwrap_err();
        assert!(err.message().contains("all zeros"), "{}", err.message());
        assert!(is_abort(rx.recv().await));
        assert!(rotator.status().last_outcome.starts_with("failed"));
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

    #[tokio::test]
    async fn rotation_needs_a_connected_home() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let rotator = Rotator::load(&dir, Duration::from_secs(60));
        assert_eq!(
            rotator.begin().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}
