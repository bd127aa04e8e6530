//! The CERES agent on the VPS: the CA and the mutual-TLS control plane that
//! enrols the home agent and admins, and the hub that knows whether home is
//! connected and what it last reported.

mod certs;
mod cli;
mod hub;
mod local_status;
mod relays;
mod revocation;
mod rotation;
mod service;
mod settings;
mod state;
mod tokens;
mod tunnel;
mod watch;

pub use cli::main;
