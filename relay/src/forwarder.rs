//! Home side: accepts relayed connections on the home tunnel address and forwards them
//! to the mail server, bytes (including the VPS's PROXY header) unchanged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::RelayError;
use crate::listener::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_PER_PORT};
use crate::serve::{self, PortCtx, Role};
use crate::spec::RelaySpec;
use crate::stats::{PortCounters, StatsHandle};

/// Default connect timeout to the mail server: it is local, so anything slower than
/// this means it is down.
pub const DEFAULT_MAIL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One forwarded port: `listen_port` on the tunnel address → `target_port` on the
/// mail server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardRoute {
    /// Port on the home tunnel address (the relay spec's home port).
    pub listen_port: u16,
    /// Port on the mail server.
    pub target_port: u16,
}

/// Settings of the home forwarder. Build with [`ForwarderConfig::new`].
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Home tunnel address to listen on. Bound with `IP_FREEBIND`, so the forwarder may
    /// start before the tunnel device has the address.
    pub listen: IpAddr,
    /// The VPS tunnel address: the only source allowed to connect (and thus the only
    /// one whose PROXY header reaches the mail server).
    pub allowed_peer: IpAddr,
    /// The mail server (`CERES_MAIL_SERVER`, default 127.0.0.1).
    pub mail_server: IpAddr,
    /// Forwarded ports.
    pub routes: Vec<ForwardRoute>,
    /// Give up connecting to the mail server after this long (the connection is closed).
    pub connect_timeout: Duration,
    /// Close a connection after this long without traffic.
    pub idle_timeout: Duration,
    /// Concurrent connections allowed per port (all come from one source, the VPS).
    pub max_per_port: u32,
}

impl ForwarderConfig {
    /// Forwards each relay's home port to the same port on `127.0.0.1`, with default
    /// timeouts and limits. To reach a mail server that listens on `0.0.0.0:25` (which
    /// the forwarder cannot share), map the relay to another home port, e.g. `25:10025`,
    /// and set that route's `target_port` to 25.
    pub fn new(listen: IpAddr, allowed_peer: IpAddr, relays: &[RelaySpec]) -> Self {
        Self {
            listen,
            allowed_peer,
            mail_server: IpAddr::V4(Ipv4Addr::LOCALHOST),
            routes: relays
                .iter()
                .map(|r| ForwardRoute {
                    listen_port: r.home_port,
                    target_port: r.home_port,
                })
                .collect(),
            connect_timeout: DEFAULT_MAIL_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_per_port: DEFAULT_MAX_PER_PORT,
        }
    }
}

/// The home forwarder, bound and ready to [`run`](Forwarder::run).
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    sockets: Vec<std::net::TcpListener>,
    stats: StatsHandle,
}

impl Forwarder {
    /// Binds every route's port on the tunnel address. Does not need a runtime.
    pub fn bind(config: ForwarderConfig) -> Result<Self, RelayError> {
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        for route in &config.routes {
            sockets.push(serve::bind(
                SocketAddr::new(config.listen, route.listen_port),
                true,
            )?);
            ports.push(Arc::new(PortCounters::new(
                route.listen_port,
                route.target_port,
                config.max_per_port,
                // One trusted source: the per-source limit is the per-port limit.
                config.max_per_port,
            )));
        }
        Ok(Self {
            config,
            sockets,
            stats: StatsHandle {
                ports: Arc::new(ports),
            },
        })
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// A handle for reading the per-port counters while the forwarder runs.
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Forwards connections until `shutdown` is cancelled, then closes them and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let listeners = self
            .sockets
            .into_iter()
            .zip(self.config.routes.iter().zip(self.stats.ports.iter()))
            .map(|(socket, (route, counters))| {
                let ctx = Arc::new(PortCtx {
                    role: Role::Forward {
                        allowed_peer: self.config.allowed_peer,
                    },
                    counters: Arc::clone(counters),
                    target: SocketAddr::new(self.config.mail_server, route.target_port),
                    connect_timeout: self.config.connect_timeout,
                    idle_timeout: self.config.idle_timeout,
                    shutdown: shutdown.clone(),
                });
                (socket, ctx)
            })
            .collect();
        serve::serve(listeners).await
    }
}
