//! Control-plane plumbing shared by `ceres-vps`, `ceres-home` and `cerectl`:
//! dialling the VPS over TLS for tonic, accepting TLS connections with the
//! caller's certificate attached, and checking the caller's role per RPC.

pub mod client;
pub mod creds;
pub mod limits;
pub mod refusal;
pub mod server;
pub mod stack_report;
pub mod store;
pub mod wire;

pub use client::{ConnectError, connect};
pub use creds::{CredError, Credentials};
pub use limits::ConnLimits;
pub use server::{Caller, TlsIncoming, caller, require_role};
pub use store::{Selection, StoreError, VpsEntry, VpsStore};
