//! VPS side: one listener per relayed port on each public address, spliced to the
//! home tunnel address with an optional PROXY header.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::RelayError;
use crate::admission::Limits;
use crate::serve::{self, PortCtx, Role};
use crate::spec::RelaySpec;
use crate::stats::{PortCounters, StatsHandle};

/// Default connect timeout towards home: long enough for a tunnel round trip under
/// load, short enough that a sender still gets its `421` before giving up on us.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default idle timeout: above the 29 minutes IMAP IDLE clients wait between
/// re-issuing IDLE (RFC 2177), so idling mail clients are not cut off.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default idle timeout on SMTP ports (25, 465, 587, and any port relayed with an
/// SMTP banner): RFC 5321 §4.5.3.2.7's server timeout of 5 minutes. A sender
/// that says nothing for that long is gone or holding a slot.
pub const DEFAULT_SMTP_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What the relays know about home: whether its session is up, and where its
/// forwarders listen on the tunnel address. Home's forwarders listen on ports
/// of their own choosing (never the mail ports, so the mail server at home may
/// listen on the wildcard address) and report them; the VPS agent publishes
/// this through a watch channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HomeReach {
    /// A home session is up. While false nothing is relayed (SMTP ports answer
    /// `421` at once).
    pub up: bool,
    /// Home port (a relay spec's `home_port`: the mail server's port) → the
    /// tunnel-address port of home's forwarder for it, from home's report.
    pub forward_ports: BTreeMap<u16, u16>,
}

impl HomeReach {
    /// Home up, its forwarders on the given `(home_port, forwarder_port)` pairs.
    pub fn up(forward_ports: impl IntoIterator<Item = (u16, u16)>) -> Self {
        Self {
            up: true,
            forward_ports: forward_ports.into_iter().collect(),
        }
    }

    /// Where to dial for `home_port`: `None` while home is down or has not
    /// reported a forwarder for it.
    pub fn port_for(&self, home_port: u16) -> Option<u16> {
        if self.up {
            self.forward_ports.get(&home_port).copied()
        } else {
            None
        }
    }
}

/// Settings of the VPS relays. Build with [`ListenerConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Public addresses to listen on (IPv4 and/or IPv6; `0.0.0.0`/`::` are fine).
    pub bind: Vec<IpAddr>,
    /// The home tunnel address connections are relayed to (at the ports home
    /// reports, see [`HomeReach`]).
    pub target: IpAddr,
    /// The relayed ports.
    pub relays: Vec<RelaySpec>,
    /// Host name in the `421 4.4.2 <mail_host> temporarily unavailable` reply.
    pub mail_host: String,
    /// Give up connecting to home after this long (then `421` / close).
    pub connect_timeout: Duration,
    /// Close a relayed connection after this long without traffic either way
    /// (ports that are not SMTP: IMAP, POP3, HTTP, ...).
    pub idle_timeout: Duration,
    /// The same on SMTP ports (see [`RelaySpec::is_smtp`]).
    pub smtp_idle_timeout: Duration,
    /// Connection limits of each port.
    pub limits: Limits,
}

impl ListenerConfig {
    /// A configuration with the documented defaults for timeouts and limits.
    pub fn new(
        bind: Vec<IpAddr>,
        target: IpAddr,
        relays: Vec<RelaySpec>,
        mail_host: impl Into<String>,
    ) -> Self {
        Self {
            bind,
            target,
            relays,
            mail_host: mail_host.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            smtp_idle_timeout: DEFAULT_SMTP_IDLE_TIMEOUT,
            limits: Limits::default(),
        }
    }
}

/// The VPS relays, bound and ready to [`run`](Listener::run).
#[derive(Debug)]
pub struct Listener {
    config: ListenerConfig,
    sockets: Vec<(std::net::TcpListener, usize)>,
    stats: StatsHandle,
}

impl Listener {
    /// Binds every relayed port on every address in `config.bind`. Fails on the first
    /// address that cannot be bound, naming it. Does not need a runtime.
    pub fn bind(config: ListenerConfig) -> Result<Self, RelayError> {
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        for (i, spec) in config.relays.iter().enumerate() {
            ports.push(Arc::new(PortCounters::new(
                spec.public_port,
                spec.home_port,
                config.limits,
            )));
            for ip in &config.bind {
                let addr = SocketAddr::new(*ip, spec.public_port);
                sockets.push((serve::bind(addr, false)?, i));
            }
        }
        Ok(Self {
            config,
            sockets,
            stats: StatsHandle {
                ports: Arc::new(ports),
            },
        })
    }

    /// The bound addresses (useful when a port was given as 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    }

    /// A handle for reading the per-port counters while the relay runs.
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Relays connections until `shutdown` is cancelled, then closes every relayed
    /// connection and returns. `home` says whether home is reachable (the agent's
    /// view of the control session) and where its forwarders listen; while home is
    /// down, or has no forwarder for a port, nothing is relayed on that port.
    /// Returns at once when no ports are configured.
    pub async fn run(
        self,
        home: watch::Receiver<HomeReach>,
        shutdown: CancellationToken,
    ) -> Result<(), RelayError> {
        let ctxs: Vec<Arc<PortCtx>> = self
            .config
            .relays
            .iter()
            .zip(self.stats.ports.iter())
            .map(|(spec, counters)| {
                Arc::new(PortCtx {
                    role: Role::Relay {
                        proxy: spec.proxy,
                        smtp_banner: spec.smtp_banner,
                        mail_host: self.config.mail_host.clone(),
                        home: home.clone(),
                        home_port: spec.home_port,
                    },
                    counters: Arc::clone(counters),
                    target: SocketAddr::new(self.config.target, spec.home_port),
                    connect_timeout: self.config.connect_timeout,
                    idle_timeout: if spec.is_smtp() {
                        self.config.smtp_idle_timeout
                    } else {
                        self.config.idle_timeout
                    },
                    shutdown: shutdown.clone(),
                })
            })
            .collect();
        let listeners = self
            .sockets
            .into_iter()
            .map(|(s, i)| (s, Arc::clone(&ctxs[i])))
            .collect();
        serve::serve(listeners).await
    }
}
