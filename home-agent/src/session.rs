//! The session with the VPS and the certificate renewal, for as long as the
//! agent runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ceres_control::Credentials;
use ceres_pki::{Role, unix_secs};
use ceres_proto::agent_client::AgentClient;
use ceres_proto::{Hello, HomeMessage, Report, home_message, vps_message};
use ceres_state::StateDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::mail::HomeMail;
use crate::rotation::HomeRotation;
use crate::settings::HomeSettings;
use crate::tunnel::HomeTunnel;

/// The version string of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A session that held this long counts as healthy: the next failure starts
/// the backoff from the beginning again.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// First reconnect delay.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Hint shown when the agent has not joined yet.
pub const JOIN_HINT: &str = "join first: on the VPS run `ceres-vps token create --role home`, then here `ceres-home join TOKEN`";

/// Errors ending one session attempt.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Cred(#[from] ceres_control::CredError),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("the VPS closed the session")]
    Closed,
    #[error("the VPS did not start the session properly")]
    NoWelcome,
    #[error("nothing heard from the VPS for three report intervals")]
    Silent,
}

/// Whether the session is up, and the rest of the metrics page as of the
/// last report (the page is rendered from what is reported anyway).
type MetricsCache = Arc<Mutex<(bool, String)>>;

fn render_metrics(r: &Report) -> String {
    use ceres_daemon::metrics::{header, line};
    let mut o = String::new();
    if let Some(t) = &r.tunnel {
        ceres_control::report::tunnel_metrics(&mut o, t, r.sent_at_unix, "the VPS");
    }
    header(
        &mut o,
        "ceres_forward_connections_total",
        "counter",
        "connections forwarded to the mail server",
    );
    for f in &r.forwards {
        line(
            &mut o,
            "ceres_forward_connections_total",
            &[("port", &f.target_port.to_string())],
            f.total as f64,
        );
    }
    header(
        &mut o,
        "ceres_forward_connections_active",
        "gauge",
        "forwarded connections open now",
    );
    for f in &r.forwards {
        line(
            &mut o,
            "ceres_forward_connections_active",
            &[("port", &f.target_port.to_string())],
            f.active as f64,
        );
    }
    header(
        &mut o,
        "ceres_mail_server_reachable",
        "gauge",
        "1 when home's probe reached the mail server on the port",
    );
    for p in &r.probes {
        line(
            &mut o,
            "ceres_mail_server_reachable",
            &[("port", &p.port.to_string())],
            if p.reachable { 1.0 } else { 0.0 },
        );
    }
    header(
        &mut o,
        "ceres_certificate_expiry_timestamp_seconds",
        "gauge",
        "when this agent's certificate expires (renewed at 2/3 of its life)",
    );
    line(
        &mut o,
        "ceres_certificate_expiry_timestamp_seconds",
        &[("cert", "home")],
        r.certificate_not_after_unix as f64,
    );
    o
}

/// The latest mail-server probe results, for reports.
type Probes = Arc<Mutex<Vec<ceres_proto::MailProbe>>>;

/// Probes the mail server on every forwarded port, now and then every
/// `every` (CERES_PROBE_INTERVAL), so status shows whether it answers and
/// expects PROXY. Each probe holds a connection for at most a few seconds.
async fn probe_loop(
    mail: Arc<HomeMail>,
    server: std::net::IpAddr,
    every: Duration,
    out: Probes,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let specs = mail.specs().await;
        if specs.is_empty() {
            // Not forwarding yet: look again soon.
            tick.reset_after(Duration::from_secs(2));
            continue;
        }
        let results = tokio::select! {
            _ = cancel.cancelled() => return,
            r = crate::probe::probe(server, &specs) => r,
        };
        *out.lock().unwrap_or_else(|p| p.into_inner()) = results;
    }
}

/// Whether the mail server here could deliver over IPv6 without the tunnel
/// (`UNSPECIFIED` when `ip` cannot tell). Runs `ip`: off the async workers.
async fn direct_ipv6(tunnel_if: &str) -> ceres_proto::DirectIpv6 {
    use ceres_proto::DirectIpv6;
    let ifname = tunnel_if.to_owned();
    tokio::task::spawn_blocking(move || {
        match ceres_relay::egress::direct_ipv6(&ceres_relay::egress::HostSystem::default(), &ifname)
        {
            Ok(true) => DirectIpv6::DefaultRoute,
            Ok(false) => DirectIpv6::None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell whether this host has IPv6");
                DirectIpv6::Unspecified
            }
        }
    })
    .await
    .unwrap_or(DirectIpv6::Unspecified)
}

/// Shared credentials; replaced when the certificate renews.
type SharedCreds = Arc<Mutex<Credentials>>;

fn current(creds: &SharedCreds) -> Credentials {
    creds.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs the home agent until `cancel`: keeps the session to the VPS up and
/// the certificate fresh. Returns when all its tasks have stopped.
pub async fn run(
    settings: HomeSettings,
    dir: StateDir,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let creds: SharedCreds = Arc::new(Mutex::new(Credentials::load(&dir, Role::Home, JOIN_HINT)?));
    let started = SystemTime::now();
    let status_dir = dir.path().to_owned();
    // The status file outlives the other tasks' cancellation only until the
    // end of `run`: it is removed once everything else has stopped.
    let status_cancel = CancellationToken::new();
    let tunnel = Arc::new(HomeTunnel::new(&settings, &dir, &cancel)?);
    let mail = Arc::new(HomeMail::new(&settings, &dir, &cancel));
    let rotation = Arc::new(HomeRotation::load(&dir)?);
    // The filter before the tunnel: nothing enters through it unfiltered.
    mail.install_filter().await?;
    mail.check_postfix().await;
    // The data plane does not wait for the control plane.
    tunnel.start_saved().await;
    if let (Some(addrs), Some(relays)) = (tunnel.addresses().await, mail.saved_relays()) {
        mail.apply(&relays, addrs).await;
    }
    rotation.resume(&tunnel).await;
    let tracker = TaskTracker::new();
    let probes: Probes = Arc::new(Mutex::new(Vec::new()));
    let local = crate::local_status::SharedSession::default();
    crate::local_status::session_connecting(
        &local,
        settings
            .control_address
            .as_deref()
            .unwrap_or(&current(&creds).control_address),
    );
    let snapshot = crate::local_status::Snapshot::new(
        crate::local_status::AgentPart {
            version: VERSION.to_owned(),
            name: settings.name.clone(),
            started_at_unix: unix_secs(started),
            ..Default::default()
        },
        local.clone(),
        mail.clone(),
        probes.clone(),
    );
    let status_writer = TaskTracker::new();
    let writer_cancel = status_cancel.clone();
    status_writer.spawn(async move {
        let snapshot = Arc::new(snapshot);
        ceres_daemon::status_file::keep_written(
            status_dir,
            || {
                let s = snapshot.clone();
                async move { s.take().await }
            },
            writer_cancel,
        )
        .await;
    });
    let metrics: MetricsCache = Arc::new(Mutex::new((false, String::new())));
    let mcache = metrics.clone();
    tracker.spawn(ceres_daemon::metrics::start(
        settings.metrics_listen,
        Arc::new(move || {
            let (connected, body) = mcache.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut o = String::new();
            ceres_daemon::metrics::header(
                &mut o,
                "ceres_vps_connected",
                "gauge",
                "1 while the session to the VPS is up",
            );
            ceres_daemon::metrics::line(
                &mut o,
                "ceres_vps_connected",
                &[],
                if connected { 1.0 } else { 0.0 },
            );
            o + &body
        }),
        cancel.clone(),
    ));
    tracker.spawn(probe_loop(
        mail.clone(),
        settings.mail_server,
        settings.probe_interval,
        probes.clone(),
        cancel.clone(),
    ));
    tracker.spawn(renew_loop(
        creds.clone(),
        dir,
        settings.clone(),
        cancel.clone(),
    ));
    let mut backoff = Backoff::new(BACKOFF_BASE, settings.reconnect_max.max(BACKOFF_BASE));
    loop {
        let began = Instant::now();
        let planes = Planes {
            tunnel: &tunnel,
            mail: &mail,
            rotation: &rotation,
            probes: &probes,
            metrics: &metrics,
            local: &local,
        };
        let result = session(&creds, &settings, &planes, started, &cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        if began.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let address = settings
            .control_address
            .clone()
            .unwrap_or_else(|| current(&creds).control_address);
        match result {
            Ok(()) => {}
            Err(e) => {
                crate::local_status::session_down(&local, &address, e.to_string());
                tracing::warn!(vps = %address, error = %e, retry_in_ms = delay.as_millis() as u64, "no session with the VPS");
                ceres_daemon::notify(&format!(
                    "STATUS=not connected to the VPS at {address}: {e}"
                ));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
    mail.shutdown().await;
    tunnel.shutdown().await;
    status_cancel.cancel();
    status_writer.close();
    status_writer.wait().await;
    Ok(())
}

/// The data-plane parts a session reports on and steers.
struct Planes<'a> {
    tunnel: &'a Arc<HomeTunnel>,
    mail: &'a HomeMail,
    rotation: &'a Arc<HomeRotation>,
    probes: &'a Probes,
    metrics: &'a MetricsCache,
    local: &'a crate::local_status::SharedSession,
}

async fn session(
    creds: &SharedCreds,
    settings: &HomeSettings,
    planes: &Planes<'_>,
    started: SystemTime,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let Planes {
        tunnel,
        mail,
        rotation,
        probes,
        metrics,
        local,
    } = *planes;
    // Whatever ends this session, the gauge says so.
    struct Disconnected<'a>(&'a MetricsCache);
    impl Drop for Disconnected<'_> {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).0 = false;
        }
    }
    let _disconnected = Disconnected(metrics);
    let c = current(creds);
    let channel = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        ch = c.connect(settings.control_address.as_deref()) => ch?,
    };
    let (tx, rx) = mpsc::channel::<HomeMessage>(8);
    let hello = HomeMessage {
        kind: Some(home_message::Kind::Hello(Hello {
            protocol_version: ceres_proto::PROTOCOL_VERSION,
            min_protocol_version: ceres_proto::MIN_PROTOCOL_VERSION,
            agent_version: VERSION.to_owned(),
            hostname: settings.name.clone(),
            started_at_unix: unix_secs(started),
            wg_public_key: tunnel.public_key().as_bytes().to_vec(),
            pending_rotation: rotation.pending_id(),
        })),
    };
    let _ = tx.send(hello).await;
    rotation.attach(tx.clone());
    let mut inbound = AgentClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = match inbound.message().await? {
        Some(m) => match m.kind {
            Some(vps_message::Kind::Welcome(w)) => w,
            _ => return Err(SessionError::NoWelcome),
        },
        None => return Err(SessionError::Closed),
    };
    let interval = Duration::from_secs(welcome.report_interval_secs.max(1) as u64);
    if welcome.tunnel.is_none() {
        tunnel.note_vps_start(welcome.vps_started_at_unix).await;
    }
    if let Some(params) = welcome.tunnel {
        if let Err(e) = tunnel.apply(params, welcome.vps_started_at_unix).await {
            // The session stays up (status shows the error); the tunnel is retried on the next session.
            tracing::error!(error = %format!("{e:#}"), "cannot bring the tunnel up");
        }
    }
    if let Some(addrs) = tunnel.addresses().await {
        mail.apply(&welcome.relays, addrs).await;
    }
    let address = settings
        .control_address
        .clone()
        .unwrap_or(c.control_address.clone());
    tracing::info!(vps = %address, vps_version = %welcome.vps_agent_version, protocol = welcome.protocol_version, "connected to the VPS");
    ceres_daemon::notify(&format!("STATUS=connected to the VPS at {address}"));
    crate::local_status::session_up(local, &address);
    let mut tick = tokio::time::interval(interval);
    // The VPS pings every interval; three silent intervals mean the
    // connection is dead even if TCP has not noticed (home's address changed).
    let silent_limit = interval * 3 + Duration::from_secs(2);
    let mut last_heard = tokio::time::Instant::now();
    // The firewall advice is logged when it first appears or changes, not
    // with every report.
    let mut last_firewall = String::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(last_heard + silent_limit) => return Err(SessionError::Silent),
            _ = tick.tick() => {
                let not_after = current(creds).info().map(|i| unix_secs(i.not_after)).unwrap_or(0);
                let (forwards, forward_error, egress) = mail.report().await;
                let (firewall_findings, firewall) = mail.firewall_check().await;
                if !firewall.is_empty() && firewall != last_firewall {
                    tracing::warn!("{firewall}");
                }
                last_firewall.clone_from(&firewall);
                let (input_filter, input_filter_error) = mail.filter_status();
                let postfix = mail.postfix_report().await;
                let report = Report {
                    direct_ipv6: direct_ipv6(&settings.tunnel_ifname).await.into(),
                    input_filter: input_filter.into(),
                    input_filter_error,
                    sent_at_unix: unix_secs(SystemTime::now()),
                    uptime_secs: started.elapsed().unwrap_or_default().as_secs(),
                    certificate_not_after_unix: not_after,
                    tunnel: Some(tunnel.report().await),
                    forwards,
                    forward_error,
                    firewall,
                    firewall_findings,
                    egress: Some(egress),
                    probes: probes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    postfix,
                };
                *metrics.lock().unwrap_or_else(|p| p.into_inner()) = (true, render_metrics(&report));
                if tx.send(HomeMessage { kind: Some(home_message::Kind::Report(report)) }).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            msg = inbound.message() => match msg? {
                Some(m) => {
                    last_heard = tokio::time::Instant::now();
                    handle_command(m, tunnel, rotation).await;
                }
                None => return Err(SessionError::Closed),
            },
        }
    }
}

async fn handle_command(
    msg: ceres_proto::VpsMessage,
    tunnel: &Arc<HomeTunnel>,
    rotation: &Arc<HomeRotation>,
) {
    use ceres_proto::command::Kind;
    let Some(vps_message::Kind::Command(cmd)) = msg.kind else {
        return;
    };
    match cmd.kind {
        Some(Kind::Ping(_)) | None => {}
        Some(Kind::RotatePrepare(p)) => {
            if let Err(e) = rotation.on_prepare(tunnel, p.rotation).await {
                tracing::error!(error = %format!("{e:#}"), "cannot prepare the key rotation");
            }
        }
        Some(Kind::RotateCommit(c)) => {
            rotation
                .on_commit(tunnel, c.rotation, &c.vps_public_key, &c.preshared_key)
                .await
        }
        Some(Kind::RotateAbort(a)) => rotation.on_abort(tunnel, a.rotation, &a.reason).await,
    }
}

/// Renews the certificate two thirds into its life; retries with backoff.
async fn renew_loop(
    creds: SharedCreds,
    dir: StateDir,
    settings: HomeSettings,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
    loop {
        let c = current(&creds);
        let wait = match c.renew_at() {
            Ok(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the certificate; renewal stopped");
                return;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match c
            .renew(settings.control_address.as_deref())
            .await
            .and_then(|fresh| {
                fresh.save(&dir, Role::Home)?;
                Ok(fresh)
            }) {
            Ok(fresh) => {
                let until = fresh.info().map(|i| unix_secs(i.not_after)).unwrap_or(0);
                tracing::info!(not_after_unix = until, "certificate renewed");
                *creds.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                backoff.reset();
            }
            Err(e) => {
                let expired = c
                    .info()
                    .map(|i| i.not_after <= SystemTime::now())
                    .unwrap_or(false);
                let delay = backoff.next_delay();
                if expired {
                    tracing::error!(error = %e, "the certificate has expired and cannot be renewed: {JOIN_HINT}");
                } else {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "certificate renewal failed");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
