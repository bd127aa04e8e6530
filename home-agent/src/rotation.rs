//! Key rotation at home: answers the VPS's RotatePrepare with a new key,
//! installs the VPS's new key beside the old one on RotateCommit, and makes
//! it permanent once the new session carries traffic. Each step is persisted
//! before it is acted on (see `ceres.proto`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ceres_pki::Masked;
use ceres_proto::{HomeMessage, RotateAbort, RotateDone, RotateKey, home_message};
use ceres_state::StateDir;
use ceres_tunnel::{PresharedKey, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::tunnel::HomeTunnel;

const PENDING: &str = "rotation.json";
const NEXT_KEY: &str = "wg.next.key";
/// How long the new keys may take to carry a handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    id: u64,
    #[serde(default)]
    vps_public: Option<String>,
    #[serde(default)]
    psk: Option<Masked<String>>,
}

/// Home's side of rotations.
#[derive(Debug)]
pub struct HomeRotation {
    dir: StateDir,
    pending: Mutex<Option<Pending>>,
    to_vps: Mutex<Option<mpsc::Sender<HomeMessage>>>,
    /// The pending rotation is installed in the engine (in this process).
    staged: std::sync::atomic::AtomicBool,
}

fn crash_point(step: &str) {
    if std::env::var("CERESTEST_CRASH_AT").as_deref() == Ok(step) {
        eprintln!("CERESTEST_CRASH_AT={step}: aborting on purpose");
        std::process::abort();
    }
}

impl HomeRotation {
    /// Loads a rotation persisted before a restart. A file that exists but
    /// does not parse stops the agent (exit 78) with its name: forgetting a
    /// rotation half done could leave home on keys the VPS never finishes
    /// with, and nothing proves dropping it safe.
    pub fn load(dir: &StateDir) -> anyhow::Result<Self> {
        let pending = match dir.read_optional(PENDING)? {
            None => None,
            Some(b) => Some(serde_json::from_slice::<Pending>(&b).map_err(|e| {
                ceres_config::ConfigError::DamagedState {
                    path: dir.join(PENDING),
                    detail: e.to_string(),
                    advice: "restore it from a backup; or, with the home agent stopped, remove it \
                             together with wg.next.key and restart: the VPS then aborts the \
                             rotation and the current keys stay"
                        .into(),
                }
            })?),
        };
        Ok(Self {
            dir: dir.clone(),
            pending: Mutex::new(pending),
            to_vps: Mutex::new(None),
            staged: Default::default(),
        })
    }

    /// The rotation in progress (0: none), told to the VPS in Hello.
    pub fn pending_id(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.id)
            .unwrap_or(0)
    }

    /// The current session's channel to the VPS.
    pub fn attach(&self, tx: mpsc::Sender<HomeMessage>) {
        *self.to_vps.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    async fn send(&self, kind: home_message::Kind) {
        let tx = self
            .to_vps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            let _ = tx.send(HomeMessage { kind: Some(kind) }).await;
        }
    }

    fn next_key(&self) -> anyhow::Result<PrivateKey> {
        let text = self.dir.read_secret(NEXT_KEY)?;
        Ok(std::str::from_utf8(&text)?.trim().parse()?)
    }

    fn save(&self, p: Option<Pending>) -> anyhow::Result<()> {
        if p.is_none() {
            self.staged
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        match &p {
            Some(p) => self.dir.write(PENDING, &serde_json::to_vec_pretty(p)?)?,
            None => {
                self.dir.remove(PENDING)?;
                self.dir.remove(NEXT_KEY)?;
            }
        }
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = p;
        Ok(())
    }

    /// RotatePrepare: make (or repeat) our new key and send its public half.
    pub async fn on_prepare(&self, tunnel: &HomeTunnel, id: u64) -> anyhow::Result<()> {
        let same = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p.id == id);
        let key = if same {
            self.next_key()?
        } else {
            tunnel.abort_rotation().await;
            let key = PrivateKey::generate();
            // The key before the step that names it.
            self.dir
                .write(NEXT_KEY, format!("{}\n", key.to_base64()).as_bytes())?;
            self.save(Some(Pending {
                id,
                vps_public: None,
                psk: None,
            }))?;
            crash_point("home-keyed");
            key
        };
        self.send(home_message::Kind::RotateKey(RotateKey {
            rotation: id,
            home_public_key: key.public_key().as_bytes().to_vec(),
        }))
        .await;
        Ok(())
    }

    /// RotateCommit: install the new keys beside the old ones and handshake.
    pub async fn on_commit(
        self: &Arc<Self>,
        tunnel: &Arc<HomeTunnel>,
        id: u64,
        vps_public: &[u8],
        psk: &[u8],
    ) {
        let known = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p.id == id);
        let (Ok(vps_key), Ok(psk_bytes)) =
            (<[u8; 32]>::try_from(vps_public), <[u8; 32]>::try_from(psk))
        else {
            return self
                .abort_with(tunnel, id, "malformed keys in RotateCommit")
                .await;
        };
        if !known {
            // Already done here (we finished it, then the VPS restarted before
            // it did): our current keys are these, so say so.
            if tunnel.current_vps_key().await == Some(PublicKey(vps_key)) {
                tracing::info!(
                    rotation = id,
                    "rotation already complete here; telling the VPS"
                );
                self.send(home_message::Kind::RotateDone(RotateDone { rotation: id }))
                    .await;
                return;
            }
            return self.abort_with(tunnel, id, "unknown rotation").await;
        }
        let p = Pending {
            id,
            vps_public: Some(PublicKey(vps_key).to_string()),
            psk: Some(Masked(PresharedKey(psk_bytes).to_base64())),
        };
        let same = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|cur| cur.vps_public == p.vps_public && cur.psk == p.psk);
        if same && self.staged.load(std::sync::atomic::Ordering::SeqCst) {
            // A repeat of a commit already being carried out.
            return;
        }
        if let Err(e) = self.save(Some(p)) {
            tracing::error!(error = %e, "cannot persist the rotation");
            return;
        }
        crash_point("home-committed");
        self.stage_and_finish(tunnel).await;
    }

    /// After a restart with a committed rotation: install it again.
    pub async fn resume(self: &Arc<Self>, tunnel: &Arc<HomeTunnel>) {
        let committed = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p.vps_public.is_some());
        if committed {
            tracing::info!("resuming the key rotation committed before the restart");
            self.stage_and_finish(tunnel).await;
        }
    }

    async fn stage_and_finish(self: &Arc<Self>, tunnel: &Arc<HomeTunnel>) {
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let parsed = (|| -> anyhow::Result<(PrivateKey, PublicKey, PresharedKey)> {
            Ok((
                self.next_key()?,
                p.vps_public.as_deref().unwrap_or_default().parse()?,
                p.psk
                    .as_ref()
                    .map(|k| k.0.as_str())
                    .unwrap_or_default()
                    .parse()?,
            ))
        })();
        let (key, vps, psk) = match parsed {
            Ok(k) => k,
            Err(e) => {
                return self
                    .abort_with(tunnel, p.id, &format!("rotation state damaged: {e}"))
                    .await;
            }
        };
        let engine_id = match tunnel.stage_rotation(key.clone(), vps, psk.clone()).await {
            Ok(id) => {
                self.staged.store(true, std::sync::atomic::Ordering::SeqCst);
                id
            }
            Err(e) => return self.abort_with(tunnel, p.id, &format!("{e:#}")).await,
        };
        // Wait off the session loop: reports keep flowing meanwhile.
        let this = self.clone();
        let tunnel = tunnel.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_WAIT, tunnel.wait_rotation(engine_id)).await {
                Ok(Ok(())) => {
                    crash_point("home-promoted");
                    if let Err(e) = tunnel.finalize_rotation(&key, vps, &psk).await {
                        tracing::error!(error = %format!("{e:#}"), "cannot save the rotated keys");
                        return;
                    }
                    let _ = this.save(None);
                    tracing::info!(rotation = p.id, home_key = %key.public_key(), vps_key = %vps, "WireGuard keys and PSK rotated without dropping the tunnel");
                    this.send(home_message::Kind::RotateDone(RotateDone {
                        rotation: p.id,
                    }))
                    .await;
                }
                Ok(Err(e)) => this.abort_with(&tunnel, p.id, &format!("{e:#}")).await,
                Err(_) => {
                    this.abort_with(&tunnel, p.id, "no handshake with the new keys in time")
                        .await
                }
            }
        });
    }

    /// RotateAbort from the VPS.
    pub async fn on_abort(&self, tunnel: &HomeTunnel, id: u64, reason: &str) {
        let ours = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p.id == id);
        if ours {
            tunnel.abort_rotation().await;
            let _ = self.save(None);
            tracing::warn!(
                rotation = id,
                reason,
                "key rotation abandoned by the VPS; the current keys stay"
            );
        }
    }

    async fn abort_with(&self, tunnel: &HomeTunnel, id: u64, reason: &str) {
        tracing::warn!(
            rotation = id,
            reason,
            "key rotation abandoned; the current keys stay"
        );
        let ours = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p.id == id);
        if ours {
            tunnel.abort_rotation().await;
            let _ = self.save(None);
        }
        self.send(home_message::Kind::RotateAbort(RotateAbort {
            rotation: id,
            reason: reason.to_owned(),
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_pending_rotation_refuses_to_load_and_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        dir.write(PENDING, b"{\"id\": 7, \"vps_pub").unwrap();
        let err = HomeRotation::load(&dir).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(PENDING) && text.contains("damaged"), "{text}");
        assert!(
            err.chain().any(|c| c.is::<ceres_config::ConfigError>()),
            "{text}"
        );
        // Absent is fine: no rotation in progress.
        dir.remove(PENDING).unwrap();
        assert_eq!(HomeRotation::load(&dir).unwrap().pending_id(), 0);
    }

    #[test]
    fn debug_of_a_pending_rotation_prints_no_psk() {
        let psk = PresharedKey::generate().to_base64();
        let p = Pending {
            id: 1,
            vps_public: None,
            psk: Some(Masked(psk.clone())),
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains(&psk), "{shown}");
        // Stored as before: the plain base64 string.
        assert!(serde_json::to_string(&p).unwrap().contains(&psk));
    }
}
