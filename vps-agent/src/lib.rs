//! The CERES agent on the VPS: the CA and the mutual-TLS control plane that
//! enrols the home agent and admins, and the hub that knows whether home is
//! connected and what it last reported.

pub mod certs;
pub mod cli;
pub mod hub;
pub mod local_status;
pub mod relays;
pub mod revocation;
pub mod rotation;
pub mod service;
pub mod settings;
pub mod state;
pub mod tokens;
pub mod tunnel;
pub mod watch;

pub use service::run;
