//! The CERES agent at home: joins the VPS with a token, keeps one session
//! open to it (reports up, commands down), reconnects with capped, jittered
//! backoff, and renews its certificate before it expires.

pub mod backoff;
pub mod cli;
pub mod filter;
pub mod local_status;
pub mod mail;
pub mod postfix;
pub mod probe;
pub mod rotation;
pub mod session;
pub mod settings;
pub mod stack_probe;
pub mod tunnel;

pub use session::run;
