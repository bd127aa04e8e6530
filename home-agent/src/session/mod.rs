//! The home agent's main loop, one idea per file: [`startup`] wires the
//! data plane and the background tasks and tears them down; [`reconnect`]
//! keeps a session to the VPS up with backoff; [`connection`] is one
//! session (Hello, Welcome, then [`report`]s up and [`commands`] down);
//! [`probes`], [`renewal`] and [`metrics`] run beside it.

mod commands;
mod connection;
mod metrics;
mod probes;
mod reconnect;
mod renewal;
mod report;
mod startup;

use ceres_sync::Unpoison;
use std::sync::{Arc, Mutex};

use ceres_control::Credentials;

pub(crate) use probes::StackProbes;
pub use startup::run;

/// The version string of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Hint shown when the agent has not joined yet.
pub const JOIN_HINT: &str = "join first: on the VPS run `ceres-vps token create --role home`, then here `ceres-home join TOKEN`";

/// Shared credentials; replaced when the certificate renews.
type SharedCreds = Arc<Mutex<Credentials>>;

/// The credentials as of now (a renewal replaces them between sessions).
fn current(creds: &SharedCreds) -> Credentials {
    creds.locked().clone()
}
