//! Home side: accepts relayed connections on the home tunnel address and forwards them
//! to the mail server, bytes (including the VPS's PROXY header) unchanged.
//!
//! The forwarders listen on ports the kernel picks, not on the mail ports: a mail
//! server on the same host may then listen on the wildcard address (`0.0.0.0:25`,
//! Postfix's `inet_interfaces = all`, Docker's published ports), which could not share
//! a port with a listener on the tunnel address. The home agent reports the ports to
//! the VPS, whose relays dial them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::RelayError;
use crate::admission::{DEFAULT_MAX_PER_PORT, Limits};
use crate::listener::DEFAULT_IDLE_TIMEOUT;
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
    /// Port on the home tunnel address; 0 before [`Forwarder::bind`]: a free port
    /// the kernel picks (see [`Forwarder::routes`] for the bound one).
    pub listen_port: u16,
    /// Port on the mail server.
    pub target_port: u16,
    /// The VPS sends a PROXY header on this port: the forwarder reads it first
    /// and refuses a header that would make the client look local (loopback,
    /// unspecified, `LOCAL`/`UNKNOWN`), which only a compromised VPS sends.
    pub proxy: bool,
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
    /// One forwarder per distinct home port of `relays`, to that port on `127.0.0.1`,
    /// each listening on a port the kernel picks; default timeouts and limits.
    pub fn new(listen: IpAddr, allowed_peer: IpAddr, relays: &[RelaySpec]) -> Self {
        let mut home_ports: Vec<u16> = relays.iter().map(|r| r.home_port).collect();
        home_ports.sort_unstable();
        home_ports.dedup();
        let proxied = |port: u16| {
            relays
                .iter()
                .any(|r| r.home_port == port && r.proxy != crate::spec::ProxyMode::None)
        };
        Self {
            listen,
            allowed_peer,
            mail_server: IpAddr::V4(Ipv4Addr::LOCALHOST),
            routes: home_ports
                .into_iter()
                .map(|port| ForwardRoute {
                    listen_port: 0,
                    target_port: port,
                    proxy: proxied(port),
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
    /// Binds every route's port on the tunnel address (a free one where the route
    /// says 0). Does not need a runtime.
    pub fn bind(mut config: ForwarderConfig) -> Result<Self, RelayError> {
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        for route in &mut config.routes {
            let socket = serve::bind(SocketAddr::new(config.listen, route.listen_port), true)?;
            route.listen_port = socket
                .local_addr()
                .map_err(|source| RelayError::Bind {
                    addr: SocketAddr::new(config.listen, route.listen_port),
                    source,
                })?
                .port();
            sockets.push(socket);
            ports.push(Arc::new(PortCounters::new(
                route.listen_port,
                route.target_port,
                // One trusted source (the VPS): only the port cap applies.
                Limits::port_only(config.max_per_port),
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

    /// The routes with their bound ports.
    pub fn routes(&self) -> &[ForwardRoute] {
        &self.config.routes
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
                        proxy: route.proxy,
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
