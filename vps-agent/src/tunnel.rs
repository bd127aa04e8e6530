//! The VPS end of the WireGuard tunnel: our static key, the home peer
//! negotiated over the control plane, and the pre-shared key made for it.
//!
//! The home peer is persisted, so after a restart the VPS accepts home's
//! WireGuard packets at once — before (and without) the control session.

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use ceres_agent::report::{tunnel_down, tunnel_report};
use ceres_pki::Masked;
use ceres_proto::{TunnelParams, TunnelReport};
use ceres_state::StateDir;
use ceres_tunnel::{PeerConfig, PresharedKey, PrivateKey, PublicKey, Tunnel, TunnelConfig};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::settings::TunnelSettings;

/// The VPS routes home's allowed networks (its tunnel address, Docker
/// mail networks) in the main table.
const ROUTE_ALLOWED_IPS: bool = true;

/// The home peer, as stored in `home-peer.json` (0600: it holds the PSK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HomePeer {
    public_key: String,
    preshared_key: Masked<String>,
    /// The certificate lineage whose session set this key: revoking it
    /// removes the peer. Absent in files of older versions until home's
    /// next session claims the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<Owner>,
}

/// Why home's WireGuard key was not accepted ([`VpsTunnel::params_for`]).
/// The service decides what a client sees of each (`service/errors.rs`).
#[derive(Debug, thiserror::Error)]
pub enum HomeKeyError {
    /// Home sent a key of the wrong length.
    #[error("the WireGuard public key must be 32 bytes")]
    Length,
    /// The all-zero key: no one holds its private half.
    #[error("the WireGuard public key is all zeros")]
    AllZeros,
    /// `home-peer.json` could not be written.
    #[error("cannot save home's WireGuard peer: {0}")]
    Save(#[from] ceres_state::StateError),
    /// The peer could not be encoded for `home-peer.json`.
    #[error("cannot encode home's WireGuard peer: {0}")]
    Encode(#[from] serde_json::Error),
    /// The engine did not take the new peer.
    #[error("the tunnel engine refused home's peer: {0}")]
    Engine(String),
    /// The stored pre-shared key no longer parses.
    #[error("stored PSK damaged")]
    DamagedPsk,
    /// The agent is stopping: the change was not made.
    #[error(transparent)]
    ShuttingDown(#[from] ceres_daemon::ShuttingDown),
}

/// Who owns home's WireGuard key: the certificate lineage (see
/// `certs.rs`) of the session that set it, and its enrolment name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// First serial of the lineage.
    pub lineage: String,
    /// Name given at enrolment.
    pub name: String,
}

/// Reads `home-peer.json`. A damaged file stops the agent: starting without
/// it would accept any key home offers next with a fresh PSK, and forget
/// which certificate owned the tunnel (so a revocation could miss it).
fn load_home_peer(dir: &StateDir) -> anyhow::Result<Option<HomePeer>> {
    let Some(bytes) = dir.read_optional(HOME_PEER)? else {
        return Ok(None);
    };
    let peer: HomePeer = serde_json::from_slice(&bytes).map_err(|e| damaged(dir, e.to_string()))?;
    let key_ok = peer.public_key.parse::<PublicKey>().is_ok();
    let psk_ok = peer.preshared_key.0.parse::<PresharedKey>().is_ok();
    if !key_ok || !psk_ok {
        return Err(damaged(
            dir,
            "the public key or pre-shared key does not parse".into(),
        )
        .into());
    }
    Ok(Some(peer))
}

/// Who owns the stored home peer, read before the tunnel starts.
pub fn stored_owner(dir: &StateDir) -> anyhow::Result<Option<Owner>> {
    Ok(load_home_peer(dir)?.and_then(|p| p.owner))
}

/// Removes the stored home peer (before the tunnel starts).
pub fn forget_stored(dir: &StateDir) -> anyhow::Result<()> {
    Ok(dir.remove(HOME_PEER)?)
}

fn damaged(dir: &StateDir, detail: String) -> ceres_config::ConfigError {
    ceres_config::ConfigError::DamagedState {
        path: dir.join(HOME_PEER),
        detail,
        advice: "restore it from a backup, or remove it and restart: home's agent then \
                 offers its key again and gets a new pre-shared key on its next session"
            .into(),
    }
}

const HOME_PEER: &str = "home-peer.json";

/// Persistent keepalive home uses: NAT and CGNAT UDP mappings often expire
/// after 30 s.
pub const HOME_KEEPALIVE_SECS: u16 = 25;

/// The VPS end of the tunnel.
#[derive(Debug)]
pub struct VpsTunnel {
    settings: TunnelSettings,
    dir: StateDir,
    public_key: Arc<Mutex<PublicKey>>,
    /// Shared with the blocking pool, where `ip route` runs for it.
    engine: Option<Arc<Tunnel>>,
    /// The home peer as readers see it: replaced only once a change is on
    /// disk and in the engine.
    peer: Arc<Mutex<Option<HomePeer>>>,
    /// Changes of the peer or of our key, one at a time. A change runs off
    /// the async workers (synced writes, `ip route`) as one piece that
    /// carries this lock and publishes its result itself, so it completes
    /// even if its caller is dropped (a session whose home hung up).
    changes: Arc<tokio::sync::Mutex<()>>,
}

/// Writes `home-peer.json`: blocking (the write is synced).
fn save_peer(dir: &StateDir, peer: &HomePeer) -> Result<(), HomeKeyError> {
    Ok(dir.write(HOME_PEER, &serde_json::to_vec_pretty(peer)?)?)
}

fn host_net(net: IpNet) -> IpNet {
    IpNet::new(net.addr(), if net.addr().is_ipv4() { 32 } else { 128 }).unwrap_or(net)
}

/// An optional address as the protocol carries it: empty for none.
pub fn net_text(net: Option<IpNet>) -> String {
    net.map(|n| n.to_string()).unwrap_or_default()
}

impl VpsTunnel {
    /// Loads (or makes) the VPS key and starts the tunnel with the stored
    /// home peer, if any. With the tunnel disabled only the key is loaded.
    pub async fn start(
        settings: &TunnelSettings,
        dir: &StateDir,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let key: PrivateKey = ceres_agent::wgkey::load_or_create(dir)?;
        let public_key = key.public_key();
        let stored = load_home_peer(dir)?;
        let mut this = Self {
            settings: settings.clone(),
            dir: dir.clone(),
            public_key: Arc::new(Mutex::new(public_key)),
            engine: None,
            peer: Arc::new(Mutex::new(stored.clone())),
            changes: Arc::new(tokio::sync::Mutex::new(())),
        };
        if !settings.enabled {
            return Ok(this);
        }
        let config = TunnelConfig {
            ifname: settings.ifname.clone(),
            mtu: settings.mtu,
            address: settings.vps_address,
            extra_addresses: settings.vps_address6.into_iter().collect(),
            listen: settings.listen,
            private_key: key,
            route_allowed_ips: ROUTE_ALLOWED_IPS,
            uapi_dir: Some(settings.uapi_dir.clone()),
        };
        let peer = stored.as_ref().and_then(|p| this.peer_config(p).ok());
        let engine = Tunnel::start(config, peer, cancel.child_token()).await.with_context(|| {
            format!(
                "starting the WireGuard tunnel {} on UDP {} (needs root or CAP_NET_ADMIN; CERES_TUNNEL=off runs the control plane alone)",
                settings.ifname, settings.listen
            )
        })?;
        tracing::info!(ifname = %settings.ifname, listen = %settings.listen, public_key = %public_key, "tunnel up");
        this.engine = Some(Arc::new(engine));
        Ok(this)
    }

    /// Home's tunnel addresses, one host network per family.
    fn home_nets(&self) -> Vec<IpNet> {
        std::iter::once(self.settings.home_address)
            .chain(self.settings.home_address6)
            .map(host_net)
            .collect()
    }

    fn peer_config(&self, peer: &HomePeer) -> anyhow::Result<PeerConfig> {
        Ok(PeerConfig {
            public_key: peer.public_key.parse()?,
            preshared_key: Some(peer.preshared_key.0.parse()?),
            endpoint: None,
            allowed_ips: self.home_nets(),
            persistent_keepalive: None,
        })
    }

    fn peer_guard(&self) -> MutexGuard<'_, Option<HomePeer>> {
        self.peer.locked()
    }

    /// Accepts home's public key from a session of `owner` and returns the
    /// parameters home needs. A new key gets a new pre-shared key; the same
    /// key keeps the old one, so a reconnecting home agent does not disturb
    /// a working tunnel. The key's owner becomes `owner`. A change is saved
    /// and routed (blocking work, off the async workers) before it is used.
    pub async fn params_for(
        &self,
        home_key: &[u8],
        owner: &Owner,
    ) -> Result<TunnelParams, HomeKeyError> {
        let key: [u8; 32] = home_key.try_into().map_err(|_| HomeKeyError::Length)?;
        if key == [0u8; 32] {
            return Err(HomeKeyError::AllZeros);
        }
        let home_public = PublicKey(key).to_string();
        let change = self.changes.clone().lock_owned().await;
        let current = self.peer_guard().clone();
        let peer = match current {
            Some(p) if p.public_key == home_public && p.owner.as_ref() == Some(owner) => p,
            Some(p) if p.public_key == home_public => {
                // The key's holder presents it: it owns it from now on
                // (files of older versions name no owner).
                let claimed = HomePeer {
                    owner: Some(owner.clone()),
                    ..p
                };
                let (dir, saved, peer) = (self.dir.clone(), claimed.clone(), self.peer.clone());
                ceres_daemon::blocking(move || -> Result<(), HomeKeyError> {
                    let _change = change;
                    save_peer(&dir, &saved)?;
                    *peer.locked() = Some(saved);
                    Ok(())
                })
                .await??;
                tracing::info!(owner = %owner.name, lineage = %owner.lineage, "home WireGuard key claimed by its certificate");
                claimed
            }
            _ => {
                let fresh = HomePeer {
                    public_key: home_public,
                    preshared_key: Masked(PresharedKey::generate().to_base64()),
                    owner: Some(owner.clone()),
                };
                let cfg = self
                    .peer_config(&fresh)
                    .map_err(|e| HomeKeyError::Engine(format!("{e:#}")))?;
                let (dir, saved, engine, peer) = (
                    self.dir.clone(),
                    fresh.clone(),
                    self.engine.clone(),
                    self.peer.clone(),
                );
                // Saved, then in the engine (whose routes run `ip`), then
                // published: one piece of blocking work.
                ceres_daemon::blocking(move || -> Result<(), HomeKeyError> {
                    let _change = change;
                    save_peer(&dir, &saved)?;
                    if let Some(engine) = engine {
                        engine
                            .set_peer(cfg)
                            .map_err(|e| HomeKeyError::Engine(e.to_string()))?;
                    }
                    *peer.locked() = Some(saved);
                    Ok(())
                })
                .await??;
                tracing::info!(home_key = %fresh.public_key, "home WireGuard key accepted");
                fresh
            }
        };
        let psk: PresharedKey = peer
            .preshared_key
            .0
            .parse()
            .map_err(|_| HomeKeyError::DamagedPsk)?;
        Ok(TunnelParams {
            vps_public_key: self.public_key().as_bytes().to_vec(),
            preshared_key: psk.0.to_vec(),
            vps_address: self.settings.vps_address.to_string(),
            home_address: self.settings.home_address.to_string(),
            endpoint: self.settings.endpoint.clone(),
            mtu: self.settings.mtu as u32,
            keepalive_secs: HOME_KEEPALIVE_SECS as u32,
            vps_address6: net_text(self.settings.vps_address6),
            home_address6: net_text(self.settings.home_address6),
        })
    }

    /// Who owns home's current key, if known.
    pub fn owner(&self) -> Option<Owner> {
        self.peer_guard().as_ref().and_then(|p| p.owner.clone())
    }

    /// Cuts home off: the peer leaves the engine (sessions, a staged
    /// rotation and routes with it) and `home-peer.json` is removed, so a
    /// restart does not bring it back. Returns the removed key. The route
    /// removal (`ip`) runs off the async workers.
    pub async fn remove_home(&self) -> anyhow::Result<Option<String>> {
        let change = self.changes.clone().lock_owned().await;
        let (dir, engine, peer) = (self.dir.clone(), self.engine.clone(), self.peer.clone());
        ceres_daemon::blocking(move || -> anyhow::Result<Option<String>> {
            let _change = change;
            if let Some(engine) = engine {
                engine.abort_rotation();
                engine.remove_peer();
            }
            dir.remove(HOME_PEER)?;
            Ok(peer.locked().take().map(|p| p.public_key))
        })
        .await?
    }

    /// Our current static public key.
    pub fn public_key(&self) -> PublicKey {
        *self.public_key.locked()
    }

    /// The engine, when the tunnel runs.
    pub fn engine(&self) -> Option<&Tunnel> {
        self.engine.as_deref()
    }

    /// The current pre-shared key, if a home peer is known.
    pub fn current_psk(&self) -> Option<PresharedKey> {
        self.peer_guard()
            .as_ref()
            .and_then(|p| p.preshared_key.0.parse().ok())
    }

    /// Home's current public key, if known.
    pub fn home_key(&self) -> Option<String> {
        self.peer_guard().as_ref().map(|p| p.public_key.clone())
    }

    /// Installs the new keys beside the current ones (make-before-break).
    pub fn stage_rotation(
        &self,
        new_key: PrivateKey,
        home_public: PublicKey,
        psk: PresharedKey,
    ) -> anyhow::Result<()> {
        let engine = self.engine.as_ref().context("the tunnel is not running")?;
        let peer = PeerConfig {
            public_key: home_public,
            preshared_key: Some(psk),
            endpoint: None,
            allowed_ips: self.home_nets(),
            persistent_keepalive: None,
        };
        engine.replace_rotation(Some(new_key), peer)?;
        Ok(())
    }

    /// Makes the rotated keys the current ones on disk and in memory. The
    /// engine has already moved to them (or will with `commit`). The synced
    /// writes run off the async workers.
    pub async fn finalize_rotation(
        &self,
        new_key: &PrivateKey,
        home_public: PublicKey,
        psk: &PresharedKey,
        commit: bool,
    ) -> anyhow::Result<()> {
        if let (true, Some(engine)) = (commit, &self.engine) {
            if engine.rotation().staged.is_some() {
                let _ = engine.commit_rotation();
            }
        }
        let change = self.changes.clone().lock_owned().await;
        let owner = self.peer_guard().as_ref().and_then(|p| p.owner.clone());
        let fresh = HomePeer {
            public_key: home_public.to_string(),
            preshared_key: Masked(psk.to_base64()),
            // A rotation keeps the owner: the same home, new keys.
            owner,
        };
        let (dir, peer, public_key) =
            (self.dir.clone(), self.peer.clone(), self.public_key.clone());
        let key_text = Masked(format!("{}\n", new_key.to_base64()));
        let new_public = new_key.public_key();
        // The peer first: with the old key and the new peer on disk a restart
        // still converges (the next rotation replaces both); the reverse
        // order could pair a new key with an old PSK.
        ceres_daemon::blocking(move || -> anyhow::Result<()> {
            let _change = change;
            save_peer(&dir, &fresh)?;
            dir.write(ceres_agent::wgkey::WG_KEY, key_text.0.as_bytes())?;
            *peer.locked() = Some(fresh);
            *public_key.locked() = new_public;
            Ok(())
        })
        .await?
    }

    /// The VPS end's report.
    pub fn report(&self) -> TunnelReport {
        match &self.engine {
            Some(engine) => tunnel_report(&engine.stats(), &self.settings.vps_address.to_string()),
            None => {
                let mut r = tunnel_down(
                    &self.settings.ifname,
                    ceres_proto::TunnelState::Off,
                    ceres_proto::compat::TUNNEL_OFF,
                );
                r.public_key = self.public_key().as_bytes().to_vec();
                r
            }
        }
    }

    /// Stops the engine.
    pub async fn shutdown(self) {
        if let Some(engine) = self.engine {
            match Arc::try_unwrap(engine) {
                Ok(engine) => engine.shutdown().await,
                // Blocking work still holds it (it ends with the process).
                Err(_) => tracing::warn!("tunnel engine still in use at shutdown"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tmp: &std::path::Path) -> TunnelSettings {
        TunnelSettings {
            enabled: false,
            ifname: "ceres-test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            endpoint: "127.0.0.1:51820".into(),
            vps_address: "10.77.77.1/24".parse().unwrap(),
            home_address: "10.77.77.2/24".parse().unwrap(),
            vps_address6: None,
            home_address6: None,
            mtu: 1420,
            uapi_dir: tmp.join("uapi"),
        }
    }

    #[tokio::test]
    async fn a_damaged_home_peer_refuses_to_start_and_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        for bad in [
            &b"{\"public_key\": \"abc"[..],
            br#"{"public_key": "not a key", "preshared_key": "nor this"}"#,
        ] {
            dir.write(HOME_PEER, bad).unwrap();
            let err = VpsTunnel::start(&settings(tmp.path()), &dir, &CancellationToken::new())
                .await
                .unwrap_err();
            let text = format!("{err:#}");
            assert!(
                text.contains(HOME_PEER) && text.contains("damaged"),
                "{text}"
            );
            assert!(
                err.chain().any(|c| c.is::<ceres_config::ConfigError>()),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn bad_home_keys_are_refused_and_a_known_key_keeps_its_psk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let tunnel = VpsTunnel::start(&settings(tmp.path()), &dir, &CancellationToken::new())
            .await
            .unwrap();
        let owner = Owner {
            lineage: "01".into(),
            name: "home".into(),
        };
        assert!(matches!(
            tunnel.params_for(&[1u8; 5], &owner).await,
            Err(HomeKeyError::Length)
        ));
        assert!(matches!(
            tunnel.params_for(&[0u8; 32], &owner).await,
            Err(HomeKeyError::AllZeros)
        ));
        assert_eq!(tunnel.home_key(), None, "a refused key was stored");
        let key = PrivateKey::generate().public_key();
        let first = tunnel.params_for(key.as_bytes(), &owner).await.unwrap();
        let again = tunnel.params_for(key.as_bytes(), &owner).await.unwrap();
        assert_eq!(first.preshared_key, again.preshared_key);
        assert_eq!(tunnel.home_key(), Some(key.to_string()));
        assert_eq!(tunnel.owner(), Some(owner));
    }

    /// A session that goes away while its key change is being written
    /// (its client hung up) still leaves the change whole: on disk and in
    /// what the agent reads, the same.
    #[tokio::test]
    async fn a_key_change_completes_when_its_session_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let tunnel = VpsTunnel::start(&settings(tmp.path()), &dir, &CancellationToken::new())
            .await
            .unwrap();
        let key = PrivateKey::generate().public_key();
        let owner = Owner {
            lineage: "01".into(),
            name: "home".into(),
        };
        {
            let change = tunnel.params_for(key.as_bytes(), &owner);
            tokio::pin!(change);
            // One poll hands the write to the blocking pool; then the
            // session is gone.
            let _ = futures::poll!(&mut change);
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tunnel.home_key() != Some(key.to_string()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dropped change was never published"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let on_disk = load_home_peer(&dir).unwrap().unwrap();
        assert_eq!(on_disk.public_key, key.to_string());
        // The next session with that key gets the PSK on disk, unchanged.
        let params = tunnel.params_for(key.as_bytes(), &owner).await.unwrap();
        assert_eq!(
            PresharedKey(params.preshared_key.try_into().unwrap()).to_base64(),
            on_disk.preshared_key.0
        );
        assert_eq!(load_home_peer(&dir).unwrap().unwrap(), on_disk);
    }

    #[tokio::test]
    async fn a_tunnel_off_reports_its_state_and_the_sentence_older_readers_know() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let tunnel = VpsTunnel::start(&settings(tmp.path()), &dir, &CancellationToken::new())
            .await
            .unwrap();
        let r = tunnel.report();
        assert_eq!(r.state(), ceres_proto::TunnelState::Off);
        assert!(!r.running);
        // What cerectl of the previous release looks for.
        assert!(r.error.contains("CERES_TUNNEL=off"), "{}", r.error);
        assert_eq!(r.public_key.len(), 32);
    }

    #[test]
    fn debug_of_the_home_peer_prints_no_psk() {
        let psk = PresharedKey::generate().to_base64();
        let peer = HomePeer {
            public_key: "k".into(),
            preshared_key: Masked(psk.clone()),
            owner: None,
        };
        assert!(!format!("{peer:?}").contains(&psk));
    }
}
