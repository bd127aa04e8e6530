//! Mail-port relays for CERES: the VPS [`Listener`] relays public mail ports to the
//! home tunnel address (with PROXY protocol headers), the home [`Forwarder`] passes them
//! on to the mail server, and [`egress`] builds the outbound NAT and policy-routing rules;
//! [`stack`] holds the PROXY listeners of each packaged mail stack.
//!
//! Bytes are moved with splice(2) through pipes borrowed only while data is in flight,
//! so an idle relayed connection costs two sockets and a small task, no buffers.

use std::net::SocketAddr;

mod admission;
pub mod egress;
mod forwarder;
mod listener;
pub mod proxy;
mod serve;
pub mod spec;
mod splice;
pub mod stack;
mod stats;
pub mod throttle;

pub use admission::{
    DEFAULT_BURST, DEFAULT_MAX_PER_PORT, DEFAULT_MAX_PER_SOURCE, DEFAULT_RATE_PER_MINUTE,
    DELIVERING_MIN_BYTES, Limits, Refusal, source_key,
};
pub use forwarder::{DEFAULT_MAIL_CONNECT_TIMEOUT, ForwardRoute, Forwarder, ForwarderConfig};
pub use listener::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_SMTP_IDLE_TIMEOUT, HomeReach, Listener,
    ListenerConfig,
};
pub use spec::{DEFAULT_RELAYS, ProxyMode, RelaySpec, SpecError, default_relays, parse_relays};
pub use splice::pooled_pipes;
pub use stats::{LastError, PortSnapshot, StatsHandle};

/// Raises this process's soft open-files limit to its hard limit and returns the new
/// limit. Call once at start-up in a process that relays: the soft limit is often
/// 1024, while each relayed connection holds two sockets.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard limit
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Errors from setting up or running relays.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A listening socket could not be created or bound (port in use, no permission
    /// for ports below 1024, address not on this host).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that failed.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Handing a bound socket to the async runtime failed (e.g. called outside tokio).
    #[error("relay runtime error: {0}")]
    Runtime(#[source] std::io::Error),
}
