//! The home end of the WireGuard tunnel, configured from what the VPS sent
//! in its Welcome. The parameters are kept on disk so that after a restart
//! the tunnel comes up at once, even while the VPS control plane is away.

use ceres_sync::Unpoison;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use ceres_agent::report::{tunnel_down, tunnel_report};
use ceres_proto::{TunnelParams, TunnelReport};
use ceres_state::StateDir;
use ceres_tunnel::{PeerConfig, PresharedKey, PrivateKey, PublicKey, Tunnel, TunnelConfig};
use ipnet::IpNet;
use prost::Message;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::settings::HomeSettings;

/// Home allows every destination through the tunnel (outbound mail goes
/// anywhere) but routes into it only by policy, see `egress`.
const ROUTE_ALLOWED_IPS: bool = false;

/// Stored parameters (protobuf; 0600: they hold the pre-shared key).
const PARAMS_FILE: &str = "tunnel.params";

/// A running (or not) home tunnel.
#[derive(Debug)]
pub struct HomeTunnel {
    settings: HomeSettings,
    dir: StateDir,
    key: std::sync::Mutex<PrivateKey>,
    cancel: CancellationToken,
    state: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    engine: Option<Tunnel>,
    /// Start time of the VPS agent we last configured against.
    vps_started: i64,
    /// VPS keys rotated away from in this process: a Welcome built just
    /// before the VPS finished a rotation may still carry one, and applying
    /// it would undo the rotation at this end only.
    retired_vps_keys: Vec<Vec<u8>>,
    params: Option<TunnelParams>,
    error: Option<String>,
}

/// The tunnel's addresses as the VPS decided them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelAddrs {
    /// Home's IPv4 tunnel address.
    pub home: IpAddr,
    /// The VPS's IPv4 tunnel address.
    pub vps: IpAddr,
    /// Home's IPv6 tunnel address (`None`: IPv4-only tunnel).
    pub home6: Option<IpAddr>,
    /// The VPS's IPv6 tunnel address.
    pub vps6: Option<IpAddr>,
}

impl TunnelAddrs {
    /// The VPS's addresses, IPv4 first.
    pub fn vps_all(&self) -> Vec<IpAddr> {
        std::iter::once(self.vps).chain(self.vps6).collect()
    }
}

/// An optional address from the VPS: empty means none (an IPv4-only tunnel,
/// or a VPS agent from before dual stack).
fn optional_net(text: &str, what: &str) -> anyhow::Result<Option<IpNet>> {
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<IpNet>() {
        Ok(net @ IpNet::V6(_)) => Ok(Some(net)),
        _ => anyhow::bail!("{what} from the VPS is not an IPv6 network: {text:?}"),
    }
}

fn host_net(net: IpNet) -> IpNet {
    IpNet::new(net.addr(), if net.addr().is_ipv4() { 32 } else { 128 }).unwrap_or(net)
}

async fn endpoint(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = text.parse() {
        return Ok(sa);
    }
    tokio::net::lookup_host(text)
        .await
        .with_context(|| format!("resolving the WireGuard endpoint {text}"))?
        .next()
        .with_context(|| format!("{text} resolves to no address"))
}

impl HomeTunnel {
    /// Loads (or makes) home's WireGuard key. Starts nothing yet.
    pub fn new(
        settings: &HomeSettings,
        dir: &StateDir,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let key = ceres_agent::wgkey::load_or_create(dir)?;
        Ok(Self {
            settings: settings.clone(),
            dir: dir.clone(),
            key: std::sync::Mutex::new(key),
            cancel: cancel.clone(),
            state: Mutex::new(Running::default()),
        })
    }

    /// Home's public key, sent in Hello.
    pub fn public_key(&self) -> PublicKey {
        self.private_key().public_key()
    }

    fn private_key(&self) -> PrivateKey {
        self.key.locked().clone()
    }

    /// Installs the new keys beside the current ones and handshakes with
    /// them; returns the engine's id to wait on.
    pub async fn stage_rotation(
        &self,
        new_key: PrivateKey,
        vps_public: PublicKey,
        psk: PresharedKey,
    ) -> anyhow::Result<ceres_tunnel::RotationId> {
        let st = self.state.lock().await;
        let engine = st.engine.as_ref().context("the tunnel is not running")?;
        let params = st.params.as_ref().context("no tunnel parameters")?;
        let mut peer = self.peer_config(params).await?;
        peer.public_key = vps_public;
        peer.preshared_key = Some(psk);
        Ok(engine.replace_rotation(Some(new_key), peer)?)
    }

    /// Waits for the staged rotation to take over.
    pub async fn wait_rotation(&self, id: ceres_tunnel::RotationId) -> anyhow::Result<()> {
        let mut rx = {
            let st = self.state.lock().await;
            st.engine
                .as_ref()
                .context("the tunnel is not running")?
                .watch_rotation()
        };
        let s = rx
            .wait_for(|s| s.outcome(id).is_some())
            .await
            .map_err(|_| anyhow::anyhow!("tunnel stopped"))?;
        Ok(s.outcome(id).unwrap_or(Ok(()))?)
    }

    /// The VPS key of the current parameters.
    pub async fn current_vps_key(&self) -> Option<PublicKey> {
        let st = self.state.lock().await;
        let k: [u8; 32] = st
            .params
            .as_ref()?
            .vps_public_key
            .as_slice()
            .try_into()
            .ok()?;
        Some(PublicKey(k))
    }

    /// Notes the VPS agent's start time from a Welcome: when it changed, the
    /// VPS lost its session keys, so handshake again at once.
    pub async fn note_vps_start(&self, vps_started: i64) {
        let mut st = self.state.lock().await;
        let restarted = vps_started != 0 && st.vps_started != 0 && vps_started != st.vps_started;
        if vps_started != 0 {
            st.vps_started = vps_started;
        }
        if let (true, Some(engine)) = (restarted, st.engine.as_ref()) {
            tracing::info!("the VPS agent restarted: handshaking again now");
            engine.rehandshake();
        }
    }

    /// Drops a staged rotation.
    pub async fn abort_rotation(&self) {
        if let Some(engine) = self.state.lock().await.engine.as_ref() {
            engine.abort_rotation();
        }
    }

    /// Makes the new keys current on disk and in memory. The synced writes
    /// run off the async workers.
    pub async fn finalize_rotation(
        &self,
        new_key: &PrivateKey,
        vps_public: PublicKey,
        psk: &PresharedKey,
    ) -> anyhow::Result<()> {
        let mut st = self.state.lock().await;
        let params = st.params.clone().map(|mut p| {
            p.vps_public_key = vps_public.as_bytes().to_vec();
            p.preshared_key = psk.0.to_vec();
            p
        });
        let (dir, saved) = (self.dir.clone(), params.clone());
        let key_text = ceres_pki::Masked(format!("{}\n", new_key.to_base64()));
        ceres_daemon::blocking(move || -> anyhow::Result<()> {
            if let Some(p) = saved {
                dir.write(PARAMS_FILE, &p.encode_to_vec())?;
            }
            Ok(dir.write(ceres_agent::wgkey::WG_KEY, key_text.0.as_bytes())?)
        })
        .await??;
        if let Some(old) = st.params.as_ref().map(|p| p.vps_public_key.clone()) {
            if old != vps_public.as_bytes().to_vec() {
                st.retired_vps_keys.push(old);
            }
        }
        if params.is_some() {
            st.params = params;
        }
        *self.key.locked() = new_key.clone();
        Ok(())
    }

    /// Brings the tunnel up from the parameters saved by the last session.
    pub async fn start_saved(&self) {
        let Ok(Some(bytes)) = self.dir.read_optional(PARAMS_FILE) else {
            return;
        };
        match TunnelParams::decode(bytes.as_slice()) {
            Ok(params) => {
                if let Err(e) = self.apply(params, 0).await {
                    tracing::error!(error = %format!("{e:#}"), "tunnel from saved parameters failed");
                }
            }
            Err(_) => tracing::warn!("saved tunnel parameters are damaged; waiting for the VPS"),
        }
    }

    /// Applies parameters from the VPS: nothing if unchanged, a new peer if
    /// only keys or endpoint changed, a new device if addresses or MTU did.
    /// `vps_started` is the VPS agent's start time (0: unknown); when it
    /// changes the VPS has lost its session keys and we handshake at once.
    pub async fn apply(&self, params: TunnelParams, vps_started: i64) -> anyhow::Result<()> {
        if !self.settings.tunnel {
            return Ok(());
        }
        self.note_vps_start(vps_started).await;
        let mut st = self.state.lock().await;
        if st.params.as_ref() == Some(&params) && st.engine.is_some() {
            return Ok(());
        }
        if st.engine.is_some() && st.retired_vps_keys.contains(&params.vps_public_key) {
            tracing::info!(
                "ignoring tunnel parameters with a VPS key rotated away from (a stale Welcome)"
            );
            return Ok(());
        }
        let result = self.apply_locked(&mut st, &params).await;
        st.error = result.as_ref().err().map(|e| format!("{e:#}"));
        if result.is_ok() {
            let (dir, bytes) = (self.dir.clone(), params.encode_to_vec());
            // A synced write: off the async workers.
            ceres_daemon::blocking(move || dir.write(PARAMS_FILE, &bytes)).await??;
            st.params = Some(params);
        }
        result
    }

    async fn peer_config(&self, params: &TunnelParams) -> anyhow::Result<PeerConfig> {
        let vps_address: IpNet = params
            .vps_address
            .parse()
            .context("VPS tunnel address from the VPS")?;
        let vps_address6 = optional_net(&params.vps_address6, "the VPS's IPv6 tunnel address")?;
        let vps_key: [u8; 32] = params
            .vps_public_key
            .as_slice()
            .try_into()
            .context("VPS public key length")?;
        let psk: [u8; 32] = params
            .preshared_key
            .as_slice()
            .try_into()
            .context("pre-shared key length")?;
        Ok(PeerConfig {
            public_key: PublicKey(vps_key),
            preshared_key: Some(PresharedKey(psk)),
            endpoint: Some(endpoint(&params.endpoint).await?),
            allowed_ips: {
                let mut nets: Vec<IpNet> = std::iter::once(vps_address)
                    .chain(vps_address6)
                    .map(host_net)
                    .collect();
                if self.settings.egress {
                    // Replies to outbound mail come from anywhere; routing into
                    // the tunnel is by policy only (ROUTE_ALLOWED_IPS is off).
                    nets.push(IpNet::V4(Default::default()));
                    if vps_address6.is_some() {
                        nets.push(IpNet::V6(Default::default()));
                    }
                }
                nets
            },
            persistent_keepalive: u16::try_from(params.keepalive_secs).ok().filter(|k| *k > 0),
        })
    }

    async fn apply_locked(&self, st: &mut Running, params: &TunnelParams) -> anyhow::Result<()> {
        let home_address: IpNet = params
            .home_address
            .parse()
            .context("home tunnel address from the VPS")?;
        let home_address6 = optional_net(&params.home_address6, "home's IPv6 tunnel address")?;
        let mtu = u16::try_from(params.mtu).context("MTU")?;
        let peer = self.peer_config(params).await?;
        let same_device = st.params.as_ref().is_some_and(|old| {
            old.home_address == params.home_address
                && old.mtu == params.mtu
                && old.vps_address == params.vps_address
                && old.home_address6 == params.home_address6
                && old.vps_address6 == params.vps_address6
        });
        if let (true, Some(engine)) = (same_device, st.engine.as_ref()) {
            engine.set_peer(peer)?;
            tracing::info!(endpoint = %params.endpoint, "tunnel peer updated");
            return Ok(());
        }
        if let Some(old) = st.engine.take() {
            old.shutdown().await;
            crate::uplinks::release(&self.settings.tunnel_ifname);
        }
        // Several uplinks (issue 16): not on the network of another one.
        let v6 = |t: &str| optional_net(t, "").ok().flatten().map(|n| n.addr());
        let vps_net: IpNet = params
            .vps_address
            .parse()
            .context("VPS tunnel address from the VPS")?;
        let addrs = TunnelAddrs {
            home: home_address.addr(),
            vps: vps_net.addr(),
            home6: home_address6.map(|n| n.addr()),
            vps6: v6(&params.vps_address6),
        };
        crate::uplinks::claim(&self.settings.tunnel_ifname, &addrs).map_err(anyhow::Error::msg)?;
        let config = TunnelConfig {
            ifname: self.settings.tunnel_ifname.clone(),
            mtu,
            address: home_address,
            extra_addresses: home_address6.into_iter().collect(),
            listen: self.settings.wg_listen,
            private_key: self.private_key(),
            route_allowed_ips: ROUTE_ALLOWED_IPS,
            uapi_dir: Some(self.settings.wg_uapi_dir.clone()),
        };
        let started = Tunnel::start(config, Some(peer), self.cancel.child_token()).await;
        if started.is_err() {
            crate::uplinks::release(&self.settings.tunnel_ifname);
        }
        let engine = started.with_context(|| {
            format!(
                "starting the WireGuard tunnel {} (needs root or CAP_NET_ADMIN)",
                self.settings.tunnel_ifname
            )
        })?;
        tracing::info!(ifname = %self.settings.tunnel_ifname, address = %home_address, endpoint = %params.endpoint, "tunnel up");
        st.engine = Some(engine);
        Ok(())
    }

    /// The addresses of the running tunnel.
    pub async fn addresses(&self) -> Option<TunnelAddrs> {
        let st = self.state.lock().await;
        st.engine.as_ref()?;
        let p = st.params.as_ref()?;
        let home: IpNet = p.home_address.parse().ok()?;
        let vps: IpNet = p.vps_address.parse().ok()?;
        let v6 = |t: &str| optional_net(t, "").ok().flatten().map(|n| n.addr());
        Some(TunnelAddrs {
            home: home.addr(),
            vps: vps.addr(),
            home6: v6(&p.home_address6),
            vps6: v6(&p.vps_address6),
        })
    }

    /// Home's end, for the report.
    pub async fn report(&self) -> TunnelReport {
        let st = self.state.lock().await;
        match (&st.engine, &st.params) {
            (Some(engine), Some(p)) => tunnel_report(&engine.stats(), &p.home_address),
            _ => {
                use ceres_proto::{TunnelState, compat};
                let (state, why) = match &st.error {
                    _ if !self.settings.tunnel => (TunnelState::Off, compat::TUNNEL_OFF),
                    Some(e) => (TunnelState::Failed, e.as_str()),
                    None => (TunnelState::Waiting, compat::TUNNEL_WAITING),
                };
                let mut r = tunnel_down(&self.settings.tunnel_ifname, state, why);
                r.public_key = self.public_key().as_bytes().to_vec();
                r
            }
        }
    }

    /// Stops the engine.
    pub async fn shutdown(&self) {
        if let Some(engine) = self.state.lock().await.engine.take() {
            engine.shutdown().await;
            crate::uplinks::release(&self.settings.tunnel_ifname);
        }
    }
}
