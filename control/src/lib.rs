//! Control-plane plumbing shared by `ceres-vps`, `ceres-home` and `cerectl`:
//! dialling the VPS over TLS for tonic, accepting TLS connections with the
//! caller's certificate attached, and checking the caller's role per RPC.

pub mod client;
pub mod creds;
pub mod limits;
pub mod metrics;
pub mod report;
pub mod server;
pub mod store;
pub mod wgkey;

pub use client::{ConnectError, connect};
pub use creds::{CredError, Credentials};
pub use limits::ConnLimits;
pub use server::{Caller, TlsIncoming, caller, require_role};
pub use store::{Selection, StoreError, VpsEntry, VpsStore};
