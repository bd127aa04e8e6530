//! What the VPS knows about the home agent: whether its session is up, since
//! when, and what it last reported.

use ceres_sync::Unpoison;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use ceres_pki::unix_secs;
use ceres_proto::{Hello, HomeStatus, Report};
use ceres_relay::HomeReach;
use tokio_util::sync::CancellationToken;

/// The session registry. At most one home session is live: a new one (the
/// agent restarted, or reconnected before the old TCP connection died)
/// replaces the old, whose stream is then closed.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    /// Whether a home session is up, for the relays: while it is not, SMTP
    /// ports answer 421 at once instead of trying the tunnel.
    /// What the relays need: session up, and home's forwarder ports.
    reach: tokio::sync::watch::Sender<HomeReach>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            reach: tokio::sync::watch::Sender::new(HomeReach::default()),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    current: Option<Session>,
    /// The last session that ended, kept so status can say what home last said.
    previous: Option<Session>,
    ended_unix: i64,
}

#[derive(Debug, Clone)]
struct Session {
    id: u64,
    since_unix: i64,
    hello: Hello,
    remote: SocketAddr,
    protocol_version: u32,
    last_report_unix: i64,
    last_report: Option<Report>,
    certificate_not_after_unix: i64,
    /// Serial of the session's certificate: a revocation cancels it.
    serial: String,
    cancel: CancellationToken,
}

/// Handle of a registered session.
#[derive(Debug)]
pub struct SessionTicket {
    /// Identifies the session in later calls.
    pub id: u64,
    /// Cancelled when a newer session replaces this one, or on shutdown.
    pub cancel: CancellationToken,
}

impl Hub {
    /// Registers a new home session, replacing any current one.
    pub fn connect(
        &self,
        hello: Hello,
        remote: SocketAddr,
        protocol_version: u32,
        certificate_not_after_unix: i64,
        serial: &str,
        parent: &CancellationToken,
    ) -> SessionTicket {
        let now = unix_secs(SystemTime::now());
        let mut inner = self.inner.locked();
        inner.next_id += 1;
        let id = inner.next_id;
        if let Some(old) = inner.current.take() {
            tracing::info!(old_remote = %old.remote, new_remote = %remote, "home session replaced by a newer one");
            old.cancel.cancel();
        }
        let cancel = parent.child_token();
        // Up, but no forwarder ports until home's first report (sent as soon
        // as its forwarders run): the ports of an earlier session may be gone.
        self.reach.send_replace(HomeReach::up([]));
        inner.current = Some(Session {
            id,
            since_unix: now,
            hello,
            remote,
            protocol_version,
            last_report_unix: now,
            last_report: None,
            certificate_not_after_unix,
            serial: serial.to_owned(),
            cancel: cancel.clone(),
        });
        SessionTicket { id, cancel }
    }

    /// Records a report from session `id`.
    pub fn report(&self, id: u64, report: Report) {
        let mut inner = self.inner.locked();
        if let Some(s) = inner.current.as_mut().filter(|s| s.id == id) {
            let ports = forward_ports(&report);
            self.reach.send_if_modified(|reach| {
                let changed = reach.forward_ports != ports;
                if changed {
                    tracing::info!(forwarders = ?ports, "home's forwarders (mail port -> tunnel port)");
                    reach.forward_ports = ports;
                }
                changed
            });
            s.last_report_unix = unix_secs(SystemTime::now());
            s.last_report = Some(report);
        }
    }

    /// Marks session `id` gone (if it is still the current one).
    pub fn disconnect(&self, id: u64) {
        let mut inner = self.inner.locked();
        if inner.current.as_ref().is_some_and(|s| s.id == id) {
            inner.previous = inner.current.take();
            inner.ended_unix = unix_secs(SystemTime::now());
            self.reach.send_replace(HomeReach::default());
        }
    }

    /// Ends the current session at once if its certificate is `revoked`
    /// (the session's own task then sees the cancellation and closes the
    /// stream); the relays learn at once that home is gone. Returns the
    /// serial of the session ended.
    pub fn end_revoked(&self, revoked: impl Fn(&str) -> bool) -> Option<String> {
        let mut inner = self.inner.locked();
        let serial = inner
            .current
            .as_ref()
            .filter(|s| revoked(&s.serial))?
            .serial
            .clone();
        if let Some(s) = inner.current.take() {
            s.cancel.cancel();
            inner.previous = Some(s);
            inner.ended_unix = unix_secs(SystemTime::now());
            self.reach.send_replace(HomeReach::default());
        }
        Some(serial)
    }

    /// Follows whether a home session is up and where its forwarders listen.
    pub fn home_reach(&self) -> tokio::sync::watch::Receiver<HomeReach> {
        self.reach.subscribe()
    }

    /// Whether a home session is up.
    pub fn is_connected(&self) -> bool {
        self.inner.locked().current.is_some()
    }

    /// Status for `cerectl status`.
    pub fn status(&self) -> HomeStatus {
        let inner = self.inner.locked();
        let (connected, session, since) = match (&inner.current, &inner.previous) {
            (Some(s), _) => (true, Some(s), s.since_unix),
            (None, Some(p)) => (false, Some(p), inner.ended_unix),
            (None, None) => (false, None, 0),
        };
        let mut status = HomeStatus {
            connected,
            since_unix: since,
            ..Default::default()
        };
        if let Some(s) = session {
            status.last_report_unix = s.last_report_unix;
            status.agent_version = s.hello.agent_version.clone();
            status.hostname = s.hello.hostname.clone();
            status.protocol_version = s.protocol_version;
            status.remote_address = s.remote.to_string();
            status.last_report = s.last_report.clone();
            status.certificate_not_after_unix = s.certificate_not_after_unix;
        }
        status
    }
}

/// Home's forwarders from a report: mail port at home -> forwarder port on
/// the tunnel address. Ports outside u16 (a broken report) are skipped.
fn forward_ports(report: &Report) -> BTreeMap<u16, u16> {
    report
        .forwards
        .iter()
        .filter_map(|f| {
            Some((
                u16::try_from(f.target_port).ok()?,
                u16::try_from(f.port).ok()?,
            ))
        })
        .filter(|&(target, port)| target != 0 && port != 0)
        .collect()
}
