//! The watchdog: the VPS agent checks by itself what can fail quietly —
//! home and the tunnel, the relays, egress, home's firewall, key rotation,
//! certificates, blocklists, PTR, SPF, MX — each on its own schedule, keeps
//! each check's state, and notifies on changes (webhook, e-mail) with the
//! hold-down and budget of [`state`].
//!
//! The agent hands it a [`Sources`] (what it knows: the same facts
//! `cerectl status` gets) and asks it for status ([`Watch::checks`] for
//! `cerectl status`, [`Watch::local_checks`] for `ceres-vps status`),
//! metrics ([`metrics`]) and test notifications.

mod check;
mod dns;
mod local;
pub(crate) mod metrics;
mod notify;
mod report;
mod settings;
mod state;

use ceres_sync::Unpoison;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ceres_dnscheck::MailIdentity;
use ceres_pki::CertificateInfo;
use ceres_proto::{
    AlertChannel, EgressStatus, HomeStatus, RelayPort, RotationStatus, TestAlertsResponse,
    TunnelReport, WatchCheck,
};

use crate::local_status::CheckPart;
use ceres_state::StateDir;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use check::{CheckId, Level, Observation};
pub use settings::{WatchFlags, WatchSettings};

use local::{CertExpiry, CertKind};
use notify::{Notifier, Origin};
use state::{Event, EventKind, Stamp, Tracker};

/// Certificates live for weeks to years: an hourly look is plenty.
const CERTIFICATES_INTERVAL: Duration = Duration::from_secs(3600);

/// What the agent knows, as the watchdog reads it. Implemented by the
/// agent's shared context; every method is cheap except [`Sources::egress`].
pub trait Sources: Send + Sync + 'static {
    /// Home as status shows it (access and revocation included).
    fn home(&self) -> HomeStatus;
    /// The lineage owning the tunnel's WireGuard peer: a home has joined.
    fn home_lineage(&self) -> Option<String>;
    /// The VPS end of the tunnel; `None` when the tunnel is off.
    fn tunnel(&self) -> Option<TunnelReport>;
    /// The relays' counters.
    fn relays(&self) -> Vec<RelayPort>;
    /// Egress. Runs `nft`: called off the async workers.
    fn egress(&self) -> EgressStatus;
    /// Key rotation.
    fn rotation(&self) -> RotationStatus;
    /// The server certificate in use.
    fn server_certificate(&self) -> Option<CertificateInfo>;
    /// The CA certificate, PEM.
    fn ca_certificate_pem(&self) -> String;
    /// The state directory (the register of issued certificates).
    fn state_dir(&self) -> &StateDir;
}

/// The watchdog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watch(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    settings: WatchSettings,
    /// Checks that run, with their interval.
    schedule: BTreeMap<CheckId, Duration>,
    trackers: Mutex<BTreeMap<CheckId, Tracker>>,
    /// A new observation arrived: the notify loop looks again.
    wake: tokio::sync::Notify,
    notifier: Notifier,
    identity: Result<MailIdentity, String>,
    egress_enabled: bool,
    rotate_every: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Watch {
    /// The watchdog of an agent with `settings`; the channels' workers start
    /// now, the checks with [`start`](Self::start).
    pub fn new(
        settings: &crate::settings::VpsSettings,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let w = settings.watch.clone();
        let mut schedule = BTreeMap::new();
        for id in CheckId::ALL {
            let interval = match id {
                CheckId::Certificates => Some(CERTIFICATES_INTERVAL),
                CheckId::Dnsbl => (w.dns && !w.dnsbl_zones.is_empty()).then_some(w.dnsbl_interval),
                CheckId::Ptr | CheckId::Spf | CheckId::Mx => w.dns.then_some(w.dns_interval),
                _ => Some(w.interval),
            };
            if let Some(i) = interval {
                schedule.insert(id, i);
            }
        }
        let trackers = schedule
            .keys()
            .map(|id| (*id, Tracker::new(*id, &w.policy)))
            .collect();
        let origin = Origin {
            mail_host: settings.mail_host.clone(),
            domain: settings.domain.clone(),
            public_ips: settings.public_ips.clone(),
        };
        let identity = settings
            .public_ips
            .iter()
            .fold(
                MailIdentity::builder(&settings.domain).mail_host(&settings.mail_host),
                |b, ip| b.address(*ip),
            )
            .build()
            .map_err(|e| e.to_string());
        let notifier = Notifier::start(&w, origin, cancel, tracker);
        Self(Arc::new(Inner {
            schedule,
            trackers: Mutex::new(trackers),
            wake: tokio::sync::Notify::new(),
            notifier,
            identity,
            egress_enabled: settings.relay.egress,
            rotate_every: settings.rotate_every,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            settings: w,
        }))
    }

    /// Starts every check on its schedule and the notify loop, reading `sources`.
    pub fn start(&self, sources: Arc<dyn Sources>) {
        let inner = &self.0;
        tracing::info!(
            checks = ?inner.schedule.keys().map(|c| c.as_str()).collect::<Vec<_>>(),
            channels = inner.notifier.channels().len(),
            delay_s = inner.settings.policy.delay.as_secs(),
            "watchdog started"
        );
        for (id, interval) in &inner.schedule {
            inner
                .tracker
                .spawn(run_check(self.0.clone(), *id, *interval, sources.clone()));
        }
        inner.tracker.spawn(notify_loop(self.0.clone()));
    }

    /// Every scheduled check and its state, for `cerectl status`.
    pub fn checks(&self) -> Vec<WatchCheck> {
        let trackers = self.0.trackers.locked();
        self.0
            .schedule
            .iter()
            .map(|(id, interval)| {
                let view = trackers.get(id).and_then(Tracker::view);
                report::to_proto(*id, *interval, view.as_ref())
            })
            .collect()
    }

    /// Every scheduled check and its state, for the local status file.
    pub fn local_checks(&self) -> Vec<CheckPart> {
        let trackers = self.0.trackers.locked();
        self.0
            .schedule
            .keys()
            .map(|id| {
                let view = trackers.get(id).and_then(Tracker::view);
                report::to_local(*id, view.as_ref())
            })
            .collect()
    }

    /// The alert channels, for status.
    pub fn channels(&self) -> Vec<AlertChannel> {
        self.0.notifier.channels()
    }

    /// Sends a test notification through every channel now.
    pub async fn test_alerts(&self) -> TestAlertsResponse {
        let now = Stamp::now();
        let event = Event {
            check: None,
            kind: EventKind::Test,
            observation: Observation::ok("test"),
            since_unix: now.unix,
            failing_since_unix: now.unix,
            at_unix: now.unix,
            budget_exhausted_until_unix: None,
        };
        TestAlertsResponse {
            results: self.0.notifier.test(&event).await,
        }
    }

    /// (check, level, since) of every check that has run.
    fn levels(&self) -> Vec<(CheckId, Level, i64)> {
        let trackers = self.0.trackers.locked();
        trackers
            .iter()
            .filter_map(|(id, t)| t.view().map(|v| (*id, v.observation.level, v.since_unix)))
            .collect()
    }
}

impl Inner {
    fn record(&self, id: CheckId, observation: Observation) {
        let mut trackers = self.trackers.locked();
        if let Some(t) = trackers.get_mut(&id) {
            let before = t.view().map(|v| v.observation.level);
            if before != Some(observation.level) {
                tracing::info!(check = id.as_str(), state = observation.level.as_str(), detail = %observation.detail, "check changed state");
            }
            t.observe(observation, Stamp::now());
        }
        drop(trackers);
        self.wake.notify_one();
    }
}

/// Runs check `id` every `interval` until shutdown.
async fn run_check(inner: Arc<Inner>, id: CheckId, interval: Duration, sources: Arc<dyn Sources>) {
    let mut relay_memory = None;
    let mut previous: Option<Observation> = None;
    let asks_dns = matches!(
        id,
        CheckId::Dnsbl | CheckId::Ptr | CheckId::Spf | CheckId::Mx
    );
    loop {
        let run = observe(&inner, id, &sources, &mut relay_memory);
        // DNS questions can wait seconds on a dead resolver: shutdown does
        // not wait for them. (The other checks are quick, and one holds the
        // agent's context in a blocking task: it is let finish.)
        let observation = if asks_dns {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                o = run => o,
            }
        } else {
            run.await
        };
        if let Some(o) = observation {
            let o = check::carry_forward(previous.as_ref(), o);
            previous = Some(o.clone());
            inner.record(id, o);
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One run of check `id`; `None` when nothing new can be known (home's
/// firewall before home ever reported).
async fn observe(
    inner: &Inner,
    id: CheckId,
    sources: &Arc<dyn Sources>,
    relay_memory: &mut Option<local::RelayMemory>,
) -> Option<Observation> {
    let now = Stamp::now().unix;
    let o = match id {
        CheckId::Home => local::home(
            &sources.home(),
            sources.home_lineage().is_some(),
            sources.tunnel().as_ref(),
            now,
        ),
        CheckId::Relays => local::relays(&sources.relays(), relay_memory),
        CheckId::Egress => {
            let s = sources.clone();
            let status = tokio::task::spawn_blocking(move || s.egress()).await.ok()?;
            local::egress(&status, inner.egress_enabled)
        }
        CheckId::HomeFirewall => local::home_firewall(&sources.home())?,
        CheckId::Rotation => {
            let status = sources.tunnel().map(|_| sources.rotation());
            local::rotation(status.as_ref(), inner.rotate_every, now)
        }
        CheckId::Certificates => {
            let s = sources.clone();
            let certs = tokio::task::spawn_blocking(move || certificates(&*s))
                .await
                .ok()?;
            local::certificates(&certs, now)
        }
        CheckId::Dnsbl | CheckId::Ptr | CheckId::Spf | CheckId::Mx => {
            let id_ = match &inner.identity {
                Ok(i) => i,
                Err(e) => return Some(Observation::unknown(format!("not checked: {e}"))),
            };
            let resolver = inner.settings.resolver;
            let lookup = match resolver.lookup() {
                Ok(l) => l,
                Err(e) => return Some(dns::no_resolver(resolver, &e)),
            };
            match id {
                CheckId::Dnsbl => dns::dnsbl(id_, &inner.settings.dnsbl_zones, &lookup).await,
                CheckId::Ptr => dns::ptr(id_, &lookup).await,
                CheckId::Spf => dns::spf(id_, &lookup).await,
                _ => dns::mx(id_, &lookup).await,
            }
        }
    };
    Some(o)
}

/// Every certificate worth watching: the CA, the server certificate, and
/// the newest client certificate of each lineage not revoked (the home's
/// owning the tunnel is [`CertKind::Home`]). Reads files: off the workers.
fn certificates(sources: &dyn Sources) -> Vec<CertExpiry> {
    let mut out = Vec::new();
    let cert = |subject: &str, kind, info: &CertificateInfo| CertExpiry {
        subject: subject.to_owned(),
        kind,
        not_before_unix: ceres_pki::unix_secs(info.not_before),
        not_after_unix: ceres_pki::unix_secs(info.not_after),
    };
    if let Ok(ca) = CertificateInfo::from_pem(&sources.ca_certificate_pem()) {
        out.push(cert("the CA", CertKind::Ca, &ca));
    }
    if let Some(server) = sources.server_certificate() {
        out.push(cert(
            "the VPS server certificate",
            CertKind::Server,
            &server,
        ));
    }
    let home = sources.home_lineage();
    let issued = match crate::certs::list(sources.state_dir()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the register of issued certificates");
            return out;
        }
    };
    let dir = sources.state_dir();
    let mut newest: BTreeMap<String, crate::certs::Issued> = BTreeMap::new();
    for (i, revoked) in issued {
        if revoked || crate::certs::lineage_revoked(dir, i.lineage()) {
            continue;
        }
        // The list is oldest first: the last of a lineage wins.
        newest.insert(i.lineage().to_owned(), i);
    }
    for (lineage, i) in newest {
        let (kind, what) = if home.as_deref() == Some(lineage.as_str()) {
            (CertKind::Home, "home's certificate")
        } else {
            (CertKind::Other, "the client certificate")
        };
        out.push(CertExpiry {
            subject: format!("{what} {:?} ({})", i.name, i.role),
            kind,
            not_before_unix: i.issued_unix,
            not_after_unix: i.not_after_unix,
        });
    }
    out
}

/// Sends what the trackers say is due; sleeps until the next deadline or a
/// new observation.
async fn notify_loop(inner: Arc<Inner>) {
    let policy = inner.settings.policy;
    loop {
        let (events, next) = {
            let mut trackers = inner.trackers.locked();
            let now = Stamp::now();
            let mut events = Vec::new();
            for t in trackers.values_mut() {
                while let Some(e) = t.poll(now, &policy) {
                    events.push(e);
                }
            }
            let next = trackers
                .values()
                .filter_map(|t| t.next_deadline(&policy))
                .min();
            (events, next)
        };
        for e in &events {
            tracing::warn!(
                check = e.check.map_or("test", CheckId::as_str),
                event = e.kind.as_str(),
                detail = %e.observation.detail,
                "notifying"
            );
            inner.notifier.send(e);
        }
        let sleep = match next {
            Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = sleep => {}
        }
    }
}
