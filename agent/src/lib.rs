//! What `ceres-vps` and `ceres-home` share beyond process plumbing, and what
//! `cerectl` must not link: the agent's WireGuard key in its state directory,
//! and the tunnel engine's and relays' counters in the protocol's shape.
//!
//! It is its own crate so that the crates `cerectl` needs (`ceres-control`,
//! `ceres-proto`) stay free of the tunnel engine (boringtun, tun-rs).

pub mod metrics;
pub mod report;
pub mod wgkey;
