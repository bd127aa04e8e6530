//! The CERES agent at home: joins the VPS with a token, keeps one session
//! open to it (reports up, commands down), reconnects with capped, jittered
//! backoff, and renews its certificate before it expires.

mod agent;
mod backoff;
mod cli;
mod cli_uplinks;
mod failover;
mod filter;
mod local_status;
mod mail;
mod postfix;
mod probe;
mod rotation;
mod session;
mod settings;
mod stack_probe;
mod tunnel;
mod uplinks;

pub use cli::main;
