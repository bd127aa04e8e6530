//! The CERES WireGuard tunnel engine: boringtun's noise protocol driven by our
//! own batched loops over a TUN device (with GSO/GRO offload) and a UDP socket.
//!
//! One [`Tunnel`] carries one peer (the other agent). It speaks standard
//! WireGuard on the wire, answers `wg show` through the userspace API socket,
//! follows the peer when its address changes, and counts what it drops.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ceres_tunnel::TunnelError> {
//! use ceres_tunnel::{PeerConfig, PrivateKey, Tunnel, TunnelConfig};
//! let key = PrivateKey::generate();
//! let cfg = TunnelConfig::new("ceres0", "10.77.77.1/24".parse().unwrap(), key);
//! let token = tokio_util::sync::CancellationToken::new();
//! let tunnel = Tunnel::start(cfg, None, token.clone()).await?;
//! println!("{}", tunnel.public_key());
//! tunnel.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod engine;
#[cfg(test)]
mod fuzz_tests;
mod key;
mod peer;
mod rotation;
mod stats;
mod uapi;
pub mod uapi_client;
mod udp;

pub use config::{
    ConfigError, DEFAULT_KEEPALIVE_SECS, DEFAULT_MTU, DEFAULT_PORT, DEFAULT_UAPI_DIR, FileConfig,
    PeerConfig, TunnelConfig, parse_allowed_ips, parse_keepalive,
};
pub use engine::{Tunnel, TunnelError};
pub use key::{KeyError, PresharedKey, PrivateKey, PublicKey, generate_keypair};
pub use rotation::{RotationError, RotationId, RotationStats, StagedRotation};
pub use stats::{DropStats, TunnelStats};
