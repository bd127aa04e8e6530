//! Key rotation at home: answers the VPS's RotatePrepare with a new key,
//! installs the VPS's new key beside the old one on RotateCommit, and makes
//! it permanent once the new session carries traffic. Where the rotation
//! stands is the state machine both agents share
//! ([`ceres_state::rotation`]): each step is on disk before it is acted on
//! (see `ceres.proto`).

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ceres_pki::unix_secs;
use ceres_proto::{HomeMessage, RotateAbort, RotateDone, RotateKey, home_message};
use ceres_state::StateDir;
use ceres_state::rotation::{
    Phase, Rotation, Secret, Side, Store, StoreError, Transition, TransitionError,
};
use ceres_tunnel::{PresharedKey, PrivateKey, PublicKey};
use tokio::sync::mpsc;

use crate::tunnel::HomeTunnel;

/// How long the new keys may take to carry a handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(25);

/// Where the rotation stands, and the session to the VPS: one lock, taken
/// briefly.
#[derive(Debug)]
struct State {
    machine: Rotation,
    to_vps: Option<mpsc::Sender<HomeMessage>>,
}

/// Home's side of rotations.
#[derive(Debug)]
pub struct HomeRotation {
    store: Store,
    /// Transitions one at a time: held from planning a step to applying it,
    /// across its disk write (off the async workers) and the engine calls
    /// that go with it. Readers do not take it.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

impl HomeRotation {
    /// Loads a rotation persisted before a restart. A file that exists but
    /// does not parse stops the agent (exit 78) with its name: forgetting a
    /// rotation half done could leave home on keys the VPS never finishes
    /// with, and nothing proves dropping it safe.
    pub fn load(dir: &StateDir) -> anyhow::Result<Self> {
        let store = Store::new(dir, Side::Home);
        let machine = store.load().map_err(|e| -> anyhow::Error {
            match e {
                StoreError::Damaged { path, detail } => ceres_config::ConfigError::DamagedState {
                    path,
                    detail,
                    advice: "restore it from a backup; or, with the home agent stopped, remove \
                             rotation.json together with wg.next.key and restart: the VPS then \
                             aborts the rotation and the current keys stay"
                        .into(),
                }
                .into(),
                other => other.into(),
            }
        })?;
        Ok(Self {
            store,
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                machine,
                to_vps: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// The rotation in progress (0: none), told to the VPS in Hello.
    pub fn pending_id(&self) -> u64 {
        self.lock().machine.phase().id().unwrap_or(0)
    }

    /// The current session's channel to the VPS.
    pub fn attach(&self, tx: mpsc::Sender<HomeMessage>) {
        self.lock().to_vps = Some(tx);
    }

    async fn send(&self, kind: home_message::Kind) {
        let tx = self.lock().to_vps.clone();
        if let Some(tx) = tx {
            let _ = tx.send(HomeMessage { kind: Some(kind) }).await;
        }
    }

    /// Puts `t` on disk off the async workers, then makes it the phase.
    /// Called with the turn held, from the session loop's command handlers
    /// and this module's own tasks, which are never dropped half-way (the
    /// VPS's RPC handlers can be: see `Rotator::off_workers` there).
    async fn take(&self, t: Transition) -> anyhow::Result<()> {
        let (store, planned) = (self.store.clone(), t.clone());
        ceres_daemon::blocking(move || store.write(&planned)).await??;
        self.lock().machine.apply(t)?;
        Ok(())
    }

    /// Applies a step that lives in this process only (nothing to write).
    fn take_in_memory(&self, t: Transition) {
        debug_assert_eq!(t.write(), ceres_state::rotation::Write::Nothing);
        if let Err(e) = self.lock().machine.apply(t) {
            tracing::error!(error = %e, "rotation state");
        }
    }

    /// Drops the rotation's files and makes `t` (to idle) the phase even if
    /// they could not be removed: the current keys do not change, and a
    /// record left behind is resumed after a restart, where the VPS aborts
    /// or finishes it.
    async fn take_dropping(&self, t: Transition) {
        if let Err(e) = self.take(t.clone()).await {
            tracing::error!(error = %format!("{e:#}"), "cannot remove the rotation state");
            if let Err(e) = self.lock().machine.apply(t) {
                tracing::error!(error = %e, "rotation state");
            }
        }
    }

    /// RotatePrepare: make (or repeat) our new key and send its public half.
    pub async fn on_prepare(&self, tunnel: &HomeTunnel, id: u64) -> anyhow::Result<()> {
        let turn = self.turn.lock().await;
        let key = PrivateKey::generate();
        let planned =
            self.lock()
                .machine
                .make_key(id, Secret(key.to_bytes()), unix_secs(SystemTime::now()));
        let public = match planned {
            Ok(t) => {
                // Whatever was staged for an earlier rotation goes.
                tunnel.abort_rotation().await;
                // The key before the step that names it.
                self.take(t).await?;
                key.public_key()
            }
            Err(TransitionError::Repeated { .. }) => {
                // The VPS asks again (it reconnected): the same key.
                let st = self.lock();
                match st.machine.phase() {
                    Phase::Keyed { key, .. } => PrivateKey::from(key.0).public_key(),
                    p => match p.keys() {
                        Some(k) => PrivateKey::from(k.key.0).public_key(),
                        None => return Ok(()),
                    },
                }
            }
            Err(e) => return Err(e.into()),
        };
        drop(turn);
        self.send(home_message::Kind::RotateKey(RotateKey {
            rotation: id,
            home_public_key: public.as_bytes().to_vec(),
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
        let (Ok(vps_key), Ok(psk_bytes)) =
            (<[u8; 32]>::try_from(vps_public), <[u8; 32]>::try_from(psk))
        else {
            return self
                .abort_with(tunnel, id, "malformed keys in RotateCommit")
                .await;
        };
        let turn = self.turn.lock().await;
        let planned = self.lock().machine.commit(id, vps_key, Secret(psk_bytes));
        match planned {
            Ok(t) => {
                if let Err(e) = self.take(t).await {
                    tracing::error!(error = %format!("{e:#}"), "cannot persist the rotation");
                    return;
                }
            }
            Err(TransitionError::Repeated { .. }) => {
                let carried_out = matches!(
                    self.lock().machine.phase(),
                    Phase::Staged {
                        installed: true,
                        ..
                    } | Phase::Promoting { .. }
                );
                if carried_out {
                    // A repeat of a commit already being carried out.
                    return;
                }
            }
            Err(TransitionError::NotInProgress { .. }) => {
                drop(turn);
                // Already done here (we finished it, then the VPS restarted
                // before it did): our current keys are these, so say so.
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
            Err(e) => {
                drop(turn);
                return self.abort_with(tunnel, id, &e.to_string()).await;
            }
        }
        drop(turn);
        self.stage_and_finish(tunnel).await;
    }

    /// After a restart with a committed rotation: install it again.
    pub async fn resume(self: &Arc<Self>, tunnel: &Arc<HomeTunnel>) {
        if matches!(self.lock().machine.phase(), Phase::Staged { .. }) {
            tracing::info!("resuming the key rotation committed before the restart");
            self.stage_and_finish(tunnel).await;
        }
    }

    /// Installs the staged keys in the engine, then waits (off the session
    /// loop) for them to carry a handshake and makes them permanent.
    async fn stage_and_finish(self: &Arc<Self>, tunnel: &Arc<HomeTunnel>) {
        let turn = self.turn.lock().await;
        let phase = self.lock().machine.phase().clone();
        let Phase::Staged {
            id,
            keys,
            installed: false,
            ..
        } = phase
        else {
            return;
        };
        let (key, vps, psk) = (
            PrivateKey::from(keys.key.0),
            PublicKey(keys.peer),
            PresharedKey(keys.psk.0),
        );
        let engine_id = match tunnel.stage_rotation(key.clone(), vps, psk.clone()).await {
            Ok(engine_id) => {
                let planned = self.lock().machine.installed(id);
                if let Ok(t) = planned {
                    self.take_in_memory(t);
                }
                engine_id
            }
            Err(e) => {
                drop(turn);
                return self.abort_with(tunnel, id, &format!("{e:#}")).await;
            }
        };
        drop(turn);
        // Wait off the session loop: reports keep flowing meanwhile.
        let this = self.clone();
        let tunnel = tunnel.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_WAIT, tunnel.wait_rotation(engine_id)).await {
                Ok(Ok(())) => this.promote(&tunnel, id, key, vps, psk).await,
                Ok(Err(e)) => this.abort_with(&tunnel, id, &format!("{e:#}")).await,
                Err(_) => {
                    this.abort_with(&tunnel, id, "no handshake with the new keys in time")
                        .await
                }
            }
        });
    }

    /// The new keys carried a handshake: make them the current ones.
    async fn promote(
        &self,
        tunnel: &HomeTunnel,
        id: u64,
        key: PrivateKey,
        vps: PublicKey,
        psk: PresharedKey,
    ) {
        let turn = self.turn.lock().await;
        let planned = self.lock().machine.promote(id);
        let Ok(t) = planned else {
            // Abandoned meanwhile.
            return;
        };
        self.take_in_memory(t);
        if let Err(e) = tunnel.finalize_rotation(&key, vps, &psk).await {
            tracing::error!(error = %format!("{e:#}"), "cannot save the rotated keys");
            let planned = self.lock().machine.unpromote(id);
            if let Ok(t) = planned {
                self.take_in_memory(t);
            }
            return;
        }
        let planned = self.lock().machine.finish(id);
        if let Ok(t) = planned {
            self.take_dropping(t).await;
        }
        drop(turn);
        tracing::info!(rotation = id, home_key = %key.public_key(), vps_key = %vps, "WireGuard keys and PSK rotated without dropping the tunnel");
        self.send(home_message::Kind::RotateDone(RotateDone { rotation: id }))
            .await;
    }

    /// Drops rotation `id` here, engine and files; false when it is not ours
    /// (stale) or is being made permanent.
    async fn drop_rotation(&self, tunnel: &HomeTunnel, id: u64) -> bool {
        let _turn = self.turn.lock().await;
        let planned = self.lock().machine.abort(id);
        let Ok(t) = planned else {
            return false;
        };
        tunnel.abort_rotation().await;
        self.take_dropping(t).await;
        true
    }

    /// RotateAbort from the VPS.
    pub async fn on_abort(&self, tunnel: &HomeTunnel, id: u64, reason: &str) {
        if self.drop_rotation(tunnel, id).await {
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
        self.drop_rotation(tunnel, id).await;
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
    use ceres_state::rotation::{NEXT_KEY, RECORD};

    #[test]
    fn a_damaged_pending_rotation_refuses_to_load_and_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        dir.write(RECORD, b"{\"id\": 7, \"vps_pub").unwrap();
        let err = HomeRotation::load(&dir).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(RECORD) && text.contains("damaged"), "{text}");
        assert!(
            err.chain().any(|c| c.is::<ceres_config::ConfigError>()),
            "{text}"
        );
        // A record whose new key is gone: damaged too, and the key is named.
        dir.write(RECORD, b"{\"id\": 7}").unwrap();
        let err = HomeRotation::load(&dir).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(NEXT_KEY) && text.contains("damaged"),
            "{text}"
        );
        assert!(
            err.chain().any(|c| c.is::<ceres_config::ConfigError>()),
            "{text}"
        );
        // Absent is fine: no rotation in progress.
        dir.remove(RECORD).unwrap();
        assert_eq!(HomeRotation::load(&dir).unwrap().pending_id(), 0);
    }

    fn home(tmp: &tempfile::TempDir) -> (StateDir, Arc<HomeTunnel>) {
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        // The tunnel off: no device, no root; staging in it fails.
        let settings = crate::settings::HomeSettings {
            control_address: None,
            name: "home".into(),
            reconnect_max: Duration::from_secs(30),
            tunnel: false,
            tunnel_ifname: "ceres-test".into(),
            wg_listen: "127.0.0.1:0".parse().unwrap(),
            wg_uapi_dir: tmp.path().join("uapi"),
            mail_server: "127.0.0.1".parse().unwrap(),
            egress: false,
            egress_from: Vec::new(),
            egress_ports: Vec::new(),
            probe_interval: Duration::from_secs(60),
            forward_max_per_port: 10,
            metrics_listen: None,
            mail_stack: None,
            uplink_probe_interval: Duration::from_secs(2),
            uplink_holddown: Duration::from_secs(30),
            uplink_slot: 0,
            failover: None,
        };
        let tunnel =
            HomeTunnel::new(&settings, &dir, &tokio_util::sync::CancellationToken::new()).unwrap();
        (dir, Arc::new(tunnel))
    }

    fn key_of(m: Option<HomeMessage>) -> (u64, Vec<u8>) {
        match m.and_then(|m| m.kind) {
            Some(home_message::Kind::RotateKey(k)) => (k.rotation, k.home_public_key),
            other => panic!("not a RotateKey: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_prepare_makes_one_key_that_survives_a_restart_and_an_abort_drops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, tunnel) = home(&tmp);
        let rotation = HomeRotation::load(&dir).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        rotation.attach(tx);
        rotation.on_prepare(&tunnel, 5).await.unwrap();
        let (id, first) = key_of(rx.recv().await);
        assert_eq!((id, rotation.pending_id()), (5, 5));
        assert!(dir.exists(NEXT_KEY));
        // The VPS asks again: the same key.
        rotation.on_prepare(&tunnel, 5).await.unwrap();
        assert_eq!(key_of(rx.recv().await).1, first);
        // A restart keeps it.
        let rotation = HomeRotation::load(&dir).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        rotation.attach(tx);
        assert_eq!(rotation.pending_id(), 5);
        rotation.on_prepare(&tunnel, 5).await.unwrap();
        assert_eq!(key_of(rx.recv().await).1, first);
        // A stale abort changes nothing; the VPS's abort drops it.
        rotation.on_abort(&tunnel, 4, "stale").await;
        assert_eq!(rotation.pending_id(), 5);
        rotation.on_abort(&tunnel, 5, "test").await;
        assert_eq!(rotation.pending_id(), 0);
        assert!(!dir.exists(NEXT_KEY) && !dir.exists(RECORD));
        // A new rotation makes a new key.
        rotation.on_prepare(&tunnel, 6).await.unwrap();
        assert_ne!(key_of(rx.recv().await).1, first);
    }

    #[tokio::test]
    async fn a_commit_for_no_rotation_here_is_answered_with_an_abort() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, tunnel) = home(&tmp);
        let rotation = Arc::new(HomeRotation::load(&dir).unwrap());
        let (tx, mut rx) = mpsc::channel(4);
        rotation.attach(tx);
        rotation.on_commit(&tunnel, 3, &[1; 32], &[2; 32]).await;
        match rx.recv().await.and_then(|m| m.kind) {
            Some(home_message::Kind::RotateAbort(a)) => {
                assert_eq!(a.rotation, 3);
                assert_eq!(a.reason, "unknown rotation");
            }
            other => panic!("{other:?}"),
        }
        // Malformed keys, for the rotation in progress: it is dropped.
        rotation.on_prepare(&tunnel, 4).await.unwrap();
        rx.recv().await;
        rotation.on_commit(&tunnel, 4, &[1; 5], &[2; 32]).await;
        assert!(matches!(
            rx.recv().await.and_then(|m| m.kind),
            Some(home_message::Kind::RotateAbort(_))
        ));
        assert_eq!(rotation.pending_id(), 0);
    }

    #[tokio::test]
    async fn a_commit_the_engine_cannot_take_is_abandoned_and_the_vps_told() {
        // The tunnel is off here: staging fails as an engine refusal would.
        let tmp = tempfile::tempdir().unwrap();
        let (dir, tunnel) = home(&tmp);
        let rotation = Arc::new(HomeRotation::load(&dir).unwrap());
        let (tx, mut rx) = mpsc::channel(4);
        rotation.attach(tx);
        rotation.on_prepare(&tunnel, 4).await.unwrap();
        rx.recv().await;
        rotation.on_commit(&tunnel, 4, &[1; 32], &[2; 32]).await;
        match rx.recv().await.and_then(|m| m.kind) {
            Some(home_message::Kind::RotateAbort(a)) => {
                assert_eq!(a.rotation, 4);
                assert!(a.reason.contains("not running"), "{}", a.reason);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rotation.pending_id(), 0);
        assert!(!dir.exists(RECORD) && !dir.exists(NEXT_KEY));
    }
}
